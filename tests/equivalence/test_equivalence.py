"""Lightning's Trainer and the reference loop, compared step by step on real runs."""

import math
from pathlib import Path

import pytest
import torch

from project import compare
from project.cli import TwinloopCLI
from project.errors import ConfigError
from project.reference.config import load_run
from tests.helpers import EQUIV, EQUIVALENCE_RESULTS, FAST

OPTIMIZERS = {
    "sgd": [
        "--model.optimizer=SGD",
        "--model.optimizer.lr=0.05",
        "--model.optimizer.momentum=0.9",
        "--model.optimizer.nesterov=true",
        "--model.optimizer.weight_decay=5e-4",
    ],
    "adamw": ["--model.optimizer=AdamW", "--model.optimizer.lr=0.003", "--model.optimizer.weight_decay=0.01"],
}
SCHEDULERS = {
    "none": [],
    "steplr-epoch": [
        "--model.lr_scheduler=StepLR",
        "--model.lr_scheduler.step_size=1",
        "--model.lr_scheduler.gamma=0.5",
        "--model.scheduler_interval=epoch",
    ],
    "onecycle-step": [
        "--model.lr_scheduler=OneCycleLR",
        "--model.lr_scheduler.max_lr=0.05",
        "--model.scheduler_interval=step",
    ],
}


def run_both(args: list[str], name: str = "run") -> compare.Comparison:
    lit = compare.run_lightning(args, Path("runs"), name)
    ref = compare.run_reference(args, Path("runs") / name / "reference")
    return compare.compare(lit, ref, atol=1e-6)


def assert_equivalent(c: compare.Comparison, case: str) -> None:
    worst = max(c.max_loss_diff, c.max_step_tensor_diff, *c.max_final_diff.values())
    EQUIVALENCE_RESULTS.append((case, worst))
    assert c.equivalent, compare.format_table(c)
    assert c.steps > 0 and c.batches == 21
    assert c.max_loss_diff <= 1e-6 and c.max_step_tensor_diff <= 1e-6
    assert set(c.max_final_diff) == {"param", "buffer", "optimizer", "param_groups"}
    assert all(d <= 1e-6 for d in c.max_final_diff.values())
    assert len(c.val) == 3
    for lightning, ref in c.val:  # identical, not merely close
        assert lightning == ref


@pytest.mark.parametrize("clip", ["none", "norm1"])
@pytest.mark.parametrize("accumulate", [1, 3])
@pytest.mark.parametrize("scheduler", list(SCHEDULERS))
@pytest.mark.parametrize("optimizer", list(OPTIMIZERS))
def test_matrix(optimizer, scheduler, accumulate, clip):
    """Per-step losses, per-step and final tensors, and per-epoch validation agree to 1e-6."""
    args = [*EQUIV, *OPTIMIZERS[optimizer], *SCHEDULERS[scheduler], f"--trainer.accumulate_grad_batches={accumulate}"]
    if clip == "norm1":
        args += ["--trainer.gradient_clip_val=1.0", "--trainer.gradient_clip_algorithm=norm"]
    case = f"{optimizer}/{scheduler}/acc{accumulate}/{clip}"
    c = run_both(args)
    assert_equivalent(c, case)
    expected_steps = 3 * (7 if accumulate == 1 else 3)  # a partial window at the epoch's end still steps
    assert c.steps == expected_steps


@pytest.mark.parametrize(
    "extra",
    [
        ["--model.label_smoothing=0.1"],
        ["--trainer.gradient_clip_val=0.01", "--trainer.gradient_clip_algorithm=value"],
        ["--data.augment=true"],
        ["--data.num_workers=2", "--data.augment=true"],
        ["--data.device_cache=true", "--data.augment=true"],
        ["--model.network.channels_last=true", "--model.optimizer.init_args.fused=true", "--trainer.benchmark=true"],
    ],
    ids=["label-smoothing", "clip-value", "augment", "workers", "device-cache", "channels-last-fused"],
)
def test_more_settings(extra):
    """Label smoothing, clipping by value, on-device augmentation, worker processes and the
    device-resident data path keep the loops equal."""
    assert_equivalent(run_both([*EQUIV, *extra]), extra[0])


