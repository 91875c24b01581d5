"""Fine-tuning: the backbone frozen for the first epochs (BatchNorm statistics too), then trained at a lower rate."""

import functools
from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import Callback
from torch.nn.modules.batchnorm import _BatchNorm

from project import compare
from project.cli import TwinloopCLI
from project.factory import build_optimization
from project.finetuning import optimizer_parameters, split_backbone
from project.models import build_network
from project.reference.config import load_run
from tests.helpers import EQUIV, EQUIVALENCE_RESULTS, FAST, place_torchvision_weights

FINETUNE = [
    "--model.network.freeze_backbone_epochs=1",
    "--model.network.backbone_lr_scale=0.1",
    "--model.network.dropout=0.0",
]
DIGITS = [*FAST, "--data.batch_size=64", "--model.pictures.every_n_epochs=0", "--trainer.limit_val_batches=2"]


class EpochProbe(Callback):
    """Per training epoch, from its first batch: the global step it starts at, whether the backbone takes gradients, the
    backbone BatchNorms' modes in its first step, and the network's tensors at its end."""

    def __init__(self):
        self.epochs: list[dict] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):  # after the module's epoch start
        if batch_idx == 0:
            backbone, _ = split_backbone(pl_module.net)
            self.epochs.append({"step": trainer.global_step, "grad": {p.requires_grad for p in backbone}})

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if batch_idx == 0:
            bns = [m for n, m in pl_module.net.named_modules() if isinstance(m, _BatchNorm)]
            self.epochs[-1]["bn_training"] = {m.training for m in bns}

    def on_train_epoch_end(self, trainer, pl_module):
        self.epochs[-1]["state"] = {k: v.clone() for k, v in pl_module.net.state_dict().items()}


def fit(args: list[str], probe: EpochProbe) -> TwinloopCLI:
    cli = TwinloopCLI(args=[*DIGITS, *FINETUNE, *args], run=False)
    cli.trainer.callbacks.append(probe)
    cli.initial = {k: v.clone() for k, v in cli.model.net.state_dict().items()}
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    return cli


def test_a_frozen_backbone_keeps_its_weights_and_batchnorm_statistics():
    """Epoch 0: backbone weights and BN running statistics unchanged, BN in eval mode, the head trained;
    epoch 1: all of it trains."""
    probe = EpochProbe()
    cli = fit(["--trainer.max_epochs=2", "--trainer.limit_train_batches=4"], probe)
    first, second = probe.epochs
    backbone = [k for k in cli.initial if not k.startswith("classifier.5.")]
    assert any("running_mean" in k for k in backbone) and any("num_batches_tracked" in k for k in backbone)
    assert first["grad"] == {False} and first["bn_training"] == {False}
    assert all(torch.equal(first["state"][k], cli.initial[k]) for k in backbone)
    assert not torch.equal(first["state"]["classifier.5.weight"], cli.initial["classifier.5.weight"])
    assert second["grad"] == {True} and second["bn_training"] == {True}
    changed = [k for k in backbone if not torch.equal(second["state"][k], first["state"][k])]
    assert set(changed) == set(backbone)


def test_the_backbone_group_has_the_scaled_learning_rate():
    """Two parameter groups from the start: the head at the optimizer's lr, the backbone at 0.1 of it."""
    cli = fit(["--trainer.max_epochs=1", "--trainer.limit_train_batches=1", "--model.optimizer.lr=0.05"], EpochProbe())
    head, backbone = cli.trainer.optimizers[0].param_groups
    assert (head["name"], backbone["name"]) == ("head", "backbone")
    assert head["lr"] == 0.05 and backbone["lr"] == 0.05 * 0.1
    assert [p is q for p, q in zip(head["params"], cli.model.net.classifier[5].parameters())] == [True, True]


