"""Fine-tuning: the backbone (everything but the classifier head) frozen for the first epochs, then
trained with the head at ``backbone_lr_scale`` times the learning rate.

Both loops use these. The optimizer gets its two parameter groups (head, backbone) from the start,
so nothing is added to it when the backbone thaws: a frozen parameter has no gradient, and the
optimizer skips it (no step, no weight decay, no momentum). Whether the backbone is frozen is a
function of the epoch alone, set at the start of every epoch, so a resumed run is frozen exactly
as the uninterrupted one was (Lightning's ``BackboneFinetuning`` re-freezes on resume, L#21901).

A frozen backbone's BatchNorm layers stay in eval mode (running statistics neither used from the
batch nor updated) even when the loop calls ``model.train()``: a forward pre-hook puts them back.
"""

from __future__ import annotations

from typing import Any

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from project.models.weights import head_name


def split_backbone(net: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(backbone, head) parameters: the head is the last linear layer (``head_name``)."""
    head = head_name(net)
    backbone: list[nn.Parameter] = []
    top: list[nn.Parameter] = []
    for name, p in net.named_parameters():
        (top if name.startswith(f"{head}.") else backbone).append(p)
    return backbone, top


def optimizer_parameters(
    net: nn.Module,
    freeze_backbone_epochs: int,
    backbone_lr_scale: float,
    norm_weight_decay: float | None = None,
    bias_weight_decay: float | None = None,
) -> list:
    """What the optimizer is built on: all parameters in one group, or, when fine-tuning, a ``head``
    group and a ``backbone`` group whose learning rate ``build_optimization`` scales by ``lr_scale``.
    With ``norm_weight_decay`` or ``bias_weight_decay``, each group is split in turn (``/norm``,
    ``/bias``) into groups with that weight decay, as torchvision's ``set_weight_decay`` splits them."""
    fine_tuning = freeze_backbone_epochs != 0 or backbone_lr_scale != 1.0
    if not fine_tuning and norm_weight_decay is None and bias_weight_decay is None:
        return list(net.parameters())
    groups: list[dict[str, Any]]
    if fine_tuning:
        backbone, head = split_backbone(net)
        groups = [
            {"params": head, "name": "head"},
            {"params": backbone, "name": "backbone", "lr_scale": backbone_lr_scale},
        ]
    else:
        groups = [{"params": list(net.parameters()), "name": "all"}]
    kinds = decay_kinds(net)
    decays = {"norm": norm_weight_decay, "bias": bias_weight_decay}
    out = []
    for group in groups:
        for kind in ("other", "norm", "bias"):
            params = [p for p in group["params"] if kinds[id(p)] == kind]
            decay = decays.get(kind)
            if params:
                name = group["name"] if kind == "other" or decay is None else f"{group['name']}/{kind}"
                extra = {"weight_decay": decay} if decay is not None else {}
                out.append({**group, "params": params, "name": name, **extra})
    return _merged(out)


def _merged(groups: list[dict]) -> list[dict]:
    """Groups of one name (a kind whose decay is the optimizer's) as one group, in first-seen order."""
    by_name: dict[str, dict] = {}
    for group in groups:
        if group["name"] in by_name:
            by_name[group["name"]]["params"] += group["params"]
        else:
            by_name[group["name"]] = {**group, "params": list(group["params"])}
    return list(by_name.values())


NORM_LAYERS = (_BatchNorm, nn.LayerNorm, nn.GroupNorm, nn.modules.instancenorm._InstanceNorm, nn.LocalResponseNorm)


def decay_kinds(net: nn.Module) -> dict[int, str]:
    """Each parameter's kind, by ``id``: ``norm`` (a normalization layer's weight or bias), ``bias``
    (another layer's bias) or ``other``."""
    kinds = {}
    for module in net.modules():
        for name, p in module.named_parameters(recurse=False):
            kinds[id(p)] = "norm" if isinstance(module, NORM_LAYERS) else "bias" if name == "bias" else "other"
    return kinds


class BackboneFreeze:
    """Freezes ``net``'s backbone during epochs ``0 .. epochs - 1``: no gradients, and BatchNorm in
    eval mode. ``set_epoch(epoch)`` at the start of every training epoch does it."""

    def __init__(self, net: nn.Module, epochs: int):
        self.epochs = epochs
        self.frozen = False
        self.backbone, _ = split_backbone(net) if epochs > 0 else ([], [])
        head = head_name(net) if epochs > 0 else None
        self.batch_norms = [
            m for name, m in net.named_modules() if isinstance(m, _BatchNorm) and head and not name.startswith(head)
        ]
        for bn in self.batch_norms:  # model.train() may come after set_epoch: the hook has the last word
            bn.register_forward_pre_hook(self._keep_eval)

    def set_epoch(self, epoch: int) -> None:
        self.frozen = epoch < self.epochs
        for p in self.backbone:
            p.requires_grad_(not self.frozen)
        if self.frozen:
            for bn in self.batch_norms:
                bn.eval()

    def _keep_eval(self, module: nn.Module, args) -> None:
        if self.frozen and module.training:
            module.eval()
