"""TensorBoard and CSV logging for the reference loop, with Lightning's tags and step numbering, so a
reference run and a Lightning run overlay curve on curve."""

from __future__ import annotations

import csv
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
import yaml
from torch.utils.hooks import RemovableHandle
from torch.utils.tensorboard import SummaryWriter

from project import monitoring
from project.epoch_report import EpochReport


def next_version_dir(parent: Path) -> Path:
    """``parent/version_N`` with the next free N, as Lightning's TensorBoardLogger numbers runs."""
    versions = [int(p.name.split("_")[1]) for p in parent.glob("version_*") if p.name.split("_")[1].isdigit()]
    return parent / f"version_{max(versions, default=-1) + 1}"


class CSVRows:
    """``metrics.csv`` as Lightning's CSVLogger writes it: one row per log call with its ``step``, the
    columns the sorted names of every value logged, and ``hparams.yaml`` beside it. The file is written
    whole each time (a kill leaves the last one). A resumed run (``purge_step``) keeps the rows the
    interrupted one wrote before that step."""

    def __init__(self, log_dir: Path, purge_step: int | None = None):
        self.path = log_dir / "metrics.csv"
        self.rows: list[dict] = []
        if purge_step is not None and self.path.is_file():
            with self.path.open(newline="") as f:
                self.rows = [row for row in csv.DictReader(f) if int(row["step"]) < purge_step]

    def add(self, values: dict, step: int) -> None:
        row = {k: v.item() if isinstance(v, torch.Tensor) else v for k, v in values.items()}
        self.rows.append({**row, "step": step})

    def save(self) -> None:
        if not self.rows:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_suffix(".csv.partial")
        with partial.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=sorted(set().union(*self.rows)))
            writer.writeheader()
            writer.writerows(self.rows)
        os.replace(partial, self.path)

    def save_hparams(self, hparams: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        (self.path.parent / "hparams.yaml").write_text(yaml.safe_dump(hparams))


class ReferenceLogger:
    """Scalars, pictures and the HPARAMS entry of one reference run, to TensorBoard, to a CSV file or
    both (``kinds``: the run's loggers); scalars go to each, pictures to TensorBoard. Without a ``log_dir`` (the ranks
    other than 0 of a distributed run) it writes nothing but still computes what it would log, since
    computing a metric under a process group is a collective that every rank must join.

    Steps count optimizer steps, as Lightning's ``global_step`` does: a per-step scalar goes at the
    index of its step, epoch and validation scalars at the index of the epoch's last step, and a
    ``validate``/``test`` run (which counts no steps) at 0.
    """

    def __init__(
        self,
        log_dir: Path | None,
        log_every_n_steps: int,
        pictures: monitoring.PictureLog,
        purge_step: int | None = None,
        kinds: tuple[str, ...] = ("tensorboard",),
    ):
        self.log_dir = log_dir
        # purge_step: a resumed run hides what the interrupted one logged from that step on
        writes = log_dir is not None
        self.writer = SummaryWriter(str(log_dir), purge_step=purge_step) if writes and "tensorboard" in kinds else None
        self.csv = CSVRows(log_dir, purge_step) if log_dir is not None and "csv" in kinds else None
        self.every = log_every_n_steps
        self.pictures = pictures
        self.steps = 0
        self.epoch = 0
        self._hooks: list[RemovableHandle] = []

    def watch(self, net: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
        """Hooks (not loop code) for what Lightning logs at the start of each training batch: the
        learning rate on logging steps (LearningRateMonitor) and, once, the augmented inputs."""
        tag = f"lr-{type(optimizer).__name__}"

        @torch.compiler.disable  # run as it is, outside a compiled network's graph: it writes to the logger
        def batch_start(module, inputs):
            if not module.training:
                return
            if self.writer is not None:
                self.pictures.log_inputs(self.writer, inputs[0], self.steps)
            if self.logs_step(self.steps):
                self._scalars({tag: optimizer.param_groups[0]["lr"]}, self.steps, with_epoch=False)

        self._hooks.append(net.register_forward_pre_hook(batch_start))

    def logs_step(self, step: int) -> bool:
        """Lightning's ``log_every_n_steps``: steps 0-based, logged at every n-th."""
        return self.every > 0 and (step + 1) % self.every == 0

    def log_hparams(self, hparams: dict) -> None:
        if self.writer is not None:
            monitoring.log_hparams(self.writer, hparams)
        if self.csv is not None:
            self.csv.save_hparams(hparams)

    def on_step(self, loss: torch.Tensor) -> None:
        if self.logs_step(self.steps):
            self._scalars({"train/loss": loss}, self.steps)
        self.steps += 1

    @property
    def drawing(self) -> monitoring.PictureLog | None:
        """The pictures to draw for an epoch report: only where they are written."""
        return self.pictures if self.writer is not None else None

    def on_epoch_end(self, epoch: int, train: dict) -> None:
        """The epoch's training metrics, at its last step (its validation's report is logged before)."""
        self._scalars(train, self.steps - 1)
        self.epoch = epoch + 1

    def log_report(self, report: EpochReport, step: int = 0) -> None:
        """A validation or test epoch's report: its scalars at ``step``, its pictures at the steps done.
        The accuracies per class go first, in a call of their own, as the Lightning module logs them."""
        if report.per_class:
            self._scalars(report.per_class, step, with_epoch=False)
        self._scalars({**report.shown, **report.scalars}, step)
        if self.writer is not None:
            report.write_pictures(self.writer, self.steps)

    def close(self) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks.clear()
        if self.writer is not None:
            self.writer.close()
        if self.csv is not None:
            self.csv.save()

    def _scalars(self, values: dict, step: int, with_epoch: bool = True) -> None:
        """One log call, as Lightning's loggers take it: the values and (but for the learning rate,
        which LearningRateMonitor logs itself) the epoch."""
        values = {**values, "epoch": self.epoch} if with_epoch else values
        if self.writer is not None:
            for tag, value in values.items():
                self.writer.add_scalar(tag, float(value), step)
            self.writer.flush()
        if self.csv is not None:
            self.csv.add(values, step)
            if with_epoch:  # the learning rate's row goes out with the loss that follows it
                self.csv.save()


@contextmanager
def closed_on_error(logger: ReferenceLogger) -> Iterator[None]:
    """The logger's events flushed and its hooks removed when training stops on an error or a signal."""
    try:
        yield
    except BaseException:
        logger.close()
        raise
