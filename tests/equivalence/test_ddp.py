"""Lightning's DDP on the CPU (gloo, 2 processes): each rank reads its own share, validation counts
every sample once and equals a one-process validate, only rank 0 writes, and checkpoints move
between one process and several in both directions."""

import csv
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from project.cli import TwinloopCLI, main
from project.data import ImageDataModule
from tests.ddp_helpers import DDP, assert_same_tensors, checkpoint, last_scalar, twinloop, two_nodes
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


@pytest.mark.xdist_group("ddp_run")
def test_ddp_validation_equals_a_single_process_validate(ddp_run):
    """val/acc of the DDP fit (synced, 359 samples once each) is what one process's validate of
    last.ckpt gives, exactly; val/loss within the rounding of another summation order."""
    run_dir, _ = ddp_run
    cli = TwinloopCLI(args=[*FAST, "--trainer.accelerator=cpu"], run=False)
    (single,) = cli.trainer.validate(cli.model, datamodule=cli.datamodule, ckpt_path=run_dir / "checkpoints/last.ckpt")
    acc = torch.tensor(single["val/acc"], dtype=torch.float32).item()
    assert last_scalar(run_dir, "val/acc") == acc and 0.5 < acc < 1  # at 1.0 a doubly counted sample would hide
    assert abs(last_scalar(run_dir, "val/loss") - single["val/loss"]) < 1e-6


@pytest.mark.xdist_group("ddp_run")
def test_only_rank_zero_writes_events_and_checkpoints(ddp_run):
    """One TensorBoard event file, rank 0's, and every checkpoint written by rank 0 alone."""
    run_dir, done = ddp_run
    (events,) = run_dir.glob("events.out.tfevents.*")
    assert events.name.split(".")[-2] == str(done.pid)  # the file name carries the writer's pid
    writers = (run_dir / "checkpoints/writers.txt").read_text().split()
    assert set(writers[0::2]) == {str(done.pid)} and {"last.ckpt"} <= set(writers[1::2])
    assert done.stdout.count("val/acc ") == 1  # the summary line: rank 0's only


@pytest.mark.xdist_group("ddp_run")
@pytest.mark.slow  # more DDP launches of its own: make test-slow (and CI) runs it
def test_ddp_predictions_are_written_once_by_rank_zero_as_one_process_writes_them(ddp_run, tmp_path):
    """Each rank predicts its share of 7 new images; rank 0 alone writes them all, in the order and
    with the values of a one-process predict."""
    run_dir, _ = ddp_run
    for i in range(7):
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (8, 8), dtype=np.uint8)).save(tmp_path / f"{i}.png")
    common = [*FAST, "--trainer.accelerator=cpu", f"--data.predict_root={tmp_path}"]
    common.append(f"--ckpt_path={run_dir / 'checkpoints/last.ckpt'}")
    done = twinloop(
        ["predict", *common, "--trainer.devices=2", "--trainer.strategy=ddp", "--predictions.output=ddp.csv"], tmp_path
    )
    main(["predict", *common, "--predictions.output=single.csv"])
    assert done.stdout.count("Wrote 7 predictions") == 1
    ddp, single = (list(csv.reader((tmp_path / f"{name}.csv").open())) for name in ("ddp", "single"))
    assert len(single) == 8 and [r[:2] for r in ddp] == [r[:2] for r in single]
    assert all(abs(float(a[2]) - float(b[2])) <= 1e-6 for a, b in zip(ddp[1:], single[1:]))


@pytest.mark.xdist_group("ddp_run")
def test_a_ddp_checkpoint_resumes_in_one_process(ddp_run, tmp_path):
    """One process goes on from the DDP run's last.ckpt (epoch 1, 4 steps a rank per epoch) for a
    third epoch: 8 + 4 steps, not a fresh 12."""
    run_dir, _ = ddp_run
    args = [*FAST, "--trainer.accelerator=cpu", "--trainer.max_epochs=3", "--trainer.limit_train_batches=4"]
    main(["fit", *args, f"--ckpt_path={run_dir / 'checkpoints/last.ckpt'}"])
    last = checkpoint(tmp_path / "lightning_logs/version_0/checkpoints/last.ckpt")
    assert (last["epoch"], last["global_step"]) == (2, 12)
    weights = checkpoint(run_dir / "checkpoints/last.ckpt")["state_dict"]
    assert not all(torch.equal(weights[k], last["state_dict"][k]) for k in weights)  # it trained on from there


