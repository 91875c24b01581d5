"""How long a reference run trains and how much it reads, as Lightning reads the Trainer's keys:
epochs, optimizer steps, time (``max_epochs``, ``max_steps``, ``max_time``), validation inside an
epoch (``val_check_interval``) and the batch limits (``limit_*_batches``)."""

from __future__ import annotations

import re
from datetime import timedelta

from project.errors import ConfigError


def read_max_epochs(value: int | None, max_time: object = None) -> int:
    """Lightning's default of 1000 when unset; -1 (no limit) has no end the reference could mirror,
    nor has an unset one beside ``max_time`` (Lightning then trains without an epoch limit)."""
    if value is None and max_time is not None:
        raise ConfigError(
            f"trainer.max_time={max_time!r} without trainer.max_epochs: Lightning trains without an epoch limit "
            "then, and the reference loop needs one; set trainer.max_epochs too"
        )
    if value is None:
        return 1000
    if int(value) < 0:
        raise ConfigError(
            f"trainer.max_epochs={value}: Lightning trains without an epoch limit then, "
            "and the reference loop needs one; set a number of epochs"
        )
    return int(value)


def read_max_time(value: object) -> float | None:
    """``trainer.max_time`` in seconds, as Lightning's Timer reads it: "DD:HH:MM:SS" or a dict of
    ``timedelta``'s arguments (``{minutes: 30}``)."""
    if value is None:
        return None
    try:
        if isinstance(value, str):
            days, hours, minutes, seconds = re.fullmatch(r"(\d+):(\d\d):(\d\d):(\d\d)", value.strip()).groups()  # type: ignore[union-attr]
            value = {"days": int(days), "hours": int(hours), "minutes": int(minutes), "seconds": int(seconds)}
        return (value if isinstance(value, timedelta) else timedelta(**value)).total_seconds()  # type: ignore[arg-type]
    except (AttributeError, TypeError) as e:
        raise ConfigError(
            f"trainer.max_time={value!r}: give DD:HH:MM:SS (00:12:00:00 is 12 hours) or a dict such as {{minutes: 30}}"
        ) from e


def read_max_steps(value: int | None) -> int:
    """``trainer.max_steps``: -1 (or null) for no limit, else the optimizer steps to train."""
    steps = -1 if value is None else int(value)
    if steps < -1:
        raise ConfigError(f"trainer.max_steps={value}: -1 (no limit) or a number of optimizer steps")
    return steps


def read_val_check_interval(trainer: dict) -> int | float:
    """``trainer.val_check_interval``: a fraction of an epoch (float, up to 1.0) or a number of
    training batches (int), with validation every epoch (``check_val_every_n_epoch: 1``)."""
    value = trainer.get("val_check_interval")
    value = 1.0 if value is None else value
    valid = (isinstance(value, int) and value >= 1) or (isinstance(value, float) and 0 < value <= 1)
    if not valid:
        raise ConfigError(f"trainer.val_check_interval={value!r}: a fraction in (0, 1] or a number of batches")
    if value != 1.0 and int(trainer.get("check_val_every_n_epoch") or 1) != 1:
        raise ConfigError(
            f"trainer.val_check_interval={value!r} with trainer.check_val_every_n_epoch="
            f"{trainer.get('check_val_every_n_epoch')!r}: the reference validates inside every epoch only"
        )
    return value


def val_check_batch(interval: int | float, num_batches: int) -> int:
    """After how many training batches a validation comes, as Lightning counts it."""
    if isinstance(interval, int):
        if interval > num_batches:
            raise ConfigError(
                f"trainer.val_check_interval={interval}: more than the {num_batches} training batches of an epoch"
            )
        return interval
    return max(1, int(num_batches * interval))


def read_limit(value, key: str) -> int | float:
    """``limit_*_batches`` read as Lightning reads it: a fraction in [0, 1], else a whole count (4.0 -> 4)."""
    if value is None:
        return 1.0
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if 0 <= value <= 1:
        return float(value)
    if value % 1 == 0:
        return int(value)
    raise ConfigError(f"trainer.{key}={value!r}: use a fraction in [0, 1] or a whole number of batches")


def count_batches(length: int, limit: int | float, key: str) -> int:
    """Batches per epoch under a ``limit_*_batches``, with Lightning's error for a fraction that leaves none."""
    n = int(length * limit) if isinstance(limit, float) else min(length, limit)
    if n == 0 and isinstance(limit, float) and limit > 0 and length > 0:
        raise ConfigError(
            f"trainer.{key}={limit}: {limit} of {length} batches is less than one batch; "
            f"use at least {1 / length:.3g} or a whole number of batches"
        )
    return n