def test_the_last_batch_is_smaller():
    """The equivalence runs include a last batch smaller than the others (216 = 6 x 32 + 24)."""
    cli = TwinloopCLI(args=[*EQUIV], run=False)
    cli.datamodule.setup("fit")
    sizes = [len(y) for _, y in cli.datamodule.train_dataloader()]
    assert sizes == [32] * 6 + [24]


@pytest.mark.slow
def test_compiled_network_within_a_stated_tolerance():
    """torch.compile in both loops: the same to 1e-5, not bit for bit. Inductor's kernels follow where
    the graph breaks, and the reference's logging hook breaks it elsewhere than Lightning's calls do."""
    args = [*EQUIV, "--trainer.max_epochs=2", "--data.device_cache=true", "--model.network.compile=default"]
    lit = compare.run_lightning(args, Path("runs"), "compiled")
    ref = compare.run_reference(args, Path("runs/compiled/reference"))
    c = compare.compare(lit, ref, atol=1e-5)
    EQUIVALENCE_RESULTS.append(("torch.compile (atol 1e-5)", c.max_step_tensor_diff))
    assert c.equivalent, compare.format_table(c)
    assert c.batches == 14 and len(c.val) == 2
    assert lit.net._compiled_call_impl is not None  # it really ran compiled


def test_a_training_split_of_whole_batches():
    """224 training digits in 7 whole batches: no smaller last batch, so the shuffling sampler never
    runs dry within an epoch, and both loops must leave its generator alike for the next epoch."""
    c = run_both([*EQUIV, "--data.val_fraction=0.8753"])
    assert_equivalent(c, "whole batches")


def test_bf16_autocast_on_cpu():
    """bf16-mixed on the CPU: same autocast regions on both sides, compared with the same 1e-6 tolerance."""
    c = run_both([*EQUIV, "--trainer.precision=bf16-mixed", *OPTIMIZERS["adamw"]])
    assert_equivalent(c, "bf16-mixed cpu")


def test_planted_dropout_change_is_caught(monkeypatch, capsys):
    """A dropout rate changed on the reference side only: exit 1, naming the first batch's loss."""
    original = compare.run_reference
    monkeypatch.setattr(
        compare,
        "run_reference",
        lambda args, log_dir, *more: original([*args, "--model.network.dropout=0.5"], log_dir, *more),
    )
    assert compare.main([*EQUIV, "--name=planted"]) == 1
    out = capsys.readouterr().out
    assert "NOT EQUIVALENT" in out
    assert "first divergence: training batch 0: loss differs" in out


def test_planted_skipped_zero_grad_is_caught(monkeypatch, capsys, tmp_path):
    """One skipped zero_grad on the reference side: exit 1, naming the optimizer step and the tensor."""
    original = compare.run_reference
    real_zero_grad = torch.optim.Optimizer.zero_grad

    def sabotaged(args, log_dir, *more):
        calls = 0

        def skip_the_third(self, set_to_none=True):
            nonlocal calls
            calls += 1
            if calls != 3:
                real_zero_grad(self, set_to_none)

        with monkeypatch.context() as m:
            m.setattr(torch.optim.Optimizer, "zero_grad", skip_the_third)
            return original(args, log_dir, *more)

    monkeypatch.setattr(compare, "run_reference", sabotaged)
    report = tmp_path / "report.json"
    assert compare.main([*EQUIV, "--name=planted", f"--report={report}"]) == 1
    out = capsys.readouterr().out
    # Steps 1-2 match; the third step adds stale gradients to the first tensor it updates.
    assert "first divergence: optimizer step 3: tensor param.features.0.0.weight differs" in out
    assert '"equivalent": false' in report.read_text()


