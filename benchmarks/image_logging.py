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
    """Time of each whole epoch (training, validation and everything logged at its end): wall
    time, or the CPU time of all this process's threads, which other processes disturb less."""

    def __init__(self, clock):
        self.clock = clock
        self.times: list[float] = []
        self._start = 0.0

    def on_train_epoch_start(self, trainer, pl_module):
        self._start = self.clock()

    def on_train_epoch_end(self, trainer, pl_module):
        self.times.append(self.clock() - self._start)


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


def epoch_times(args: list[str], images_every: int, clock=time.perf_counter) -> list[float]:
    with tempfile.TemporaryDirectory() as tmp:
        cli = TwinloopCLI(
            args=[
                *args,
                f"--model.pictures.every_n_epochs={images_every}",
                f"--trainer.logger.init_args.save_dir={tmp}",
                "--trainer.enable_progress_bar=false",
                "--trainer.enable_model_summary=false",
                "--trainer.enable_checkpointing=false",
            ],
            run=False,
        )
        timer = EpochTimer(clock)
        cli.trainer.callbacks.append(timer)
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    return timer.times


def main() -> None:
    warnings.filterwarnings("ignore")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--clock",
        choices=["wall", "cpu"],
        default="wall",
        help="epoch time as wall time, or as CPU time of the process (all threads)",
    )
    opts, rest = parser.parse_known_args()
    rest = rest or ["-c", "configs/digits.yaml"]
    with PictureTimer() as pictures:
        direct = epoch_times(rest, images_every=1)
    clock = time.perf_counter if opts.clock == "wall" else time.process_time
    share = pictures.total / sum(direct)  # pictures are drawn inside the epochs they belong to
    on, off, ratios = [], [], []
    for repeat in range(opts.repeats):
        # images_every=1 is the default: every validation epoch. Each repeat runs both back to back
        # (order alternating) and gives one ratio, so slow drift of the machine cancels out. The
        # first epoch of each run (one-off start-up costs) is left out.
        times = {}
        for images_every in (1, 0) if repeat % 2 == 0 else (0, 1):
            times[images_every] = epoch_times(rest, images_every, clock)[1:]
        on += times[1]
        off += times[0]
        ratios.append(statistics.median(times[1]) / statistics.median(times[0]))
    t_on, t_off = statistics.median(on), statistics.median(off)
    print(f"config: {' '.join(rest)}; epoch times as {opts.clock} time")
    print(f"median epoch time with images every epoch: {t_on * 1000:.1f} ms ({len(on)} epochs)")
    print(f"median epoch time without images:          {t_off * 1000:.1f} ms ({len(off)} epochs)")
    spread = ", ".join(f"{100 * (r - 1):+.1f}%" for r in sorted(ratios))
    print(
        f"image logging cost, A/B: {100 * (statistics.median(ratios) - 1):+.1f}% of epoch time "
        f"(median of {len(ratios)} back-to-back pairs: {spread})"
    )
    print(
        f"image logging cost, direct: {100 * share:.1f}% of the run's time "
        f"({1000 * pictures.total / len(direct):.1f} ms per epoch)"
    )
    sys.stdout.flush()


if __name__ == "__main__":
    main()
