"""Cost of TensorBoard image logging (input grid, confusion matrix, misclassified grid) per epoch.

Two measurements, side by side in one run:
- direct: the time spent inside the picture functions, timed around each call, as a share of the
  epoch time of the same run (robust on a busy machine);
- A/B: the same fit with pictures at the default frequency and with pictures off, alternated so
  machine noise hits both alike, as the ratio of median epoch times.

    .venv/bin/python benchmarks/image_logging.py [-c configs/digits.yaml] [--repeats 3] [overrides]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import warnings

from lightning.pytorch.callbacks import Callback

from project import monitoring
from project.cli import TwinloopCLI


class EpochTimer(Callback):
    """Wall time of each whole epoch: training, validation and everything logged at its end."""

    def __init__(self):
        self.times: list[float] = []
        self._start = 0.0

    def on_train_epoch_start(self, trainer, pl_module):
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module):
        self.times.append(time.perf_counter() - self._start)


class PictureTimer:
    """Wraps the picture functions of ``project.monitoring`` and adds up the time spent in them."""

    NAMES = ("input_grid", "confusion_matrix_png", "misclassified_png", "log_png")

    def __init__(self):
        self.total = 0.0
        self.originals = {name: getattr(monitoring, name) for name in self.NAMES}

    def __enter__(self):
        for name, fn in self.originals.items():
            setattr(monitoring, name, self._timed(fn))
        return self

    def __exit__(self, *exc):
        for name, fn in self.originals.items():
            setattr(monitoring, name, fn)

    def _timed(self, fn):
        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.total += time.perf_counter() - start

        return timed


def epoch_times(args: list[str], images_every: int) -> list[float]:
    with tempfile.TemporaryDirectory() as tmp:
        cli = TwinloopCLI(
            args=[
                *args,
                f"--model.log_images_every_n_epochs={images_every}",
                f"--trainer.logger.init_args.save_dir={tmp}",
                "--trainer.enable_progress_bar=false",
                "--trainer.enable_model_summary=false",
                "--trainer.enable_checkpointing=false",
            ],
            run=False,
        )
        timer = EpochTimer()
        cli.trainer.callbacks.append(timer)
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    return timer.times


def main() -> None:
    warnings.filterwarnings("ignore")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    opts, rest = parser.parse_known_args()
    rest = rest or ["-c", "configs/digits.yaml"]
    with PictureTimer() as pictures:
        direct = epoch_times(rest, images_every=1)
    share = pictures.total / sum(direct)  # pictures are drawn inside the epochs they belong to
    on, off = [], []
    for repeat in range(opts.repeats):
        # images_every=1 is the default: every validation epoch. The order alternates between
        # repeats, and the first epoch of each run (one-off start-up costs) is left out.
        for images_every in (1, 0) if repeat % 2 == 0 else (0, 1):
            (on if images_every else off).extend(epoch_times(rest, images_every)[1:])
    t_on, t_off = statistics.median(on), statistics.median(off)
    print(f"config: {' '.join(rest)}")
    print(f"median epoch time with images every epoch: {t_on * 1000:.1f} ms ({len(on)} epochs)")
    print(f"median epoch time without images:          {t_off * 1000:.1f} ms ({len(off)} epochs)")
    print(f"image logging cost, A/B: {100 * (t_on / t_off - 1):+.1f}% of epoch time")
    print(
        f"image logging cost, direct: {100 * share:.1f}% of the run's time "
        f"({1000 * pictures.total / len(direct):.1f} ms per epoch)"
    )
    sys.stdout.flush()


if __name__ == "__main__":
    main()
