"""Checkpoints that survive kills and failed writes (issue 10, item 3), with real processes, signals and files.

The kills go to children of ``saver.py`` (torch imported once, one fork per kill) that do nothing but
save, through ``atomic_torch_save`` or Lightning's ``AtomicCheckpointIO``; one more kills a real
``twinloop fit``. Half of the children are stopped (SIGSTOP) until one is caught with its temp file
open, then killed there, so those kills land inside a write for certain; the others die at a random
moment.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.plugins import TorchCheckpointIO

from project.checkpoint_io import TEMP_SUFFIX, AtomicCheckpointIO, atomic_torch_save
from project.cli import TwinloopCLI, main
from project.errors import CheckpointError
from tests.helpers import FAST, REPO

SAVER = Path(__file__).with_name("saver.py")
KILLS_PER_CASE = 12  # two cases: 24 kills, 12 of them with $TMPDIR on another filesystem
KILLS: list[dict] = []  # what each kill found, for the summary printed at the end of each case


class Saver:
    def __init__(self):
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        self.proc = subprocess.Popen(
            [sys.executable, str(SAVER)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO, env=env
        )

    def start(self, **request) -> int:
        """Fork a child that saves as ``request`` says; its pid."""
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        return int(self.proc.stdout.readline())

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


@pytest.fixture(scope="module")
def saver() -> Iterator[Saver]:
    s = Saver()
    yield s
    s.close()


def wait_for(condition, timeout: float = 60.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.001)


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def stopped(pid: int) -> bool:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat.rsplit(")", 1)[1].split()[0] in ("T", "t")


def temp_files(folder: Path, pid: int | None = None) -> set[Path]:
    """The writers' temp files in ``folder`` (of process ``pid`` only, when given)."""
    return {p for p in folder.glob(f".*{TEMP_SUFFIX}") if pid is None or f"@{pid}@" in p.name}


def steps_saved(progress: Path) -> list[int]:
    return [int(line) for line in progress.read_text().split()] if progress.exists() else []


def kill_inside_a_write(pid: int, folder: Path) -> None:
    """Stop ``pid`` at random moments until it is caught with a temp file of its own open, then SIGKILL it."""
    for _ in range(500):
        time.sleep(random.uniform(0, 0.01))
        os.kill(pid, signal.SIGSTOP)
        wait_for(lambda: stopped(pid), what="SIGSTOP")
        if temp_files(folder, pid):
            break
        os.kill(pid, signal.SIGCONT)
    os.kill(pid, signal.SIGKILL)


def tmpdir_base(kind: str, tmp_path: Path) -> Path:
    if kind == "same filesystem":
        return tmp_path
    shm = Path("/dev/shm")
    if not shm.is_dir() or not os.access(shm, os.W_OK) or shm.stat().st_dev == tmp_path.stat().st_dev:
        pytest.skip("no writable /dev/shm on a filesystem other than the tmp dir's")
    return Path(tempfile.mkdtemp(prefix="twinloop-kill-", dir=shm))


@pytest.mark.parametrize("tmpdir_on", ["other filesystem", "same filesystem"])
@pytest.mark.xdist_group("saver")
def test_kill_9_during_saves_leaves_only_whole_checkpoints(saver, tmp_path, tmpdir_on):
    """SIGKILL in the middle of checkpoint saves, over and over: every *.ckpt loads with weights_only, the last
    good one survives, nothing is left in $TMPDIR, and temp files beside the checkpoints go at the next save."""
    random.seed(0)
    base = tmpdir_base(tmpdir_on, tmp_path)
    dest = tmp_path / "run" / "checkpoints"
    dest.mkdir(parents=True)
    path = dest / "last.ckpt"
    left_behind: set[Path] = set()
    try:
        for kill in range(KILLS_PER_CASE):
            tmpdir = base / f"tmpdir{kill}"
            tmpdir.mkdir()
            progress = tmp_path / f"progress{kill}"
            writer = ("function", "plugin")[kill % 2]
            pid = saver.start(writer=writer, path=str(path), tmpdir=str(tmpdir), progress=str(progress))
            wait_for(lambda p=progress: steps_saved(p), what="a first save")  # so there is a good checkpoint
            # that save began by removing what the previous kill left beside the checkpoints
            assert not left_behind & temp_files(dest), "a killed writer's temp file survived the next save"
            if kill % 4 < 2:
                kill_inside_a_write(pid, dest)
            else:
                time.sleep(random.uniform(0, 0.2))
                os.kill(pid, signal.SIGKILL)
            wait_for(lambda p=pid: gone(p), what="the killed child to go")
            left_behind = temp_files(dest, pid)
            saved = steps_saved(progress)
            checkpoints = sorted(dest.glob("*.ckpt"))
            assert checkpoints == [path], "a temp file counts as a checkpoint"
            last = torch.load(path, weights_only=True)  # whole: a truncated zip does not load
            assert saved[-1] <= last["step"] <= saved[-1] + 1, "the last good checkpoint was lost"
            assert torch.equal(last["state_dict"]["net.step"], torch.tensor(last["step"]))
            assert not any(tmpdir.iterdir()), f"{writer} left files in $TMPDIR: {list(tmpdir.iterdir())}"
            assert all(p.name.startswith(".") for p in left_behind)
            KILLS.append({"case": tmpdir_on, "writer": writer, "inside_a_write": bool(left_behind)})
    finally:
        if base != tmp_path:
            subprocess.run(["rm", "-rf", str(base)], check=False)
    mine = [k for k in KILLS if k["case"] == tmpdir_on]
    inside = sum(k["inside_a_write"] for k in mine)
    print(f"\n{tmpdir_on}: {len(mine)} kills, {inside} inside a write (temp file open), 0 checkpoints corrupt or lost")
    assert len(mine) == KILLS_PER_CASE and inside >= KILLS_PER_CASE // 2


