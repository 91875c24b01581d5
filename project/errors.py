"""Errors a user can fix, and how the command-line tools report them: one line, no traceback."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager


class ConfigError(ValueError):
    """A config value that cannot work; the message names the key and what to do."""


class DataUnavailableError(RuntimeError):
    """The data set is neither on disk nor downloadable; the message says what to do."""


class UserPathError(RuntimeError):
    """A path the user named (data root, predict folder, checkpoint) is missing or holds nothing usable.

    Only these become one-line errors: a ``FileNotFoundError`` raised anywhere else is a bug and
    keeps its traceback.
    """


@contextmanager
def reported_as_exit() -> Iterator[None]:
    """Turn user-fixable errors into ``error: ...`` on stderr and an exit status: 2 for a bad
    config (as for a bad option), 1 for missing data or files."""
    try:
        yield
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except (DataUnavailableError, UserPathError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
