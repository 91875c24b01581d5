"""Exact resume under DDP with DataLoader workers (issue 22, item 2): Lightning creates the training
loader's iterator, whose workers draw their first indices at once, before it tells the
DistributedSampler the epoch, and a resumed run does not create it again (Lightning#21938). The data
module sets the sampler to the resumed epoch first; without that, the resumed epoch took epoch 0's order."""

from __future__ import annotations

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.ddp_helpers import DDP, assert_same_tensors, checkpoint, twinloop

# 2 gloo processes, 2 workers each, crop-and-flip augmentation, a step line at every step
WORKERS = [*DDP, "--trainer.devices=2", "--data.num_workers=2", "--data.augment=true", "--trainer.log_every_n_steps=1"]


def logged_steps(events_file, tag: str) -> list[int]:
    events = EventAccumulator(str(events_file), size_guidance={"scalars": 0})
    events.Reload()
    return [e.step for e in events.Scalars(tag)]


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