@pytest.mark.fit
@pytest.mark.slow  # a real fit killed while it saves: 13 s
def test_kill_9_during_a_real_fit_save_keeps_every_checkpoint_whole(tmp_path):
    """A real `twinloop fit` (46 MB resnet18 checkpoints, $TMPDIR on another filesystem) killed inside a
    checkpoint write: every *.ckpt loads with weights_only, and $TMPDIR stays empty."""
    tmpdir = tmpdir_base("other filesystem", tmp_path)
    try:
        args = [
            *FAST,
            "--model.network.backbone=resnet18",
            "--model.pictures.every_n_epochs=0",
            "--trainer.max_epochs=1000",
            "--trainer.limit_train_batches=1",
            "--trainer.limit_val_batches=1",
        ]
        env = {**os.environ, "PYTHONPATH": str(REPO), "TMPDIR": str(tmpdir)}
        proc = subprocess.Popen(
            [sys.executable, "-m", "project", "fit", *args],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        dest = tmp_path / "lightning_logs" / "version_0" / "checkpoints"
        try:
            wait_for(lambda: (dest / "last.ckpt").exists() or proc.poll() is not None, timeout=240, what="last.ckpt")
            assert proc.poll() is None, proc.stderr.read().decode()
            kill_inside_a_write(proc.pid, dest)
        finally:
            proc.kill()
            proc.wait()
        assert proc.returncode == -signal.SIGKILL
        checkpoints = sorted(dest.glob("*.ckpt"))
        assert dest / "last.ckpt" in checkpoints
        for ckpt in checkpoints:
            assert "state_dict" in torch.load(ckpt, weights_only=True), ckpt
        assert temp_files(dest), "the kill did not land inside a write"
        assert not any(tmpdir.iterdir()), list(tmpdir.iterdir())
    finally:
        subprocess.run(["rm", "-rf", str(tmpdir)], check=False)


@pytest.fixture
def previous(tmp_path) -> Path:
    """A good checkpoint, step 1, that a failed save must leave as it is."""
    path = tmp_path / "checkpoints" / "last.ckpt"
    atomic_torch_save({"step": 1, "state_dict": {"w": torch.arange(1000.0)}}, path)
    return path


def assert_intact(path: Path) -> None:
    assert torch.load(path, weights_only=True)["step"] == 1
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name], "a temp file was left"


