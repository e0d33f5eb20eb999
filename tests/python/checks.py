"""What the Python client checks share: fail with a message on the first difference."""

import sys


def check(condition, message):
    if not condition:
        print(f"FAILED: {message}", file=sys.stderr)
        sys.exit(1)
