"""What the Trainer arguments mean to the reference loop: the honoured keys, read as Lightning reads
them, and the refusal of everything else, so that the loop never silently does something else."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch

from project.errors import ConfigError

# Trainer keys the reference loop carries out. Any other key must keep its default.
HONOURED_TRAINER_KEYS = {
    "max_epochs",
    "accelerator",
    "devices",
    "precision",
    "accumulate_grad_batches",
    "gradient_clip_val",
    "gradient_clip_algorithm",
    "limit_train_batches",
    "limit_val_batches",
    "limit_test_batches",
    "check_val_every_n_epoch",
    "default_root_dir",  # through the logger's save_dir, which the CLI sets from it
    "deterministic",
    "benchmark",
    "log_every_n_steps",
    # no effect on the numbers: the sanity pass runs under isolate_rng, bars and summaries only print
    "num_sanity_val_steps",
    "enable_progress_bar",
    "enable_model_summary",
    "logger",
    "enable_checkpointing",
}
PRECISIONS = {
    "32": "32-true",
    "32-true": "32-true",
    "bf16": "bf16-mixed",
    "bf16-mixed": "bf16-mixed",
    "16": "16-mixed",
    "16-mixed": "16-mixed",
}
# Config groups of Lightning callbacks that the reference loop mirrors only at their defaults.
CALLBACK_GROUPS = ("checkpoint", "last_checkpoint", "lr_monitor")


@dataclass
class TrainerSettings:
    """The honoured trainer keys, checked and normalised."""

    max_epochs: int = 1000
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    precision: str = "32-true"
    accumulate_grad_batches: int = 1
    gradient_clip_val: float | None = None
    gradient_clip_algorithm: str = "norm"
    limit_train_batches: int | float = 1.0
    limit_val_batches: int | float = 1.0
    limit_test_batches: int | float = 1.0
    check_val_every_n_epoch: int = 1
    deterministic: bool | str = False  # True, False or "warn"
    benchmark: bool | None = None  # cudnn.benchmark; None leaves it as it is
    log_every_n_steps: int = 50
    enable_progress_bar: bool = True
    enable_checkpointing: bool = True
    log_root: Path = Path("lightning_logs")  # the TensorBoard logger's save_dir / name

    @classmethod
    def from_config(cls, trainer: dict) -> TrainerSettings:
        device = read_device(trainer.get("accelerator"), trainer.get("devices", "auto"))
        clip_val = trainer.get("gradient_clip_val")
        every = trainer.get("log_every_n_steps")
        logger = trainer.get("logger")
        logger_args = logger.get("init_args", {}) if isinstance(logger, dict) else {}
        return cls(
            max_epochs=read_max_epochs(trainer.get("max_epochs")),
            device=device,
            precision=read_precision(trainer.get("precision"), device),
            accumulate_grad_batches=int(trainer.get("accumulate_grad_batches") or 1),
            gradient_clip_val=float(clip_val) if clip_val else None,
            gradient_clip_algorithm=trainer.get("gradient_clip_algorithm") or "norm",
            limit_train_batches=read_limit(trainer.get("limit_train_batches"), "limit_train_batches"),
            limit_val_batches=read_limit(trainer.get("limit_val_batches"), "limit_val_batches"),
            limit_test_batches=read_limit(trainer.get("limit_test_batches"), "limit_test_batches"),
            check_val_every_n_epoch=int(trainer.get("check_val_every_n_epoch") or 1),
            deterministic=trainer.get("deterministic") or False,
            benchmark=trainer.get("benchmark"),
            log_every_n_steps=50 if every is None else int(every),
            enable_progress_bar=trainer.get("enable_progress_bar") is not False,
            enable_checkpointing=trainer.get("enable_checkpointing") is not False,
            log_root=Path(logger_args.get("save_dir") or ".") / (logger_args.get("name") or ""),
        )


def read_device(accelerator: str | None, devices) -> torch.device:
    """One CPU or one GPU; anything Lightning would spread over several devices is refused."""
    name = str(accelerator or "auto")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    name = {"gpu": "cuda"}.get(name, name)
    if name not in ("cpu", "cuda"):
        raise ConfigError(f"trainer.accelerator={accelerator!r}: the reference loop runs on cpu or cuda")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("trainer.accelerator=cuda, but CUDA is not available on this machine")
    one_device = devices in (1, "1", [0]) or (devices == "auto" and (name == "cpu" or torch.cuda.device_count() == 1))
    if not one_device:
        raise ConfigError(
            f"trainer.devices={devices!r}: Lightning would use "
            f"{'every GPU' if devices in ('auto', -1, '-1') else 'several devices'} here, and the reference "
            "loop runs on one device: set --trainer.devices=1"
        )
    return torch.device(name)


def read_precision(precision: str | int | None, device: torch.device) -> str:
    name = PRECISIONS.get(str(precision or "32-true"))
    if name is None:
        raise ConfigError(f"trainer.precision={precision!r}: use 32-true, bf16-mixed or 16-mixed")
    if name == "16-mixed" and device.type == "cpu":
        # Lightning's own substitution: CPUs have no fp16 autocast worth the name.
        warnings.warn("16-mixed is not supported on the CPU; using bf16-mixed, as Lightning does", stacklevel=2)
        return "bf16-mixed"
    return name


def read_max_epochs(value: int | None) -> int:
    """Lightning's default of 1000 when unset; -1 (no limit) has no end the reference could mirror."""
    if value is None:
        return 1000
    if int(value) < 0:
        raise ConfigError(
            f"trainer.max_epochs={value}: Lightning trains without an epoch limit then, "
            "and the reference loop needs one; set a number of epochs"
        )
    return int(value)


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


def refuse_unsupported(config: dict, defaults: dict) -> None:
    """Refuse every setting the reference loop would otherwise ignore, naming it."""
    unsupported = [
        f"trainer.{k}={v!r}"
        for k, v in config["trainer"].items()
        if k not in HONOURED_TRAINER_KEYS and v != defaults["trainer"].get(k)
    ]
    for group in CALLBACK_GROUPS:
        unsupported += [f"{group}.{k}={v!r}" for k, v in config[group].items() if v != defaults[group].get(k)]
    logger = config["trainer"].get("logger")
    if not (isinstance(logger, dict) and logger.get("class_path", "").endswith("TensorBoardLogger")):
        unsupported.append(f"trainer.logger={logger!r} (the reference loop logs to TensorBoard)")
    if unsupported:
        raise ConfigError(
            "The reference loop does not implement these settings, so it cannot match Lightning: "
            + ", ".join(sorted(unsupported))
            + ". Remove them from the config to compare."
        )
