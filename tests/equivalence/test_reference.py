"""The reference trainer reads a config as Lightning's Trainer does, refuses what it cannot mirror,
and leaves nothing behind on the objects it ran."""

from pathlib import Path

import pytest
import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import Callback

from project.cli import TwinloopCLI
from project.errors import ConfigError
from project.recorder import Recorder, RecorderCallback
from project.reference.budgets import count_batches
from project.reference.cli import main as reference_main
from project.reference.config import load_run
from project.reference.settings import read_device
from tests.helpers import FAST, compiled_frames

LIMITS = ("limit_train_batches", "limit_val_batches", "limit_test_batches")


class StopAtTrainStart(Callback):
    """Notes the max_epochs that Lightning resolved, then ends the fit before its first step."""

    def on_train_start(self, trainer, pl_module):
        self.max_epochs = trainer.max_epochs
        trainer.should_stop = True


@pytest.mark.parametrize(
    "extra",
    [
        [],
        ["--trainer.precision=bf16-mixed"],
        ["--trainer.precision=16-mixed"],
        ["--trainer.precision=32"],
        ["--trainer.precision=bf16"],
        ["--trainer.accelerator=cpu", "--trainer.devices=1"],
        ["--trainer.max_epochs=null"],
        ["--trainer.max_epochs=3"],
        ["--trainer.limit_train_batches=0.5", "--trainer.limit_val_batches=3", "--trainer.limit_test_batches=0.25"],
        ["--trainer.limit_train_batches=4.0", "--trainer.limit_val_batches=1"],
        ["--trainer.limit_train_batches=1", "--trainer.limit_val_batches=1.0"],
    ],
    ids=lambda extra: " ".join(extra) or "defaults",
)
def test_settings_match_what_a_real_lightning_trainer_resolves(extra):
    """Precision, device, max_epochs and batch limits: the reference reads them as Lightning's Trainer does."""
    cli = TwinloopCLI(args=[*FAST, *extra], run=False)
    trainer, resolved = cli.trainer, StopAtTrainStart()
    trainer.callbacks.append(resolved)
    trainer.fit(cli.model, datamodule=cli.datamodule)  # Lightning settles max_epochs only when fit starts
    settings = load_run([*FAST, *extra]).trainer.settings
    assert settings.precision == trainer.precision
    assert settings.device == trainer.strategy.root_device
    assert settings.max_epochs == resolved.max_epochs
    for key in LIMITS:
        assert getattr(settings, key) == getattr(trainer, key), key
        assert type(getattr(settings, key)) is type(getattr(trainer, key)), key


@pytest.mark.parametrize("limits", [("0.5", "3"), ("4", "0.34"), ("1", "1.0"), ("1.0", "0")])
def test_batches_per_epoch_match_lightning(limits):
    """The batches per epoch that Lightning takes under limit_train/val_batches are the reference's."""
    args = [*FAST, "--trainer.max_epochs=1", f"--trainer.limit_train_batches={limits[0]}"]
    args.append(f"--trainer.limit_val_batches={limits[1]}")
    cli = TwinloopCLI(args=["fit", *args])
    run = load_run(args)
    run.datamodule.setup("fit")
    s = run.trainer.settings
    assert cli.trainer.num_training_batches == count_batches(
        len(run.datamodule.train_dataloader()), s.limit_train_batches, "limit_train_batches"
    )
    assert sum(cli.trainer.num_val_batches) == count_batches(
        len(run.datamodule.val_dataloader()), s.limit_val_batches, "limit_val_batches"
    )


def test_a_fraction_that_leaves_no_batch_is_an_error_in_both_loops():
    """limit_train_batches=0.01 of 23 batches: Lightning refuses it, and so does the reference, naming the key."""
    args = [*FAST, "--trainer.max_epochs=1", "--trainer.limit_train_batches=0.01"]
    with pytest.raises(MisconfigurationException, match="limit_train_batches"):
        TwinloopCLI(args=["fit", *args])
    run = load_run(args, Path("ref"))
    with pytest.raises(ConfigError, match=r"trainer\.limit_train_batches=0\.01"):
        run.trainer.fit(run.model, run.datamodule)


