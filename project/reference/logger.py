"""TensorBoard logging for the reference loop, with Lightning's tags and step numbering, so a
reference run and a Lightning run overlay curve on curve."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch.utils.hooks import RemovableHandle
from torch.utils.tensorboard import SummaryWriter

from project import monitoring
from project.epoch_report import EpochReport


def next_version_dir(parent: Path) -> Path:
    """``parent/version_N`` with the next free N, as Lightning's TensorBoardLogger numbers runs."""
    versions = [int(p.name.split("_")[1]) for p in parent.glob("version_*") if p.name.split("_")[1].isdigit()]
    return parent / f"version_{max(versions, default=-1) + 1}"


class ReferenceLogger:
    """Scalars, pictures and the HPARAMS entry of one reference run; without a ``log_dir`` (the ranks
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
    ):
        self.log_dir = log_dir
        # purge_step: a resumed run hides what the interrupted one logged from that step on
        self.writer = SummaryWriter(str(log_dir), purge_step=purge_step) if log_dir is not None else None
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
            if not module.training or self.writer is None:
                return
            self.pictures.log_inputs(self.writer, inputs[0], self.steps)
            if self.logs_step(self.steps):
                self.writer.add_scalar(tag, optimizer.param_groups[0]["lr"], self.steps)

        self._hooks.append(net.register_forward_pre_hook(batch_start))

    def logs_step(self, step: int) -> bool:
        """Lightning's ``log_every_n_steps``: steps 0-based, logged at every n-th."""
        return self.every > 0 and (step + 1) % self.every == 0

    def log_hparams(self, hparams: dict) -> None:
        if self.writer is not None:
            monitoring.log_hparams(self.writer, hparams)

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
        """A validation or test epoch's report: its scalars at ``step``, its pictures at the steps done."""
        self._scalars(report.values, step)
        if self.writer is not None:
            report.write_pictures(self.writer, self.steps)

    def close(self) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks.clear()
        if self.writer is not None:
            self.writer.close()

    def _scalars(self, values: dict, step: int) -> None:
        if self.writer is None:
            return
        for tag, value in {**values, "epoch": self.epoch}.items():
            self.writer.add_scalar(tag, float(value), step)
        self.writer.flush()


@contextmanager
def closed_on_error(logger: ReferenceLogger) -> Iterator[None]:
    """The logger's events flushed and its hooks removed when training stops on an error or a signal."""
    try:
        yield
    except BaseException:
        logger.close()
        raise
