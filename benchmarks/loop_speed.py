"""Training speed of the Lightning path, the reference loop and a bare textbook loop, side by side.

All of them run in ONE process on one config, interleaved and repeated (the order rotates every
round), so a noisy machine slows them alike. Each run is timed from the first training batch of
epoch 1 to the first of the last epoch: whole epochs in steady state, validation included. The
table also splits that time into the median step inside an epoch and the median epoch end (an
epoch's last step, its validation, logging and checkpoints).

    python benchmarks/loop_speed.py                                   # digits on the CPU, small
    python benchmarks/loop_speed.py -c configs/gpu_fast.yaml --epochs 4 --repeats 3

On a machine that other jobs share, `--clock cpu --threads 1` times the process's own CPU time on one
thread instead of the wall clock, which the others' load does not stretch. Other options are
`twinloop` config overrides. The bare loop is the textbook one: an fp32
DataLoader loop with `zero_grad`, forward, loss, `backward`, `step` and a plain evaluation pass,
no metrics, logging or checkpoints, and none of the config's fast-path switches (no compile,
channels_last, mixed precision or fused optimizer). `lightning_bare` runs the same parts in
Lightning's Trainer with no logger, checkpoints or callbacks: what Lightning itself costs a step,
against which the project's own overhead is measured. It prints a table and writes JSON (default:
benchmarks/results/loop_speed-<device>.json).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from datetime import date
from pathlib import Path

import lightning
import lightning as L
import torch
from torch.utils.flop_counter import FlopCounterMode

from project.callbacks import PredictionCSV
from project.cli import TwinloopCLI
from project.reference.config import load_run

QUIET = ["--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
CLOCK = CLOCKS["wall"]


class Stopwatch:
    """Timestamps of every training forward of a network: the clock the three loops share."""

    def __init__(self, net: torch.nn.Module, device: torch.device):
        self.times: list[float] = []
        self.device = device
        # Outside any graph of a compiled network: traced, dynamo would compile it again at every step.
        self.handle = net.register_forward_pre_hook(torch.compiler.disable(self._stamp))

    def _stamp(self, module, inputs) -> None:
        if module.training and torch.is_grad_enabled():
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)  # the time a step really ends, not when it was queued
            self.times.append(CLOCK())

    def result(self, epochs: int) -> dict:
        self.handle.remove()
        t, n = self.times, len(self.times) // epochs  # every epoch takes the same number of batches
        start, end = t[n], t[(epochs - 1) * n]
        steps = (epochs - 2) * n
        epochs_timed = range(1, epochs - 1)
        inside = [t[e * n + k + 1] - t[e * n + k] for e in epochs_timed for k in range(n - 1)]
        epoch_ends = [t[(e + 1) * n] - t[(e + 1) * n - 1] for e in epochs_timed]
        return {
            "seconds": end - start,
            "ms_per_step": 1000 * (end - start) / steps,
            "steps": steps,
            "ms_per_step_inside_epochs": 1000 * statistics.median(inside) if inside else None,
            "ms_per_epoch_end": 1000 * statistics.median(epoch_ends),
        }


def run_lightning(args: list[str], epochs: int, workdir: Path) -> dict:
    cli = TwinloopCLI(
        args=[*args, f"--trainer.max_epochs={epochs}", f"--trainer.default_root_dir={workdir}"], run=False
    )
    callbacks = cli.trainer.callbacks  # as `twinloop fit` has them: the predictions CSV is predict's
    callbacks[:] = [c for c in callbacks if not isinstance(c, PredictionCSV)]
    clock = Stopwatch(cli.model.net, cli.trainer.strategy.root_device)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    return clock.result(epochs)


def run_reference(args: list[str], epochs: int, workdir: Path) -> dict:
    run = load_run([*args, f"--trainer.max_epochs={epochs}"], workdir / "reference")
    clock = Stopwatch(run.model.net, run.trainer.settings.device)
    run.trainer.fit(run.model, run.datamodule)
    return clock.result(epochs)


TEXTBOOK = ["--data.device_cache=false", "--model.network.compile=null", "--model.network.channels_last=false"]


def textbook_parts(args: list[str]):
    """The bare loop's data loaders, network, criterion and optimizer, without the fast-path switches."""
    run = load_run([*args, *TEXTBOOK])
    dm, model, device = run.datamodule, run.model, run.trainer.settings.device
    dm.prepare_data()
    dm.setup("fit")
    net = model.net.to(device)
    optimizer = model.optimizer_factory(net.parameters())
    if optimizer.defaults.get("fused"):  # torch's default implementation, as a textbook builds it
        optimizer = type(optimizer)(net.parameters(), **{**optimizer.defaults, "fused": None})
    return dm.train_dataloader(), dm.val_dataloader(), net, model.criterion, optimizer, device


