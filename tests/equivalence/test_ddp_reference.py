"""The reference loop under torchrun (gloo, 2 processes on 127.0.0.1): it reads the run's processes
from torchrun as Lightning does, equals Lightning's DDP step for step, writes from rank 0 only, and
two simulated nodes give what one node with 2 processes gives."""

import json
import sys

import pytest
import torch

from project.errors import ConfigError
from project.reference.settings import TrainerSettings, read_device, read_processes
from tests.ddp_helpers import DDP, assert_same_tensors, checkpoint, last_scalar, run, torchrun, two_nodes
from tests.helpers import EQUIV, EQUIVALENCE_RESULTS

TORCHRUN = {"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1"}


def test_the_reference_takes_its_place_from_torchrun():
    """Rank 1 of 2 under torchrun, devices=2 on the CPU: DDP on the CPU, rank 1."""
    s = TrainerSettings.from_config({"accelerator": "cpu", "devices": 2, "strategy": "ddp"}, TORCHRUN)
    assert (s.processes.world_size, s.processes.rank, s.processes.distributed, s.device) == (
        2,
        1,
        True,
        torch.device("cpu"),
    )
    assert not s.processes.is_global_zero


def test_several_devices_without_torchrun_say_how_to_launch():
    """devices=2 in one plain process: the error names the torchrun command."""
    with pytest.raises(ConfigError, match=r"torchrun --nnodes 1 --nproc_per_node 2 -m project\.reference"):
        TrainerSettings.from_config({"accelerator": "cpu", "devices": 2}, {})


def test_a_process_count_that_torchrun_did_not_start_is_refused():
    """torchrun started 2 processes but devices x num_nodes asks for 4: refused, naming both."""
    with pytest.raises(ConfigError, match=r"torchrun started 2 processes.*trainer\.num_nodes=2 asks for 4"):
        TrainerSettings.from_config({"accelerator": "cpu", "devices": 2, "num_nodes": 2}, TORCHRUN)


@pytest.mark.parametrize("strategy", ["ddp_spawn", "fsdp", "deepspeed"])
def test_strategies_other_than_ddp_are_refused(strategy):
    """The reference mirrors DDP only; other strategies are refused by name."""
    with pytest.raises(ConfigError, match=rf"trainer\.strategy='{strategy}'"):
        read_processes(strategy, {})


def test_sync_batchnorm_on_the_cpu_is_refused():
    """torch's SyncBatchNorm needs GPUs: on the CPU it is one clear error, before any process starts."""
    with pytest.raises(ConfigError, match=r"trainer\.sync_batchnorm=true: torch's SyncBatchNorm runs on GPUs only"):
        TrainerSettings.from_config({"accelerator": "cpu", "strategy": "ddp", "sync_batchnorm": True}, {})


