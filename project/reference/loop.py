"""The reference loop: the textbook PyTorch training loop, with nothing hidden.

Read top to bottom: ``train_one_epoch`` -> ``evaluate`` -> ``fit``. Every argument is explicit.
It does by hand what Lightning's Trainer does for ``ImageClassifier``, in the same order:

- training: ``model.train()``, batch to device, ``zero_grad`` at the start of each accumulation
  window, forward and loss (under autocast for mixed precision), ``backward`` of loss / N,
  then at the end of a window (or of the epoch): clip, ``optimizer.step()``, per-step scheduler;
- evaluation: ``model.eval()`` under ``torch.no_grad()``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.utils.data import DataLoader

from project.metrics import StageMetrics

AUTOCAST_DTYPES = {"32-true": None, "bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}


def autocast(device: torch.device, precision: str) -> torch.autocast:
    """Mixed precision runs forward and loss under autocast; 32-true runs them as they are."""
    return torch.autocast(device.type, dtype=AUTOCAST_DTYPES[precision], enabled=precision != "32-true")


def num_batches(loader: DataLoader, limit: int | float = 1.0) -> int:
    """Batches per epoch under ``limit_*_batches``: a fraction of the loader, or a count."""
    if isinstance(limit, float):
        return int(len(loader) * limit)
    return min(len(loader), limit)


def train_one_epoch(
    model: nn.Module,
    loader: DataLoader,
    criterion: nn.Module,
    optimizer: torch.optim.Optimizer,
    device: torch.device,
    metrics: StageMetrics,
    *,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    scheduler_interval: str = "epoch",
    accumulate_grad_batches: int = 1,
    gradient_clip_val: float | None = None,
    gradient_clip_algorithm: str = "norm",
    precision: str = "32-true",
    scaler: torch.amp.GradScaler | None = None,
    augment: Callable | None = None,
    limit_batches: int | float = 1.0,
    on_step: Callable[[torch.Tensor], None] | None = None,
) -> dict[str, torch.Tensor]:
    """One pass over the training data; returns the epoch's training metrics."""
    model.train()
    n = num_batches(loader, limit_batches)
    for i, (x, y) in enumerate(loader):
        if i == n:
            break
        x, y = x.to(device), y.to(device)
        if augment is not None:
            x = augment(x)
        if i % accumulate_grad_batches == 0:
            optimizer.zero_grad()
        with autocast(device, precision):
            output = model(x)
            loss = criterion(output, y)
        metrics.update(output, y, loss)
        # Sum of the window's gradients, scaled like a mean over the window.
        scaled = loss / accumulate_grad_batches
        (scaler.scale(scaled) if scaler is not None else scaled).backward()
        if (i + 1) % accumulate_grad_batches == 0 or i + 1 == n:
            if scaler is not None:
                scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
            if gradient_clip_val:
                if gradient_clip_algorithm == "norm":
                    torch.nn.utils.clip_grad_norm_(model.parameters(), gradient_clip_val)
                else:
                    torch.nn.utils.clip_grad_value_(model.parameters(), gradient_clip_val)
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            if scheduler is not None and scheduler_interval == "step":
                scheduler.step()
            if on_step is not None:
                on_step(loss.detach())
    return metrics.compute()


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: DataLoader,
    criterion: nn.Module,
    device: torch.device,
    metrics: StageMetrics,
    *,
    precision: str = "32-true",
    limit_batches: int | float = 1.0,
) -> dict[str, torch.Tensor]:
    """Loss and accuracy over the evaluation data, with the model in eval mode and no gradients."""
    model.eval()
    metrics.reset()
    n = num_batches(loader, limit_batches)
    for i, (x, y) in enumerate(loader):
        if i == n:
            break
        x, y = x.to(device), y.to(device)
        with autocast(device, precision):
            output = model(x)
            loss = criterion(output, y)
        metrics.update(output, y, loss, images=x)
    return metrics.compute()


def fit(
    model: nn.Module,
    train_loader: DataLoader,
    val_loader: DataLoader,
    criterion: nn.Module,
    optimizer: torch.optim.Optimizer,
    device: torch.device,
    train_metrics: StageMetrics,
    val_metrics: StageMetrics,
    *,
    max_epochs: int,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    scheduler_interval: str = "epoch",
    check_val_every_n_epoch: int = 1,
    limit_val_batches: int | float = 1.0,
    on_epoch_end: Callable[[int, dict, dict | None], None] | None = None,
    **train_kwargs,
) -> None:
    """Train for ``max_epochs``, validating every ``check_val_every_n_epoch`` epochs.

    ``on_epoch_end(epoch, train_results, val_results_or_None)`` is where the caller logs and
    saves checkpoints; ``train_kwargs`` go to ``train_one_epoch``.
    """
    model.to(device)
    precision = train_kwargs.get("precision", "32-true")
    for epoch in range(max_epochs):
        train_metrics.reset()
        train_results = train_one_epoch(
            model,
            train_loader,
            criterion,
            optimizer,
            device,
            train_metrics,
            scheduler=scheduler,
            scheduler_interval=scheduler_interval,
            **train_kwargs,
        )
        val_results = None
        # limit_val_batches=0 turns validation off, as in Lightning
        if (epoch + 1) % check_val_every_n_epoch == 0 and num_batches(val_loader, limit_val_batches) > 0:
            val_results = evaluate(
                model, val_loader, criterion, device, val_metrics, precision=precision, limit_batches=limit_val_batches
            )
        if on_epoch_end is not None:  # before the epoch's scheduler step, as Lightning saves checkpoints
            on_epoch_end(epoch, train_results, val_results)
        if scheduler is not None and scheduler_interval == "epoch":
            scheduler.step()