def run_bare(args: list[str], epochs: int, workdir: Path) -> dict:
    """The textbook loop: fp32, DataLoaders, no metrics, no logging."""
    train_loader, val_loader, net, criterion, optimizer, device = textbook_parts(args)
    clock = Stopwatch(net, device)
    for _ in range(epochs):
        net.train()
        for x, y in train_loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            optimizer.zero_grad()
            loss = criterion(net(x), y)
            loss.backward()
            optimizer.step()
        net.eval()
        with torch.no_grad():
            for x, y in val_loader:
                criterion(net(x.to(device, non_blocking=True)), y.to(device, non_blocking=True))
    return clock.result(epochs)


class BareModule(L.LightningModule):
    """The bare loop's step as a LightningModule: forward and loss, nothing logged or measured."""

    def __init__(self, net: torch.nn.Module, criterion: torch.nn.Module, optimizer: torch.optim.Optimizer):
        super().__init__()
        self.net, self.criterion, self.optimizer = net, criterion, optimizer

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return self.criterion(self.net(x), y)

    def validation_step(self, batch, batch_idx: int) -> None:
        x, y = batch
        self.criterion(self.net(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return self.optimizer


def run_lightning_bare(args: list[str], epochs: int, workdir: Path) -> dict:
    """The bare loop's parts in Lightning's Trainer, with no logger, checkpoints or callbacks."""
    train_loader, val_loader, net, criterion, optimizer, device = textbook_parts(args)
    clock = Stopwatch(net, device)
    trainer = L.Trainer(
        accelerator=device.type,
        devices=1,
        max_epochs=epochs,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=workdir,
    )
    trainer.fit(BareModule(net, criterion, optimizer), train_loader, val_loader)
    return clock.result(epochs)


LOOPS = {"lightning": run_lightning, "reference": run_reference, "bare": run_bare, "lightning_bare": run_lightning_bare}


def flops_per_training_image(args: list[str]) -> float | None:
    """Forward FLOPs of one image, times 3 (forward + backward), counted by torch's FlopCounterMode."""
    run = load_run(args)
    dm = run.datamodule
    x = torch.zeros(2, dm.in_channels, *dm.input_hw)
    net = run.model.net.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        net(x)
    total = counter.get_total_flops()
    return 3 * total / 2 if total else None


def peak_flops(device: torch.device, dtype: torch.dtype) -> float:
    """Measured matmul throughput of this device in ``dtype`` (FLOP/s): the denominator of MFU."""
    n = 4096 if device.type == "cuda" else 1024
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    reps = 50 if device.type == "cuda" else 5
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return 2 * n**3 * reps / (time.perf_counter() - start)


def measure(args: list[str], epochs: int, repeats: int, loops: list[str], on_round=None, minutes=None) -> dict:
    """``repeats`` rounds of every loop; ``on_round(results)`` after each. With ``minutes``, no round
    starts once that much time has passed (the first always runs), so a time-boxed run ends whole."""
    results: dict[str, list[dict]] = {name: [] for name in loops}
    order, start = list(loops), time.monotonic()
    for round_ in range(repeats):
        if round_ and minutes is not None and time.monotonic() - start > 60 * minutes:
            print(f"--max_minutes {minutes:g} reached: {round_} of {repeats} rounds done", file=sys.stderr)
            break
        for name in order[round_ % len(order) :] + order[: round_ % len(order)]:
            with tempfile.TemporaryDirectory() as workdir:
                if torch.cuda.is_available():
                    torch.cuda.reset_peak_memory_stats()
                result = LOOPS[name](args, epochs, Path(workdir))
                if torch.cuda.is_available():
                    result["peak_memory_mb"] = torch.cuda.max_memory_allocated() / 2**20
                results[name].append(result)
            print(f"round {round_ + 1}/{repeats} {name:<10} {result['ms_per_step']:.3f} ms/step", file=sys.stderr)
        if on_round is not None:
            on_round(results)
    return results


def setting(args: list[str]) -> dict:
    """What the figures are measured on and against: the device, precision, images per step, FLOPs."""
    probe = load_run(args)
    dm, settings = probe.datamodule, probe.trainer.settings
    dtype = {"32-true": torch.float32, "bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}[settings.precision]
    device = settings.device
    return {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({os.cpu_count()} cores)",
        "precision": settings.precision,
        "images_per_step": dm.batch_size * settings.accumulate_grad_batches,
        "flops_per_training_image": flops_per_training_image(args),
        "measured_peak_flops": peak_flops(device, dtype),
    }


def summarize(args: list[str], results: dict, epochs: int, context: dict) -> dict:
    images_per_step, flops, peak = (
        context[k] for k in ("images_per_step", "flops_per_training_image", "measured_peak_flops")
    )
    loops = {}
    for name, runs in results.items():
        ms = statistics.median(r["ms_per_step"] for r in runs)
        loops[name] = {
            "ms_per_step": ms,
            "img_per_s": images_per_step * 1000 / ms,
            "ms_per_step_inside_epochs": statistics.median(r["ms_per_step_inside_epochs"] for r in runs),
            "ms_per_epoch_end": statistics.median(r["ms_per_epoch_end"] for r in runs),
            "runs_ms_per_step": [r["ms_per_step"] for r in runs],
            "peak_memory_mb": max((r.get("peak_memory_mb", 0) for r in runs), default=None) or None,
        }
    for loop in loops.values():
        loop["mfu"] = loop["img_per_s"] * flops / peak if flops else None
    return {
        "date": date.today().isoformat(),
        "device": context["device"],
        "torch": torch.__version__,
        "lightning": lightning.__version__,
        "python": platform.python_version(),
        "command": "python benchmarks/loop_speed.py " + " ".join(sys.argv[1:]),
        "clock": "cpu" if CLOCK is time.process_time else "wall",
        "torch_threads": torch.get_num_threads(),
        "config_args": args,
        "precision": context["precision"],
        "epochs": epochs,
        "repeats": min(len(runs) for runs in results.values()),
        "images_per_step": images_per_step,
        "flops_per_training_image": flops,
        "measured_peak_flops": peak,
        "loops": loops,
        "ratios": {
            "lightning/reference": loops["lightning"]["img_per_s"] / loops["reference"]["img_per_s"],
            "reference/bare": loops["reference"]["img_per_s"] / loops["bare"]["img_per_s"],
            "lightning/bare": loops["lightning"]["img_per_s"] / loops["bare"]["img_per_s"],
        },
        "lightning_overhead_ms_per_step": loops["lightning"]["ms_per_step"] - loops["reference"]["ms_per_step"],
        # what Lightning's Trainer itself costs a step, with nothing of the project's in it
        "lightning_own_ms_per_step": (
            loops["lightning_bare"]["ms_per_step"] - loops["bare"]["ms_per_step"] if "lightning_bare" in loops else None
        ),
    }


def print_table(summary: dict) -> None:
    print(
        f"{summary['device']}, torch {summary['torch']}, lightning {summary['lightning']}, {summary['precision']}, "
        f"{summary['clock']} clock, {summary['torch_threads']} torch threads"
    )
    print(f"{'loop':<16}{'img/s':>9}{'ms/step':>9}{'in epoch':>10}{'epoch end':>11}{'MFU':>8}{'peak MB':>9}")
    for name, loop in summary["loops"].items():
        mfu = f"{100 * loop['mfu']:.1f}%" if loop["mfu"] is not None else "-"
        mem = f"{loop['peak_memory_mb']:.0f}" if loop["peak_memory_mb"] else "-"
        print(
            f"{name:<16}{loop['img_per_s']:>9.0f}{loop['ms_per_step']:>9.3f}{loop['ms_per_step_inside_epochs']:>10.3f}"
            f"{loop['ms_per_epoch_end']:>11.2f}{mfu:>8}{mem:>9}"
        )
    for key, value in summary["ratios"].items():
        print(f"{key:<20} {value:.3f}")
    print(f"Lightning overhead per step over the reference: {summary['lightning_overhead_ms_per_step']:+.3f} ms")
    if summary["lightning_own_ms_per_step"] is not None:
        print(f"Lightning's own cost per step (lightning_bare - bare): {summary['lightning_own_ms_per_step']:+.3f} ms")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=15, help="epochs per run (at least 3; the first is warm-up)")
    parser.add_argument("--repeats", type=int, default=5, help="runs of each loop, interleaved")
    parser.add_argument(
        "--json", help="where to write the results (default: benchmarks/results/loop_speed-<device>.json)"
    )
    parser.add_argument(
        "--max_minutes",
        type=float,
        help="start no new round after this many minutes (the JSON is rewritten after every round)",
    )
    parser.add_argument("--clock", choices=CLOCKS, default="wall", help="wall clock, or this process's CPU time")
    parser.add_argument("--threads", type=int, help="torch's intra-op threads (default: torch's choice)")
    parser.add_argument(
        "--skip_lightning_bare",
        action="store_true",
        help="leave out the bare loop in Lightning (where its DataLoader epochs are slow and its figure not needed)",
    )
    opts, rest = parser.parse_known_args(argv)
    global CLOCK
    CLOCK = CLOCKS[opts.clock]
    if opts.threads:
        torch.set_num_threads(opts.threads)
    if opts.epochs < 3:
        parser.error("--epochs must be at least 3")
    args = [*QUIET, "--model.pictures.every_n_epochs=0", *(rest or ["-c", "configs/digits.yaml"])]
    warnings.filterwarnings("ignore")
    loops = [name for name in LOOPS if not (opts.skip_lightning_bare and name == "lightning_bare")]
    default = Path("benchmarks/results") / f"loop_speed-{'gpu' if torch.cuda.is_available() else 'cpu'}.json"
    out = Path(opts.json) if opts.json else default
    out.parent.mkdir(parents=True, exist_ok=True)
    context = setting(args)

    def write(results: dict) -> dict:  # after every round: a run stopped later keeps what it measured
        summary = summarize(args, results, opts.epochs, context)
        out.write_text(json.dumps(summary, indent=2))
        return summary

    summary = write(measure(args, opts.epochs, opts.repeats, loops, write, opts.max_minutes))
    print_table(summary)
    print(f"wrote {out}")
    return summary


if __name__ == "__main__":
    main()
