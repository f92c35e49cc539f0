"""The project's root error type.

Every error the project raises for something a user can fix (a bad flag value, a missing file, a
task it does not know, a dataset it cannot read) derives from ``SafepolicyError``, so each
command-line entry point catches that one type and prints its message as one line, without a
traceback. The server's request errors (server/errors.py) are a separate tree: they become gRPC
status codes, not command-line messages.
"""

from __future__ import annotations


class SafepolicyError(Exception):
    """Something the user can fix; the message names the problem and what to do."""
