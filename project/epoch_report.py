"""One epoch report for both loops: what a finished validation or test epoch shows.

``report_epoch`` does the epoch-end work once: the finite-loss check (before any checkpoint
can keep the epoch), the best-so-far update, the values for the progress bar, the other scalars,
the per-class accuracies and, when they are due, the pictures. The LightningModule hands the report
to ``self.log``; the reference trainer hands it to its logger. A new value or picture is a change
here only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import cast

from torch import Tensor
from torch.utils.tensorboard import SummaryWriter

from project.errors import check_finite_loss
from project.metrics import StageMetrics
from project.monitoring import PictureLog, log_png


@dataclass
class EpochReport:
    """The values of one finished evaluation epoch, by TensorBoard tag."""

    epoch: int
    shown: dict[str, Tensor] = field(default_factory=dict)  # the progress bar's: val/loss, val/acc
    scalars: dict[str, Tensor | float] = field(default_factory=dict)  # the other scalars
    per_class: dict[str, float] = field(default_factory=dict)  # val/acc_class/<name>
    pictures: dict[str, bytes] = field(default_factory=dict)  # tag -> PNG, when due and drawn
    improved: bool = False  # val/acc beat the best so far (strictly, as ModelCheckpoint counts)

    @property
    def values(self) -> dict[str, Tensor | float]:
        """Every scalar of the report."""
        return {**self.shown, **self.scalars, **self.per_class}

    def write_pictures(self, writer: SummaryWriter, step: int) -> None:
        for tag, png in self.pictures.items():
            log_png(writer, tag, png, step)


def report_epoch(
    metrics: StageMetrics, epoch: int, class_names: Sequence[str], pictures: PictureLog | None = None
) -> EpochReport:
    """The report of ``metrics``' finished epoch; with ``pictures`` (the process that writes them),
    the pictures that are due are drawn. Under a process group every rank calls it: it sums the
    metrics over the ranks."""
    if not metrics.detailed:  # a test epoch: its metrics, nothing more
        return EpochReport(epoch, scalars=dict(metrics.compute()))
    loss, acc = f"{metrics.stage}/loss", f"{metrics.stage}/acc"
    check_finite_loss(metrics.compute()[loss], f"the validation of epoch {epoch}")  # before any checkpoint
    improved = metrics.record_best(float(metrics.compute()[acc]))
    summary = metrics.epoch_summary(list(class_names))
    shown = {k: cast(Tensor, summary.pop(k)) for k in (loss, acc)}  # compute()'s tensors; acc_best is the float
    per_class = {k: float(summary.pop(k)) for k in list(summary) if k.startswith(f"{metrics.stage}/acc_class/")}
    drawn = pictures.validation_pngs(metrics, class_names, epoch) if pictures is not None else {}
    return EpochReport(epoch, shown, summary, per_class, drawn, improved)
