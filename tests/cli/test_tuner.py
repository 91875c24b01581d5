"""Lightning's tuner through the CLI: ``LearningRateFinder`` sets ``model.lr`` (which both loops'
optimizer factory honours) and ``BatchSizeFinder`` sets ``data.batch_size``."""

import math
from pathlib import Path

import torch
from lightning.pytorch.callbacks import BatchSizeFinder, LearningRateFinder

from project.cli import TwinloopCLI
from project.factory import build_optimization
from project.finetuning import optimizer_parameters
from project.models import SimpleCNN
from project.reference.config import load_run
from tests.helpers import FAST

RUN = [*FAST, "--trainer.max_epochs=1", "--model.pictures.every_n_epochs=0"]


def test_model_lr_replaces_the_optimizers_own_in_every_group():
    """``model.lr`` in place of the optimizer's ``lr``, the backbone's group at its ``lr_scale`` of it;
    without it the optimizer's own stands."""
    net = SimpleCNN(num_classes=3, in_channels=1)
    groups = optimizer_parameters(net, 0, 0.1, None, None)  # head and backbone, the backbone at 0.1
    sgd = lambda params: torch.optim.SGD(params, lr=0.5)  # noqa: E731
    optimizer, _ = build_optimization(groups, sgd, None, 10, lr=0.02)
    assert sorted(g["lr"] for g in optimizer.param_groups) == [0.1 * 0.02, 0.02]
    optimizer, _ = build_optimization(optimizer_parameters(net, 0, 0.1, None, None), sgd, None, 10)
    assert sorted(g["lr"] for g in optimizer.param_groups) == [0.1 * 0.5, 0.5]


def test_the_reference_trains_with_model_lr(tmp_path):
    run = load_run([*RUN, "--model.lr=0.0123", f"--trainer.default_root_dir={tmp_path}"])
    run.trainer.fit(run.model, run.datamodule)
    assert [g["lr"] for g in run.trainer.optimizers[0].param_groups] == [0.0123]


def test_the_learning_rate_finder_sets_model_lr_and_the_run_trains_with_it(tmp_path):
    """`--trainer.callbacks+=LearningRateFinder`: the sweep's suggestion becomes ``model.lr``, the
    optimizer's rate and the checkpoint's hyperparameter; the fit that follows is the fit of
    `--model.lr <suggestion>`, weight for weight (the sweep's steps are undone)."""
    finder = ["--trainer.callbacks+=LearningRateFinder", "--trainer.callbacks.num_training_steps=20"]
    cli = TwinloopCLI(args=["fit", *RUN, *finder, f"--trainer.default_root_dir={tmp_path / 'found'}"])
    (callback,) = [c for c in cli.trainer.callbacks if isinstance(c, LearningRateFinder)]
    suggestion = callback.optimal_lr.suggestion()
    assert suggestion is not None and math.isfinite(suggestion) and cli.model.lr == suggestion
    assert [g["lr"] for g in cli.trainer.optimizers[0].param_groups] == [suggestion]
    (last,) = Path(tmp_path / "found").glob("lightning_logs/version_0/checkpoints/last.ckpt")
    saved = torch.load(last, weights_only=True)
    assert saved["hyper_parameters"]["lr"] == suggestion and saved["global_step"] == cli.trainer.num_training_batches
    plain = TwinloopCLI(
        args=["fit", *RUN, f"--model.lr={suggestion!r}", f"--trainer.default_root_dir={tmp_path / 'p'}"]
    )
    a, b = cli.model.state_dict(), plain.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_the_batch_size_finder_sets_data_batch_size(tmp_path):
    """`--trainer.callbacks+=BatchSizeFinder` from 16 with 3 trials (16, 32, 64, each fits on the
    CPU): the run trains with the last tried, 64 (the config asked for 8)."""
    finder = [
        "--trainer.callbacks+=BatchSizeFinder",
        "--trainer.callbacks.init_val=16",
        "--trainer.callbacks.max_trials=3",
    ]
    cli = TwinloopCLI(args=["fit", *RUN, "--data.batch_size=8", *finder, f"--trainer.default_root_dir={tmp_path}"])
    (callback,) = [c for c in cli.trainer.callbacks if isinstance(c, BatchSizeFinder)]
    assert callback.optimal_batch_size == 64 and cli.datamodule.batch_size == 64
    assert cli.trainer.num_training_batches == math.ceil(len(cli.datamodule.train_set) / 64)
