"""Shared test data and settings: image folders written on the fly and the fast-run options."""

from pathlib import Path

import numpy as np
import torch
import torchvision
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"


def compiled_frames(net: torch.nn.Module, steps) -> tuple[int, int]:
    """``net`` compiled afresh with a counting backend, then ``steps()`` run: (graphs dynamo compiled,
    Python frames it traced). A hook it traced shows as frames beyond the network's one."""
    from torch._dynamo.testing import CompileCounter
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    backend = CompileCounter()
    net.compile(backend=backend)
    steps()
    return backend.frame_count, counters["frames"]["total"]


# Small, fast and quiet runs for the tests.
FAST = ["--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]

# Tiny equivalence runs: 216 training digits in batches of 32 -> 7 batches per epoch, the last of
# 24 (smaller than the others), 3 epochs, validation on 4 batches every epoch, shuffling, Dropout and
# BatchNorm all on.
EQUIV = [
    *FAST,
    "--data.val_fraction=0.88",
    "--data.batch_size=32",
    "--trainer.max_epochs=3",
    "--trainer.limit_val_batches=4",
    "--model.pictures.every_n_epochs=0",
]

# (case, largest |Δ|) of every equivalence test, printed after the run by conftest
EQUIVALENCE_RESULTS: list[tuple[str, float]] = []


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


def place_torchvision_weights(torch_home: Path, backbone: str = "resnet18", seed: int = 0) -> dict:
    """A weights file of the right architecture, under the name torchvision expects in torch.hub's cache
    (``$TORCH_HOME/hub/checkpoints/<file name of the weights' url>``); returns its state dict."""
    url = torchvision.models.get_model_weights(backbone).DEFAULT.url
    path = torch_home / "hub" / "checkpoints" / Path(url).name
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    state = torchvision.models.get_model(backbone, weights=None).state_dict()
    torch.save(state, path)
    return state
