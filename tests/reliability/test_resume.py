"""Exact resume: a run killed with SIGKILL and resumed with --ckpt_path last ends bit-identical to an
uninterrupted one, with shuffling, augmentation, Dropout and 2 worker processes on."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from project import compare
from project.cli import main
from project.preemption import Preempted
from project.reference.cli import main as reference_main
from tests.helpers import EQUIV, FAST, REPO

RUN = [
    *FAST,
    "--data.augment=true",
    "--data.num_workers=2",
    "--model.network.dropout=0.5",
    "--trainer.max_epochs=4",
    "--trainer.limit_train_batches=8",
    "--model.pictures.every_n_epochs=0",
]


def twinloop(args: list[str], **kwargs) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-m", "project", "fit", *args], env=env, text=True, **kwargs)


def checkpoint_epoch(path: Path) -> int:
    try:
        return torch.load(path, weights_only=True)["epoch"]
    except Exception:  # not there yet, or being written
        return -1


def weights(root: str) -> dict[str, torch.Tensor]:
    (last,) = Path(root).glob("lightning_logs/version_*/checkpoints/last.ckpt")
    return torch.load(last, weights_only=True)["state_dict"]


@pytest.mark.slow
def test_kill_9_then_resume_last_is_bit_identical(tmp_path):
    """SIGKILL once epoch 1's checkpoint exists; `fit --ckpt_path last` resumes into the same run
    (not from step 0) and ends with the uninterrupted run's weights; TensorBoard shows no step twice."""
    full = twinloop([*RUN, "--trainer.default_root_dir=full"])
    victim = twinloop([*RUN, "--trainer.default_root_dir=cut"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = Path("cut/lightning_logs/version_0/checkpoints/last.ckpt")
    deadline = time.monotonic() + 120
    while checkpoint_epoch(last) < 1 and victim.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    killed_at = checkpoint_epoch(last)
    assert victim.returncode == -signal.SIGKILL and 1 <= killed_at < 3  # killed mid-run, not after it
    resumed = twinloop([*RUN, "--trainer.default_root_dir=cut", "--ckpt_path=last"], stdout=subprocess.PIPE)
    out, _ = resumed.communicate(timeout=180)
    assert full.wait(timeout=180) == 0 and resumed.returncode == 0
    steps = 8 * (killed_at + 1)
    assert f"resuming {last} (step {steps}) into cut/lightning_logs/version_0" in out  # not from step 0
    assert not Path("cut/lightning_logs/version_1").exists()  # the same run directory
    a, b = weights("full"), weights("cut")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    events = EventAccumulator("cut/lightning_logs/version_0")
    events.Reload()
    logged = [e.step for e in events.Scalars("train/loss_epoch")]
    assert logged == sorted(set(logged)) and len(logged) == 4  # every epoch once, none twice


def test_resume_last_without_a_checkpoint_says_so_and_starts_nothing(capsys):
    """`--ckpt_path last` with no last.ckpt under the run directory: exit 1 naming it, no run directory."""
    with pytest.raises(SystemExit) as info:
        main(["fit", *FAST, "--ckpt_path=last"])
    assert info.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith("error: --ckpt_path last: no lightning_logs/version_*/checkpoints/last.ckpt")
    assert not Path("lightning_logs").exists()


SCHEDULED = [
    *RUN,
    "--data.num_workers=0",
    "--model.lr_scheduler=StepLR",
    "--model.lr_scheduler.step_size=1",
    "--model.lr_scheduler.gamma=0.7",
]


def reference_weights(root: str) -> dict[str, torch.Tensor]:
    (last,) = Path(root).glob("lightning_logs/reference/version_*/checkpoints/last.ckpt")
    return torch.load(last, weights_only=True)["state_dict"]


@pytest.fixture(scope="module")
def full(tmp_path_factory) -> Path:
    """The reference's uninterrupted run to 4 epochs, which both resumed runs must end at: its root dir."""
    root = tmp_path_factory.mktemp("reference")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        reference_main(["fit", *SCHEDULED, "--trainer.default_root_dir=full"])
    return root / "full"


@pytest.mark.xdist_group("reference_full")
@pytest.mark.parametrize("first_half", ["reference", "lightning"])
def test_the_reference_resumes_its_own_and_lightnings_checkpoints_exactly(first_half, capsys, full):
    """2 epochs (by either loop), then `twinloop-reference fit --ckpt_path ...` to 4: the reference's
    uninterrupted weights, bit for bit, with a per-epoch scheduler, augmentation and Dropout on."""
    half = [*SCHEDULED, "--trainer.max_epochs=2", "--trainer.default_root_dir=cut"]
    if first_half == "reference":
        reference_main(["fit", *half])
        ckpt = "last"
    else:
        main(["fit", *half])
        ckpt = "cut/lightning_logs/version_0/checkpoints/last.ckpt"
    capsys.readouterr()
    reference_main(["fit", *SCHEDULED, "--trainer.default_root_dir=cut", f"--ckpt_path={ckpt}"])
    assert "resuming from epoch 2, batch 0 (step 16)" in capsys.readouterr().out  # not from step 0
    a, b = reference_weights(full), reference_weights("cut")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


SIGTERM_AT_STEP_9 = (
    '--trainer.callbacks+={"class_path": "tests.reliability.signals.SignalAtStep", "init_args": {"step": 9}}'
)


@pytest.mark.fit
def test_compare_checks_a_resumed_reference_against_the_uninterrupted_lightning_run(capsys):
    """Lightning stopped by SIGTERM in step 9 (epoch 1, batch 2); `twinloop-compare --resume_reference` its
    last.ckpt: the reference resumed there equals the uninterrupted Lightning run at each of the 11 later
    steps, with no tolerance."""
    with pytest.raises(Preempted):
        main(["fit", *EQUIV, "--run_name=cut", SIGTERM_AT_STEP_9])
    args = [*EQUIV, "--resume_reference=lightning_logs/cut/checkpoints/last.ckpt", "--atol=0"]
    assert compare.main(args) == 0
    out = capsys.readouterr().out
    assert "resuming from epoch 1, batch 3 (step 10)" in out  # the reference did not start from step 0
    assert "11 optimizer steps after it compared" in out
    assert "\nEQUIVALENT" in out
