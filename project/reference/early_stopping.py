"""Early stopping in the reference loop: the rule of Lightning's ``EarlyStopping`` callback, written
out, with its arguments read from the same ``trainer.callbacks`` entry and its state kept under the
same checkpoint key, so either loop resumes the other's count."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from project.errors import ConfigError

EARLY_STOPPING = "lightning.pytorch.callbacks.EarlyStopping"
# Arguments that change when or whether the rule runs, which the reference does only at their defaults.
FIXED = {"strict": True, "check_on_train_epoch_end": None}


@dataclass
class EarlyStop:
    """Stop when ``monitor`` has not improved by more than ``min_delta`` in ``patience`` validations
    in a row, or is not finite, or crossed a threshold. Checked once after each validation."""

    monitor: str
    min_delta: float = 0.0
    patience: int = 3
    mode: str = "min"
    check_finite: bool = True
    stopping_threshold: float | None = None
    divergence_threshold: float | None = None
    wait_count: int = 0
    stopped_epoch: int = 0

    def __post_init__(self) -> None:
        if self.mode not in ("min", "max"):
            raise ConfigError(f"EarlyStopping mode: {self.mode!r} is not 'min' or 'max'")
        self.best_score = torch.tensor(math.inf if self.mode == "min" else -math.inf)

    @classmethod
    def from_config(cls, init_args: dict) -> EarlyStop:
        unmirrored = [f"{k}={init_args[k]!r}" for k, v in FIXED.items() if init_args.get(k, v) != v]
        if unmirrored:
            raise ConfigError(f"EarlyStopping {', '.join(unmirrored)}: the reference loop mirrors it at its default")
        keys = ("min_delta", "patience", "mode", "check_finite", "stopping_threshold", "divergence_threshold")
        return cls(init_args["monitor"], **{k: init_args[k] for k in keys if k in init_args})

    def better(self, a: torch.Tensor, b: torch.Tensor | float) -> bool:
        return bool(a < b) if self.mode == "min" else bool(a > b)

    def gives_up(self, current: torch.Tensor) -> bool:
        """Not finite (when checked), better than the stopping threshold, or worse than the divergence one."""
        if self.check_finite and not torch.isfinite(current):
            return True
        if self.stopping_threshold is not None and self.better(current, self.stopping_threshold):
            return True
        return self.divergence_threshold is not None and self.better(-current, -self.divergence_threshold)

    def check(self, metrics: dict, epoch: int) -> bool:
        """After a validation: update the count with its ``monitor`` value; True to stop."""
        if self.monitor not in metrics:
            raise ConfigError(f"EarlyStopping monitor {self.monitor!r}: not among the metrics {sorted(metrics)}")
        current = torch.as_tensor(metrics[self.monitor]).squeeze()
        improvement_floor = current - (self.min_delta if self.mode == "max" else -self.min_delta)
        if self.gives_up(current):
            stop = True
        elif self.better(improvement_floor, self.best_score):
            stop, self.best_score, self.wait_count = False, current, 0
        else:
            self.wait_count += 1
            stop = self.wait_count >= self.patience
        if stop:
            self.stopped_epoch = epoch
        return stop

    @property
    def state_key(self) -> str:
        """Lightning's key for the callback's state in a checkpoint."""
        return f"EarlyStopping{ {'monitor': self.monitor, 'mode': self.mode} }"

    def state_dict(self) -> dict:
        return {
            "wait_count": self.wait_count,
            "stopped_epoch": self.stopped_epoch,
            "best_score": self.best_score,
            "patience": self.patience,
        }

    def load_state_dict(self, state: dict) -> None:
        self.wait_count, self.stopped_epoch = state["wait_count"], state["stopped_epoch"]
        self.best_score, self.patience = state["best_score"], state["patience"]


def user_callbacks(trainer: dict) -> list:
    """``trainer.callbacks`` as a list (it may be one callback, or none)."""
    given = trainer.get("callbacks") or []
    return given if isinstance(given, list) else [given]


def is_early_stopping(callback) -> bool:
    return isinstance(callback, dict) and callback.get("class_path") == EARLY_STOPPING


def read_early_stopping(trainer: dict) -> dict | None:
    """The arguments of the config's ``EarlyStopping`` callback (at most one), checked, or None."""
    found = [c for c in user_callbacks(trainer) if is_early_stopping(c)]
    if len(found) > 1:
        raise ConfigError("trainer.callbacks: more than one EarlyStopping; the reference loop mirrors one")
    if found and trainer.get("limit_val_batches") == 0:
        raise ConfigError("trainer.callbacks: EarlyStopping with trainer.limit_val_batches=0 has nothing to monitor")
    if not found:
        return None
    init_args = found[0].get("init_args") or {}
    EarlyStop.from_config(init_args)  # refused here, before any work, if it cannot be mirrored
    return init_args
