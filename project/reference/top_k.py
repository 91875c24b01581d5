"""Which checkpoints the reference loop keeps as files: the rule of Lightning's ``ModelCheckpoint``
(``save_top_k``, ``monitor``, ``mode``, ``filename``, ``every_n_train_steps``), written out, with the
same file names and its state under the same checkpoint key, so that a resumed run keeps its files."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from project.errors import ConfigError

# The arguments of the CLI's `checkpoint` group that the reference follows; the others stay at their defaults.
HONOURED = ("save_top_k", "monitor", "mode", "filename", "auto_insert_metric_name", "every_n_train_steps")


@dataclass
class TopK:
    """Keep the ``save_top_k`` best validations by ``monitor`` (-1: all of them; 0: none), each in a
    file named from ``filename``: a new one must beat the worst kept (strictly), which it replaces.
    Candidates come after each validation, or with ``every_n_train_steps`` after every N-th optimizer
    step only, with the last validation's value (none before the first validation)."""

    dirpath: Path
    monitor: str = "val/acc"
    mode: str = "max"
    save_top_k: int = 1
    filename: str | None = None
    auto_insert_metric_name: bool = True
    every_n_train_steps: int | None = None
    best_k_models: dict[str, Tensor] = field(default_factory=dict)  # path -> score
    kth_best_model_path: str = ""
    best_model_path: str = ""
    last_saved_step: int = 0  # one file a step at most, as ModelCheckpoint saves (not in its state)

    @classmethod
    def from_config(cls, checkpoint: dict, dirpath: Path) -> TopK:
        """From the config's ``checkpoint`` group; refused, naming the value, what the rule cannot follow."""
        args = {k: checkpoint[k] for k in HONOURED if k in checkpoint}
        monitor, mode = args.get("monitor"), args.get("mode", "max")
        if not (isinstance(monitor, str) and monitor.startswith("val/")):
            raise ConfigError(f"checkpoint.monitor={monitor!r}: the reference loop keeps checkpoints by a val/ metric")
        if mode not in ("min", "max"):
            raise ConfigError(f"checkpoint.mode={mode!r}: not 'min' or 'max'")
        if int(args.get("save_top_k", 1)) < -1:
            raise ConfigError(f"checkpoint.save_top_k={args['save_top_k']!r}: -1 (all), 0 (none) or more")
        if (args.get("every_n_train_steps") or 0) < 0:
            raise ConfigError(f"checkpoint.every_n_train_steps={args['every_n_train_steps']!r}: 0 or more")
        return cls(dirpath, **args)

    @property
    def state_key(self) -> str:
        """The key under which Lightning's ``ModelCheckpoint`` (the CLI's ``checkpoint``) keeps its state."""
        steps = self.every_n_train_steps or 0
        triggers = {"every_n_train_steps": steps, "every_n_epochs": 0 if steps else 1, "train_time_interval": None}
        return "ModelCheckpoint" + repr({"monitor": self.monitor, "mode": self.mode, **triggers})

    def at_validation(self) -> bool:
        """Whether the candidates come after each validation (else after every N-th step)."""
        return not self.every_n_train_steps

    def at_step(self, step: int, metrics: dict) -> bool:
        """Whether optimizer step ``step`` (counted from 1) brings a candidate."""
        n = self.every_n_train_steps or 0
        return n > 0 and step % n == 0 and self.monitor in metrics

    def consider(self, metrics: dict, epoch: int, step: int) -> tuple[Path | None, Path | None]:
        """The file to save now (None: this candidate is not in the top k, or this step has its file
        already), and the file it replaces."""
        if step == self.last_saved_step:
            return None, None
        current = metrics.get(self.monitor)
        if current is None:
            raise ConfigError(f"checkpoint.monitor={self.monitor!r} is not among the validation's {sorted(metrics)}")
        current = torch.as_tensor(current)
        better = torch.lt if self.mode == "min" else torch.gt
        if self.save_top_k == 0 or (
            0 < self.save_top_k <= len(self.best_k_models)
            and not better(current, self.best_k_models[self.kth_best_model_path])
        ):
            return None, None
        k = len(self.best_k_models) + 1 if self.save_top_k == -1 else self.save_top_k
        replaced = self.kth_best_model_path if len(self.best_k_models) == k else None
        if replaced is not None:
            del self.best_k_models[replaced]
        if torch.isnan(current):  # kept as the worst score there is
            current = torch.tensor(math.inf if self.mode == "min" else -math.inf)
        path = self._free_path({**metrics, "epoch": torch.tensor(epoch), "step": torch.tensor(step)}, replaced)
        self.best_k_models[path] = current
        worst, best = (max, min) if self.mode == "min" else (min, max)
        if len(self.best_k_models) == k:
            self.kth_best_model_path = worst(self.best_k_models, key=self.best_k_models.__getitem__)
        self.best_model_path = best(self.best_k_models, key=self.best_k_models.__getitem__)
        self.last_saved_step = step
        return Path(path), Path(replaced) if replaced else None

    def _free_path(self, metrics: dict, replaced: str | None) -> str:
        """The file name, with ``-v1``, ``-v2``, ... while a file not about to be replaced has it."""
        path, version = self.format_name(metrics), 1
        while Path(path).exists() and path != replaced:
            path, version = self.format_name(metrics, version), version + 1
        return path

    def format_name(self, metrics: dict, version: int | None = None) -> str:
        """``dirpath/<filename with the metrics filled in>[-vN].ckpt``, as ModelCheckpoint names it: each
        ``{name}`` or ``{name:format}`` is that metric (0 where there is none), ``name=`` before it with
        ``auto_insert_metric_name``."""
        name = self.filename or "{epoch}-{step}"
        values = dict(metrics)
        for group in sorted(re.findall(r"(\{.*?)[:\}]", name), key=len, reverse=True):
            key = group[1:]
            if self.auto_insert_metric_name:
                name = name.replace(group, key + "={" + key)
            name = name.replace(group, f"{{0[{key}]")
            values.setdefault(key, torch.tensor(0))
        name = name.format(values) + (f"-v{version}" if version is not None else "")
        return str(self.dirpath / f"{name}.ckpt")

    def state_dict(self) -> dict:
        """ModelCheckpoint's state, its keys and meaning."""
        best_score = self.best_k_models.get(self.best_model_path)
        return {
            "monitor": self.monitor,
            "best_model_score": best_score,
            "best_model_path": self.best_model_path,
            "current_score": None,
            "dirpath": str(self.dirpath),
            "best_k_models": dict(self.best_k_models),
            "kth_best_model_path": self.kth_best_model_path,
            "kth_value": self.best_k_models.get(self.kth_best_model_path),
            "last_model_path": "",
        }

    def load_state_dict(self, state: dict) -> None:
        """The files kept so far, when they are in this run's folder (as ModelCheckpoint restores them)."""
        if state.get("dirpath") == str(self.dirpath):
            self.best_k_models = dict(state.get("best_k_models", {}))
            self.kth_best_model_path = state.get("kth_best_model_path", "")
        self.best_model_path = state.get("best_model_path", "")


def read_checkpoint_args(checkpoint: dict | None) -> dict:
    """The ``checkpoint`` group's keys that the reference follows, checked before any work."""
    args = {k: v for k, v in (checkpoint or {}).items() if k in HONOURED}
    args = {"monitor": "val/acc", "mode": "max", **args}
    TopK.from_config(args, Path("."))
    return args
