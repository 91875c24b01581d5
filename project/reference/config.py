"""A reference run from a twinloop config: the very parser ``twinloop`` uses (seeding included),
the same model and data classes, and a ``ReferenceTrainer`` in the place of Lightning's Trainer."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from project.cli import TwinloopCLI
from project.data import ImageDataModule
from project.module import ImageClassifier
from project.monitoring import run_hparams
from project.reference.settings import TrainerSettings, refuse_unsupported
from project.reference.trainer import ReferenceTrainer


class _NoTrainerCLI(TwinloopCLI):
    """Parses and instantiates model and data exactly like ``twinloop``, without a Trainer."""

    def instantiate_trainer(self, **kwargs):
        return None


@dataclass
class ReferenceRun:
    """A model, its data and the reference trainer, built from one config."""

    model: ImageClassifier
    datamodule: ImageDataModule
    trainer: ReferenceTrainer


def load_run(args: list[str], log_dir: Path | None = None, callbacks: Sequence = ()) -> ReferenceRun:
    """Parse ``-c CONFIG`` and overrides like ``twinloop`` does, refuse what the reference loop
    cannot mirror, and build the parts."""
    with warnings.catch_warnings():  # it is meant: the arguments come from this command, not sys.argv
        warnings.filterwarnings("ignore", message=".*LightningCLI's args parameter.*")
        cli = _NoTrainerCLI(args=args, run=False)
    config = cli.config.as_dict()
    refuse_unsupported(config, cli.parser.get_defaults().as_dict())
    requeue_signal = (config.get("preemption") or {}).get("requeue_signal", "SIGUSR1")
    settings = TrainerSettings.from_config(config["trainer"])
    trainer = ReferenceTrainer(settings, log_dir, run_hparams(config), callbacks, requeue_signal)
    return ReferenceRun(cli.model, cli.datamodule, trainer)
