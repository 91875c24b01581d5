"""Lightning's DDP on the CPU (gloo, 2 processes): each rank reads its own share, validation counts
every sample once and equals a one-process validate, only rank 0 writes, and checkpoints move
between one process and several in both directions."""

import pytest
import torch

from project.cli import TwinloopCLI
from project.data import ImageDataModule
from tests.ddp_helpers import DDP, last_scalar, twinloop
from tests.helpers import FAST

PLUGIN = "--trainer.plugins=tests.ddp_helpers.RankRecordingCheckpointIO"


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    """One DDP fit, 2 processes started by Lightning: its run directory and the finished launch."""
    cwd = tmp_path_factory.mktemp("ddp")
    done = twinloop(["fit", *DDP, "--trainer.devices=2", PLUGIN], cwd)
    return cwd / "lightning_logs/version_0", done


def label(split, i: int) -> int:
    return int(split.labels[i]) if hasattr(split, "labels") else int(split[i][1])


def shares(dm: ImageDataModule, stage: str) -> list[list[int]]:
    """The sample indices that each of 2 ranks' loaders takes for ``stage``, in order."""
    out = []
    for rank in (0, 1):
        dm.shard = (rank, 2)
        loader = dm.train_dataloader() if stage == "train" else dm.val_dataloader()
        out.append([int(i) for i in loader.sampler])
    return out


@pytest.mark.parametrize("device_cache", [False, True])
def test_validation_shares_hold_every_sample_exactly_once(device_cache):
    """Under 2 ranks the validation shares are disjoint and make the whole split (359, odd: no padding)."""
    dm = ImageDataModule(device_cache=device_cache)
    dm.setup("fit")
    a, b = shares(dm, "val")
    assert len(dm.val_set) == 359 and sorted(a + b) == list(range(359)) and (len(a), len(b)) == (180, 179)
    dm.shard = (1, 2)
    labels = torch.cat([y for _, y in dm.val_dataloader()])
    assert labels.tolist() == [label(dm.val_set, i) for i in b]  # the batches are that share, in order


@pytest.mark.parametrize("device_cache", [False, True])
def test_training_shares_split_one_permutation_per_epoch(device_cache):
    """Training shares are equal halves of one seeded permutation, a new one after set_epoch, and
    the batches follow them."""
    dm = ImageDataModule(device_cache=device_cache)
    dm.setup("fit")
    a, b = shares(dm, "train")
    assert len(a) == len(b) == 719 and sorted(set(a + b)) == list(range(1438))
    dm.shard = (0, 2)
    loader = dm.train_dataloader()
    loader.sampler.set_epoch(1)
    order = [int(i) for i in loader.sampler]
    assert order != a and len(order) == 719
    _, y = next(iter(loader))
    assert y.tolist() == [label(dm.train_set, i) for i in order[:64]]


def test_ddp_validation_equals_a_single_process_validate(ddp_run):
    """val/acc of the DDP fit (synced, 359 samples once each) is what one process's validate of
    last.ckpt gives, exactly; val/loss within the rounding of another summation order."""
    run_dir, _ = ddp_run
    cli = TwinloopCLI(args=[*FAST, "--trainer.accelerator=cpu"], run=False)
    (single,) = cli.trainer.validate(cli.model, datamodule=cli.datamodule, ckpt_path=run_dir / "checkpoints/last.ckpt")
    acc = torch.tensor(single["val/acc"], dtype=torch.float32).item()
    assert last_scalar(run_dir, "val/acc") == acc and 0.5 < acc < 1  # at 1.0 a doubly counted sample would hide
    assert abs(last_scalar(run_dir, "val/loss") - single["val/loss"]) < 1e-6


def test_only_rank_zero_writes_events_and_checkpoints(ddp_run):
    """One TensorBoard event file, rank 0's, and every checkpoint written by rank 0 alone."""
    run_dir, done = ddp_run
    (events,) = run_dir.glob("events.out.tfevents.*")
    assert events.name.split(".")[-2] == str(done.pid)  # the file name carries the writer's pid
    writers = (run_dir / "checkpoints/writers.txt").read_text().split()
    assert set(writers[0::2]) == {str(done.pid)} and {"last.ckpt"} <= set(writers[1::2])
    assert done.stdout.count("val/acc ") == 1  # the summary line: rank 0's only
