import subprocess
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
_UNTRACKED = pytest.StashKey[set]()
CONFIGS = REPO / "configs"

# Small, fast and quiet runs for the tests.
FAST = ["--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]


@pytest.fixture(autouse=True)
def _in_tmp_dir(tmp_path, monkeypatch):
    """Every test runs in its own tmp dir, so logs and checkpoints never land in the repo."""
    monkeypatch.chdir(tmp_path)
    warnings.filterwarnings("ignore", message=".*LightningCLI's args parameter.*")


def write_image(path: Path, pattern: int, size: tuple[int, int], mode: str) -> None:
    """A class-specific pattern (stripes in one of three directions/colours) in any PIL mode."""
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    base = [(xx // 4) % 2, (yy // 4) % 2, ((xx + yy) // 4) % 2][pattern % 3]
    rgb = np.zeros((h, w, 3), np.uint8)
    rgb[..., pattern % 3] = base * 200 + 40
    img = Image.fromarray(rgb, "RGB")
    if mode == "L":
        img = img.convert("L")
    elif mode == "RGBA":
        img = img.convert("RGBA")
    elif mode == "P":
        img = img.convert("P", palette=Image.ADAPTIVE, colors=16)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)


MODES = [
    ("RGB", ".png", (40, 36)),
    ("L", ".png", (32, 32)),
    ("RGBA", ".png", (48, 40)),
    ("P", ".png", (36, 44)),
    ("RGB", ".jpg", (50, 32)),
    ("L", ".jpeg", (30, 30)),
]


def make_image_folder(root: Path, classes=("circles", "squares", "stripes"), per_class: int = 12) -> Path:
    """root/<class>/*: PNG and JPEG files of mixed sizes and modes (grayscale, RGB, RGBA, palette)."""
    for c, name in enumerate(classes):
        for i in range(per_class):
            mode, ext, size = MODES[i % len(MODES)]
            write_image(root / name / f"{name}_{i}{ext}", c, size, mode)
    return root


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


# Tiny equivalence runs: 216 training digits in batches of 32 -> 7 batches per epoch, the last of
# 24 (smaller than the others), 3 epochs, validation on 4 batches every epoch, shuffling, Dropout and
# BatchNorm all on.
EQUIV = [
    *FAST,
    "--data.val_fraction=0.88",
    "--data.batch_size=32",
    "--trainer.max_epochs=3",
    "--trainer.limit_val_batches=4",
    "--model.log_images_every_n_epochs=0",
]

EQUIVALENCE_RESULTS: list[tuple[str, float]] = []  # (case, largest |Δ|), printed after the run


def pytest_terminal_summary(terminalreporter):
    if EQUIVALENCE_RESULTS:
        worst = max(EQUIVALENCE_RESULTS, key=lambda r: r[1])
        terminalreporter.write_line(
            f"equivalence: {len(EQUIVALENCE_RESULTS)} cases compared, largest |Δ| over all of them "
            f"{worst[1]:.3g} ({worst[0]})"
        )
