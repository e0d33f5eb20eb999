"""Connects to a Ferry site with the unmodified Python `aerospike` client configured with a user
and password, as an application written for a secured Aerospike would be.

Usage: login_check.py HOST:PORT

On a site without security (Aerospike's default), the login is answered "security not
enabled" and the client works without a session; user administration is refused with
SecurityNotEnabled. Exits non-zero with a message on the first difference.
Run by cli/tests/client_login.rs.
"""

import sys

import aerospike
from aerospike import exception as ex

from checks import check


def main():
    host, port = sys.argv[1].rsplit(":", 1)
    # The Python client takes the user and password from its config.
    config = {"hosts": [(host, int(port))], "user": "app", "password": "app-password"}
    client = aerospike.client(config).connect()

    key = ("test", "login", "k1")
    client.put(key, {"v": 1})
    (_, _, bins) = client.get(key)
    check(bins == {"v": 1}, f"get returned {bins}")

    try:
        client.admin_create_user("bob", "bob-password", ["read"])
        check(False, "admin_create_user succeeded on a site without security")
    except ex.SecurityNotEnabled:
        pass
    client.close()
    print("all checks passed")


if __name__ == "__main__":
    main()