class HalfFullFile:
    """A file that takes half of what it is given, then fails with ENOSPC, as a filling disk does."""

    def __init__(self, f):
        self.f = f

    def write(self, data) -> int:
        self.f.write(bytes(data[: len(data) // 2]))
        self.f.flush()
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.f.close()


def fill_the_disk(monkeypatch, after: int = 0) -> None:
    """Writes to checkpoint temp files fail with ENOSPC halfway, from the (after + 1)-th file on."""
    real_fdopen, opened = os.fdopen, []

    def fdopen(fd, *args, **kwargs):
        f = real_fdopen(fd, *args, **kwargs)
        if not os.readlink(f"/proc/self/fd/{fd}").endswith(TEMP_SUFFIX):
            return f
        opened.append(fd)
        return HalfFullFile(f) if len(opened) > after else f

    monkeypatch.setattr(os, "fdopen", fdopen)


@pytest.mark.parametrize("failing", ["write", "fsync"])
def test_a_full_disk_names_the_path_and_keeps_the_previous_checkpoint(previous, monkeypatch, failing):
    """ENOSPC halfway through the bytes, or at fsync (delayed allocation): a CheckpointError naming the
    path, the previous checkpoint whole, and no temp file left."""
    with monkeypatch.context() as m:
        if failing == "write":
            fill_the_disk(m)
        else:
            full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            m.setattr(os, "fsync", lambda fd: (_ for _ in ()).throw(full))
        with pytest.raises(CheckpointError, match="No space left on device") as info:
            atomic_torch_save({"step": 2, "state_dict": {"w": torch.zeros(1000)}}, previous)
    assert str(previous) in str(info.value)
    assert_intact(previous)


@pytest.mark.xdist_group("saver")
def test_a_real_write_failure_in_another_process_keeps_the_previous_checkpoint(saver, previous, tmp_path):
    """A real failing write (RLIMIT_FSIZE below the checkpoint's size: EFBIG from the kernel) in a real process."""
    outcome = tmp_path / "outcome"
    pid = saver.start(path=str(previous), tmpdir=str(tmp_path), progress=str(outcome), fsize_limit=1 << 20)
    wait_for(lambda: gone(pid), what="the writer to finish")
    text = outcome.read_text()
    assert text.startswith("CheckpointError: cannot write the checkpoint") and str(previous) in text
    assert "File too large" in text
    assert_intact(previous)


@contextlib.contextmanager
def read_only(folder: Path) -> Iterator[None]:
    """``folder`` made read-only: chmod for a user, the immutable attribute for root (whom chmod does not stop)."""
    if os.geteuid() != 0:
        folder.chmod(0o500)
        try:
            yield
        finally:
            folder.chmod(0o700)
        return
    if subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode != 0:
        pytest.skip("running as root, and chattr +i (the one read-only directory root cannot write) failed here")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(folder)], check=True)


def test_a_read_only_directory_names_the_path_and_keeps_the_previous_checkpoint(previous):
    """Saving into a directory nobody may write: a CheckpointError naming the path, the previous file whole."""
    with read_only(previous.parent), pytest.raises(CheckpointError, match="Operation not permitted|Permission denied"):
        atomic_torch_save({"step": 2, "state_dict": {}}, previous)
    assert_intact(previous)


def test_a_path_under_a_file_names_the_path(tmp_path):
    """A checkpoint path whose parent is a file: a CheckpointError naming the path and the file in the way."""
    (tmp_path / "run").write_text("not a directory")
    with pytest.raises(CheckpointError, match=f"{tmp_path / 'run' / 'last.ckpt'}.*{tmp_path / 'run'}"):
        atomic_torch_save({}, tmp_path / "run" / "last.ckpt")


SHORT_FIT = [
    *FAST,
    "--model.pictures.every_n_epochs=0",
    "--trainer.max_epochs=2",
    "--trainer.limit_train_batches=2",
    "--trainer.limit_val_batches=1",
]


def one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.mark.fit
def test_twinloop_fit_on_a_full_disk_exits_1_naming_the_checkpoint(monkeypatch, capsys):
    """`twinloop fit` whose second epoch's save meets a full disk: exit 1, one `error:` line naming the file,
    and the first epoch's checkpoints whole."""
    with monkeypatch.context() as m:
        fill_the_disk(m, after=2)  # epoch 0 writes best and last
        with pytest.raises(SystemExit) as info:
            main(["fit", *SHORT_FIT])
    line = one_error_line(capsys.readouterr().err)
    assert info.value.code == 1 and "No space left on device" in line and "checkpoints/" in line
    dest = Path("lightning_logs/version_0/checkpoints")
    assert [torch.load(p, weights_only=True)["epoch"] for p in sorted(dest.glob("*.ckpt"))] == [0, 0]
    assert not temp_files(dest)


@pytest.mark.fit
def test_twinloop_fit_into_a_read_only_checkpoint_dir_exits_1_and_keeps_the_old_last(previous, capsys):
    """Checkpoints directed into a read-only directory that holds a last.ckpt: exit 1, one `error:` line
    naming the file, and the old last.ckpt untouched."""
    before = previous.read_bytes()
    dirs = [f"--checkpoint.dirpath={previous.parent}", f"--last_checkpoint.dirpath={previous.parent}"]
    with read_only(previous.parent), pytest.raises(SystemExit) as info:
        main(["fit", *SHORT_FIT, "--trainer.max_epochs=1", *dirs])
    line = one_error_line(capsys.readouterr().err)
    assert info.value.code == 1 and str(previous.parent) in line
    assert previous.read_bytes() == before
    assert_intact(previous)


def test_every_cli_trainer_writes_and_reads_through_the_atomic_checkpoint_io():
    """The CLI gives the Trainer an AtomicCheckpointIO beside the plugins the user names."""
    env = "--trainer.plugins=lightning.pytorch.plugins.environments.LightningEnvironment"
    for args in ([], [env]):
        trainer = TwinloopCLI(args=[*FAST, *args], run=False).trainer
        assert isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO)


def test_a_checkpoint_io_named_in_trainer_plugins_takes_its_place():
    """--trainer.plugins with a CheckpointIO of the user's: that one is used."""
    cli = TwinloopCLI(args=[*FAST, "--trainer.plugins=lightning.pytorch.plugins.TorchCheckpointIO"], run=False)
    assert type(cli.trainer.strategy.checkpoint_io) is TorchCheckpointIO


def test_lightning_cli_still_has_the_hook_that_reads_ckpt_path_first():
    """TwinloopCLI overrides LightningCLI._parse_ckpt_path (a private API) to read --ckpt_path safely first."""
    assert "_parse_ckpt_path" in vars(LightningCLI), "LightningCLI._parse_ckpt_path is gone: see project/cli.py"
