"""The one place where the loss, metrics, optimizer and scheduler are built.

The LightningModule and the reference loop both call these, so neither has its own copy.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import ConstantLR, LinearLR, LRScheduler, ReduceLROnPlateau, SequentialLR

from project.errors import ConfigError
from project.specs import WarmupSpec

OptimizerFactory = Callable[[Iterable], Optimizer]
SchedulerFactory = Callable[[Optimizer], LRScheduler]


# SGD with Nesterov momentum and weight decay: the default of the CLI (configs/digits.yaml spells
# the same values out) and, through default_optimizer, of ImageClassifier used from Python.
DEFAULT_OPTIMIZER: dict[str, Any] = {
    "class_path": "torch.optim.SGD",
    "init_args": {"lr": 0.05, "momentum": 0.9, "nesterov": True, "weight_decay": 5.0e-4},
}


def default_optimizer(params: Iterable) -> Optimizer:
    return torch.optim.SGD(params, **DEFAULT_OPTIMIZER["init_args"])


def build_criterion(label_smoothing: float = 0.0) -> nn.Module:
    # Logits go straight in: cross_entropy applies log-softmax itself.
    return nn.CrossEntropyLoss(label_smoothing=label_smoothing)


def build_optimization(
    params: Iterable,
    optimizer_factory: OptimizerFactory,
    scheduler_factory: SchedulerFactory | None,
    total_steps: int,
    warmup: WarmupSpec | None = None,
    epoch_steps: int = 1,
    interval: str = "epoch",
    lr: float | None = None,
) -> tuple[Optimizer, LRScheduler | ReduceLROnPlateau | None]:
    """Optimizer and optional scheduler; ``total_steps`` fills in OneCycleLR when the config omits it.

    Parameter groups with an ``lr_scale`` (the backbone's when fine-tuning) get that fraction of the
    learning rate, and of OneCycleLR's ``max_lr``, before the scheduler reads them. A ``warmup``
    comes first (``SequentialLR``; alone without a scheduler), for its epochs or steps counted in
    the scheduler's ``interval`` (an epoch is ``epoch_steps`` optimizer steps), and the scheduler
    then starts from its own step 0. An ``lr`` (``model.lr``) replaces the optimizer's own."""
    optimizer = optimizer_factory(params)
    scales = [group.get("lr_scale", 1.0) for group in optimizer.param_groups]
    for group, scale in zip(optimizer.param_groups, scales):
        group["lr"] = (group["lr"] if lr is None else lr) * scale
    warmup_steps = warmup_length(warmup, epoch_steps, interval) if warmup is not None else 0
    main = None
    if scheduler_factory is not None:
        extra: dict[str, int | list[float]] = {}
        if needs_total_steps(scheduler_factory):
            extra["total_steps"] = total_steps - warmup_steps
        max_lr = (getattr(scheduler_factory, "keywords", None) or {}).get("max_lr")
        if isinstance(max_lr, (int, float)) and any(s != 1.0 for s in scales):
            extra["max_lr"] = [max_lr * s for s in scales]
        main = scheduler_factory(optimizer, **extra)
        if isinstance(main, ReduceLROnPlateau) and interval != "epoch":
            raise ConfigError("model.scheduler_interval: ReduceLROnPlateau steps once an epoch, on a validation value")
    if not warmup_steps or warmup is None:
        return optimizer, main
    if isinstance(main, ReduceLROnPlateau):
        raise ConfigError("model.warmup: ReduceLROnPlateau cannot follow a warm-up; use a scheduler of the epochs")
    first: LRScheduler = (
        LinearLR(optimizer, warmup.start_factor, 1.0, total_iters=warmup_steps)
        if warmup.method == "linear"
        else ConstantLR(optimizer, warmup.start_factor, total_iters=warmup_steps)
    )
    if main is None:
        return optimizer, first
    return optimizer, SequentialLR(optimizer, [first, main], milestones=[warmup_steps])


def warmup_length(warmup: WarmupSpec, epoch_steps: int, interval: str) -> int:
    """The warm-up in scheduler steps: epochs, or optimizer steps when the scheduler steps per step."""
    if interval == "step":
        return warmup.steps or warmup.epochs * epoch_steps
    if warmup.steps:
        raise ConfigError(
            f"model.warmup.steps: {warmup.steps} steps of warm-up need model.scheduler_interval: step "
            "(or give model.warmup.epochs)"
        )
    return warmup.epochs


def needs_total_steps(scheduler_factory: SchedulerFactory) -> bool:
    """A factory whose scheduler takes ``total_steps`` (OneCycleLR) but was given neither it nor
    ``epochs``: the config's init arguments, which the factory carries as keywords, say so."""
    arguments = getattr(scheduler_factory, "keywords", None) or {}
    return "total_steps" in arguments and arguments["total_steps"] is None and arguments.get("epochs") is None


def steps_per_epoch(num_batches: int, accumulate_grad_batches: int) -> int:
    """Optimizer steps in an epoch of ``num_batches``: a partial window at its end steps too."""
    return -(-num_batches // accumulate_grad_batches)


def stepping_batches(num_batches: int, accumulate_grad_batches: int, max_epochs: int, max_steps: int = -1) -> int:
    """Optimizer steps in a whole run, counted the way Lightning's ``estimated_stepping_batches`` does
    (at most ``max_steps`` when it is not -1)."""
    steps = steps_per_epoch(num_batches, accumulate_grad_batches) * max(max_epochs, 1)
    return steps if max_steps == -1 else min(steps, max_steps)
