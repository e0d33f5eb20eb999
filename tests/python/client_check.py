"""Drives a Ferry site with the unmodified Python `aerospike` client (the C client inside).

Usage: client_check.py HOST:PORT

Exits non-zero with a message on the first behaviour that differs from Aerospike's.
Run by tests/tests/python_client.rs against real `ferry node run` processes.
"""

import sys

import aerospike
from aerospike import exception as ex

from checks import check


def main():
    host, port = sys.argv[1].rsplit(":", 1)
    client = aerospike.client({"hosts": [(host, int(port))]}).connect()

    # The seed example from the README, unchanged.
    key = ("test", "demo", "user1")
    client.put(key, {"name": "John Doe"})
    (_, meta, bins) = client.get(key)
    check(bins == {"name": "John Doe"}, f"get returned {bins}")
    check(meta["gen"] == 1, f"generation {meta}")
    client.remove(key)
    try:
        client.get(key)
        check(False, "get after remove found the record")
    except ex.RecordNotFound:
        pass

    # Keys as int, str and bytes; exists; touch.
    keys = [("test", "py", 42), ("test", "py", "text-key"), ("test", "py", bytearray(b"\x01\x02"))]
    for i, k in enumerate(keys):
        client.put(k, {"i": i, "f": 1.5, "s": f"v{i}", "b": bytearray(b"\x00\xff")})
    for i, k in enumerate(keys):
        (_, meta, bins) = client.get(k)
        check(bins["i"] == i and bins["f"] == 1.5 and bins["s"] == f"v{i}", f"bins {bins}")
        check(bins["b"] == bytearray(b"\x00\xff"), f"bytes bin {bins['b']!r}")
    (_, meta) = client.exists(keys[0])
    check(meta is not None and meta["gen"] == 1, f"exists {meta}")
    (_, missing) = client.exists(("test", "py", "absent"))
    check(missing is None, f"exists of a missing key {missing}")
    client.touch(keys[0])
    (_, meta, _) = client.get(keys[0])
    check(meta["gen"] == 2, f"generation after touch {meta}")

    # operate: increment, append, read.
    from aerospike_helpers.operations import operations as op

    (_, _, bins) = client.operate(
        keys[0], [op.increment("i", 10), op.append("s", "-x"), op.read("i"), op.read("s")]
    )
    check(bins["i"] == 10 and bins["s"] == "v0-x", f"operate {bins}")

    # Batch across nodes, with a missing key.
    batch_keys = [("test", "batch", n) for n in range(30)]
    for n, k in enumerate(batch_keys[:25]):
        client.put(k, {"n": n})
    rows = client.batch_read(batch_keys).batch_records
    check(len(rows) == 30, f"batch answered {len(rows)} rows of 30")
    found = [row.record for row in rows if row.result == 0]
    missing = [row for row in rows if row.result == 2]
    check(len(found) == 25 and len(missing) == 5, f"batch found {len(found)}, missing {len(missing)}")
    check(all(r[2]["n"] == r[0][2] for r in found), "batch rows carry the wrong record")

    # Scan of a set: every record exactly once.
    seen = []
    client.scan("test", "batch").foreach(lambda record: seen.append(record[2]["n"]))
    check(sorted(seen) == list(range(25)), f"scan saw {sorted(seen)}")

    # Removing the last bin deletes the record; it no longer shows up in scans.
    gone = ("test", "nobins", 1)
    client.put(gone, {"a": 1, "b": 2})
    client.put(gone, {"a": None})
    (_, _, bins) = client.get(gone)
    check(bins == {"b": 2}, f"after removing one bin {bins}")
    client.put(gone, {"b": None})
    (_, missing) = client.exists(gone)
    check(missing is None, f"a record without bins still exists: {missing}")
    seen = []
    client.scan("test", "nobins").foreach(lambda record: seen.append(record[2]))
    check(seen == [], f"scan of emptied records saw {seen}")

    # Operations on bins that do not exist yet create them.
    (_, _, bins) = client.operate(
        ("test", "ops", 1),
        [op.increment("n", 3), op.append("s", "tail"), op.prepend("p", "head"), op.read("n"),
         op.read("s"), op.read("p")],
    )
    check(bins == {"n": 3, "s": "tail", "p": "head"}, f"operate on missing bins {bins}")

    # Truncating a set removes it on every node; a new write afterwards stays.
    client.truncate("test", "batch", 0)
    seen = []
    client.scan("test", "batch").foreach(lambda record: seen.append(record[2]["n"]))
    check(seen == [], f"scan after truncate saw {sorted(seen)}")
    client.put(batch_keys[0], {"n": 0})
    (_, meta, _) = client.get(batch_keys[0])
    check(meta["gen"] == 1, f"a truncated key starts over at generation 1: {meta}")

    client.close()
    print("python client: all checks passed")


if __name__ == "__main__":
    main()
