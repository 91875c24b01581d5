"""Exact resume under DDP with DataLoader workers (issue 22, item 2): Lightning creates the training
loader's iterator, whose workers draw their first indices at once, before it tells the
DistributedSampler the epoch, and a resumed run does not create it again (Lightning#21938). The data
module sets the sampler to the resumed epoch first; without that, the resumed epoch took epoch 0's order."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.ddp_helpers import DDP, TIMEOUT, assert_same_tensors, checkpoint, environment, free_port, torchrun, twinloop

# 2 gloo processes, 2 workers each, crop-and-flip augmentation, a step line at every step
WORKERS = [*DDP, "--trainer.devices=2", "--data.num_workers=2", "--data.augment=true", "--trainer.log_every_n_steps=1"]


def logged_steps(events_file, tag: str) -> list[int]:
    return [step for step, _ in logged_values(events_file, tag)]


def logged_values(events, tag: str) -> list[tuple[int, float]]:
    """(step, value) of ``tag`` in an events file, or in a run directory's files together."""
    accumulator = EventAccumulator(str(events), size_guidance={"scalars": 0})
    accumulator.Reload()
    return [(e.step, e.value) for e in accumulator.Scalars(tag)]


@pytest.mark.slow  # three DDP launches with worker processes
def test_a_ddp_resume_with_workers_and_augmentation_is_exact(tmp_path):
    """3 epochs of 4 steps a rank in one go, and 2 then a resume for the third: the same weights and
    optimizer state, bit for bit; the resumed process trained the third epoch's 4 steps only."""
    twinloop(["fit", *WORKERS, "--trainer.max_epochs=3", "--trainer.default_root_dir=whole"], tmp_path)
    cut = [*WORKERS, "--trainer.default_root_dir=cut"]
    twinloop(["fit", *cut, "--trainer.max_epochs=2"], tmp_path)
    done = twinloop(["fit", *cut, "--trainer.max_epochs=3", "--ckpt_path=last"], tmp_path)
    run_dir = tmp_path / "cut/lightning_logs/version_0"
    assert "(step 8)" in done.stdout  # the run resumed from the second epoch's end
    (resumed_events,) = run_dir.glob(f"events.out.tfevents.*.{done.pid}.*")  # the resumed process's (rank 0's)
    assert logged_steps(resumed_events, "train/loss") == [8, 9, 10, 11]  # (logged before the step counts)
    a = checkpoint(tmp_path / "whole/lightning_logs/version_0/checkpoints/last.ckpt")
    b = checkpoint(run_dir / "checkpoints/last.ckpt")
    assert (a["epoch"], a["global_step"]) == (b["epoch"], b["global_step"]) == (2, 12)
    assert_same_tensors(a["state_dict"], b["state_dict"])
    assert_same_tensors(a["optimizer_states"][0]["state"][0], b["optimizer_states"][0]["state"][0])


