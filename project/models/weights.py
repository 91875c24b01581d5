"""What pretrained weights are, whichever library names them (torchvision in ``pretrained``, timm in
``timm_backbones``): a weights file read into a state dict, loaded into a network whose classifier
head is made for the data's classes, and the preprocessing they expect.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from project.checkpoint_io import check_state_dict_fits, read_checkpoint
from project.errors import CheckpointError, ConfigError, DataUnavailableError, UserPathError

log = logging.getLogger(__name__)

WEIGHTS_FILE_SUFFIXES = (".pth", ".pt", ".ckpt", ".safetensors")


class WeightsUnavailableError(DataUnavailableError):
    """Pretrained weights that are neither in the cache nor downloadable; the message says where to put them."""


@dataclass(frozen=True)
class Preprocessing:
    """What pretrained weights expect of an image: the shorter side resized to ``resize``, a
    ``crop`` x ``crop`` centre crop, then normalized with ``mean`` and ``std`` (RGB)."""

    resize: int
    crop: int
    mean: tuple[float, ...]
    std: tuple[float, ...]


def is_weights_file(weights: str) -> bool:
    """``model.network.weights`` names a file (by its suffix or a path separator), not a weights enum."""
    return weights.lower().endswith(WEIGHTS_FILE_SUFFIXES) or "/" in weights or os.sep in weights


def read_weights_file(path: str) -> dict:
    """A state dict from a file: a twinloop/Lightning checkpoint (``state_dict`` under ``net.``), a
    torchvision reference checkpoint (``model``) or a bare state dict; tensors only (``weights_only``)."""
    file = Path(path)
    if not file.is_file():
        raise UserPathError(f"model.network.weights: no such file: {path}")
    if file.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(file))
    try:
        checkpoint = read_checkpoint(file)
    except CheckpointError as exc:
        if "has no state_dict" not in str(exc):
            raise CheckpointError(f"model.network.weights: {exc}") from None
        checkpoint = torch.load(file, map_location="cpu", weights_only=True)
        state = checkpoint.get("model", checkpoint) if isinstance(checkpoint, Mapping) else None
        if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise CheckpointError(f"model.network.weights: {path} holds no state dict of tensors") from None
        return dict(state)
    state = checkpoint["state_dict"]
    return {k.removeprefix("net."): v for k, v in state.items() if k.startswith("net.")} or dict(state)


def head_name(net: nn.Module) -> str:
    """The classifier head: the last ``nn.Linear`` of the network, the layer that gives the logits."""
    linear = [name for name, m in net.named_modules() if isinstance(m, nn.Linear)]
    if not linear:
        raise ConfigError(f"model.network.weights: {type(net).__name__} has no linear classifier head to replace")
    return linear[-1]


def load_pretrained(net: nn.Module, state: Mapping, source: str, fresh: tuple[str, ...] = ()) -> None:
    """Load ``state`` into ``net`` strictly, except the classifier head (and the modules named in
    ``fresh``, such as a replaced stem), which keep their fresh initialisation: any other key that is
    missing, unexpected or of another shape is an error naming it. A 1-channel stem takes the sum
    of the pretrained RGB filters (a gray image is R = G = B)."""
    skip = (head_name(net), *fresh)

    def keep(key: str) -> bool:
        return not any(key.startswith(f"{name}.") for name in skip)

    expected = {k: v for k, v in net.state_dict().items() if keep(k)}
    found = {k: v for k, v in state.items() if keep(k)}
    for key, value in found.items():
        want = expected.get(key)
        if want is not None and value.dim() == 4 and want.shape[1] == 1 and value.shape[1] == 3:
            found[key] = value.sum(dim=1, keepdim=True)
    try:
        check_state_dict_fits(found, expected, source, f"this {type(net).__name__} beyond its head {skip[0]}", "")
    except CheckpointError as exc:
        raise CheckpointError(f"model.network.weights: {exc}") from None
    net.load_state_dict(found, strict=False)
    log.info("loaded %s into %s; fresh: %s", source, type(net).__name__, ", ".join(skip))
