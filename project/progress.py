"""Progress as plain lines, for log files: one line every N optimizer steps and one per epoch (a
validate, test or predict run: one every N batches), the same in both loops. A terminal gets tqdm
bars instead; a file would get every redraw of them."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable, Mapping

from tqdm import tqdm

# The validation results an epoch line shows, in this order (those the epoch has).
EPOCH_KEYS = ("val/loss", "val/acc", "val/acc_best")


def stdout_is_terminal() -> bool:
    return sys.stdout.isatty()


def duration(seconds: float) -> str:
    """``H:MM:SS``."""
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{secs:02d}"


class LineProgress:
    """Counts the steps and samples of one fit and writes its progress lines to stdout.

    ``steps`` in the lines are optimizer steps since the run began (a resumed run goes on counting),
    as in TensorBoard; samples per second and the ETA are measured in this process.
    """

    def __init__(
        self,
        every_n_steps: int,
        total_steps: float,
        max_epochs: int | None,
        first_step: int = 0,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.every_n_steps = max(1, every_n_steps)
        # Lightning's estimate is infinite for an open-ended run: no total and no ETA then
        self.total_steps = int(total_steps) if total_steps != float("inf") else None
        self.of_steps = f"/{self.total_steps}" if self.total_steps else ""
        self.of_epochs = f"/{max_epochs - 1}" if max_epochs and max_epochs > 0 else ""
        self.first_step = first_step
        self.clock = clock
        self.start = self.since = clock()
        self.samples = 0  # since the last step line

    def add_samples(self, n: int) -> None:
        self.samples += n

    def on_step(self, step: int, epoch: int, loss: Callable[[], float]) -> None:
        """After optimizer step ``step`` (counted from 1); ``loss()`` is read only for a line."""
        if step % self.every_n_steps and step != self.total_steps:
            return
        now = self.clock()
        rate = self.samples / max(now - self.since, 1e-9)
        done = step - self.first_step
        eta = ""
        if self.total_steps and done > 0:
            eta = f"  ETA {duration((now - self.start) / done * (self.total_steps - step))}"
        self.write(
            f"step {step}{self.of_steps}  epoch {epoch}{self.of_epochs}  loss {loss():.4f}  {rate:.0f} samples/s{eta}"
        )
        self.samples, self.since = 0, now

    def on_epoch_end(self, epoch: int, step: int, results: Mapping[str, float]) -> None:
        """After epoch ``epoch`` (from 0) and its validation, if it had one."""
        shown = "".join(f"  {k} {float(results[k]):.4f}" for k in EPOCH_KEYS if results.get(k) is not None)
        self.write(
            f"epoch {epoch}{self.of_epochs} done  step {step}{self.of_steps}{shown}  "
            f"elapsed {duration(self.clock() - self.start)}"
        )

    @staticmethod
    def write(line: str) -> None:
        print(line, flush=True)  # a redirected stdout is block-buffered: the line shows now


class EvaluationLines:
    """The lines of a validate, test or predict run: one every N batches and one at the last."""

    def __init__(self, stage: str, every_n_batches: int, total: int, clock: Callable[[], float] = time.monotonic):
        self.stage, self.every_n_batches, self.total, self.clock = stage, max(1, every_n_batches), total, clock
        self.start = self.since = clock()
        self.batches = self.samples = 0

    def on_batch(self, samples: int) -> None:
        self.batches, self.samples = self.batches + 1, self.samples + samples
        if self.batches % self.every_n_batches and self.batches != self.total:
            return
        now = self.clock()
        eta = (now - self.start) / self.batches * (self.total - self.batches)
        LineProgress.write(
            f"{self.stage} batch {self.batches}/{self.total}  {self.samples / max(now - self.since, 1e-9):.0f} "
            f"samples/s  ETA {duration(eta)}"
        )
        self.samples, self.since = 0, now


class ProgressBar:
    """An iterable shown as a progress bar, a new bar each time it is iterated."""

    def __init__(self, iterable: Iterable, desc: str, total: int):
        self.iterable, self.desc, self.total = iterable, desc, total

    def __iter__(self):
        yield from tqdm(self.iterable, desc=self.desc, leave=False, total=self.total, file=sys.stdout)  # as Lightning's


class CountedBatches:
    """An iterable of ``(x, y)`` batches that tells ``count`` each batch's number of samples, for the
    progress lines."""

    def __init__(self, iterable: Iterable, count: Callable[[int], None]):
        self.iterable, self.count = iterable, count

    def __iter__(self):
        for batch in self.iterable:
            self.count(len(batch[0]))
            yield batch
