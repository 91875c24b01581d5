"""Callbacks the CLI always adds: best/last checkpoints, the predictions CSV, and an out-of-memory hint."""

from __future__ import annotations

import csv
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import BasePredictionWriter, Callback, ModelCheckpoint

from project.errors import out_of_memory_hint


class LatestCheckpoint(ModelCheckpoint):
    """``last.ckpt`` rewritten after every training epoch, whether or not ``val/acc`` improved.

    (A monitored ``ModelCheckpoint(save_last=True)`` only rewrites it when a top-k file is saved,
    so resuming from "last" could silently go back to an older epoch.)
    """

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
        dataset = trainer.datamodule.predict_set
        names = pl_module.class_names
        out = Path(self.output) if self.output else Path(trainer.log_dir or ".") / "predictions.csv"  # every rank asks
        rows = [
            (i, label, p)
            for batch in predictions
            for i, label, p in zip(batch["index"].tolist(), batch["label"].tolist(), batch["probability"].tolist())
        ]
        if trainer.world_size > 1:  # each rank predicted its share of the images: rank 0 writes them all, in order
            shares = [None] * trainer.world_size
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


class OutOfMemoryHint(Callback):
    """Gives a device out-of-memory error the batch size and what to change, for the one-line report."""

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if isinstance(exception, torch.OutOfMemoryError) and trainer.datamodule is not None:
            exception.hint = out_of_memory_hint(trainer.datamodule.batch_size, str(trainer.precision))
