"""The LightningModule: a thin wrapper around a pure network from ``project.models``."""

from __future__ import annotations

from typing import Literal

import lightning as L
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.loggers import TensorBoardLogger
from torch import Tensor

from project import monitoring
from project.errors import check_finite_loss
from project.factory import build_criterion, build_optimization, default_optimizer
from project.finetuning import BackboneFreeze, optimizer_parameters
from project.metrics import StageMetrics, build_stage_metrics
from project.models import build_network
from project.rng import capture_rng, restore_rng


class ImageClassifier(L.LightningModule):
    """Image classifier; Lightning's Trainer runs the loop around it.

    Args:
        num_classes: linked from the data module.
        in_channels: linked from the data module.
        backbone: ``simple_cnn``, a torchvision classification model name (resnet18, ...), or
            ``timm/<name>`` with the optional ``timm`` extra.
        weights: pretrained weights: null (none), ``DEFAULT``, a torchvision weights name
            (``IMAGENET1K_V1``), a timm pretrained tag, or a .pth/.ckpt/.safetensors file. The head
            is made anew for the data's classes; the rest must load strictly.
        freeze_backbone_epochs: train only the classifier head for this many first epochs, with the
            backbone frozen (its BatchNorm statistics too); then all of it.
        backbone_lr_scale: the backbone's learning rate as a fraction of the optimizer's (the head's).
        small_input_stem: 3x3 stride-1 stem and no max-pool, for 32 px inputs.
        dropout: dropout rate of the classifier head.
        label_smoothing: cross-entropy label smoothing.
        optimizer: builds the optimizer from the parameters.
        lr_scheduler: builds a scheduler from the optimizer; OneCycleLR may omit ``total_steps``.
        scheduler_interval: step the scheduler every ``epoch`` or every optimizer ``step``.
        class_names: linked from the data module; used by predictions and pictures.
        log_images_every_n_epochs: confusion matrix and misclassified grid every N validation
            epochs (0 turns pictures off).
        num_misclassified_images: how many misclassified validation images to show.
        channels_last: keep the network's weights (and so its activations) in channels-last
            memory format, what tensor cores want under bf16/fp16.
        compile: ``torch.compile`` the network with this mode (``default``, ``reduce-overhead``,
            ``max-autotune``); null runs it eagerly. Both loops then train the compiled network.
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 1,
        backbone: str = "simple_cnn",
        small_input_stem: bool = False,
        dropout: float = 0.25,
        label_smoothing: float = 0.0,
        optimizer: OptimizerCallable = default_optimizer,
        lr_scheduler: LRSchedulerCallable | None = None,
        scheduler_interval: Literal["epoch", "step"] = "epoch",
        class_names: list[str] | None = None,
        log_images_every_n_epochs: int = 1,
        num_misclassified_images: int = 16,
        channels_last: bool = False,
        compile: Literal["default", "reduce-overhead", "max-autotune"] | None = None,
        weights: str | None = None,
        freeze_backbone_epochs: int = 0,
        backbone_lr_scale: float = 1.0,
    ):
        super().__init__()
        self.save_hyperparameters(ignore=["optimizer", "lr_scheduler"])
        self.net = build_network(
            backbone, num_classes, in_channels, small_input_stem, dropout, channels_last, compile, weights
        )
        self.backbone_freeze = BackboneFreeze(self.net, freeze_backbone_epochs)
        self.criterion = build_criterion(label_smoothing)
        self.optimizer_factory = optimizer
        self.scheduler_factory = lr_scheduler
        self.scheduler_interval = scheduler_interval
        self.class_names = class_names or [str(i) for i in range(num_classes)]
        self.log_images_every_n_epochs = log_images_every_n_epochs
        self.train_metrics, self.val_metrics, self.test_metrics = (
            build_stage_metrics(stage, num_classes, num_misclassified_images) for stage in ("train", "val", "test")
        )
        self.pictures: monitoring.PictureLog | None = None  # set in setup, from the data's statistics
        self._finite_check: tuple[Tensor, int] | None = None  # this step's loss and batch, for backward

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def setup(self, stage: str) -> None:
        if (dm := getattr(self.trainer, "datamodule", None)) is not None:
            # Some data sets name their classes only once their files are read; a checkpoint's
            # class names, restored after this, take precedence.
            self.class_names = list(dm.class_names)
            self.pictures = monitoring.PictureLog(self.log_images_every_n_epochs, dm.mean, dm.std)
            # The model summary shows input and output sizes and counts FLOPs on this.
            self.example_input_array = torch.zeros(1, dm.in_channels, *dm.input_hw)

    def configure_optimizers(self):
        hp = self.hparams
        optimizer, scheduler = build_optimization(
            optimizer_parameters(self.net, hp.freeze_backbone_epochs, hp.backbone_lr_scale),
            self.optimizer_factory,
            self.scheduler_factory,
            self.trainer.estimated_stepping_batches,
        )
        if scheduler is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": self.scheduler_interval}}

    def on_train_epoch_start(self) -> None:
        # Lightning >= 2.2 keeps whatever mode the model was left in; a model the user put in eval
        # mode would otherwise train with frozen BatchNorm statistics and no dropout.
        self.train()
        self.backbone_freeze.set_epoch(self.current_epoch)  # from the epoch alone: a resume freezes alike

    def _shared_step(self, batch, metrics: StageMetrics) -> Tensor:
        x, y = batch
        logits = self(x)
        loss = self.criterion(logits, y)
        metrics.update(logits, y, loss, images=x)
        return loss

    def training_step(self, batch, batch_idx: int) -> Tensor:
        loss = self._shared_step(batch, self.train_metrics)
        self._finite_check = loss.detach(), batch_idx  # checked in backward, before the optimizer step
        every, step = self.trainer.log_every_n_steps, self.global_step
        if every and (step + 1) % every == 0:  # the steps Lightning writes; self.log costs on every call
            self.log("train/loss", loss, on_step=True, on_epoch=False, prog_bar=True)
        if self.pictures is not None and not self.pictures.inputs_logged and (writer := self._writer()) is not None:
            self.pictures.log_inputs(writer, batch[0], step)
        return loss

    def backward(self, loss: Tensor, *args, **kwargs) -> None:
        super().backward(loss, *args, **kwargs)
        # Once the backward pass is queued, so that on a GPU the wait for this one number overlaps it
        # rather than holding it back; still before the optimizer step lets the gradients reach the weights.
        step_loss, batch_idx = self._finite_check
        check_finite_loss(step_loss, lambda: f"epoch {self.current_epoch}, batch {batch_idx} (step {self.global_step})")

    def on_train_epoch_end(self) -> None:
        self.log_dict(self.train_metrics.compute())
        self.train_metrics.reset()

    def validation_step(self, batch, batch_idx: int) -> None:
        self._shared_step(batch, self.val_metrics)

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:  # the pre-fit sanity pass is not an epoch of its own
            self.val_metrics.reset()
            return
        results = self.val_metrics.compute()
        check_finite_loss(results["val/loss"], f"the validation of epoch {self.current_epoch}")  # before any checkpoint
        self.val_metrics.record_best(float(results["val/acc"]))
        summary = self.val_metrics.epoch_summary(self.class_names)
        per_class = {k: float(summary.pop(k)) for k in list(summary) if k.startswith("val/acc_class/")}
        self.log_dict({k: summary.pop(k) for k in ("val/loss", "val/acc")}, prog_bar=True)
        self.log_dict(summary)
        if self.logger is not None:
            # Straight to the logger, at the step Lightning writes val/acc (the last step done): each
            # key self.log registers costs Lightning about a millisecond every epoch, 100 of them on CIFAR-100.
            self.logger.log_metrics(per_class, step=max(self.global_step - 1, 0))
        if (writer := self._writer()) is not None:
            self.pictures.log_validation(
                writer, self.val_metrics, self.class_names, self.current_epoch, self.global_step
            )
        self.val_metrics.reset()

    def test_step(self, batch, batch_idx: int) -> None:
        self._shared_step(batch, self.test_metrics)

    def on_test_epoch_end(self) -> None:
        self.log_dict(self.test_metrics.compute())
        self.test_metrics.reset()

    def predict_step(self, batch, batch_idx: int) -> dict[str, Tensor]:
        x, index = batch
        prob = torch.softmax(self(x).float(), dim=1)
        confidence, label = prob.max(dim=1)
        return {"index": index, "label": label, "probability": confidence}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["best_val_acc"] = self.val_metrics.best_acc
        checkpoint["class_names"] = list(self.class_names)  # predict needs them, whatever its data module knows
        checkpoint["rng_states"] = capture_rng()  # Dropout's, for a resume that draws what the run would have
        if (dm := self.trainer.datamodule) is not None:  # what `twinloop export` tells a consumer to do to images
            checkpoint["preprocessing"] = dm.preprocessing()
        checkpoint["train_metrics"] = self.train_metrics.running_state()  # the epoch so far, for a resume inside it

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.val_metrics.best_acc = checkpoint.get("best_val_acc")
        if checkpoint.get("class_names"):
            self.class_names = list(checkpoint["class_names"])
        if "rng_states" in checkpoint:
            restore_rng(checkpoint["rng_states"])
        if "mid_epoch" in checkpoint and "train_metrics" in checkpoint:
            self.train_metrics.load_running_state(checkpoint["train_metrics"])

    def _writer(self):
        """The TensorBoard writer for pictures: rank 0 of a run with a data module's statistics."""
        logger = self.logger
        if isinstance(logger, TensorBoardLogger) and self.trainer.is_global_zero and self.pictures is not None:
            return logger.experiment
        return None