def test_compare_cli_passes_and_logs_side_by_side(capsys, tmp_path):
    """twinloop-compare exits 0 on an equivalent pair and logs both runs under ROOT/NAME/: ROOT is
    --trainer.default_root_dir and NAME --run_name, as for `twinloop fit`."""
    root = tmp_path / "elsewhere"
    args = [*EQUIV, "--run_name=pair", "--trainer.max_epochs=1", f"--trainer.default_root_dir={root}"]
    assert compare.main(args) == 0
    assert "EQUIVALENT" in capsys.readouterr().out
    for side in ("lightning", "reference"):
        assert list((root / "pair" / side).glob("events.out.tfevents.*"))
    assert (root / "pair" / "lightning" / "checkpoints" / "last.ckpt").is_file()
    assert not Path("runs").exists()


def test_reference_refuses_unsupported_trainer_keys():
    """A trainer key the reference loop does not implement is refused by name, not ignored."""
    with pytest.raises(ConfigError, match="trainer.min_epochs=2"):
        load_run(["--trainer.min_epochs=2"])


def test_a_callback_the_reference_cannot_mirror_is_refused_with_what_it_can(tmp_path):
    """A user callback is refused by name before any work (no run directory), and the refusal lists
    the options the reference mirrors."""
    callback = '{"class_path": "lightning.pytorch.callbacks.StochasticWeightAveraging", "init_args": {"swa_lrs": 0.1}}'
    root = tmp_path / "runs"
    with pytest.raises(ConfigError) as refused:
        load_run([f"--trainer.callbacks=[{callback}]", f"--trainer.default_root_dir={root}"])
    message = str(refused.value)
    assert "trainer.callbacks=" in message and "StochasticWeightAveraging" in message
    assert "It mirrors: trainer.accelerator" in message and "trainer.max_epochs" in message
    assert "TensorBoardLogger" in message and "No other trainer.callbacks" in message
    assert not root.exists()


