"""Where a training step's time goes, in the Lightning path, the reference loop and the bare loops.

A sampling profile of one process that runs ``loop_speed``'s loops interleaved, so the machine's
load falls on all of them alike, and a report that splits each loop's training-batch
samples into the network's forward, backward, the optimizer's arithmetic, metrics, data and the
rest ("loop overhead": the framework's or the loop's own Python), with the heaviest frames of that
rest. py-spy (``pip install py-spy``) does the sampling:

    py-spy record -r 500 -f raw -o /tmp/steps.raw -- python benchmarks/step_profile.py run
    python benchmarks/step_profile.py report /tmp/steps.raw

``run`` takes ``--epochs``, ``--repeats`` and ``twinloop`` config overrides, as ``loop_speed.py`` does.
"""

from __future__ import annotations

import argparse
import collections
import re
import sys
import tempfile
import warnings
from pathlib import Path

# A sample belongs to a loop's training batches when its stack holds all of that loop's frames.
LOOP_MARKERS = {
    "lightning": ("run_lightning (", "training_epoch_loop.py"),
    "reference": ("train_one_epoch",),
    "bare": ("run_bare",),
    "lightning_bare": ("run_lightning_bare (", "training_epoch_loop.py"),
}
SETUP = "textbook_parts"  # the bare loops' set-up (parsing the config, building the parts): no batch

# The innermost frame that matches decides the share (so metrics inside Lightning's closure count
# as metrics, not as the optimizer step that runs the closure).
SHARES = [
    ("forward (network)", ("project/models/", "torchvision/models/")),
    ("backward", ("run_backward",)),
    ("optimizer arithmetic", ("_single_tensor_", "_multi_tensor_", "_fused_")),
    ("metrics", ("project/metrics.py",)),
    ("criterion", ("torch/nn/modules/loss.py",)),
    ("data", ("project/data/", "project/augment.py", "torch/utils/data/")),
    ("zero_grad", ("zero_grad",)),
    ("finite-loss check", ("check_finite_loss",)),
]


def share_of(frames: list[str]) -> tuple[str, str | None]:
    for frame in reversed(frames):
        for share, patterns in SHARES:
            if any(p in frame for p in patterns):
                return share, None
    own = next((f for f in reversed(frames) if "lightning" in f or "project/" in f or "loop_speed" in f), frames[-1])
    return "loop overhead", re.sub(r"\s+", " ", own)


def report(raw: Path, top: int) -> None:
    """Print each loop's shares and its heaviest loop-overhead frames, from py-spy's raw output."""
    for loop, markers in LOOP_MARKERS.items():
        total, shares, overhead = 0, collections.Counter(), collections.Counter()
        for line in raw.read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            frames = stack.split(";")
            if not all(any(marker in f for f in frames) for marker in markers) or any(SETUP in f for f in frames):
                continue
            n = int(count)
            total += n
            share, frame = share_of(frames)
            shares[share] += n
            if frame:
                overhead[frame] += n
        if not total:
            continue
        print(f"{loop}: {total} samples in training batches")
        for share, n in shares.most_common():
            print(f"  {share:<22}{100 * n / total:6.1f}%")
        print("  heaviest loop-overhead frames:")
        for frame, n in overhead.most_common(top):
            print(f"    {100 * n / total:5.2f}%  {frame[:130]}")


def run(argv: list[str]) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from loop_speed import LOOPS, QUIET

    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--repeats", type=int, default=3)
    opts, rest = parser.parse_known_args(argv)
    args = [*QUIET, "--model.pictures.every_n_epochs=0", *(rest or ["-c", "configs/digits.yaml"])]
    warnings.filterwarnings("ignore")
    for _ in range(opts.repeats):
        for name, loop in LOOPS.items():
            with tempfile.TemporaryDirectory() as workdir:
                print(name, loop(args, opts.epochs, Path(workdir))["ms_per_step"], file=sys.stderr)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "report":
        parser = argparse.ArgumentParser()
        parser.add_argument("raw", type=Path)
        parser.add_argument("--top", type=int, default=12)
        opts = parser.parse_args(sys.argv[2:])
        report(opts.raw, opts.top)
    elif len(sys.argv) > 1 and sys.argv[1] == "run":
        run(sys.argv[2:])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
