"""Callbacks the CLI adds: best/last checkpoints, the predictions CSV, and progress lines for a
stdout that is not a terminal."""

from __future__ import annotations

import csv
from functools import cached_property
from pathlib import Path
from typing import cast

import lightning as L
import torch
from lightning.pytorch.callbacks import BasePredictionWriter, ModelCheckpoint, ProgressBar
from lightning.pytorch.trainer.states import TrainerFn

from project.progress import EPOCH_KEYS, EvaluationLines, LineProgress


class EpochCheckpoint(ModelCheckpoint):
    """Lightning's ``ModelCheckpoint``, with nothing to do between epochs when nothing saves there.

    Lightning calls every hook of every callback at every step. With neither
    ``every_n_train_steps`` nor ``train_time_interval`` set, ModelCheckpoint's per-batch hook only
    finds that it has nothing to save, so it returns at once here; and the state key that Lightning
    builds for each callback at each hook it calls is built once (what it is made of is fixed at
    construction). The key keeps the name ``ModelCheckpoint``, so earlier checkpoints resume its state.
    """

    state_key_name = "ModelCheckpoint"
    fitting = True  # set in setup: validate, test and predict save no checkpoint

    @cached_property
    def state_key(self) -> str:
        return self.state_key_name + super().state_key.removeprefix(type(self).__qualname__)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        self.fitting = stage == TrainerFn.FITTING

    def load_state_dict(self, state_dict: dict) -> None:
        # Outside fit there is nothing of the checkpoint's best or last files to go on from (and
        # ModelCheckpoint would warn that the new run's directory is not the one they were saved in).
        if self.fitting:
            super().load_state_dict(state_dict)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx) -> None:
        per_batch = self._every_n_train_steps >= 1 or self._train_time_interval is not None
        if per_batch or not pl_module.automatic_optimization:
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)


class LatestCheckpoint(EpochCheckpoint):
    """``last.ckpt`` rewritten after every training epoch, whether or not ``val/acc`` improved.

    (A monitored ``ModelCheckpoint(save_last=True)`` only rewrites it when a top-k file is saved,
    so resuming from "last" could silently go back to an older epoch.)
    """

    state_key_name = "LatestCheckpoint"

    def __init__(self, dirpath: str | None = None):
        super().__init__(
            dirpath=dirpath,
            filename="last",
            monitor=None,
            save_top_k=1,
            save_on_train_epoch_end=True,
            enable_version_counter=False,
        )


class PredictionCSV(BasePredictionWriter):
    """Writes ``path,class_name,probability`` for every predicted image.

    Args:
        output: CSV file to write; defaults to ``predictions.csv`` in the run's log directory.
    """

    def __init__(self, output: str | None = None):
        super().__init__(write_interval="epoch")
        self.output = output
        self.written: Path | None = None

    def write_on_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, predictions, batch_indices) -> None:
        dataset = trainer.datamodule.predict_set  # type: ignore[attr-defined]  # Lightning's data connector sets it
        names = cast("list[str]", pl_module.class_names)  # a plain attribute, not what nn.Module.__getattr__ returns
        out = Path(self.output) if self.output else Path(trainer.log_dir or ".") / "predictions.csv"  # every rank asks
        rows = [
            (i, label, p)
            for batch in predictions
            for i, label, p in zip(batch["index"].tolist(), batch["label"].tolist(), batch["probability"].tolist())
        ]
        if trainer.world_size > 1:  # each rank predicted its share of the images: rank 0 writes them all, in order
            shares: list = [None] * trainer.world_size  # all_gather_object puts each rank's rows in
            torch.distributed.all_gather_object(shares, rows)
            rows = sorted(row for share in shares for row in share)
        if not trainer.is_global_zero:
            return
        out.parent.mkdir(parents=True, exist_ok=True)
        with out.open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["path", "class_name", "probability"])
            for i, label, p in rows:
                writer.writerow([str(dataset.paths[i]), names[label], f"{p:.6f}"])
        self.written = out
        print(f"Wrote {len(rows)} predictions to {out}")


class LogLinesProgressBar(ProgressBar):
    """Lightning's progress bar for a log file: the plain lines of ``project.progress`` (one every N
    optimizer steps, one per epoch with its validation results; in validate, test and predict one
    every N batches) instead of tqdm's redraws.

    Args:
        every_n_steps: a line every this many optimizer steps (or batches); by default the Trainer's
            ``log_every_n_steps``, the steps TensorBoard gets ``train/loss`` at.
    """

    def __init__(self, every_n_steps: int | None = None):
        super().__init__()
        self.every_n_steps = every_n_steps
        self.enabled = True
        self.lines: LineProgress | None = None
        self.evaluation: EvaluationLines | None = None
        self.validation: dict = {}
        self.last_step = 0

    def disable(self) -> None:
        self.enabled = False

    def enable(self) -> None:
        self.enabled = True

    def every(self, trainer: L.Trainer) -> int:
        return self.every_n_steps or trainer.log_every_n_steps or 50  # type: ignore[attr-defined]  # set by a connector

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.enabled:
            total, step = trainer.estimated_stepping_batches, trainer.global_step
            self.lines = LineProgress(self.every(trainer), total, trainer.max_epochs, first_step=step)
            self.last_step, self.validation = step, {}

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx) -> None:
        if self.lines is None:
            return
        self.lines.add_samples(len(batch[0]))
        if trainer.global_step != self.last_step:  # an optimizer step (not every batch, under accumulation)
            self.last_step = trainer.global_step
            self.lines.on_step(self.last_step, trainer.current_epoch, lambda: float(outputs["loss"]))

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.lines is not None:
            self.lines.on_epoch_end(trainer.current_epoch, trainer.global_step, self.validation)
            self.validation = {}

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.lines = None

    # validate, test and predict on their own (not the validation inside fit)
    def start_evaluation(self, trainer: L.Trainer, stage: str, total: int | float) -> None:
        standalone = trainer.state.fn != TrainerFn.FITTING and not trainer.sanity_checking
        if self.enabled and standalone and total != float("inf"):
            self.evaluation = EvaluationLines(stage, self.every(trainer), int(total))

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.start_evaluation(trainer, "validate", self.total_val_batches)

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.start_evaluation(trainer, "test", sum(trainer.num_test_batches))

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.start_evaluation(trainer, "predict", sum(trainer.num_predict_batches))

    def count_evaluation_batch(self, batch) -> None:
        if self.evaluation is not None:
            self.evaluation.on_batch(len(batch[0]))

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self.count_evaluation_batch(batch)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self.count_evaluation_batch(batch)

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self.count_evaluation_batch(batch)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.lines is not None and not trainer.sanity_checking:
            self.validation = {k: trainer.callback_metrics.get(k) for k in EPOCH_KEYS}
        self.evaluation = None

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.evaluation = None

    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.evaluation = None
