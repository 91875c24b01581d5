"""Errors a user can fix, and how the command-line tools report them: one line, no traceback."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch


class ConfigError(ValueError):
    """A config value that cannot work; the message names the key and what to do."""


class DataUnavailableError(RuntimeError):
    """The data set is neither on disk nor downloadable; the message says what to do."""


class UserPathError(RuntimeError):
    """A path the user named (data root, predict folder, checkpoint) is missing or holds nothing usable.

    Only these become one-line errors: a ``FileNotFoundError`` raised anywhere else is a bug and
    keeps its traceback.
    """


class CheckpointError(UserPathError):
    """A checkpoint file that cannot be written, read, or used with this data and network; the
    message names the file."""


class MissingPackageError(RuntimeError):
    """An optional package a command needs is not installed; the message names the extra to install."""


class NonFiniteLossError(ArithmeticError):
    """Training met a NaN or infinite loss and stopped before it reached the weights or a checkpoint."""


def check_finite_loss(loss, where: str | Callable[[], str]) -> None:
    """Stop a run at the first non-finite loss, naming ``where`` (epoch, batch, step; a callable is
    only called then, so a training step does not build the text): once a NaN reaches the
    gradients, every weight after it is NaN, and so would be every later checkpoint."""
    if not bool(loss.isfinite()):
        where = where() if callable(where) else where
        raise NonFiniteLossError(
            f"the loss is {float(loss.detach())} at {where}; training stopped, and the checkpoints already written "
            "are the last finite ones. Lower the learning rate, or clip gradients (--trainer.gradient_clip_val)."
        )


def out_of_memory_hint(batch_size: int, precision: str) -> str:
    """What to tell a user whose device ran out of memory (kept on the exception as ``hint``)."""
    return (
        f"the device ran out of memory with data.batch_size={batch_size} (precision {precision}). Lower "
        "--data.batch_size, or keep the effective batch with a smaller one and --trainer.accumulate_grad_batches N; "
        "--trainer.precision bf16-mixed also halves the activations' memory."
    )


@contextmanager
def reported_as_exit() -> Iterator[None]:
    """Turn user-fixable errors into ``error: ...`` on stderr and an exit status: 2 for a bad
    config (as for a bad option), 1 for missing data or files."""
    try:
        yield
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except (DataUnavailableError, UserPathError, NonFiniteLossError, MissingPackageError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
    except torch.OutOfMemoryError as exc:
        print(f"error: {getattr(exc, 'hint', 'the device ran out of memory')}", file=sys.stderr)
        sys.exit(1)


@contextmanager
def out_of_memory_hinted(batch_size: int, precision: str) -> Iterator[None]:
    """An out-of-memory error leaves with the batch size and what to change, as in the Lightning path."""
    try:
        yield
    except torch.OutOfMemoryError as exc:
        exc.hint = out_of_memory_hint(batch_size, precision)  # type: ignore[attr-defined]  # ours, on torch's error
        raise
