"""The reference loop: the textbook PyTorch training loop, with nothing hidden.

Read top to bottom: ``train_one_epoch`` -> ``evaluate`` -> ``fit``. Every argument is explicit.
It does by hand what Lightning's Trainer does for ``ImageClassifier``, in the same order:

- training: ``model.train()``, batch to device, ``zero_grad`` at the start of each accumulation
  window, forward and loss (under autocast for mixed precision), ``backward`` of loss / N,
  then at the end of a window (or of the epoch): clip, ``optimizer.step()``, per-step scheduler;
- evaluation: ``model.eval()`` under ``torch.no_grad()``.

Mixed precision is always set up and switched off by ``precision``: an ``autocast`` that is not
enabled and a ``GradScaler(enabled=False)`` pass everything through unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import nullcontext
from itertools import islice

import torch
from torch import Tensor, nn
from torch.optim.lr_scheduler import ReduceLROnPlateau

from project.ema import WeightEMA
from project.errors import ConfigError, check_finite_loss
from project.metrics import StageMetrics

AUTOCAST_DTYPES = {"32-true": None, "bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}


def autocast(device: torch.device, precision: str) -> torch.autocast:
    """Mixed precision runs forward and loss under autocast; 32-true runs them as they are."""
    return torch.autocast(device.type, dtype=AUTOCAST_DTYPES[precision], enabled=precision != "32-true")


def grad_scaler(device: torch.device, precision: str) -> torch.amp.GradScaler:
    """Loss scaling for fp16 only; bf16 and fp32 have the range to do without."""
    return torch.amp.GradScaler(device.type, enabled=precision == "16-mixed")


def batches(loader: Iterable, device: torch.device, limit: int) -> Iterator[tuple[Tensor, Tensor]]:
    """The first ``limit`` batches of ``loader``, moved to ``device`` (from pinned memory, without
    waiting for the copy; a batch already there stays as it is)."""
    for x, y in islice(loader, limit):
        yield x.to(device, non_blocking=True), y.to(device, non_blocking=True)


def clip_gradients(model: nn.Module, value: float | None, algorithm: str) -> None:
    """Gradient clipping by total norm or by value; ``value=None`` leaves the gradients alone."""
    if not value:
        return
    if algorithm == "norm":
        nn.utils.clip_grad_norm_(model.parameters(), value)
    else:
        nn.utils.clip_grad_value_(model.parameters(), value)


def train_one_epoch(
    model: nn.Module,
    loader: Iterable,
    criterion: nn.Module,
    optimizer: torch.optim.Optimizer,
    device: torch.device,
    metrics: StageMetrics,
    *,
    num_batches: int,
    precision: str,
    scaler: torch.amp.GradScaler,
    scheduler: torch.optim.lr_scheduler.LRScheduler | ReduceLROnPlateau | None = None,
    scheduler_interval: str = "epoch",
    accumulate_grad_batches: int = 1,
    gradient_clip_val: float | None = None,
    gradient_clip_algorithm: str = "norm",
    augment: Callable[[Tensor], Tensor] | None = None,
    mix: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]] | None = None,
    ema: WeightEMA | None = None,
    on_step: Callable[[Tensor], None] | None = None,
    epoch: int = 0,
    first_batch: int = 0,
    max_steps: int | None = None,
    after_batch: Callable[[int], bool] | None = None,
) -> dict[str, Tensor]:
    """One pass over the training data; returns the epoch's training metrics. A non-finite loss
    stops it before its gradients reach the weights. A resumed epoch starts at ``first_batch``
    (the loader starts there too). ``mix`` turns labels into mixed class probabilities (MixUp,
    CutMix); ``ema`` averages the weights after each optimizer step. ``max_steps``: the pass ends
    after that many optimizer steps (what is left of the trainer's ``max_steps``). ``after_batch``
    runs after each batch, with the number done: a validation inside the epoch when one is due
    (Lightning's ``val_check_interval``), the time limit; it returns True to end the pass there."""
    model.train()
    if first_batch == 0:  # a resumed epoch goes on with the sums its checkpoint held
        metrics.reset()
    steps = 0
    for i, (x, y) in enumerate(batches(loader, device, num_batches - first_batch), start=first_batch):
        if augment is not None:
            x = augment(x)
        if mix is not None:
            x, y = mix(x, y)
        if i % accumulate_grad_batches == 0:
            optimizer.zero_grad()
        with autocast(device, precision):
            output = model(x)
            loss = criterion(output, y)
        metrics.update(output, y, loss)
        scaler.scale(loss / accumulate_grad_batches).backward()  # the window's mean gradient
        check_finite_loss(loss, f"epoch {epoch}, batch {i}")  # after backward is queued: a GPU waits less
        if (i + 1) % accumulate_grad_batches == 0 or i + 1 == num_batches:
            scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
            clip_gradients(model, gradient_clip_val, gradient_clip_algorithm)
            scaler.step(optimizer)
            scaler.update()
            if ema is not None:
                ema.update(model)
            if scheduler is not None and scheduler_interval == "step":
                scheduler.step()
            if on_step is not None:
                on_step(loss.detach())
            steps += 1
        if after_batch is not None and after_batch(i + 1):
            break
        if steps == max_steps:
            break
    return metrics.compute()


def validate(
    model: nn.Module,
    loader: Iterable,
    criterion: nn.Module,
    device: torch.device,
    metrics: StageMetrics,
    *,
    num_batches: int,
    precision: str,
    ema: WeightEMA | None = None,
) -> dict[str, Tensor]:
    """``evaluate`` on the validation data, with the averaged weights when there is an ``ema``."""
    with ema.swapped(model) if ema is not None else nullcontext():
        return evaluate(model, loader, criterion, device, metrics, num_batches=num_batches, precision=precision)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: Iterable,
    criterion: nn.Module,
    device: torch.device,
    metrics: StageMetrics,
    *,
    num_batches: int,
    precision: str = "32-true",
) -> dict[str, Tensor]:
    """Loss and accuracy over the evaluation data, with the model in eval mode and no gradients."""
    model.eval()
    metrics.reset()
    for x, y in batches(loader, device, num_batches):
        with autocast(device, precision):
            output = model(x)
            loss = criterion(output, y)
        metrics.update(output, y, loss, images=x)
    return metrics.compute()


def fit(
    model: nn.Module,
    train_loader: Iterable,
    val_loader: Iterable,
    criterion: nn.Module,
    optimizer: torch.optim.Optimizer,
    device: torch.device,
    train_metrics: StageMetrics,
    val_metrics: StageMetrics,
    *,
    max_epochs: int,
    max_steps: int = -1,
    first_epoch: int = 0,
    first_batch: int = 0,
    first_step: int = 0,
    num_train_batches: int,
    num_val_batches: int,
    precision: str,
    scheduler: torch.optim.lr_scheduler.LRScheduler | ReduceLROnPlateau | None = None,
    scheduler_interval: str = "epoch",
    check_val_every_n_epoch: int = 1,
    monitor: str = "val/loss",
    ema: WeightEMA | None = None,
    on_epoch_end: Callable[[int, dict, dict | None], bool] | None = None,
    should_stop: Callable[[], bool] = lambda: False,
    val_check_batch: int = 0,
    **train_options,
) -> None:
    """Train epochs ``first_epoch`` (0 unless resuming; from its batch ``first_batch``, optimizer
    step ``first_step``) to ``max_epochs - 1``, validating every ``check_val_every_n_epoch`` epochs
    (never when ``num_val_batches`` is 0, as with Lightning's ``limit_val_batches=0``), with the
    averaged weights when there is an ``ema``. A ``ReduceLROnPlateau`` steps on the latest
    validation's ``monitor`` value. With ``max_steps`` (-1: none), training ends after that
    optimizer step; an epoch it cuts short ends there, without its validation, as Lightning's does.
    ``should_stop()``: training stops where the epoch ended (``train_options``' ``after_batch``: early
    stopping at a validation inside it, the time limit), as Lightning's ``trainer.should_stop``.
    ``val_check_batch``: the epoch's end validates when its batches are a multiple of it.

    ``on_epoch_end(epoch, train_results, val_results_or_None)`` is where the caller logs and saves
    checkpoints; it returns True to stop training after this epoch (early stopping).
    ``train_options`` (accumulation, clipping, scaler, augmentation, ``on_step``) go to
    ``train_one_epoch`` as they are.
    """
    model.to(device)
    monitored: dict = {}
    every = train_options.get("accumulate_grad_batches", 1)
    step = first_step
    for epoch in range(first_epoch, max_epochs):
        start = first_batch if epoch == first_epoch else 0
        epoch_steps = -(-num_train_batches // every) - start // every  # what is left of the epoch
        steps_left = max_steps - step if max_steps >= 0 else epoch_steps
        if steps_left <= 0:
            break
        train_results = train_one_epoch(
            model,
            train_loader,
            criterion,
            optimizer,
            device,
            train_metrics,
            num_batches=num_train_batches,
            precision=precision,
            scheduler=scheduler,
            scheduler_interval=scheduler_interval,
            epoch=epoch,
            first_batch=start,
            max_steps=steps_left,
            ema=ema,
            **train_options,
        )
        step += min(epoch_steps, steps_left)
        val_results = None
        whole = steps_left >= epoch_steps and not should_stop()
        val_every = val_check_batch or num_train_batches  # the last batch, if a multiple
        if (
            whole
            and num_train_batches % val_every == 0
            and (epoch + 1) % check_val_every_n_epoch == 0
            and num_val_batches
        ):
            val_results = validate(
                model,
                val_loader,
                criterion,
                device,
                val_metrics,
                num_batches=num_val_batches,
                precision=precision,
                ema=ema,
            )
            monitored = val_results
        # before the epoch's scheduler step, as Lightning saves checkpoints
        stop = on_epoch_end is not None and on_epoch_end(epoch, train_results, val_results)
        if isinstance(scheduler, ReduceLROnPlateau):
            scheduler.step(plateau_value(monitored, monitor))
        elif scheduler is not None and scheduler_interval == "epoch":
            scheduler.step()
        if stop or should_stop() or 0 <= max_steps <= step:
            break
    if ema is not None:
        ema.copy_to(model)  # training ends with the averaged weights, as Lightning's callback leaves them


def plateau_value(results: dict, monitor: str) -> Tensor:
    """The validation value a ``ReduceLROnPlateau`` steps on, or the error Lightning raises without it."""
    if monitor not in results:
        raise ConfigError(
            f"model.monitor: ReduceLROnPlateau steps on {monitor!r}, which no validation has given yet "
            f"(it gave: {sorted(results)}); validate every epoch"
        )
    return results[monitor]
