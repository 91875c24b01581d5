"""Preemption: SIGTERM or SIGINT writes last.ckpt at the next optimizer step and exits 128 + the
signal; a restart with --ckpt_path last goes on at the next batch, and ends bit-identical to an
uninterrupted run (shuffling, augmentation, Dropout and 2 worker processes on), in both loops."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from project.cli import main
from project.preemption import Preempted
from project.reference.cli import main as reference_main
from project.reference.config import load_run
from tests.helpers import FAST, REPO
from tests.reliability.signals import ReferenceSignalAtStep

pytestmark = pytest.mark.fit

RUN = [
    *FAST,
    "--data.augment=true",
    "--data.num_workers=2",
    "--model.network.dropout=0.5",
    "--trainer.max_epochs=3",
    "--trainer.limit_train_batches=8",
    "--trainer.limit_val_batches=2",
    "--trainer.log_every_n_steps=1",
    "--model.pictures.every_n_epochs=0",
]


def last_checkpoint(run: str) -> dict:
    return torch.load(Path(run) / "checkpoints" / "last.ckpt", weights_only=True)


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{len(different)} tensors differ, first {different[0]}"


def logged_steps(run: str, tag: str = "train/loss") -> list[int]:
    return [step for step, _ in logged(run, tag)]


def logged(run: str, tag: str) -> list[tuple[int, float]]:
    events = EventAccumulator(str(run))
    events.Reload()
    return [(e.step, e.value) for e in events.Scalars(tag)]


def assert_same_epoch_means(a: str, b: str) -> None:
    """The interrupted epochs' training means cover all their batches, as the uninterrupted run's do."""
    for tag in ("train/loss_epoch", "train/acc"):
        assert logged(a, tag) == logged(b, tag), tag


def test_the_reference_stops_mid_epoch_on_sigint_and_resumes_at_the_next_batch(capsys):
    """SIGINT in step 11: Preempted (exit 130) with last.ckpt after epoch 1's batch 3; `--ckpt_path last`
    goes on at batch 4 and ends with the uninterrupted weights and epoch means, every step logged once."""
    reference_main(["fit", *RUN, "--run_name=full"])
    run = load_run(RUN, Path("lightning_logs/reference/cut"), callbacks=[ReferenceSignalAtStep(11, signal.SIGINT)])
    with pytest.raises(Preempted) as stopped:
        run.trainer.fit(run.model, run.datamodule)
    assert stopped.value.code == 128 + signal.SIGINT
    checkpoint = last_checkpoint("lightning_logs/reference/cut")
    assert (checkpoint["epoch"], checkpoint["global_step"], checkpoint["mid_epoch"]) == (1, 12, {"batches_done": 4})
    capsys.readouterr()
    reference_main(["fit", *RUN, "--run_name=cut", "--ckpt_path=last"])
    assert "resuming from epoch 1, batch 4 (step 12)" in capsys.readouterr().out  # not from step 0
    full, cut = (last_checkpoint(f"lightning_logs/reference/{r}")["state_dict"] for r in ("full", "cut"))
    assert_same_weights(full, cut)
    steps = logged_steps("lightning_logs/reference/cut")
    assert steps == logged_steps("lightning_logs/reference/full") == list(range(24))
    assert_same_epoch_means("lightning_logs/reference/cut", "lightning_logs/reference/full")


CYCLES = [*RUN, "--trainer.max_epochs=5"]


def start(loop: str, *args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    command = "project" if loop == "lightning" else "project.reference"
    return subprocess.Popen(
        [sys.executable, "-m", command, "fit", *CYCLES, *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def global_step(last: Path) -> int:
    try:
        return torch.load(last, weights_only=True)["global_step"]
    except Exception:  # not there yet (it is replaced whole, never half-written)
        return -1


SIGNAL_AT_STEP_11 = (
    '--trainer.callbacks+={"class_path": "tests.reliability.signals.SignalAtStep", "init_args": {"step": 11}}'
)


@pytest.mark.slow
@pytest.mark.parametrize("loop", ["lightning", "reference"])
def test_three_stop_signals_and_restarts_lose_nothing(loop):
    """Three stops, each once the process has trained on: Lightning's first a SIGTERM it sends itself in
    step 11 (so mid-epoch: epoch 1, batch 3), then SIGINT and SIGTERM from outside. Each exits 128 +
    signal with a later last.ckpt; each restart resumes it (not from step 0); the run ends with the
    uninterrupted weights, and TensorBoard has every step once and the same epoch means."""
    runs = Path("lightning_logs") if loop == "lightning" else Path("lightning_logs/reference")
    last = runs / "cut" / "checkpoints" / "last.ckpt"
    (main if loop == "lightning" else reference_main)(["fit", *CYCLES, "--run_name=full"])
    steps = [0]
    for i, signum in enumerate([signal.SIGTERM, signal.SIGINT, signal.SIGTERM]):
        self_signal = i == 0 and loop == "lightning"
        victim = start(loop, "--run_name=cut", *(["--ckpt_path=last"] if i else [SIGNAL_AT_STEP_11] * self_signal))
        while not self_signal and global_step(last) <= steps[-1] and victim.poll() is None:
            time.sleep(0.02)
        if not self_signal:
            victim.send_signal(signum)
        out, err = victim.communicate(timeout=300)
        assert victim.returncode == 128 + signum, err[-2000:]
        assert f"{signal.Signals(signum).name}: checkpoint {last} written" in err
        assert i == 0 or f"(step {steps[-1]})" in out  # resumed where the last one stopped
        steps.append(global_step(last))
        assert steps[-1] > steps[-2]  # never backwards
        if self_signal:
            assert torch.load(last, weights_only=True)["mid_epoch"] == {"batches_done": 4}
            assert steps[-1] == 12 and "written at epoch 1, batch 3 (step 12)" in err
    final = start(loop, "--run_name=cut", "--ckpt_path=last")
    out, err = final.communicate(timeout=300)
    assert final.returncode == 0, err[-2000:]
    assert f"(step {steps[-1]})" in out
    a, b = (last_checkpoint(runs / r)["state_dict"] for r in ("full", "cut"))
    assert_same_weights(a, b)
    assert logged_steps(str(runs / "cut")) == list(range(40))
    assert logged(runs / "cut", "val/acc") == logged(runs / "full", "val/acc")
    assert_same_epoch_means(runs / "cut", runs / "full")


@pytest.mark.slow  # a real run signalled in its last batch: 10 s
def test_a_signal_in_an_epochs_last_batch_lets_the_epoch_end_and_keeps_its_checkpoint():
    """SIGTERM in step 7, epoch 0's last batch: its validation and last.ckpt happen, then exit 143 before epoch 1."""
    signal_at_7 = SIGNAL_AT_STEP_11.replace('"step": 11', '"step": 7')
    victim = start("lightning", "--run_name=cut", signal_at_7)
    out, err = victim.communicate(timeout=300)
    assert victim.returncode == 128 + signal.SIGTERM, err[-2000:]
    assert "SIGTERM: checkpoint lightning_logs/cut/checkpoints/last.ckpt written after epoch 0" in err
    checkpoint = last_checkpoint("lightning_logs/cut")
    assert (checkpoint["epoch"], checkpoint["global_step"], "mid_epoch" in checkpoint) == (0, 8, False)
    assert logged_steps("lightning_logs/cut", "val/acc") == [7]  # epoch 0 validated, epoch 1 never began


@pytest.mark.slow
@pytest.mark.parametrize("loop", ["lightning", "reference"])
def test_a_stop_signal_to_the_whole_process_group_reaches_the_training_process_only(loop):
    """A scheduler signals every process of a job, the data workers too (as Ctrl-C signals a terminal's
    whole process group): the workers leave the signal to the training process, which stops at the
    next step with last.ckpt and exit 143, where the workers used to die and the run with them."""
    runs = Path("lightning_logs") if loop == "lightning" else Path("lightning_logs/reference")
    last = runs / "cut" / "checkpoints" / "last.ckpt"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "project" if loop == "lightning" else "project.reference", "fit", *CYCLES]
    victim = subprocess.Popen(
        [*command, "--run_name=cut"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    while global_step(last) < 8 and victim.poll() is None:  # epoch 0 done: the workers are running
        time.sleep(0.02)
    os.killpg(victim.pid, signal.SIGTERM)  # the training process and its data workers
    _, err = victim.communicate(timeout=300)
    assert victim.returncode == 128 + signal.SIGTERM, err[-3000:]
    assert f"SIGTERM: checkpoint {last} written" in err
    assert "DataLoader worker" not in err
