"""Lightning's debug switches through the CLI: `fast_dev_run` and `overfit_batches` work in the
Lightning path as Lightning's docs say, and the reference loop, which does not mirror them, refuses
each by name before any work."""

from pathlib import Path

import pytest
from lightning.pytorch.loggers.logger import DummyLogger

from project.cli import TwinloopCLI
from project.errors import ConfigError
from project.reference.config import load_run
from tests.helpers import FAST


def test_fast_dev_run_trains_and_validates_n_batches_and_writes_no_run(tmp_path):
    """`--trainer.fast_dev_run 2`: two training and two validation batches, one epoch, no logger and
    no checkpoint (Lightning turns both off), so no run directory."""
    cli = TwinloopCLI(args=["fit", *FAST, "--trainer.fast_dev_run=2", f"--trainer.default_root_dir={tmp_path}"])
    trainer = cli.trainer
    assert trainer.global_step == 2 and trainer.num_val_batches == [2]
    assert isinstance(trainer.logger, DummyLogger)  # Lightning's stand-in: logs nothing
    assert not list(Path(tmp_path).rglob("*.ckpt")) and not list(Path(tmp_path).rglob("events.out.*"))
    assert "val/acc" in trainer.callback_metrics


def test_overfit_batches_trains_on_the_same_batches_every_epoch(tmp_path):
    """`--trainer.overfit_batches 2`: each epoch trains on two batches (Lightning's: the same first
    two, unshuffled) and validates on two; the training loss falls to what only memorising gives."""
    args = ["fit", *FAST, "--trainer.overfit_batches=2", "--trainer.max_epochs=15", "--model.network.dropout=0"]
    cli = TwinloopCLI(args=[*args, f"--trainer.default_root_dir={tmp_path}", "--model.pictures.every_n_epochs=0"])
    trainer = cli.trainer
    assert trainer.global_step == 30 and trainer.num_training_batches == 2 and trainer.num_val_batches == [2]
    # memorised: 128 images learnt to the last one (30 steps over all the digits: loss 0.14, acc 0.95)
    assert float(trainer.callback_metrics["train/loss_epoch"]) < 0.01
    assert float(trainer.callback_metrics["train/acc"]) == 1.0


@pytest.mark.parametrize("switch", ["--trainer.fast_dev_run=true", "--trainer.overfit_batches=2"])
def test_the_reference_refuses_them_by_name(switch, tmp_path):
    root = tmp_path / "runs"
    with pytest.raises(ConfigError, match=switch.removeprefix("--").split("=")[0]):
        load_run([*FAST, switch, f"--trainer.default_root_dir={root}"])
    assert not root.exists()