def test_resuming_after_the_thaw_does_not_freeze_again(tmp_path):
    """A run resumed at epoch 2 from a checkpoint of epoch 1 goes on unfrozen (Lightning's BackboneFinetuning
    freezes again, L#21901), from step 4, not 0, and ends with the uninterrupted run's weights."""
    run = ["--trainer.limit_train_batches=2"]
    full = fit([*run, "--trainer.max_epochs=3", "--trainer.default_root_dir=full"], EpochProbe())
    half = fit([*run, "--trainer.max_epochs=2", "--trainer.default_root_dir=half"], EpochProbe())
    last = Path(half.trainer.log_dir) / "checkpoints" / "last.ckpt"
    probe = EpochProbe()
    resumed = TwinloopCLI(args=[*DIGITS, *FINETUNE, *run, "--trainer.max_epochs=3"], run=False)
    resumed.trainer.callbacks.append(probe)
    resumed.trainer.fit(resumed.model, datamodule=resumed.datamodule, ckpt_path=str(last))
    (only,) = probe.epochs
    assert only["step"] == 4 and only["grad"] == {True} and only["bn_training"] == {True}
    a, b = full.model.net.state_dict(), resumed.model.net.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_compare_on_a_pretrained_finetuning_config_is_bit_identical(tmp_path, monkeypatch):
    """ShuffleNet V2 x0.5 from (placed) pretrained weights on gray digits, frozen one epoch, then a second at 0.1 lr,
    with StepLR: per-batch losses, every tensor after every step, optimizer state and parameter groups identical."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    place_torchvision_weights(tmp_path / "torch_home", "shufflenet_v2_x0_5")
    args = [
        *EQUIV,
        *FINETUNE,
        "--model.network.backbone=shufflenet_v2_x0_5",
        "--model.network.weights=DEFAULT",
        "--data.val_fraction=0.95",  # 90 training digits: batches of 32, 32 and 26
    ]
    args += [
        "--trainer.max_epochs=2",
        "--trainer.limit_val_batches=1",
        "--model.lr_scheduler=StepLR",
        "--model.lr_scheduler.step_size=1",
        "--model.lr_scheduler.gamma=0.5",
    ]
    lit = compare.run_lightning(args, Path("runs"), "finetune")
    ref = compare.run_reference(args, Path("runs") / "finetune" / "reference")
    c = compare.compare(lit, ref, atol=0.0)
    worst = max(c.max_loss_diff, c.max_step_tensor_diff, *c.max_final_diff.values())
    EQUIVALENCE_RESULTS.append(("fine-tuning shufflenet_v2_x0_5 from weights", worst))
    assert c.equivalent, compare.format_table(c)
    assert worst == 0.0 and c.steps == 6 and len(c.val) == 2
    assert set(c.max_final_diff) == {"param", "buffer", "optimizer", "param_groups"}
    assert lit.final["param_groups.1.lr"].item() == pytest.approx(0.05 * 0.1 * 0.5**2)  # StepLR after each epoch
    assert lit.final["param_groups.1.lr_scale"].item() == pytest.approx(0.1)


def test_the_reference_loop_keeps_a_frozen_backbone_as_it_is():
    """The reference loop in a frozen epoch: backbone BatchNorms run in eval mode although the loop calls
    model.train(), and backbone weights and statistics end as they began, while the head trains."""
    run = load_run([*DIGITS, *FINETUNE, "--trainer.max_epochs=1", "--trainer.limit_train_batches=4"], Path("ref"))
    net = run.model.net
    initial = {k: v.clone() for k, v in net.state_dict().items()}
    modes = []
    net.features[0][1].register_forward_hook(
        lambda m, i, o: modes.append(m.training) if torch.is_grad_enabled() else None
    )
    run.trainer.fit(run.model, run.datamodule)
    final = net.state_dict()
    assert modes == [False] * 4
    assert all(torch.equal(final[k], initial[k]) for k in initial if not k.startswith("classifier.5."))
    assert not torch.equal(final["classifier.5.weight"], initial["classifier.5.weight"])


def test_one_cycle_max_lr_is_scaled_for_the_backbone_group():
    """OneCycleLR given one max_lr peaks the backbone group at lr_scale times it, as the learning rate."""
    net = build_network("simple_cnn", num_classes=3)
    groups = optimizer_parameters(net, freeze_backbone_epochs=1, backbone_lr_scale=0.1)
    schedule = functools.partial(torch.optim.lr_scheduler.OneCycleLR, max_lr=0.2, total_steps=None)
    optimizer, scheduler = build_optimization(groups, functools.partial(torch.optim.SGD, lr=0.2), schedule, 10)
    assert [g["max_lr"] for g in optimizer.param_groups] == [0.2, 0.2 * 0.1]
    assert scheduler.total_steps == 10
