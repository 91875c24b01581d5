import os
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path

import pytest
import torch

from tests.helpers import EQUIVALENCE_RESULTS, REPO, make_image_folder

_UNTRACKED = pytest.StashKey[set]()
# pytest-timeout's limit for a slow end-to-end run (the others have pyproject.toml's `timeout`)
SLOW_TIMEOUT_S = 900
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


def _is_xdist_worker(config) -> bool:
    return hasattr(config, "workerinput")


def pytest_sessionstart(session):
    if not _is_xdist_worker(session.config):  # the controller checks for all (-n 2)
        session.config.stash[_UNTRACKED] = _untracked_files()


def pytest_sessionfinish(session, exitstatus):
    """Tests write only under tmp dirs: anything new in the repo fails the run. A pytest-xdist worker
    hands its equivalence results to the controller, which prints them."""
    if _is_xdist_worker(session.config):
        session.config.workeroutput["equivalence_results"] = list(EQUIVALENCE_RESULTS)
        return
    before = session.config.stash.get(_UNTRACKED, None)
    after = _untracked_files()
    if before is None or after is None:
        return
    if new := sorted(after - before):
        print(f"\nERROR: the tests wrote files into the repository: {new[:10]}")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error):
    """pytest-xdist, in the controller: a worker is done; keep its equivalence results for the summary."""
    EQUIVALENCE_RESULTS.extend(tuple(r) for r in getattr(node, "workeroutput", {}).get("equivalence_results", []))


def pytest_terminal_summary(terminalreporter):
    if EQUIVALENCE_RESULTS:
        worst = max(EQUIVALENCE_RESULTS, key=lambda r: r[1])
        terminalreporter.write_line(
            f"equivalence: {len(EQUIVALENCE_RESULTS)} cases compared, largest |Δ| over all of them "
            f"{worst[1]:.3g} ({worst[0]})"
        )


def pytest_configure(config):
    """A pytest-xdist worker (make test runs 2, one per core) runs torch on one thread, and so do the
    processes its tests start, so that the workers do not crowd each other's cores.

    Hypothesis caches under .hypothesis/ in the directory pytest started in (the repo) while it
    collects: point it at a tmp dir of this run instead, unless the caller chose one."""
    if _is_xdist_worker(config):
        os.environ["OMP_NUM_THREADS"] = "1"
        torch.set_num_threads(1)
    if "HYPOTHESIS_STORAGE_DIRECTORY" not in os.environ:
        config.stash[_HYPOTHESIS_DIR] = tempfile.mkdtemp(prefix="twinloop-hypothesis-")
        os.environ["HYPOTHESIS_STORAGE_DIRECTORY"] = config.stash[_HYPOTHESIS_DIR]


@pytest.hookimpl(trylast=True)  # after pytest-xdist's own
def pytest_collection_modifyitems(config, items):
    """A slow run (stop/restart cycles, notebooks, ...) may take minutes on a busy machine: it gets a
    longer pytest-timeout limit than the rest, unless it names one itself.

    `--dist loadgroup` under pytest 9.2: pytest-xdist 3.8 marks a test's group by appending ``@group``
    to ``item._nodeid``, which pytest 9.2 no longer reads (it keeps ``item._id``); the groups were
    scattered over the workers, and each worker trained their shared run again. The suffix is put
    where pytest 9.2 reads it (under an older pytest, xdist's own is there already)."""
    for item in items:
        if item.get_closest_marker("slow") and not item.get_closest_marker("timeout"):
            item.add_marker(pytest.mark.timeout(SLOW_TIMEOUT_S))
    if not getattr(config.option, "loadgroup", False):  # set in a worker of `--dist loadgroup`
        return
    for item in items:
        groups = {
            str(m.args[0] if m.args else m.kwargs.get("name", "default")) for m in item.iter_markers("xdist_group")
        }
        suffix = "@" + "_".join(sorted(groups))
        if groups and not item.nodeid.endswith(suffix) and hasattr(item, "_id"):
            from _pytest.nodeid import NodeId

            item._id = NodeId.parse(item.nodeid + suffix)


def pytest_unconfigure(config):
    if (path := config.stash.get(_HYPOTHESIS_DIR, None)) is not None:
        shutil.rmtree(path, ignore_errors=True)
        os.environ.pop("HYPOTHESIS_STORAGE_DIRECTORY", None)