def test_max_epochs_minus_one_is_refused_by_name():
    """max_epochs=-1 means no limit to Lightning; the reference refuses it rather than pick a number."""
    assert TwinloopCLI(args=[*FAST, "--trainer.max_epochs=-1"], run=False).trainer.max_epochs == -1
    with pytest.raises(ConfigError, match=r"trainer\.max_epochs=-1"):
        load_run([*FAST, "--trainer.max_epochs=-1"])


@pytest.mark.parametrize("devices", ["auto", -1, 2])
def test_several_gpus_are_refused(devices, monkeypatch):
    """On a machine with 2 GPUs, devices=auto, -1 or 2 would spread Lightning over both: refused."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(ConfigError, match=r"trainer\.devices=.*--trainer\.devices=1"):
        read_device("auto", devices)
    assert read_device("gpu", 1) == torch.device("cuda")


def test_one_gpu_with_devices_auto_is_accepted(monkeypatch):
    """devices=auto on a one-GPU machine is that GPU, for Lightning and the reference alike."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert read_device("auto", "auto") == torch.device("cuda")


def test_hooks_are_removed_after_a_run():
    """The logger's and twinloop-compare's hooks are gone from network, loss and optimizer after fit."""
    recorder = Recorder()
    args = [*FAST, "--trainer.max_epochs=1", "--trainer.limit_train_batches=2"]
    run = load_run(args, Path("ref"), callbacks=[RecorderCallback(recorder)])
    run.trainer.fit(run.model, run.datamodule)
    assert recorder.steps == 2  # the hooks did run
    net, criterion, optimizer = run.model.net, run.model.criterion, run.trainer.optimizers[0]
    assert not net._forward_pre_hooks and not net._forward_hooks
    assert not criterion._forward_hooks
    assert not optimizer._optimizer_step_post_hooks


def test_reference_test_command_prints_the_test_metrics(capsys):
    """`twinloop-reference fit` names its best checkpoint; `test` reports test/loss and test/acc of a
    checkpoint and where it logged them."""
    args = [*FAST, "--trainer.max_epochs=1", "--trainer.limit_train_batches=4"]
    reference_main(["fit", *args, "--log_dir=ref"])
    (best,) = Path("ref/checkpoints").glob("best-epoch000-acc*.ckpt")  # Lightning's name for it
    assert f"best checkpoint: {best}" in capsys.readouterr().out  # as `twinloop fit` says it
    reference_main(["test", *args, "--log_dir=ref-test", "--ckpt_path=ref/checkpoints/last.ckpt"])
    out = capsys.readouterr().out
    assert "test/loss" in out and "test/acc" in out
    assert "logs: ref-test" in out
    assert list(Path("ref-test").glob("events.out.tfevents.*"))


def test_reference_checkpoints_hold_the_class_names():
    """A reference checkpoint carries the class names, as a Lightning one does, for predict to use."""
    args = [*FAST, "--trainer.max_epochs=1", "--trainer.limit_train_batches=2"]
    run = load_run(args, Path("ref"))
    run.trainer.fit(run.model, run.datamodule)
    checkpoint = torch.load("ref/checkpoints/last.ckpt", weights_only=True)
    assert checkpoint["class_names"] == [str(i) for i in range(10)]


def test_the_loggers_batch_hook_stays_out_of_a_compiled_networks_graph(tmp_path):
    """With the network compiled, dynamo traces its hooks too; the logger's (which writes and reads a
    step counter) is left to run as it is, so the network is compiled once, not again every step."""
    from project.models.simple_cnn import SimpleCNN
    from project.monitoring import PictureLog
    from project.reference.logger import ReferenceLogger

    net = SimpleCNN(10, in_channels=1)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    logger = ReferenceLogger(tmp_path, 2, PictureLog(0, (0.0,), (1.0,)))
    logger.watch(net, optimizer)

    def steps():
        for _ in range(6):
            logger.on_step(net(torch.randn(4, 1, 8, 8)).sum().detach())  # as the loop hands it over

    graphs, frames = compiled_frames(net, steps)
    logger.close()
    assert logger.steps == 6 and graphs == 1
    assert frames == 1  # the hook's frame is not traced (it was, once a step)
