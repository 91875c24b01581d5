"""The reference trainer's progress display, as Lightning's shows it: tqdm bars on a terminal; on a
stdout that is not one (a log file), the plain lines of ``project.progress`` that twinloop's
``LogLinesProgressBar`` writes for Lightning. Rank 0 shows it; the other ranks show nothing."""

from __future__ import annotations

from collections.abc import Iterable

import torch

from project.progress import CountedBatches, EvaluationLines, LineProgress, ProgressBar, stdout_is_terminal
from project.reference.settings import TrainerSettings


class ReferenceProgress:
    """Bars or lines for one reference run; ``lines`` are the fit's (None until ``start_fit``)."""

    def __init__(self, settings: TrainerSettings):
        self.enabled = settings.enable_progress_bar and settings.processes.is_global_zero
        self.every = settings.log_every_n_steps or 50
        self.lines: LineProgress | None = None
        self.step_lines = False

    def start_fit(self, total_steps: int, max_epochs: int, first_step: int) -> None:
        """The progress lines of a fit (epoch lines under the bars too)."""
        self.lines = LineProgress(self.every, total_steps, max_epochs, first_step) if self.enabled else None
        self.step_lines = self.lines is not None and not stdout_is_terminal()  # under bars, epoch lines only

    def loader(self, loader: Iterable, desc: str, total: int) -> Iterable:
        """The loader as a progress bar over the batches the loop will take, a fresh bar every pass;
        on a stdout that is not a terminal, no bar: the training batches are counted for the fit's
        lines, and a validate or test run gets lines of its own."""
        if not self.enabled:
            return loader
        if stdout_is_terminal():
            return ProgressBar(loader, f"reference {desc}", total)
        if desc == "train" and self.lines is not None:
            return CountedBatches(loader, self.lines.add_samples)
        if desc in ("validate", "test"):
            return CountedBatches(loader, EvaluationLines(desc, self.every, total).on_batch)
        return loader  # the validation inside fit: its results go into the epoch line

    def on_step(self, step: int, epoch: int, loss: torch.Tensor) -> None:
        """After optimizer step ``step``: a line every N steps where stdout is not a terminal."""
        if self.step_lines:
            assert self.lines is not None  # step_lines only with lines
            self.lines.on_step(step, epoch, lambda: float(loss))

    def on_epoch_end(self, epoch: int, step: int, results: dict) -> None:
        if self.lines is not None:
            self.lines.on_epoch_end(epoch, step, results)