@pytest.mark.slow  # a DDP launch stopped inside an epoch, its restart, the uninterrupted run and the reference's
def test_a_ddp_stop_inside_an_epoch_resumes_there_exactly_in_both_loops(tmp_path):
    """Both ranks SIGTERM themselves as step 6 starts (epoch 1, its third batch of 4 a rank): last.ckpt
    is written after that step, inside the epoch, with the world size and each rank's running sums.
    The restart goes on from batch 3 of epoch 1 (step 7), not from the epoch's start nor step 0, and
    ends with the uninterrupted run's weights, optimizer state and epoch means, bit for bit. The
    reference under torchrun resumes the same checkpoint to the same weights."""
    twinloop(["fit", *WORKERS, "--trainer.max_epochs=3", "--trainer.default_root_dir=whole"], tmp_path)
    cut = [*WORKERS, "--trainer.max_epochs=3", "--trainer.default_root_dir=cut"]
    signal_at_6 = ["--trainer.callbacks+=tests.reliability.signals.SignalAtStep", "--trainer.callbacks.step=6"]
    stopped = subprocess.run(
        [sys.executable, "-m", "project", "fit", *cut, *signal_at_6],
        cwd=tmp_path,
        env=environment(),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert stopped.returncode == 128 + signal.SIGTERM, stopped.stderr[-3000:]
    run_dir = tmp_path / "cut/lightning_logs/version_0"
    saved = checkpoint(run_dir / "checkpoints/last.ckpt")
    marker = saved["mid_epoch"]
    assert (saved["epoch"], saved["global_step"], marker["batches_done"], marker["world_size"]) == (1, 7, 3, 2)
    sums = marker["train_metrics"]  # each rank's own: they summed different images
    assert len(sums) == 2 and any(not torch.equal(sums[0][k], sums[1][k]) for k in sums[0])
    shutil.copy(run_dir / "checkpoints/last.ckpt", tmp_path / "inside.ckpt")
    done = twinloop(["fit", *cut, "--ckpt_path=last"], tmp_path)
    assert "resuming from epoch 1, batch 3 (step 7)" in done.stdout
    (resumed_events,) = run_dir.glob(f"events.out.tfevents.*.{done.pid}.*")
    assert logged_steps(resumed_events, "train/loss") == [7, 8, 9, 10, 11]
    whole = tmp_path / "whole/lightning_logs/version_0"
    a, b = checkpoint(whole / "checkpoints/last.ckpt"), checkpoint(run_dir / "checkpoints/last.ckpt")
    assert (a["epoch"], a["global_step"]) == (b["epoch"], b["global_step"]) == (2, 12)
    assert_same_tensors(a["state_dict"], b["state_dict"])
    assert_same_tensors(a["optimizer_states"][0]["state"][0], b["optimizer_states"][0]["state"][0])
    for tag in ("train/acc", "train/loss_epoch"):  # epoch 1's means cover both processes' batches before the stop
        assert logged_values(run_dir, tag) == logged_values(whole, tag), tag
    ref = ["fit", *WORKERS, "--trainer.max_epochs=3", "--trainer.default_root_dir=ref", "--ckpt_path=../inside.ckpt"]
    (tmp_path / "ref").mkdir()
    reference = torchrun("project.reference", ref, tmp_path / "ref")
    assert reference.stdout.count("resuming from epoch 1, batch 3 (step 7)") == 1
    (c_path,) = (tmp_path / "ref").glob("**/reference/version_0/checkpoints/last.ckpt")
    assert_same_tensors(a["state_dict"], checkpoint(c_path)["state_dict"])


@pytest.mark.slow  # two torchrun launches of the reference, one stopped from outside
def test_the_reference_under_torchrun_stops_inside_an_epoch_and_resumes_there_exactly(tmp_path):
    """SIGTERM to both ranks once the reference has logged step 14 (12 batches a rank an epoch): both
    ranks stop after the same step, inside epoch 1, and rank 0 writes last.ckpt with each rank's sums;
    the restart goes on from there (not from step 0) to the uninterrupted reference run's weights
    and epoch means."""
    run = [*WORKERS, "--trainer.limit_train_batches=1.0", "--trainer.max_epochs=2"]
    torchrun("project.reference", ["fit", *run, "--run_name=whole"], tmp_path)
    port = str(free_port())
    launch = ["--nproc_per_node", "2", "--master_addr", "127.0.0.1", "--master_port", port]
    command = [sys.executable, "-m", "torch.distributed.run", *launch, "-m", "project.reference", "fit", *run]
    victim = subprocess.Popen([*command, "--run_name=cut"], cwd=tmp_path, env=environment(), text=True)
    cut = tmp_path / "lightning_logs/reference/cut"
    deadline = time.monotonic() + TIMEOUT
    while max(logged_steps_of(cut), default=-1) < 14 and victim.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    ranks = Path(f"/proc/{victim.pid}/task/{victim.pid}/children").read_text().split()
    assert len(ranks) == 2
    for rank in ranks:  # to the ranks themselves, as a scheduler signals a job's tasks (their workers go on)
        os.kill(int(rank), signal.SIGTERM)
    victim.wait(timeout=TIMEOUT)
    saved = checkpoint(cut / "checkpoints/last.ckpt")
    batches_done = saved["mid_epoch"]["batches_done"]
    assert saved["epoch"] == 1 and 0 < batches_done < 12 and saved["mid_epoch"]["world_size"] == 2
    done = torchrun("project.reference", ["fit", *run, "--run_name=cut", "--ckpt_path=last"], tmp_path)
    step = saved["global_step"]
    assert done.stdout.count(f"resuming from epoch 1, batch {batches_done} (step {step})") == 1
    a = checkpoint(tmp_path / "lightning_logs/reference/whole/checkpoints/last.ckpt")
    b = checkpoint(cut / "checkpoints/last.ckpt")
    assert (a["epoch"], a["global_step"]) == (b["epoch"], b["global_step"]) == (1, 24)
    assert_same_tensors(a["state_dict"], b["state_dict"])
    assert_same_tensors(a["optimizer_states"][0]["state"][0], b["optimizer_states"][0]["state"][0])
    for tag in ("train/acc", "train/loss_epoch"):  # epoch 1's means: each rank's sums from before the stop
        assert logged_values(cut, tag) == logged_values(tmp_path / "lightning_logs/reference/whole", tag), tag


def logged_steps_of(run_dir) -> list[int]:
    """The training-loss steps a run directory's events hold so far (none before its file exists)."""
    if not run_dir.is_dir():
        return []
    try:
        return logged_steps(run_dir, "train/loss")
    except KeyError:
        return []
