"""The one exception type for a user's mistake, and how entry points report it."""

import contextlib
import os
import sys


class UserError(Exception):
    """A mistake the user can fix: the message names the problem and what would be valid."""


@contextlib.contextmanager
def reported_as_exit():
    """Turn a UserError into one line on stderr and exit status 2 (full traceback with HYDRA_FULL_ERROR=1)."""
    try:
        yield
    except UserError as err:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"error: {err}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None