def test_checkpoint_cross_validation():
    """A Lightning checkpoint validated by both loops gives the same val/loss and val/acc."""
    cli = TwinloopCLI(args=["fit", *FAST, "--trainer.max_epochs=2", "--trainer.limit_train_batches=8"])
    best = cli.trainer.checkpoint_callback.best_model_path
    lightning = TwinloopCLI(args=["validate", *FAST, "--ckpt_path", best]).trainer.callback_metrics
    run = load_run([*FAST])
    ref = run.trainer.validate(run.model, run.datamodule, best)
    assert ref["val/loss"] == float(lightning["val/loss"])
    assert ref["val/acc"] == float(lightning["val/acc"])
    assert math.isclose(ref["val/acc"], float(cli.trainer.checkpoint_callback.best_model_score), abs_tol=0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_fp32_deterministic():
    """On a GPU, fp32 with deterministic algorithms: the loops agree to 1e-6."""
    c = run_both([*EQUIV, "--trainer.accelerator=gpu", "--trainer.deterministic=true"])
    assert_equivalent(c, "cuda fp32 deterministic")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_fp16_mixed_with_grad_scaler():
    """On a GPU, 16-mixed (autocast + GradScaler, clipping after unscale): the loops agree to 1e-6."""
    args = [
        *EQUIV,
        "--trainer.accelerator=gpu",
        "--trainer.deterministic=true",
        "--trainer.precision=16-mixed",
        "--trainer.gradient_clip_val=1.0",
    ]
    assert_equivalent(run_both(args), "cuda 16-mixed deterministic")


def test_reference_checkpoint_validates_the_same_in_lightning():
    """A reference-loop checkpoint validated by `twinloop validate` gives the reference's own numbers."""
    args = [*FAST, "--trainer.max_epochs=1", "--trainer.limit_train_batches=8"]
    run = load_run(args, Path("ref"))
    run.trainer.fit(run.model, run.datamodule)
    ckpt = run.trainer.top_k.best_model_path
    run = load_run(args)
    ref = run.trainer.validate(run.model, run.datamodule, ckpt)
    lightning = TwinloopCLI(args=["validate", *FAST, "--ckpt_path", ckpt]).trainer.callback_metrics
    assert (ref["val/loss"], ref["val/acc"]) == (float(lightning["val/loss"]), float(lightning["val/acc"]))


@pytest.mark.parametrize(
    "extra",
    [["--trainer.precision=16-mixed"], ["--trainer.limit_val_batches=0"], ["--trainer.check_val_every_n_epoch=2"]],
    ids=["16-mixed-on-cpu", "no-validation", "validate-every-2"],
)
def test_lightning_substitutions_and_switches(extra):
    """16-mixed on the CPU (Lightning runs bf16-mixed), validation off, validation every 2 epochs."""
    c = run_both([*EQUIV, *extra])
    worst = max(c.max_loss_diff, c.max_step_tensor_diff, *c.max_final_diff.values())
    EQUIVALENCE_RESULTS.append((extra[0], worst))
    assert c.equivalent, compare.format_table(c)
    assert len(c.val) == {"--trainer.limit_val_batches=0": 0, "--trainer.check_val_every_n_epoch=2": 1}.get(extra[0], 3)


@pytest.mark.parametrize(
    ("setting", "named"),
    [
        ("--checkpoint.save_weights_only=true", "checkpoint.save_weights_only"),
        ("--checkpoint.monitor=train/loss", "checkpoint.monitor"),
        ("--lr_monitor.logging_interval=epoch", "lr_monitor.logging_interval"),
        ("--trainer.logger=false", "trainer.logger"),
    ],
)
def test_reference_refuses_callback_and_logger_settings_it_would_ignore(setting, named):
    """Checkpoint, LR-monitor and logger settings the reference loop doesn't mirror are refused by name."""
    with pytest.raises(ConfigError, match=named):
        load_run([setting])


def test_both_loops_keep_the_first_of_equal_best_checkpoints():
    """A later epoch that only ties the best val/acc does not replace the best checkpoint, in either loop."""
    # No learning rate and a frozen backbone (its BatchNorm statistics too): every epoch validates the
    # same weights, so every later epoch ties the first, on any machine's arithmetic.
    args = [*FAST, "--trainer.max_epochs=3", "--model.pictures.every_n_epochs=0", "--model.optimizer.init_args.lr=0"]
    args += ["--model.network.freeze_backbone_epochs=3"]
    lit = compare.run_lightning(args, Path("runs"), "tie")
    ref = compare.run_reference(args, Path("ref"))
    (lightning_best,) = Path("runs/tie/lightning/checkpoints").glob("best-*.ckpt")
    correct = [round(epoch["val/acc"] * 359) for epoch in lit.val]
    assert correct == [round(epoch["val/acc"] * 359) for epoch in ref.val]
    assert len(correct) == 3 and len(set(correct)) == 1  # the tie really happens
    lightning_epoch = torch.load(lightning_best, weights_only=True)["epoch"]
    (reference_best,) = Path("ref/checkpoints").glob("best-*.ckpt")
    assert lightning_best.name == reference_best.name  # Lightning's file name in both loops
    assert lightning_epoch == torch.load(reference_best, weights_only=True)["epoch"] == 0


def test_default_root_dir_holds_the_logs_of_both_loops():
    """--trainer.default_root_dir moves logs and checkpoints, for Lightning and the reference loop alike."""
    args = [*FAST, "--trainer.max_epochs=1", "--trainer.limit_train_batches=2", "--trainer.default_root_dir=out"]
    TwinloopCLI(args=["fit", *args])
    run = load_run(args)
    run.trainer.fit(run.model, run.datamodule)
    assert list(Path("out/lightning_logs/version_0/checkpoints").glob("*.ckpt"))
    assert run.trainer.log_dir == Path("out/lightning_logs/reference/version_0")
    assert not Path("lightning_logs").exists()
