"""torchvision's pretrained weights: ``model.network.weights`` as torchvision's weights API names them, from
torch.hub's cache; and the preprocessing that goes with any backbone's weights (timm's from
``timm_backbones``). Weights files, the new head and the strict loading are ``weights``'s.

torchvision's weights are files in ``$TORCH_HOME/hub/checkpoints`` (torch.hub's cache), downloaded
there on first use. Without network and without the file, the error names the file, the
directory, and how to put it there.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from urllib.parse import urlparse

import torch
import torchvision

from project.errors import ConfigError
from project.models.timm_backbones import timm_preprocessing
from project.models.weights import Preprocessing, WeightsUnavailableError, is_weights_file


def torchvision_weights(backbone: str, weights: str) -> torchvision.models.WeightsEnum:
    """``DEFAULT``, ``IMAGENET1K_V1`` or ``ResNet18_Weights.IMAGENET1K_V1`` for ``backbone``."""
    try:
        choices = torchvision.models.get_model_weights(backbone)
    except (KeyError, ValueError):
        raise ConfigError(f"model.network.weights: torchvision has no pretrained weights for {backbone!r}") from None
    try:
        return choices.verify(weights)
    except (KeyError, ValueError):
        names = ", ".join(["DEFAULT", *(w.name for w in choices)])
        raise ConfigError(
            f"model.network.weights: {backbone} has no weights {weights!r}; choose one of {names}, or a .pth/.ckpt file"
        ) from None


def preprocessing_of(backbone: str, weights: str | None) -> Preprocessing | None:
    """The resize, crop, mean and std that ``weights`` (torchvision's, or timm's for ``timm/<name>``)
    were trained with; None for no weights or a weights file (a file does not say)."""
    if weights is None or is_weights_file(weights):
        return None
    if backbone.startswith("timm/"):
        return timm_preprocessing(backbone, weights)
    transform = torchvision_weights(backbone, weights).transforms()
    return Preprocessing(
        resize=int(transform.resize_size[0]),
        crop=int(transform.crop_size[0]),
        mean=tuple(float(m) for m in transform.mean),
        std=tuple(float(s) for s in transform.std),
    )


def cached_weights_file(url: str) -> Path:
    """Where torch.hub keeps the file of ``url``: ``$TORCH_HOME/hub/checkpoints/<file name of the url>``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)


def fetch_torchvision_state(backbone: str, weights: str) -> tuple[dict, str]:
    """The state dict of torchvision's ``weights`` for ``backbone`` from torch.hub's cache, downloaded
    there first if need be (with torchvision's hash check); and a name for messages."""
    enum = torchvision_weights(backbone, weights)
    path = cached_weights_file(enum.url)
    what = f"model.network.weights {weights} ({backbone}: {type(enum).__name__}.{enum.name})"
    if not path.is_file():
        download_weights(enum.url, path, what)
    return torch.load(path, map_location="cpu", weights_only=True), str(path)


def download_weights(url: str, path: Path, what: str) -> None:
    """Download ``url`` to ``path`` (torch.hub checks the hash its file name carries); offline, fail
    within seconds with where the file has to go."""
    hint = (
        f"{what} needs the file {path.name}, which is not in {path.parent} and could not be downloaded ({{why}}). "
        f"On a machine with network, download {url} and copy it to {path} (set $TORCH_HOME to keep it elsewhere), "
        f"or pass --model.network.weights FILE.pth"
    )
    parsed = urlparse(url)
    try:  # a quick probe, so that an offline machine fails in seconds, not after minutes of retries
        socket.create_connection((parsed.hostname, parsed.port or 443), timeout=3).close()
    except OSError as exc:
        raise WeightsUnavailableError(hint.format(why=f"cannot reach {parsed.hostname}: {exc}")) from None
    path.parent.mkdir(parents=True, exist_ok=True)
    prefix = torch.hub.HASH_REGEX.search(path.name)
    try:
        torch.hub.download_url_to_file(url, str(path), prefix.group(1) if prefix else None, progress=True)
    except Exception as exc:  # HTTP, URL and hash errors all mean the same to the user
        raise WeightsUnavailableError(hint.format(why=f"{type(exc).__name__}: {exc}")) from None
