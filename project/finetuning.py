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


def optimizer_parameters(net: nn.Module, freeze_backbone_epochs: int, backbone_lr_scale: float) -> list:
    """What the optimizer is built on: all parameters in one group, or, when fine-tuning, a ``head``
    group and a ``backbone`` group whose learning rate ``build_optimization`` scales by ``lr_scale``."""
    if freeze_backbone_epochs == 0 and backbone_lr_scale == 1.0:
        return list(net.parameters())
    backbone, head = split_backbone(net)
    return [
        {"params": head, "name": "head"},
        {"params": backbone, "name": "backbone", "lr_scale": backbone_lr_scale},
    ]


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
