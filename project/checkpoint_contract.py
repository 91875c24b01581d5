"""The one checkpoint contract of both loops: what a checkpoint holds beyond Lightning's own state,
how it is captured, and how a run restores it and learns where it goes on.

Both loops write Lightning's layout (``state_dict`` keys under ``net.``, optimizer and scheduler
states in lists, the data module's state under its class name), so either loop resumes, validates
or exports the other's checkpoints. The extras every checkpoint holds:

- ``best_val_acc``: the best validation accuracy so far (the next "best" must beat it);
- ``class_names``: what each label means (predict and export need them, whatever the data knows);
- ``rng_states``: the global generators (Dropout's), so a resume draws what the run would have;
- ``preprocessing``: what an image goes through before the network (for ``twinloop export``);
- ``train_metrics``: the training epoch's running sums, for a resume inside the epoch;
- ``mid_epoch``: ``{"batches_done": n}`` in a checkpoint written inside an epoch, after n batches;
  written by several processes, also ``world_size`` and each rank's ``train_metrics`` (each rank
  summed its own share of the batches).

Adding a value to every checkpoint is a change to ``capture_extras`` and ``restore_extras``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import lightning
import torch.distributed as dist
from torch import nn

from project.checkpoint_io import check_class_names, check_state_dict_fits, read_checkpoint
from project.errors import CheckpointError, UserPathError
from project.metrics import StageMetrics
from project.rng import capture_rng, restore_rng

BEST_VAL_ACC = "best_val_acc"
CLASS_NAMES = "class_names"
RNG_STATES = "rng_states"
PREPROCESSING = "preprocessing"
TRAIN_METRICS = "train_metrics"
MID_EPOCH = "mid_epoch"


def capture_extras(
    class_names: list[str], val_metrics: StageMetrics, train_metrics: StageMetrics, datamodule: Any | None
) -> dict[str, Any]:
    """The extras of a checkpoint written now (see the module's docstring)."""
    extras = {
        BEST_VAL_ACC: val_metrics.best_acc,
        CLASS_NAMES: list(class_names),
        RNG_STATES: capture_rng(),
        TRAIN_METRICS: train_metrics.running_state(),
    }
    if datamodule is not None:
        extras[PREPROCESSING] = datamodule.preprocessing()
    return extras


def mid_epoch(batches_done: int, train_metrics: StageMetrics | None = None) -> dict[str, Any]:
    """What marks a checkpoint written inside an epoch, after ``batches_done`` of its batches. Under a
    process group, with ``train_metrics``, every rank must call it: it gathers each rank's running
    sums (a collective), and the world size, which a resume must have again."""
    marker: dict[str, Any] = {"batches_done": batches_done}
    if train_metrics is not None and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        running: list[dict | None] = [None] * dist.get_world_size()
        dist.all_gather_object(running, {k: v.cpu() for k, v in train_metrics.running_state().items()})
        marker.update(world_size=dist.get_world_size(), train_metrics=running)
    return {MID_EPOCH: marker}


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def restore_extras(checkpoint: dict, model: Any, val_metrics: StageMetrics, train_metrics: StageMetrics) -> None:
    """Put a checkpoint's extras back: the best score, ``model.class_names``, the running sums of an
    epoch it was written inside, and, last (nothing may draw after it), the RNG states."""
    val_metrics.best_acc = checkpoint.get(BEST_VAL_ACC)
    if checkpoint.get(CLASS_NAMES):
        model.class_names = list(checkpoint[CLASS_NAMES])
    if MID_EPOCH in checkpoint and "train_metrics" in checkpoint[MID_EPOCH]:  # each rank its own sums
        train_metrics.load_running_state(checkpoint[MID_EPOCH]["train_metrics"][rank()])
    elif MID_EPOCH in checkpoint and TRAIN_METRICS in checkpoint:
        train_metrics.load_running_state(checkpoint[TRAIN_METRICS])
    if RNG_STATES in checkpoint:
        restore_rng(checkpoint[RNG_STATES])


@dataclass(frozen=True)
class ResumePoint:
    """Where a resumed run goes on: ``epoch`` from its batch ``batch``, after ``step`` optimizer steps."""

    epoch: int
    batch: int
    step: int

    def __str__(self) -> str:
        return f"epoch {self.epoch}, batch {self.batch} (step {self.step})"


def resume_point(checkpoint: dict, datamodule: Any | None, world_size: int) -> ResumePoint:
    """Where a run resumed from ``checkpoint`` goes on. The data module is told the epoch (its training
    loaders start there) and, inside an epoch, its next training pass becomes the rest of that epoch
    (call it after the data module's ``load_state_dict`` and before its training loader is made); one
    written inside an epoch resumes with as many processes as wrote it (each took its share of the
    order, and goes on with it)."""
    batches_done = checkpoint.get(MID_EPOCH, {}).get("batches_done", 0)
    written_by = checkpoint.get(MID_EPOCH, {}).get("world_size", 1)
    if batches_done and world_size != written_by:
        raise UserPathError(
            f"--ckpt_path: this checkpoint was written inside an epoch by {written_by} process(es), each with its "
            f"share of the epoch's order; resume it with {written_by} (--trainer.devices), or from a checkpoint "
            "of an epoch's end"
        )
    epoch = checkpoint["epoch"] + (0 if batches_done else 1)
    if datamodule is not None:
        datamodule.start_epoch(epoch)
        if batches_done:
            datamodule.continue_epoch(batches_done)
    return ResumePoint(epoch, batches_done, checkpoint["global_step"])


def lightning_state(net: nn.Module, optimizer, scheduler, datamodule, epoch: int, step: int) -> dict[str, Any]:
    """The reference loop's own state in Lightning's layout, so that either loop reads it."""
    return {
        type(datamodule).__qualname__: datamodule.state_dict(),
        "pytorch-lightning_version": lightning.__version__,  # `twinloop validate --ckpt_path` checks it
        "epoch": epoch,
        "global_step": step,
        "state_dict": {f"net.{k}": v for k, v in net.state_dict().items()},
        "optimizer_states": [optimizer.state_dict()],
        "lr_schedulers": [scheduler.state_dict()] if scheduler is not None else [],
    }


def load_network_weights(model: Any, ckpt_path: str, training: bool = False) -> dict:
    """Load a checkpoint's (either loop's) network weights into ``model.net`` and its class names:
    the weights that validated (with EMA, the average), or with ``training`` the weights being
    trained (``current_model_state`` when the checkpoint has one, as EMA writes it);
    tensors and plain data only (``weights_only``), so a checkpoint cannot run code. Before anything
    is loaded, the checkpoint's classes must be the model's (the data's) and its tensors must fit the
    network; any problem is one ``CheckpointError`` naming the file. Returns the checkpoint."""
    try:
        checkpoint = read_checkpoint(ckpt_path)
        check_class_names(checkpoint, model.class_names, ckpt_path)
        weights = (
            checkpoint.get("current_model_state", checkpoint["state_dict"]) if training else checkpoint["state_dict"]
        )
        state = {k.removeprefix("net."): v for k, v in weights.items() if k.startswith("net.")}
        check_state_dict_fits(state, model.net.state_dict(), ckpt_path)
    except CheckpointError as exc:
        raise CheckpointError(f"--ckpt_path: {exc}") from None
    model.net.load_state_dict(state)
    if checkpoint.get(CLASS_NAMES):
        model.class_names = list(checkpoint[CLASS_NAMES])
    return checkpoint
