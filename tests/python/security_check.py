"""Drives a Ferry site with security on through the unmodified Python `aerospike` client: a client
without a login is refused, one with a wrong password cannot connect, and the site's first user
manages users and roles through the client's admin API, each held to its privileges.

Usage: security_check.py HOST:PORT ADMIN_PASSWORD

Exits non-zero with a message on the first difference. Run by cli/tests/client_security.rs.
"""

import sys
import time

import aerospike
from aerospike import exception as ex

from checks import check


def refused(call, error, what):
    """Runs `call`, which must raise `error`."""
    try:
        call()
    except error:
        return
    except ex.AerospikeError as other:
        check(False, f"{what}: expected {error.__name__}, got {type(other).__name__}: {other}")
    check(False, f"{what}: not refused")


def eventually(condition, what):
    """Waits up to 5 s for `condition()`: a change reaches the site's other nodes within a
    second."""
    deadline = time.monotonic() + 5
    while not condition():
        check(time.monotonic() < deadline, f"{what}: not within 5 s")
        time.sleep(0.1)


def login(config, user, password):
    """A client logged in as `user`: the Python client takes the user and password from its
    config (the arguments of `connect` are not used)."""
    return aerospike.client({**config, "user": user, "password": password}).connect()


def connects(config, user, password):
    try:
        login(config, user, password).close()
        return True
    except ex.AerospikeError:
        return False


def main():
    host, port = sys.argv[1].rsplit(":", 1)
    admin_password = sys.argv[2]
    config = {"hosts": [(host, int(port))]}
    key = ("test", "py", "k1")

    anonymous = aerospike.client(config).connect()
    refused(lambda: anonymous.put(key, {"v": 1}), ex.NotAuthenticated, "a put without a login")
    anonymous.close()
    check(not connects(config, "admin", "wrong"), "connected with a wrong password")

    admin = login(config, "admin", admin_password)
    admin.admin_create_user("py-writer", "writer-pw", ["read-write"])
    admin.admin_create_role("py-reader", [{"code": aerospike.PRIV_READ, "ns": "test", "set": "py"}])
    admin.admin_create_user("py-reader", "reader-pw", ["py-reader"])
    roles = admin.admin_query_user_info("py-writer")["roles"]
    check(roles == ["read-write"], f"py-writer's roles: {roles}")
    privileges = admin.admin_query_role("py-reader")
    check(
        privileges == [{"code": aerospike.PRIV_READ, "ns": "test", "set": "py"}],
        f"py-reader's privileges: {privileges}",
    )
    refused(
        lambda: admin.admin_create_user("py-writer", "x", ["read"]),
        ex.UserExistsError,
        "a second py-writer",
    )

    eventually(lambda: connects(config, "py-writer", "writer-pw"), "py-writer logs in")
    writer = login(config, "py-writer", "writer-pw")
    writer.put(key, {"v": 1})
    refused(
        lambda: writer.admin_create_user("eve", "eve-pw", ["read"]),
        ex.RoleViolation,
        "user administration by py-writer",
    )

    eventually(lambda: connects(config, "py-reader", "reader-pw"), "py-reader logs in")
    reader = login(config, "py-reader", "reader-pw")
    (_, _, bins) = reader.get(key)
    check(bins == {"v": 1}, f"py-reader read {bins}")
    refused(lambda: reader.put(key, {"v": 2}), ex.RoleViolation, "a put by py-reader")
    refused(
        lambda: reader.get(("test", "other-set", "k1")),
        ex.RoleViolation,
        "a read outside py-reader's set",
    )

    admin.admin_drop_user("py-writer")
    eventually(lambda: not connects(config, "py-writer", "writer-pw"), "py-writer is gone")
    for client in (writer, reader, admin):
        client.close()
    print("all checks passed")


if __name__ == "__main__":
    main()
