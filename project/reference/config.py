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
from project.reference.refusal import refuse_unsupported
from project.reference.settings import TrainerSettings
from project.reference.trainer import ReferenceTrainer


class _NoTrainerCLI(TwinloopCLI):
    """Parses and instantiates model and data exactly like ``twinloop``, without a Trainer."""

    def __init__(self, *args, checkpoint_brings_weights: bool = False, **kwargs):
        self.checkpoint_brings_weights = checkpoint_brings_weights  # read while parsing, in __init__
        super().__init__(*args, **kwargs)

    def instantiate_trainer(self, **kwargs):
        return None


class _ConfigOnlyCLI(TwinloopCLI):
    """Parses a config exactly like ``twinloop``, and builds nothing."""

    def instantiate_classes(self) -> None:
        pass


def read_config(args: list[str]) -> dict:
    """The resolved config of ``-c CONFIG`` and overrides, as ``twinloop`` reads it (nothing built)."""
    with warnings.catch_warnings():  # it is meant: the arguments come from this command, not sys.argv
        warnings.filterwarnings("ignore", message=".*LightningCLI's args parameter.*")
        return _ConfigOnlyCLI(args=args, run=False).config.as_dict()


@dataclass
class ReferenceRun:
    """A model, its data and the reference trainer, built from one config."""

    model: ImageClassifier
    datamodule: ImageDataModule
    trainer: ReferenceTrainer


def load_run(
    args: list[str], log_dir: Path | None = None, callbacks: Sequence = (), checkpoint_brings_weights: bool = False
) -> ReferenceRun:
    """Parse ``-c CONFIG`` and overrides like ``twinloop`` does, refuse what the reference loop
    cannot mirror, and build the parts. ``checkpoint_brings_weights``: a checkpoint will be loaded,
    so pretrained weights are not (as ``twinloop`` does under ``--ckpt_path``)."""
    with warnings.catch_warnings():  # it is meant: the arguments come from this command, not sys.argv
        warnings.filterwarnings("ignore", message=".*LightningCLI's args parameter.*")
        cli = _NoTrainerCLI(args=args, run=False, checkpoint_brings_weights=checkpoint_brings_weights)
    config = cli.config.as_dict()
    refuse_unsupported(config, cli.parser.get_defaults().as_dict())
    requeue_signal = (config.get("preemption") or {}).get("requeue_signal", "SIGUSR1")
    settings = TrainerSettings.from_config(config["trainer"], checkpoint=config["checkpoint"])
    trainer = ReferenceTrainer(settings, log_dir, run_hparams(config), callbacks, requeue_signal)
    return ReferenceRun(cli.model, cli.datamodule, trainer)
