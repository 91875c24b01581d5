"""Preemption: SIGTERM or SIGINT writes last.ckpt at the next optimizer step and exits 128 + the
signal; a restart with --ckpt_path last goes on at the next batch, and ends bit-identical to an
uninterrupted run (shuffling, augmentation, Dropout and 2 worker processes on), in both loops."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

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
    "--model.dropout=0.5",
    "--trainer.max_epochs=3",
    "--trainer.limit_train_batches=8",
    "--trainer.limit_val_batches=2",
    "--trainer.log_every_n_steps=1",
    "--model.log_images_every_n_epochs=0",
]


def twinloop(*args: str, command: str = "project") -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", command, "fit", *args], env=env, capture_output=True, text=True, timeout=300
    )


def last_checkpoint(run: str) -> dict:
    return torch.load(Path(run) / "checkpoints" / "last.ckpt", weights_only=True)


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{len(different)} tensors differ, first {different[0]}"


def logged_steps(run: str, tag: str = "train/loss") -> list[int]:
    events = EventAccumulator(run)
    events.Reload()
    return [e.step for e in events.Scalars(tag)]


def test_lightning_stops_mid_epoch_on_sigterm_and_resumes_at_the_next_batch():
    """SIGTERM in step 11 (epoch 1, batch 3): exit 143 with last.ckpt after batch 3; the restart goes on
    at batch 4 (step 12), ends with the uninterrupted weights, and logs every step once."""
    signal_at = (
        '--trainer.callbacks+={"class_path": "tests.reliability.signals.SignalAtStep", "init_args": {"step": 11}}'  # noqa: E501
    )
    full = twinloop(*RUN, "--run_name=full")
    cut = twinloop(*RUN, "--run_name=cut", signal_at)
    assert full.returncode == 0, full.stderr[-2000:]
    assert cut.returncode == 128 + signal.SIGTERM, cut.stderr[-2000:]
    written = "SIGTERM: checkpoint lightning_logs/cut/checkpoints/last.ckpt written at epoch 1, batch 3 (step 12)"
    assert written in cut.stderr
    stopped = last_checkpoint("lightning_logs/cut")
    assert (stopped["epoch"], stopped["global_step"], stopped["mid_epoch"]) == (1, 12, {"batches_done": 4})
    resumed = twinloop(*RUN, "--run_name=cut", "--ckpt_path=last")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming epoch 1 at batch 4 (step 12)" in resumed.stdout  # not from step 0
    full, cut = (last_checkpoint(f"lightning_logs/{r}")["state_dict"] for r in ("full", "cut"))
    assert_same_weights(full, cut)
    assert logged_steps("lightning_logs/cut") == logged_steps("lightning_logs/full") == list(range(24))


def test_the_reference_stops_mid_epoch_on_sigint_and_resumes_at_the_next_batch(capsys):
    """SIGINT in step 11: Preempted (exit 130) with last.ckpt after epoch 1's batch 3; `--ckpt_path last`
    goes on at batch 4 and ends with the uninterrupted weights, every step logged once."""
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