def test_each_local_rank_takes_its_own_gpu(monkeypatch):
    """On a node with 2 GPUs, local rank 1 of devices=2 (or devices=[0, 1]) runs on cuda:1."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    processes = read_processes("ddp", TORCHRUN)
    assert read_device("gpu", 2, 1, processes) == read_device("cuda", [0, 1], 1, processes) == torch.device("cuda", 1)


@pytest.mark.slow  # two DDP launches, one under torchrun: 23 s on 2 cores
def test_compare_runs_both_loops_distributed_and_they_are_bit_identical(tmp_path):
    """`twinloop-compare --trainer.devices 2` runs Lightning's DDP and the reference under torchrun in
    2 processes: every rank's per-batch losses, the per-step and final tensors and the optimizer
    state agree bit for bit, and so do the synced validation metrics."""
    args = [*EQUIV, "--trainer.accelerator=cpu", "--trainer.strategy=ddp", "--trainer.devices=2"]
    done = run([sys.executable, "-m", "project.compare", *args, "--report=report.json", "--root=runs"], tmp_path)
    report = json.loads((tmp_path / "report.json").read_text())
    # 216 training digits: 108 a rank, batches of 32, 32, 32, 12; 3 epochs
    assert report["equivalent"] and report["optimizer_steps"] == report["training_batches"] == 12
    worst = max(report["max_loss_diff"], report["max_step_tensor_diff"], *report["max_final_diff"].values())
    EQUIVALENCE_RESULTS.append(("ddp 2 processes, gloo", worst))
    assert worst == 0.0
    assert len(report["validation"]) == 3 and all(e["lightning"] == e["reference"] for e in report["validation"])
    assert "rank 1:" not in done.stderr  # rank 1 compared its own batches and found nothing


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    """The reference fit under `torchrun --nproc_per_node 2`: its run directory and the launch."""
    cwd = tmp_path_factory.mktemp("reference")
    done = torchrun(
        "project.reference", ["fit", *DDP, "--trainer.devices=2", "--trainer.enable_progress_bar=true"], cwd
    )
    return cwd / "lightning_logs/reference/version_0", done


@pytest.mark.xdist_group("reference_run")
def test_under_torchrun_only_rank_zero_reports_and_writes(reference_run):
    """One event file, one line per epoch and one `logs:` line (rank 0's), and its checkpoints."""
    run_dir, done = reference_run
    assert len(list(run_dir.glob("events.out.tfevents.*"))) == 1
    epoch_lines = [done.stdout.count(f"epoch {e}/1 done") for e in (0, 1)]  # the log-file lines: stdout is a pipe
    assert epoch_lines == [1, 1] and done.stdout.count("logs: ") == 1
    assert checkpoint(run_dir / "checkpoints/last.ckpt")["global_step"] == 8  # 4 steps a rank per epoch
    assert len(list(run_dir.glob("checkpoints/best-epoch*-acc*.ckpt"))) == 1  # Lightning's name, top 1


@pytest.mark.xdist_group("reference_run")
@pytest.mark.slow  # more DDP launches of its own: make test-slow (and CI) runs it
def test_two_simulated_nodes_run_the_reference_as_one_node(reference_run, tmp_path):
    """Two torchrun launches with --nnodes 2 (one process each, rendezvous on 127.0.0.1): the same
    checkpoint, optimizer state and validation as one node with 2 processes, bit for bit."""
    run_dir, _ = reference_run
    two_nodes("project.reference", ["fit", *DDP, "--trainer.devices=1", "--trainer.num_nodes=2"], tmp_path)
    nodes = tmp_path / "lightning_logs/reference/version_0"
    a, b = checkpoint(run_dir / "checkpoints/last.ckpt"), checkpoint(nodes / "checkpoints/last.ckpt")
    assert_same_tensors(a["state_dict"], b["state_dict"])
    assert_same_tensors(a["optimizer_states"][0]["state"][0], b["optimizer_states"][0]["state"][0])
    assert a["best_val_acc"] == b["best_val_acc"]
    for tag in ("val/acc", "val/loss", "train/loss_epoch"):
        assert last_scalar(run_dir, tag) == last_scalar(nodes, tag), tag


@pytest.mark.xdist_group("reference_run")
@pytest.mark.slow  # more DDP launches of its own: make test-slow (and CI) runs it
def test_a_reference_resume_under_torchrun_is_exact(reference_run, tmp_path):
    """The reference under torchrun for one epoch, then resumed under torchrun for the second: the
    uninterrupted run's weights and optimizer state, bit for bit, from step 4 (not from step 0)."""
    run_dir, _ = reference_run
    torchrun("project.reference", ["fit", *DDP, "--trainer.devices=2", "--trainer.max_epochs=1"], tmp_path)
    done = torchrun("project.reference", ["fit", *DDP, "--trainer.devices=2", "--ckpt_path=last"], tmp_path)
    assert done.stdout.count("resuming from epoch 1, batch 0 (step 4)") == 1  # rank 0 says it; not a fresh start
    a = checkpoint(run_dir / "checkpoints/last.ckpt")
    b = checkpoint(tmp_path / "lightning_logs/reference/version_0/checkpoints/last.ckpt")
    assert (a["epoch"], a["global_step"]) == (b["epoch"], b["global_step"]) == (1, 8)
    assert_same_tensors(a["state_dict"], b["state_dict"])
    assert_same_tensors(a["optimizer_states"][0]["state"][0], b["optimizer_states"][0]["state"][0])
