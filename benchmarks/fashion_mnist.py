"""Fashion-MNIST with the shipped recipe, end to end, as a user runs it: `fit` (timed, wall clock),
then `test` once on the official 10,000-image test split with the best checkpoint (chosen on the
validation split), in either loop or both; then the two loops' checkpoints compared bit for bit.

    apt-get install dataset-fashion-mnist      # the four IDX files, no network needed
    python benchmarks/fashion_mnist.py --root /usr/share/datasets/fashion-mnist --loops lightning reference

Other options are `twinloop` config overrides. It writes the commands, the machine, the wall time,
the test accuracy and the training curve (val/acc, val/loss, train/loss_epoch per epoch, with the
elapsed time) to JSON (default: benchmarks/results/fashion_mnist.json) and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

REPO = Path(__file__).resolve().parents[1]
COMMANDS = {"lightning": "twinloop", "reference": "twinloop-reference"}


def run(command: list[str]) -> tuple[str, float]:
    print("$", " ".join(command), flush=True)
    start = time.perf_counter()
    done = subprocess.run(command, stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"{command[0]} exited with {done.returncode}:\n{done.stdout[-3000:]}")
    return done.stdout, seconds


def curve(log_dir: Path) -> list[dict]:
    """Per epoch: val/acc, val/loss and train/loss_epoch, and the seconds since the first event."""
    events = EventAccumulator(str(log_dir))
    events.Reload()
    tags = ("val/acc", "val/loss", "train/loss_epoch")
    series = {tag: events.Scalars(tag) for tag in tags if tag in events.Tags()["scalars"]}
    start = min(e.wall_time for values in series.values() for e in values)
    rows = []
    for i, acc in enumerate(series["val/acc"]):
        row = {"epoch": i, "step": acc.step, "elapsed_s": round(acc.wall_time - start, 1)}
        row.update({tag: round(values[i].value, 5) for tag, values in series.items() if i < len(values)})
        rows.append(row)
    return rows


def one_loop(loop: str, config: str, overrides: list[str], run_name: str) -> dict:
    exe = str(Path(sys.executable).with_name(COMMANDS[loop]))
    fit = [exe, "fit", "-c", config, *overrides, "--run_name", run_name]
    _, fit_seconds = run(fit)
    run_dir = Path("lightning_logs") / ("reference" if loop == "reference" else "") / run_name
    (best,) = sorted((run_dir / "checkpoints").glob("best*.ckpt"))
    test = [exe, "test", "-c", config, *overrides, "--ckpt_path", str(best)]
    out, _ = run(test)
    acc = re.findall(r"test/acc\s*[│|]?\s*([0-9.]+)", out)
    if not acc:
        sys.exit(f"no test/acc in the output of {' '.join(test)}:\n{out[-2000:]}")
    return {
        "fit": " ".join(fit),
        "fit_seconds": round(fit_seconds, 1),
        "test": " ".join(test),
        "test_acc": float(acc[-1]),
        "best_checkpoint": str(best),
        "curve": curve(run_dir),
    }


def same_weights(a: str, b: str) -> dict:
    """Max |difference| of every tensor the two checkpoints hold under state_dict (and, with EMA,
    current_model_state)."""
    ca, cb = torch.load(a, weights_only=True), torch.load(b, weights_only=True)
    out = {}
    for key in ("state_dict", "current_model_state"):
        if key in ca:
            out[key] = max((ca[key][k].double() - cb[key][k].double()).abs().max().item() for k in ca[key])
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", required=True, help="folder of the four Fashion-MNIST IDX files")
    parser.add_argument("-c", "--config", default=str(REPO / "configs" / "fashion_mnist.yaml"))
    parser.add_argument("--loops", nargs="+", choices=list(COMMANDS), default=["lightning"])
    parser.add_argument("--run_name", default=f"fashion-{date.today()}")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "fashion_mnist.json"))
    opts, overrides = parser.parse_known_args(argv)
    overrides = [f"--data.root={opts.root}", *overrides]
    results = {loop: one_loop(loop, opts.config, overrides, opts.run_name) for loop in opts.loops}
    report = {
        "date": str(date.today()),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}",
        "threads": torch.get_num_threads(),
        "loops": results,
    }
    if set(results) == set(COMMANDS):
        report["max_abs_diff_best"] = same_weights(*(r["best_checkpoint"] for r in results.values()))
    Path(opts.out).parent.mkdir(parents=True, exist_ok=True)
    Path(opts.out).write_text(json.dumps(report, indent=2) + "\n")
    for loop, r in results.items():
        print(f"\n{loop}: test/acc {r['test_acc']:.4f}, fit {r['fit_seconds'] / 60:.1f} min")
        print("epoch  val/acc  val/loss  train/loss  elapsed")
        for row in r["curve"]:
            print(
                f"{row['epoch']:>5}  {row['val/acc']:.4f}   {row['val/loss']:.4f}    "
                f"{row.get('train/loss_epoch', float('nan')):.4f}     {row['elapsed_s']:>6.0f} s"
            )
    if "max_abs_diff_best" in report:
        print("\nbest checkpoints, lightning vs reference, max |diff|:", report["max_abs_diff_best"])
    print(f"\nwritten: {opts.out}")


if __name__ == "__main__":
    main()
