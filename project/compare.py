"""``twinloop-compare -c CONFIG [overrides] [--report out.json]``: both loops, one config, every step.

It runs Lightning's Trainer and the reference loop from the same config, records through hooks
(never by editing either loop) the loss of every training batch and the parameters and BatchNorm
buffers after every optimizer step, then compares them, plus the optimizer state at the end and the
validation metrics of every epoch. It exits 0 only when the two loops are equivalent.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import socket
import subprocess
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from torch import Tensor

from project.checkpoint_io import read_checkpoint
from project.cli import TwinloopCLI
from project.errors import reported_as_exit
from project.recorder import Recorder, RecorderCallback
from project.reference.config import load_run, read_config
from project.reference.settings import read_processes, requested_processes


def logger_args(args: list[str], log_root: Path, name: str) -> list[str]:
    """Every logger of the config writes to ``log_root/name/lightning``."""
    where = {"save_dir": str(log_root), "name": name, "version": "lightning"}
    loggers = read_config(args)["trainer"].get("logger")
    if isinstance(loggers, list):
        loggers = [{**logger, "init_args": {**(logger.get("init_args") or {}), **where}} for logger in loggers]
        return [f"--trainer.logger={json.dumps(loggers)}"]
    return [f"--trainer.logger.init_args.{key}={value}" for key, value in where.items()]


def run_lightning(args: list[str], log_root: Path, name: str, distributed: bool = False) -> Recorder:
    recorder = Recorder()
    with warnings.catch_warnings():  # it is meant: the arguments come from this command, not sys.argv
        warnings.filterwarnings("ignore", message=".*LightningCLI's args parameter.*")
        warnings.filterwarnings("ignore", message=".*exists and is not empty.*")  # CSV beside TensorBoard: meant
        cli = TwinloopCLI(
            args=[
                *args,
                *([] if distributed else ["--trainer.devices=1"]),  # `auto` would take every GPU
                *logger_args(args, log_root, name),
            ],
            run=False,
        )
        cli.trainer.callbacks.append(RecorderCallback(recorder))  # type: ignore[attr-defined]  # set by a connector
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)  # under the CLI's warning filters too
    return recorder


def run_reference(args: list[str], log_dir: Path, ckpt_path: str | None = None) -> Recorder:
    recorder = Recorder()
    run = load_run(args, log_dir, callbacks=[RecorderCallback(recorder)])
    run.trainer.fit(run.model, run.datamodule, ckpt_path)
    return recorder


def from_resume_point(lit: Recorder, ckpt_path: str, check_val_every_n_epoch: int) -> Recorder:
    """What the uninterrupted Lightning run did from the step a checkpoint was written at on, with its
    steps counted from there: what a run resumed from that checkpoint must do."""
    checkpoint = read_checkpoint(ckpt_path)
    start = checkpoint["global_step"]
    first_epoch = checkpoint["epoch"] + (0 if "mid_epoch" in checkpoint else 1)
    part = Recorder()
    kept = [i for i, window in enumerate(lit.loss_windows) if window >= start]
    part.losses = [lit.losses[i] for i in kept]
    part.loss_windows = [lit.loss_windows[i] - start for i in kept]
    part.snapshots = [(step - start, tensors) for step, tensors in lit.snapshots if step > start]
    part.val = lit.val[sum((e + 1) % check_val_every_n_epoch == 0 for e in range(first_epoch)) :]
    part.final, part.steps = lit.final, lit.steps - start
    return part


@dataclass
class Comparison:
    atol: float
    steps: int = 0
    batches: int = 0
    max_loss_diff: float = 0.0
    max_step_tensor_diff: float = 0.0
    max_final_diff: dict[str, float] = field(default_factory=dict)
    val: list[tuple[dict, dict]] = field(default_factory=list)
    first_divergence: str | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def equivalent(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict:
        return {
            "equivalent": self.equivalent,
            "atol": self.atol,
            "optimizer_steps": self.steps,
            "training_batches": self.batches,
            "max_loss_diff": self.max_loss_diff,
            "max_step_tensor_diff": self.max_step_tensor_diff,
            "max_final_diff": self.max_final_diff,
            "validation": [{"epoch": i, "lightning": a, "reference": b} for i, (a, b) in enumerate(self.val)],
            "first_divergence": self.first_divergence,
            "problems": self.problems,
        }


def _maxdiff(a: Tensor, b: Tensor) -> float:
    if a.shape != b.shape:
        return math.inf
    return (a.double() - b.double()).abs().max().item() if a.numel() else 0.0


def compare(lit: Recorder, ref: Recorder, atol: float = 1e-6) -> Comparison:
    """Compare two recordings; the first step and tensor beyond ``atol`` is the divergence point."""
    c = Comparison(atol=atol, steps=min(lit.steps, ref.steps), batches=min(len(lit.losses), len(ref.losses)))
    if len(lit.losses) != len(ref.losses):
        c.problems.append(f"training batches differ: lightning {len(lit.losses)}, reference {len(ref.losses)}")
    if lit.steps != ref.steps:
        c.problems.append(f"optimizer steps differ: lightning {lit.steps}, reference {ref.steps}")
    # Where it happened, as (window, 0 for a loss in it / 1 for the tensors after its step): the
    # earliest position wins, so a loss that differs beats the update it feeds.
    first: tuple[float, int, str] | None = None

    def note(position: tuple[float, int], description: str) -> None:
        nonlocal first
        if first is None or position < first[:2]:
            first = (*position, description)

    for i, (a, b) in enumerate(zip(lit.losses, ref.losses)):
        d = _maxdiff(a, b)
        c.max_loss_diff = max(c.max_loss_diff, d)
        if d > atol:
            values = f"lightning {a.item():.8f}, reference {b.item():.8f}"
            note((lit.loss_windows[i], 0), f"training batch {i}: loss differs by {d:.3g} ({values})")
    if [s for s, _ in lit.snapshots] != [s for s, _ in ref.snapshots]:
        c.problems.append("per-step snapshots were taken at different steps")
    for (step, sa), (_, sb) in zip(lit.snapshots, ref.snapshots):
        for name in sa:
            d = _maxdiff(sa[name], sb[name]) if name in sb else math.inf
            c.max_step_tensor_diff = max(c.max_step_tensor_diff, d)
            if d > atol:
                note((step - 1, 1), f"optimizer step {step}: tensor {name} differs by {d:.3g}")
    for name, a in lit.final.items():
        d = _maxdiff(a, ref.final[name]) if name in ref.final else math.inf
        group = name.split(".")[0]
        c.max_final_diff[group] = max(c.max_final_diff.get(group, 0.0), d)
        if d > atol:
            c.problems.append(f"final {name} differs by {d:.3g}")
            note((math.inf, 1), f"end of training: tensor {name} differs by {d:.3g}")
    if len(lit.val) != len(ref.val):
        c.problems.append(f"validation epochs differ: lightning {len(lit.val)}, reference {len(ref.val)}")
    c.val = list(zip(lit.val, ref.val))
    for epoch, (lit_val, ref_val) in enumerate(c.val):
        for k in lit_val:
            if abs(lit_val[k] - ref_val[k]) > atol:
                c.problems.append(f"epoch {epoch}: {k} lightning {lit_val[k]:.8f} vs reference {ref_val[k]:.8f}")
    if c.max_loss_diff > atol:
        c.problems.append(f"per-batch losses differ by up to {c.max_loss_diff:.3g}")
    if c.max_step_tensor_diff > atol:
        c.problems.append(f"per-step tensors differ by up to {c.max_step_tensor_diff:.3g}")
    c.first_divergence = first[2] if first else None
    return c


def csv_problems(lightning_dir: Path, reference_dir: Path) -> list[str]:
    """Where the two runs' ``metrics.csv`` (written when a CSVLogger is configured) differ: the
    same rows, columns and values as text, or the first row that is not."""
    lit, ref = (
        list(csv.DictReader(path.open(newline=""))) if path.is_file() else None
        for path in (lightning_dir / "metrics.csv", reference_dir / "metrics.csv")
    )
    if lit is None and ref is None:
        return []
    if lit is None or ref is None:
        return [f"metrics.csv written by {'the reference' if lit is None else 'Lightning'} only"]
    for i, (a, b) in enumerate(zip(lit, ref)):
        if a != b:
            return [f"metrics.csv row {i} differs: lightning {a}, reference {b}"]
    return [] if len(lit) == len(ref) else [f"metrics.csv rows differ: lightning {len(lit)}, reference {len(ref)}"]


def format_table(c: Comparison) -> str:
    rows = [
        ("training batches compared", f"{c.batches}"),
        ("optimizer steps compared", f"{c.steps}"),
        ("max |Δ| per-batch loss", f"{c.max_loss_diff:.3g}"),
        ("max |Δ| params/buffers per step", f"{c.max_step_tensor_diff:.3g}"),
        *[(f"max |Δ| final {k}", f"{v:.3g}") for k, v in c.max_final_diff.items()],
    ]
    width = max(len(r[0]) for r in rows)
    lines = [f"{a:<{width}}  {b}" for a, b in rows]
    lines.append("")
    heads = ("lightning val/loss", "reference val/loss", "lightning val/acc", "reference val/acc")
    lines.append(f"{'epoch':<6}" + "".join(f"{h:>20}" for h in heads))
    for epoch, (a, b) in enumerate(c.val):
        lines.append(
            f"{epoch:<6}{a['val/loss']:>20.8f}{b['val/loss']:>20.8f}{a['val/acc']:>20.6f}{b['val/acc']:>20.6f}"
        )
    lines.append("")
    lines.append(f"first divergence: {c.first_divergence or 'none'} (tolerance {c.atol:g})")
    lines.append("EQUIVALENT" if c.equivalent else "NOT EQUIVALENT:\n  " + "\n  ".join(c.problems))
    return "\n".join(lines)


def unique_dir(parent: Path, name: str) -> str:
    candidate, k = name, 1
    while (parent / candidate).exists():
        candidate, k = f"{name}_{k}", k + 1
    return candidate


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog="twinloop-compare",
        description="Run Lightning and the reference loop on one config and compare them step by step. "
        "Other options are `twinloop` config options (-c CONFIG, --model.*, --data.*, --trainer.*).",
    )
    parser.add_argument("--report", help="write the comparison as JSON here")
    parser.add_argument(
        "--root",
        help="log root: runs go to ROOT/NAME/{lightning,reference} (default: --trainer.default_root_dir, else runs)",
    )
    parser.add_argument("--name", "--run_name", help="run name (default: the config's file name)")
    parser.add_argument("--atol", type=float, default=1e-6, help="largest |Δ| still counted as equal")
    parser.add_argument(
        "--resume_reference",
        metavar="CKPT",
        help="the reference loop resumes from CKPT (either loop's, written at an epoch's end or inside one) and "
        "is compared with the uninterrupted Lightning run from that step on",
    )
    opts, rest = parser.parse_known_args(argv)
    trainer = read_config(rest)["trainer"]
    if trainer.get("max_time") is not None:
        parser.error(
            f"--trainer.max_time {trainer['max_time']}: each loop stops on its own clock, so the two stop at "
            "different steps; compare them with a step budget (--trainer.max_steps). The test suite compares "
            "max_time on a clock that ticks once a step (tests/equivalence/test_step_budgets.py)"
        )
    processes = read_processes(trainer.get("strategy"), os.environ)
    # `devices: auto` stays one device here, as before: on a multi-GPU machine it would take them all
    wanted = 1 if str(trainer.get("devices", "auto")) == "auto" else requested_processes(trainer)
    if wanted > 1 and "WORLD_SIZE" not in os.environ:  # one process per device, as Lightning runs them
        return launch_on_this_node(argv, wanted, int(trainer.get("num_nodes") or 1))
    configs = [rest[i + 1] for i, a in enumerate(rest[:-1]) if a in ("-c", "--config")]
    configs += [a.split("=", 1)[1] for a in rest if a.startswith("--config=")]
    root = Path(opts.root or trainer.get("default_root_dir") or "runs")
    # (Under DDP only rank 0 writes: Lightning's logger and checkpoints, and the reference's, use its name.)
    if opts.name and (root / opts.name).exists() and processes.rank == 0:  # two runs' events in one folder would mix
        parser.error(f"--name {opts.name}: {root / opts.name} exists already; choose another name")
    name = opts.name or unique_dir(root, Path(configs[-1]).stem if configs else "compare")
    with reported_as_exit():
        lit = run_lightning(rest, root, name, processes.distributed)
        ref = run_reference(rest, root / name / "reference", opts.resume_reference)
        if opts.resume_reference:
            every = load_run(rest).trainer.settings.check_val_every_n_epoch
            lit = from_resume_point(lit, opts.resume_reference, every)
            print(f"reference resumed from {opts.resume_reference}: {lit.steps} optimizer steps after it compared")
    # Each rank compares what it saw (its own batches' losses, the shared weights); rank 0 reports.
    result = compare(lit, ref, opts.atol)
    if processes.rank == 0 and not opts.resume_reference:  # a resumed reference logs only from its step on
        result.problems += csv_problems(root / name / "lightning", root / name / "reference")
    if processes.rank != 0:
        for problem in result.problems:
            print(f"rank {processes.rank}: {problem}", file=sys.stderr)
        return 0 if result.equivalent else 1
    print(format_table(result))
    print(f"logs: {root / name}/{{lightning,reference}}  (tensorboard --logdir {root / name})")
    if opts.report:
        Path(opts.report).write_text(json.dumps(result.as_dict(), indent=2))
    return 0 if result.equivalent else 1


def launch_on_this_node(argv: list[str], processes: int, num_nodes: int) -> int:
    """Run this comparison once per device under torchrun on 127.0.0.1, each process both loops."""
    if num_nodes > 1:
        print(
            f"error: trainer.num_nodes={num_nodes}: start `torchrun --nnodes {num_nodes} --nproc_per_node N "
            "-m project.compare ...` on every node",
            file=sys.stderr,
        )
        return 2
    with socket.socket() as s:  # a free port for the rendezvous
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {"OMP_NUM_THREADS": "1", **os.environ}  # torchrun's own default, said here to keep it quiet
    command = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={processes}"]
    command += ["--master_addr=127.0.0.1", f"--master_port={port}", "-m", "project.compare", *argv]
    return subprocess.run(command, env=env).returncode


def entry_point() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry_point()
