"""What the reference loop refuses: every setting it would otherwise ignore, named before any work,
with what it mirrors instead, so that it never silently does something other than Lightning."""

from __future__ import annotations

from project.errors import ConfigError
from project.reference.early_stopping import is_early_stopping, user_callbacks
from project.reference.settings import HONOURED_TRAINER_KEYS, read_loggers
from project.reference.top_k import HONOURED as TOP_K_KEYS

# Config groups of Lightning callbacks that the reference loop mirrors only at their defaults.
CALLBACK_GROUPS = ("checkpoint", "last_checkpoint", "lr_monitor")
# What a refusal lists as what the reference can mirror instead.
MIRRORED = (
    "trainer."
    + ", trainer.".join(sorted(HONOURED_TRAINER_KEYS - {"logger", "callbacks"}))
    + "; trainer.logger with a TensorBoardLogger, a CSVLogger or both"
    + "; trainer.callbacks with EarlyStopping; checkpoint."
    + ", checkpoint.".join(TOP_K_KEYS)
    + "; the rest of "
    + ", ".join(CALLBACK_GROUPS)
    + " at their defaults; preemption; the model.* and data.* options. No other trainer.callbacks."
)


def refuse_unsupported(config: dict, defaults: dict) -> None:
    """Refuse every setting the reference loop would otherwise ignore, naming it."""
    unsupported = [
        f"trainer.{k}={v!r}"
        for k, v in config["trainer"].items()
        if k not in HONOURED_TRAINER_KEYS and v != defaults["trainer"].get(k)
    ]
    for group in CALLBACK_GROUPS:
        followed = TOP_K_KEYS if group == "checkpoint" else ()
        unsupported += [
            f"{group}.{k}={v!r}" for k, v in config[group].items() if v != defaults[group].get(k) and k not in followed
        ]
    unsupported += [f"trainer.callbacks={c!r}" for c in user_callbacks(config["trainer"]) if not is_early_stopping(c)]
    try:
        read_loggers(config["trainer"].get("logger"))
    except ConfigError:
        logger = config["trainer"].get("logger")
        unsupported.append(f"trainer.logger={logger!r} (the reference loop writes TensorBoard and CSV logs)")
    if unsupported:
        raise ConfigError(
            "The reference loop does not implement these settings, so it cannot match Lightning: "
            + ", ".join(sorted(unsupported))
            + ". Remove them from the config to compare. It mirrors: "
            + MIRRORED
        )
