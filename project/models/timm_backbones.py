"""``model.network.backbone: timm/<name>``: timm's networks, with the optional ``timm`` extra.

``model.network.weights`` means what it means for torchvision: ``DEFAULT`` (timm's default pretrained tag),
a tag (``a1_in1k``), or a file. Hub weights are ``model.safetensors`` in the Hugging Face cache,
downloaded there on first use; offline and not cached, the error names the file, the directory and
how to put it there. As for torchvision, the head is made for the data's classes, gray input takes
the sum of the RGB filters, and the rest loads strictly.
"""

from __future__ import annotations

import math
import socket
from pathlib import Path

from torch import nn

from project.errors import ConfigError, MissingPackageError
from project.models.weights import (
    Preprocessing,
    WeightsUnavailableError,
    is_weights_file,
    load_pretrained,
    read_weights_file,
)

HUB_FILE = "model.safetensors"
HUB_HOST = "huggingface.co"


def import_timm():
    try:
        import timm
    except ImportError:
        raise MissingPackageError(
            "model.network.backbone timm/<name> needs timm, which is not installed: pip install 'twinloop[timm]'"
        ) from None
    return timm


def pretrained_name(name: str, weights: str) -> str:
    """``resnet18`` + ``DEFAULT`` -> timm's default tag for it (``resnet18.a1_in1k``); + ``a1_in1k`` -> that."""
    timm = import_timm()
    full = name if weights == "DEFAULT" else f"{name.split('.')[0]}.{weights}"
    cfg = timm.models.get_pretrained_cfg(full)
    if cfg is None or not (cfg.hf_hub_id or cfg.url):
        tags = [n.split(".", 1)[1] for n in timm.list_pretrained(f"{name.split('.')[0]}.*")]
        raise ConfigError(
            f"model.network.weights: timm has no pretrained weights {weights!r} for {name}; "
            f"choose DEFAULT{', ' if tags else ''}{', '.join(tags[:10])}, or a .pth/.safetensors file"
        )
    return f"{cfg.architecture}.{cfg.tag}" if cfg.tag else cfg.architecture


def timm_preprocessing(backbone: str, weights: str) -> Preprocessing:
    """timm's evaluation preprocessing of the weights: resize to input / crop_pct, centre crop, mean, std."""
    timm = import_timm()
    cfg = timm.models.get_pretrained_cfg(pretrained_name(backbone.removeprefix("timm/"), weights))
    size = cfg.input_size[-1]
    return Preprocessing(math.floor(size / (cfg.crop_pct or 1.0)), size, tuple(cfg.mean), tuple(cfg.std))


def hub_cache() -> Path:
    import huggingface_hub.constants

    return Path(huggingface_hub.constants.HF_HUB_CACHE)


def hub_weights_file(full_name: str) -> Path:
    """The weights' file in the Hugging Face cache, downloaded there first if need be."""
    import huggingface_hub

    timm = import_timm()
    repo = timm.models.get_pretrained_cfg(full_name).hf_hub_id
    cache = hub_cache()
    cached = huggingface_hub.try_to_load_from_cache(repo, HUB_FILE, cache_dir=cache)
    if isinstance(cached, str):
        return Path(cached)
    folder = cache / f"models--{repo.replace('/', '--')}"
    hint = (
        f"model.network.weights {full_name} (timm) needs {HUB_FILE} of {repo}, which is not in {folder} and could "
        f"not be downloaded ({{why}}). On a machine with network, run `hf download {repo} {HUB_FILE}` and copy its "
        f"models--{repo.replace('/', '--')} folder into {cache} (set $HF_HOME to keep it elsewhere), "
        f"or download {HUB_FILE} and pass --model.network.weights FILE.safetensors"
    )
    try:
        socket.create_connection((HUB_HOST, 443), timeout=3).close()
    except OSError as exc:
        raise WeightsUnavailableError(hint.format(why=f"cannot reach {HUB_HOST}: {exc}")) from None
    try:
        return Path(huggingface_hub.hf_hub_download(repo, HUB_FILE, cache_dir=cache))
    except Exception as exc:
        raise WeightsUnavailableError(hint.format(why=f"{type(exc).__name__}: {exc}")) from None


def build_timm_network(name: str, num_classes: int, in_channels: int, dropout: float, weights: str | None) -> nn.Module:
    """A timm network for ``num_classes`` and ``in_channels``, from scratch or from ``weights``."""
    timm = import_timm()
    if name.split(".")[0] not in timm.list_models():
        raise ConfigError(f"Unknown backbone 'timm/{name}': timm has no model {name!r}")
    options = {"num_classes": num_classes, "in_chans": in_channels, "drop_rate": dropout}
    net = timm.create_model(name, pretrained=False, **options)
    if weights is None:
        return net
    if is_weights_file(weights):
        state, source = read_weights_file(weights), weights
    else:
        file = hub_weights_file(pretrained_name(name, weights))
        state, source = read_weights_file(str(file)), str(file)
    # not timm's own loading: with a new head it loads the rest non-strictly, and a mismatch would pass
    load_pretrained(net, state, source)
    return net
