"""The global random number generators' states, to save in a checkpoint and restore on resume.

Lightning saves none of them (#17543), so a resumed run would draw other Dropout masks than the run
it continues. Everything is plain tensors, ints and strings, so ``torch.load(weights_only=True)``
reads it back.
"""

from __future__ import annotations

import random
from typing import cast

import numpy as np
import torch


def capture_rng() -> dict:
    """torch (CPU and every CUDA device), numpy and Python ``random`` states."""
    # The legacy tuple: numpy's stub adds the dict form, which the global MT19937 generator never returns
    legacy = cast("tuple[str, np.ndarray, int, int, float]", np.random.get_state())
    kind, keys, pos, has_gauss, cached_gaussian = legacy
    python_version, python_state, python_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
        "python": {"version": python_version, "state": list(python_state), "gauss": python_gauss},
    }


def restore_rng(state: dict) -> None:
    """Put back what ``capture_rng`` saved (CUDA states only where there are as many devices)."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    keys = n["keys"].numpy().astype(np.uint32)
    np.random.set_state((n["kind"], keys, n["pos"], n["has_gauss"], n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))
