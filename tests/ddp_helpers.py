"""Distributed runs for the tests: two processes on 127.0.0.1 with gloo, one thread each (the
machine the suite runs on may have two cores), every output under the test's directory."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from project.checkpoint_io import AtomicCheckpointIO
from tests.helpers import FAST, REPO

# Two epochs of 4 training batches a rank, the whole validation split (359 digits: an odd count, so a
# padding sampler would count one twice), pictures on (their metrics are synced too).
DDP = [
    *FAST,
    "--trainer.accelerator=cpu",
    "--trainer.strategy=ddp",
    "--trainer.max_epochs=2",
    "--trainer.limit_train_batches=4",
]
TIMEOUT = 300  # seconds per launch: a guard against a hang (a launch takes 10-30 s on 2 cores)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def environment() -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "OMP_NUM_THREADS": "1",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(free_port()),
    }


def run(command: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """Run to the end; a failure shows the output. ``.pid`` is the launched process's (rank 0's, when
    Lightning starts the other ranks itself)."""
    process = subprocess.Popen(
        command, cwd=cwd, env=environment(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    stdout, stderr = process.communicate(timeout=TIMEOUT)
    assert process.returncode == 0, f"{' '.join(command)}\n{stdout[-3000:]}\n{stderr[-5000:]}"
    done = subprocess.CompletedProcess(command, process.returncode, stdout, stderr)
    done.pid = process.pid
    return done


def twinloop(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """``python -m project ...``: Lightning starts the other ranks itself; this process is rank 0."""
    return run([sys.executable, "-m", "project", *args], cwd)


def torchrun(module: str, args: list[str], cwd: Path, nproc: int = 2) -> subprocess.CompletedProcess:
    """One node: ``torchrun --nproc_per_node N -m MODULE ARGS``, rendezvous on 127.0.0.1."""
    port = free_port()
    launch = ["--nproc_per_node", str(nproc), "--master_addr", "127.0.0.1", "--master_port", str(port)]
    return run([sys.executable, "-m", "torch.distributed.run", *launch, "-m", module, *args], cwd)


def two_nodes(module: str, args: list[str], cwd: Path) -> list[str]:
    """Two torchrun launches of one process each, as two nodes would make them (``--nnodes 2``,
    ``--node_rank 0|1``), meeting on 127.0.0.1; their outputs, node 0's first."""
    port = str(free_port())
    launches = []
    for node in (0, 1):
        launch = ["--nnodes", "2", "--node_rank", str(node), "--nproc_per_node", "1"]
        launch += ["--master_addr", "127.0.0.1", "--master_port", port]
        command = [sys.executable, "-m", "torch.distributed.run", *launch, "-m", module, *args]
        launches.append(subprocess.Popen(command, cwd=cwd, env=environment(), stdout=subprocess.PIPE, text=True))
    outputs = [p.communicate(timeout=TIMEOUT)[0] for p in launches]
    assert [p.returncode for p in launches] == [0, 0], outputs
    return outputs


def checkpoint(path: Path) -> dict:
    return torch.load(path, weights_only=True)


def last_scalar(run_dir: Path, tag: str) -> float:
    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    events.Reload()
    return events.Scalars(tag)[-1].value


def assert_same_tensors(a: dict, b: dict, atol: float = 0.0) -> float:
    """Every tensor by name within ``atol`` (0: bit for bit); returns the largest |Δ|."""
    assert a.keys() == b.keys()
    worst = 0.0
    for name in a:
        diff = (a[name].double() - b[name].double()).abs().max().item() if a[name].numel() else 0.0
        assert diff <= atol, f"{name} differs by {diff:.3g}"
        worst = max(worst, diff)
    return worst


class RankRecordingCheckpointIO(AtomicCheckpointIO):
    """The CLI's checkpoint writer, noting beside each checkpoint which process wrote it."""

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        super().save_checkpoint(checkpoint, path, storage_options)
        with open(Path(path).parent / "writers.txt", "a") as f:
            f.write(f"{os.getpid()} {Path(path).name}\n")
