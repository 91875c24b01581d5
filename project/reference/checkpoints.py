"""The reference trainer's checkpoints, in Lightning's layout, so that either loop reads the other's:
``state_dict`` keys under ``net.``, optimizer and scheduler states in lists, the data module's state
under its class name, plus the class names and the RNG states a resume needs."""

from __future__ import annotations

import lightning

from project.checkpoint_io import check_class_names, check_state_dict_fits, read_checkpoint
from project.errors import CheckpointError
from project.module import ImageClassifier
from project.rng import capture_rng


def checkpoint_dict(model: ImageClassifier, datamodule, optimizer, scheduler, epoch: int, steps: int, best) -> dict:
    """A checkpoint in Lightning's layout (``state_dict`` keys under ``net.``, the data module's state
    under its class name), so either loop reads it, with the RNG states a resume needs."""
    return {
        type(datamodule).__qualname__: datamodule.state_dict(),
        "rng_states": capture_rng(),
        "pytorch-lightning_version": lightning.__version__,  # `twinloop validate --ckpt_path` checks it
        "epoch": epoch,
        "global_step": steps,
        "state_dict": {f"net.{k}": v for k, v in model.net.state_dict().items()},
        "optimizer_states": [optimizer.state_dict()],
        "lr_schedulers": [scheduler.state_dict()] if scheduler is not None else [],
        "best_val_acc": best,
        "class_names": list(model.class_names),
        "preprocessing": datamodule.preprocessing(),
    }


def load_checkpoint(model: ImageClassifier, ckpt_path: str) -> dict:
    """Load a Lightning (or reference) checkpoint's network weights and class names; tensors and
    plain data only (``weights_only``), so a checkpoint cannot run code.

    Before anything is loaded, the checkpoint's classes must be the model's (which ``_setup`` took
    from the data) and its tensors must fit the network; any problem is one ``CheckpointError``
    naming the file.
    """
    try:
        checkpoint = read_checkpoint(ckpt_path)
        check_class_names(checkpoint, model.class_names, ckpt_path)
        state = {k.removeprefix("net."): v for k, v in checkpoint["state_dict"].items() if k.startswith("net.")}
        check_state_dict_fits(state, model.net.state_dict(), ckpt_path)
    except CheckpointError as exc:
        raise CheckpointError(f"--ckpt_path: {exc}") from None
    model.net.load_state_dict(state)
    if checkpoint.get("class_names"):
        model.class_names = list(checkpoint["class_names"])
    return checkpoint
