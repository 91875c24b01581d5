import os
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path

import pytest

from tests.helpers import EQUIVALENCE_RESULTS, REPO, make_image_folder

_UNTRACKED = pytest.StashKey[set]()
_HYPOTHESIS_DIR = pytest.StashKey[str]()


@pytest.fixture(autouse=True)
def _in_tmp_dir(tmp_path, monkeypatch):
    """Every test runs in its own tmp dir, so logs and checkpoints never land in the repo."""
    monkeypatch.chdir(tmp_path)
    warnings.filterwarnings("ignore", message=".*LightningCLI's args parameter.*")


@pytest.fixture
def image_folder(tmp_path) -> Path:
    return make_image_folder(tmp_path / "images")


def _untracked_files() -> set[str] | None:
    """Paths in the repo that git does not track, ignored ones included (an ignored folder such as
    lightning_logs/ shows as one entry); None outside a git checkout."""
    try:
        out = subprocess.run(
            ["git", "status", "--porcelain", "--ignored", "--untracked-files=normal"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    caches = ("__pycache__", ".pytest_cache", ".ruff_cache", ".ipynb_checkpoints")
    paths = {line[3:] for line in out.splitlines() if line[:2] in ("??", "!!")}
    return {p for p in paths if not any(c in p for c in caches)}


def pytest_sessionstart(session):
    session.config.stash[_UNTRACKED] = _untracked_files()


def pytest_sessionfinish(session, exitstatus):
    """Tests write only under tmp dirs: anything new in the repo fails the run."""
    before = session.config.stash.get(_UNTRACKED, None)
    after = _untracked_files()
    if before is None or after is None:
        return
    if new := sorted(after - before):
        print(f"\nERROR: the tests wrote files into the repository: {new[:10]}")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter):
    if EQUIVALENCE_RESULTS:
        worst = max(EQUIVALENCE_RESULTS, key=lambda r: r[1])
        terminalreporter.write_line(
            f"equivalence: {len(EQUIVALENCE_RESULTS)} cases compared, largest |Δ| over all of them "
            f"{worst[1]:.3g} ({worst[0]})"
        )


def pytest_configure(config):
    """Hypothesis caches under .hypothesis/ in the directory pytest started in (the repo) while it
    collects: point it at a tmp dir of this run instead, unless the caller chose one."""
    if "HYPOTHESIS_STORAGE_DIRECTORY" not in os.environ:
        config.stash[_HYPOTHESIS_DIR] = tempfile.mkdtemp(prefix="twinloop-hypothesis-")
        os.environ["HYPOTHESIS_STORAGE_DIRECTORY"] = config.stash[_HYPOTHESIS_DIR]


def pytest_unconfigure(config):
    if (path := config.stash.get(_HYPOTHESIS_DIR, None)) is not None:
        shutil.rmtree(path, ignore_errors=True)
        os.environ.pop("HYPOTHESIS_STORAGE_DIRECTORY", None)
