"""Exact resume with every part of today's recipe on (EMA, a per-image policy, RandomErasing, MixUp
and CutMix, warm-up then cosine, no decay on norms and biases), in both loops: a stop inside an
epoch, then a SIGKILL of the resumed process, then a second resume; the run ends with the
uninterrupted run's weights and average, bit for bit."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from project.cli import main
from project.preemption import Preempted
from project.reference.cli import main as reference_main
from project.reference.config import load_run
from tests.equivalence.test_recipe import ALL
from tests.helpers import FAST, REPO
from tests.reliability.signals import ReferenceSignalAtStep

RUN = [
    *FAST,
    *ALL,
    "--data.num_workers=2",
    "--trainer.max_epochs=4",
    "--trainer.limit_train_batches=8",
    "--trainer.limit_val_batches=2",
    "--model.pictures.every_n_epochs=0",
    "--model.lr_scheduler.T_max=3",
]
SIGNAL_AT_STEP_11 = (
    '--trainer.callbacks+={"class_path": "tests.reliability.signals.SignalAtStep", "init_args": {"step": 11}}'
)


def start(loop: str, *args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    command = "project" if loop == "lightning" else "project.reference"
    return subprocess.Popen(
        [sys.executable, "-m", command, "fit", *RUN, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )


def read(path: Path) -> dict:
    try:
        return torch.load(path, weights_only=True)
    except Exception:  # not there yet (it is replaced whole, never half-written)
        return {"global_step": -1}


@pytest.mark.slow
@pytest.mark.parametrize("loop", ["lightning", "reference"])
def test_stop_inside_an_epoch_kill_9_and_resume_with_every_recipe_part(loop, capsys):
    runs = Path("lightning_logs") if loop == "lightning" else Path("lightning_logs/reference")
    last = runs / "cut" / "checkpoints" / "last.ckpt"
    (main if loop == "lightning" else reference_main)(["fit", *RUN, "--run_name=full"])
    # 1. a SIGTERM in step 11: last.ckpt inside epoch 1, after its batch 3
    if loop == "lightning":
        stopped = start(loop, "--run_name=cut", SIGNAL_AT_STEP_11)
        assert stopped.wait(timeout=300) == 128 + signal.SIGTERM
    else:
        run = load_run(RUN, runs / "cut", callbacks=[ReferenceSignalAtStep(11)])
        with pytest.raises(Preempted):
            run.trainer.fit(run.model, run.datamodule)
    checkpoint = read(last)
    assert (checkpoint["global_step"], checkpoint["mid_epoch"]) == (12, {"batches_done": 4})
    assert {"current_model_state", "averaging_state"} <= set(checkpoint)  # the average is in it
    # 2. resumed, then killed with SIGKILL once it has saved again (epoch 1's end, step 16)
    victim = start(loop, "--run_name=cut", "--ckpt_path=last")
    deadline = time.monotonic() + 300
    while read(last)["global_step"] <= 12 and victim.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    killed_at = read(last)["global_step"]
    assert victim.returncode == -signal.SIGKILL and 16 <= killed_at < 32  # killed mid-run
    # 3. resumed again, to the end
    capsys.readouterr()
    (main if loop == "lightning" else reference_main)(["fit", *RUN, "--run_name=cut", "--ckpt_path=last"])
    assert f"(step {killed_at})" in capsys.readouterr().out  # went on from the checkpoint, not from step 0
    full, cut = read(runs / "full" / "checkpoints" / "last.ckpt"), read(last)
    for key in ("state_dict", "current_model_state"):  # the average and the weights trained
        assert full[key].keys() == cut[key].keys()
        assert all(torch.equal(full[key][k], cut[key][k]) for k in full[key]), key
    assert not all(torch.equal(full["state_dict"][k], full["current_model_state"][k]) for k in full["state_dict"])
