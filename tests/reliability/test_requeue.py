"""SLURM requeue without SLURM: the job's environment variables set, a stand-in `scontrol` on PATH that
records its call, a real signal to a real `twinloop fit`; the requeued start finishes the run in the
job's own directory, bit-identical to an uninterrupted run."""

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
from tests.helpers import REPO
from tests.reliability.test_preemption import CYCLES, assert_same_weights, global_step, logged_steps

pytestmark = pytest.mark.fit

SLURM_JOB = {
    "SLURM_JOB_ID": "4242",
    "SLURM_JOB_NAME": "twinloop",
    "SLURM_NTASKS": "1",
    "SLURM_NTASKS_PER_NODE": "1",
    "SLURM_NNODES": "1",
    "SLURM_NODEID": "0",
    "SLURM_PROCID": "0",
    "SLURM_LOCALID": "0",
}


def slurm_fit(tmp_path: Path, *args: str) -> subprocess.Popen:
    """`twinloop fit` as a SLURM job step would start it, with `scontrol` a script that logs its arguments."""
    bin_dir = tmp_path / "bin"
    if not bin_dir.exists():
        bin_dir.mkdir()
        scontrol = bin_dir / "scontrol"
        scontrol.write_text(f'#!/bin/sh\necho "$@" >> {tmp_path / "scontrol.log"}\n')
        scontrol.chmod(0o755)
    env = {**os.environ, **SLURM_JOB, "PYTHONPATH": str(REPO), "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    command = [sys.executable, "-m", "project", "fit", *CYCLES, *args]
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def stop_after_first_checkpoint(tmp_path: Path, signum: int, *options: str) -> tuple[subprocess.Popen, str, str]:
    job = slurm_fit(tmp_path, *options)
    while global_step(LAST) < 0 and job.poll() is None:
        time.sleep(0.02)
    job.send_signal(signum)
    out, err = job.communicate(timeout=300)
    return job, out, err


LAST = Path("lightning_logs/slurm-4242/checkpoints/last.ckpt")


@pytest.mark.slow  # two real runs, a signal and a restart: 45 s on 2 cores
def test_the_requeue_signal_checkpoints_requeues_and_the_restart_finishes_the_run(tmp_path):
    """SIGUSR1 after epoch 0's checkpoint: last.ckpt in lightning_logs/slurm-4242, `scontrol requeue
    4242`, exit 138; the requeued start (`--ckpt_path last`) resumes it and ends with the uninterrupted
    run's weights, in the same directory (checkpoints, events, config), every step logged once."""
    main(["fit", *CYCLES, "--run_name=full"])
    job, out, err = stop_after_first_checkpoint(tmp_path, signal.SIGUSR1)
    assert job.returncode == 128 + signal.SIGUSR1, err[-2000:]
    assert "SLURM auto-requeueing enabled" in err  # Lightning's SLURM environment, with auto-requeue
    assert (tmp_path / "scontrol.log").read_text() == "requeue 4242\n"
    stopped = global_step(LAST)
    assert stopped > 0
    requeued = slurm_fit(tmp_path, "--ckpt_path=last")
    out, err = requeued.communicate(timeout=300)
    assert requeued.returncode == 0, err[-2000:]
    assert f"resuming {LAST} (step {stopped})" in out  # not from step 0
    assert (tmp_path / "scontrol.log").read_text() == "requeue 4242\n"  # once
    assert sorted(p.name for p in Path("lightning_logs").iterdir()) == ["full", "slurm-4242"]
    assert (LAST.parent.parent / "config.yaml").is_file()  # the config beside its checkpoints and events
    full = torch.load("lightning_logs/full/checkpoints/last.ckpt", weights_only=True)["state_dict"]
    assert_same_weights(full, torch.load(LAST, weights_only=True)["state_dict"])
    assert logged_steps("lightning_logs/slurm-4242") == list(range(40))


@pytest.mark.slow  # a real run, a signal and a requeue: 9 s
def test_sigterm_requeues_when_it_is_made_the_requeue_signal(tmp_path):
    """`--preemption.requeue_signal SIGTERM`: the scheduler's SIGTERM checkpoints, requeues, exits 143."""
    job, out, err = stop_after_first_checkpoint(tmp_path, signal.SIGTERM, "--preemption.requeue_signal=SIGTERM")
    assert job.returncode == 128 + signal.SIGTERM, err[-2000:]
    assert (tmp_path / "scontrol.log").read_text() == "requeue 4242\n"
    assert f"SIGTERM: checkpoint {LAST} written" in err
