"""The README's seed example, unchanged: put, get and remove one record through one node."""
import sys

import aerospike

host, port = sys.argv[1].rsplit(":", 1)
client = aerospike.client({"hosts": [(host, int(port))]}).connect()
key = ("test", "demo", "user1")
client.put(key, {"name": "John Doe"})
(_, meta, bins) = client.get(key)
assert bins == {"name": "John Doe"}, bins
client.remove(key)
try:
    client.get(key)
    raise SystemExit("user1 still readable after remove")
except aerospike.exception.RecordNotFound:
    pass
client.close()
print("seed example passed")