@pytest.mark.slow  # more DDP launches of its own: make test-slow (and CI) runs it
def test_a_one_process_checkpoint_resumes_and_validates_under_ddp(tmp_path):
    """A one-process checkpoint (epoch 0, 4 steps) goes on under DDP for epoch 1 (4 + 4 steps), and its
    DDP validate gives one process's val/acc."""
    args = [*FAST, "--trainer.accelerator=cpu", "--trainer.max_epochs=1", "--trainer.limit_train_batches=4"]
    main(["fit", *args, "--trainer.default_root_dir=single"])
    first = tmp_path / "single/lightning_logs/version_0/checkpoints/last.ckpt"
    twinloop(["fit", *DDP, "--trainer.devices=2", f"--ckpt_path={first}"], tmp_path)
    last = checkpoint(tmp_path / "lightning_logs/version_0/checkpoints/last.ckpt")
    assert (last["epoch"], last["global_step"]) == (1, 8)
    done = twinloop(["validate", *DDP, "--trainer.devices=2", f"--ckpt_path={first}"], tmp_path)
    cli = TwinloopCLI(args=[*FAST, "--trainer.accelerator=cpu"], run=False)
    (single,) = cli.trainer.validate(cli.model, datamodule=cli.datamodule, ckpt_path=first)
    shown = re.search(r"val/acc\W+([0-9.]+)", done.stdout)  # Lightning's results table, plain or rich
    assert shown is not None and float(shown.group(1)) == single["val/acc"]


@pytest.mark.xdist_group("ddp_run")
@pytest.mark.slow  # more DDP launches of its own: make test-slow (and CI) runs it
def test_a_ddp_resume_is_exact(ddp_run, tmp_path):
    """DDP for one epoch, then a DDP resume from its last.ckpt for the second: the weights and
    optimizer state of the uninterrupted DDP run, bit for bit, and not from step 0."""
    run_dir, _ = ddp_run
    twinloop(["fit", *DDP, "--trainer.devices=2", "--trainer.max_epochs=1"], tmp_path)
    cut = tmp_path / "lightning_logs/version_0/checkpoints/last.ckpt"
    done = twinloop(["fit", *DDP, "--trainer.devices=2", "--ckpt_path=last"], tmp_path)
    assert f"resuming {cut.relative_to(tmp_path)} (step 4)" in done.stdout
    a, b = checkpoint(run_dir / "checkpoints/last.ckpt"), checkpoint(cut)
    assert (a["epoch"], a["global_step"]) == (b["epoch"], b["global_step"]) == (1, 8)
    assert_same_tensors(a["state_dict"], b["state_dict"])
    assert_same_tensors(a["optimizer_states"][0]["state"][0], b["optimizer_states"][0]["state"][0])


@pytest.mark.xdist_group("ddp_run")
@pytest.mark.slow  # more DDP launches of its own: make test-slow (and CI) runs it
def test_two_simulated_nodes_train_as_one_node_with_two_processes(ddp_run, tmp_path):
    """Two torchrun launches with --nnodes 2 (one process each, rendezvous on 127.0.0.1) end with the
    one-node DDP run's checkpoint and validation, bit for bit."""
    run_dir, _ = ddp_run
    args = ["fit", *DDP, "--trainer.devices=1", "--trainer.num_nodes=2"]
    two_nodes("project", args, tmp_path)
    nodes = tmp_path / "lightning_logs/version_0"
    a, b = checkpoint(run_dir / "checkpoints/last.ckpt"), checkpoint(nodes / "checkpoints/last.ckpt")
    assert_same_tensors(a["state_dict"], b["state_dict"])
    for tag in ("val/acc", "val/loss", "train/loss_epoch"):
        assert last_scalar(run_dir, tag) == last_scalar(nodes, tag), tag
    assert len(list(nodes.glob("events.out.tfevents.*"))) == 1


def test_sync_batchnorm_on_the_cpu_is_one_error_line(capsys):
    """torch's SyncBatchNorm needs GPUs: on the CPU the CLI stops with one line, before any run directory."""
    with pytest.raises(SystemExit) as stopped:
        main(["fit", *FAST, "--trainer.accelerator=cpu", "--trainer.strategy=ddp", "--trainer.sync_batchnorm=true"])
    assert stopped.value.code == 2 and "error: trainer.sync_batchnorm=true" in capsys.readouterr().err
    assert not Path("lightning_logs").exists()


@pytest.mark.xdist_group("ddp_run")
@pytest.mark.slow  # more DDP launches of its own: make test-slow (and CI) runs it
def test_the_device_path_under_ddp_trains_as_the_dataloader_path(ddp_run, tmp_path):
    """data.device_cache under DDP: each rank slices its own share, and the run ends with the DataLoader
    run's weights and validation, bit for bit."""
    run_dir, _ = ddp_run
    twinloop(["fit", *DDP, "--trainer.devices=2", "--data.device_cache=true"], tmp_path)
    cached = tmp_path / "lightning_logs/version_0"
    a, b = checkpoint(run_dir / "checkpoints/last.ckpt"), checkpoint(cached / "checkpoints/last.ckpt")
    assert_same_tensors(a["state_dict"], b["state_dict"])
    assert last_scalar(run_dir, "val/acc") == last_scalar(cached, "val/acc")
