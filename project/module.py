"""The LightningModule: Lightning glue around a pure network from ``project.models``. What both loops
share lives elsewhere: the network spec (``project.specs``), the metrics, the epoch report and the
checkpoint contract."""

from __future__ import annotations

from typing import Literal

import lightning as L
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.loggers import MLFlowLogger, TensorBoardLogger
from torch import Tensor

from project import checkpoint_contract as contract
from project.ema import ema_callback
from project.epoch_report import report_epoch
from project.errors import check_finite_loss
from project.factory import build_criterion, build_optimization, default_optimizer, steps_per_epoch
from project.finetuning import BackboneFreeze
from project.metrics import StageMetrics, build_stage_metrics
from project.monitoring import PictureLog
from project.specs import EMASpec, NetworkSpec, PictureSpec, WarmupSpec, as_spec, plain

# The checkpoint key that names the run's MLflow runs (one for each MLFlowLogger, in order): MLflow
# keeps a run under an id of its own, not in a version folder, so a resumed run finds it here.
MLFLOW_RUNS = "mlflow_run_ids"


class ImageClassifier(L.LightningModule):
    """Image classifier; Lightning's Trainer runs the loop around it.

    Args:
        num_classes, in_channels, class_names, input_hw: linked from the data module (``input_hw``:
            the images' (H, W) when known before reading them).
        network: the network and how its backbone trains (``--model.network.*``).
        label_smoothing: cross-entropy label smoothing.
        optimizer: builds the optimizer from the parameters.
        lr_scheduler: builds a scheduler from the optimizer; OneCycleLR may omit ``total_steps``.
        scheduler_interval: step the scheduler every ``epoch`` or every optimizer ``step``.
        pictures: the validation pictures in TensorBoard (``--model.pictures.*``).
        warmup: a learning-rate warm-up in front of the scheduler (``--model.warmup.*``).
        ema: an exponential moving average of the weights, which validates (``--model.ema.*``).
        monitor: what ReduceLROnPlateau steps on: ``val/loss`` or ``val/acc`` (its ``mode`` to match).
        lr: the learning rate, in place of the optimizer's ``lr`` (null: the optimizer's); the
            ``LearningRateFinder`` callback sets it.
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 1,
        class_names: list[str] | None = None,
        network: NetworkSpec = NetworkSpec(),  # noqa: B008 (frozen: one shared default is safe)
        label_smoothing: float = 0.0,
        optimizer: OptimizerCallable = default_optimizer,
        lr_scheduler: LRSchedulerCallable | None = None,
        scheduler_interval: Literal["epoch", "step"] = "epoch",
        pictures: PictureSpec = PictureSpec(),  # noqa: B008
        warmup: WarmupSpec = WarmupSpec(),  # noqa: B008
        ema: EMASpec = EMASpec(),  # noqa: B008
        monitor: Literal["val/loss", "val/acc"] = "val/loss",
        input_hw: tuple[int, int] | None = None,
        lr: float | None = None,
    ):
        super().__init__()
        self.save_hyperparameters(ignore=["optimizer", "lr_scheduler"])
        # checkpoints hold plain data
        self.hparams.update(network=plain(network), pictures=plain(pictures), warmup=plain(warmup), ema=plain(ema))
        self.network, self.picture_spec = as_spec(NetworkSpec, network), as_spec(PictureSpec, pictures)
        self.warmup, self.ema, self.monitor = as_spec(WarmupSpec, warmup), as_spec(EMASpec, ema), monitor
        self.net = self.network.build(num_classes, in_channels, input_hw)
        self.backbone_freeze = BackboneFreeze(self.net, self.network.freeze_backbone_epochs)
        self.criterion = build_criterion(label_smoothing)
        self.optimizer_factory, self.scheduler_factory = optimizer, lr_scheduler
        self.scheduler_interval, self.lr = scheduler_interval, lr
        self.class_names = class_names or [str(i) for i in range(num_classes)]
        self.train_metrics, self.val_metrics, self.test_metrics = (
            build_stage_metrics(stage, num_classes, self.picture_spec.num_misclassified)
            for stage in ("train", "val", "test")
        )
        self.pictures: PictureLog | None = None  # set in setup, from the data's statistics
        self._step_loss: tuple[Tensor, int] = (torch.zeros(()), 0)  # this step's, for on_after_backward

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def setup(self, stage: str) -> None:
        if (dm := getattr(self.trainer, "datamodule", None)) is not None:
            self.class_names = list(dm.class_names)  # known once files are read; a checkpoint's come after
            self.pictures = PictureLog(self.picture_spec.every_n_epochs, dm.mean, dm.std)
            self.example_input_array = torch.zeros(1, dm.in_channels, *dm.input_hw)

    def configure_optimizers(self):
        total = self.trainer.estimated_stepping_batches  # sets up the training data: its length is known next
        optimizer, scheduler = build_optimization(
            self.network.optimizer_parameters(self.net),
            self.optimizer_factory,
            self.scheduler_factory,
            int(total),
            self.warmup,
            steps_per_epoch(int(self.trainer.num_training_batches), self.trainer.accumulate_grad_batches),
            self.scheduler_interval,
            self.lr,
        )
        if scheduler is None:
            return optimizer
        # LightningCLI's own ReduceLROnPlateau names its monitor; torch's takes model.monitor
        monitor = getattr(scheduler, "monitor", self.monitor)
        config = {"scheduler": scheduler, "interval": self.scheduler_interval, "monitor": monitor}
        return {"optimizer": optimizer, "lr_scheduler": config}

    def configure_callbacks(self):
        # Lightning's own EMA: it validates and checkpoints the average (the module's weights meanwhile
        # are the ones trained, under current_model_state)
        return [ema_callback(self.ema, self.trainer.strategy.root_device)] if self.ema.decay is not None else []

    def on_train_epoch_start(self) -> None:
        self.train()  # Lightning >= 2.2 keeps the mode a user left: eval would freeze BatchNorm, drop Dropout
        self.backbone_freeze.set_epoch(self.current_epoch)  # from the epoch alone: a resume freezes alike

    def _shared_step(self, batch, metrics: StageMetrics) -> Tensor:
        x, y = batch
        logits = self(x)
        loss = self.criterion(logits, y)
        metrics.update(logits, y, loss, images=x)
        return loss

    def training_step(self, batch, batch_idx: int) -> Tensor:
        loss = self._shared_step(batch, self.train_metrics)
        self._step_loss = loss.detach(), batch_idx  # checked once backward is queued, before the step
        every, step = self.trainer.log_every_n_steps, self.global_step  # type: ignore[attr-defined]  # set by a connector
        if every and (step + 1) % every == 0:  # the steps Lightning writes; self.log costs on every call
            self.log("train/loss", loss, on_step=True, on_epoch=False, prog_bar=True)
        if self.pictures is not None and not self.pictures.inputs_logged and (writer := self._writer()) is not None:
            self.pictures.log_inputs(writer, batch[0], step)
        return loss

    def on_after_backward(self) -> None:
        # After the backward pass is queued, so that on a GPU the wait for this one number overlaps
        # it; before the optimizer step, so that a NaN never reaches the weights.
        loss, batch_idx = self._step_loss
        check_finite_loss(loss, lambda: f"epoch {self.current_epoch}, batch {batch_idx} (step {self.global_step})")

    def on_train_epoch_end(self) -> None:
        self.log_dict(self.train_metrics.compute())
        self.train_metrics.reset()

    def validation_step(self, batch, batch_idx: int) -> None:
        self._shared_step(batch, self.val_metrics)

    def on_validation_epoch_end(self) -> None:
        if not self.trainer.sanity_checking:  # the pre-fit sanity pass is not an epoch of its own
            writer = self._writer()
            pictures = self.pictures if writer is not None else None  # drawn where they are written
            report = report_epoch(self.val_metrics, self.current_epoch, self.class_names, pictures)
            self.log_dict(report.shown, prog_bar=True)
            self.log_dict(report.scalars)
            for logger in self.loggers:  # at val/acc's step; each self.log key costs ~1 ms an epoch, 100 on CIFAR-100
                logger.log_metrics(report.per_class, step=max(self.global_step - 1, 0))
            if writer is not None:
                report.write_pictures(writer, self.global_step)
        self.val_metrics.reset()

    def test_step(self, batch, batch_idx: int) -> None:
        self._shared_step(batch, self.test_metrics)

    def on_test_epoch_end(self) -> None:
        self.log_dict(report_epoch(self.test_metrics, self.current_epoch, self.class_names).scalars)
        self.test_metrics.reset()

    def predict_step(self, batch, batch_idx: int) -> dict[str, Tensor]:
        x, index = batch
        prob = torch.softmax(self(x).float(), dim=1)
        confidence, label = prob.max(dim=1)
        return {"index": index, "label": label, "probability": confidence}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        dm = self.trainer.datamodule  # type: ignore[attr-defined]  # Lightning's data connector sets it
        checkpoint.update(contract.capture_extras(self.class_names, self.val_metrics, self.train_metrics, dm))
        if run_ids := [logger.run_id for logger in self.loggers if isinstance(logger, MLFlowLogger)]:
            checkpoint[MLFLOW_RUNS] = run_ids  # MLflow keeps a run by its id: a resumed run goes on in it

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        contract.restore_extras(checkpoint, self, self.val_metrics, self.train_metrics)

    def _writer(self):
        """The TensorBoard writer for pictures: rank 0 of a run with a data module's statistics."""
        logger = self.logger
        if isinstance(logger, TensorBoardLogger) and self.trainer.is_global_zero and self.pictures is not None:
            return logger.experiment
        return None
