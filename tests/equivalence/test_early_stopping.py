"""EarlyStopping, as LightningCLI users add it (``--trainer.callbacks+=EarlyStopping``): Lightning's
own callback in the Lightning path, the same rule by hand in the reference loop; both stop at the
same epoch, with the same weights, and a resumed run goes on counting where the checkpoint left off."""

from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import EarlyStopping

from project import compare
from project.checkpoint_io import read_checkpoint
from project.errors import ConfigError
from project.reference.config import load_run
from project.reference.early_stopping import EarlyStop
from tests.helpers import EQUIV


def early_stopping(monitor: str = "val/acc", mode: str = "max", patience: int = 1, min_delta: float = 0.5) -> list:
    # min_delta 0.5 of accuracy: only the first validation improves (on -inf), so it stops after `patience` more
    return [
        "--trainer.callbacks+=EarlyStopping",
        f"--trainer.callbacks.monitor={monitor}",
        f"--trainer.callbacks.mode={mode}",
        f"--trainer.callbacks.patience={patience}",
        f"--trainer.callbacks.min_delta={min_delta}",
    ]


def test_both_loops_stop_at_the_same_epoch_with_the_same_weights():
    """Patience 1: both loops train epochs 0 and 1 of 3 and stop, step for step equal; the last
    checkpoints hold the same early-stopping state under Lightning's key."""
    args = [*EQUIV, *early_stopping()]
    lit = compare.run_lightning(args, Path("runs"), "es")
    ref = compare.run_reference(args, Path("runs/es/reference"))
    c = compare.compare(lit, ref, atol=1e-6)
    assert c.equivalent, compare.format_table(c)
    assert c.batches == 14 and len(c.val) == 2  # 7 batches in each of 2 epochs, not 3
    assert all(a == b for a, b in c.val)
    key = "EarlyStopping{'monitor': 'val/acc', 'mode': 'max'}"
    lightning_state = read_checkpoint("runs/es/lightning/checkpoints/last.ckpt")["callbacks"][key]
    reference_state = read_checkpoint("runs/es/reference/checkpoints/last.ckpt")["callbacks"][key]
    assert lightning_state["wait_count"] == reference_state["wait_count"] == 1
    assert lightning_state["stopped_epoch"] == reference_state["stopped_epoch"] == 1
    assert torch.equal(lightning_state["best_score"], reference_state["best_score"])
    assert float(reference_state["best_score"]) == c.val[0][1]["val/acc"]  # the first epoch's, the only best


def test_a_resumed_reference_goes_on_counting_from_the_checkpoint(capsys):
    """Patience 2: the uninterrupted Lightning run stops after epoch 2 of 5. The reference trains
    epoch 0, then resumes from its last.ckpt (wait 0 after epoch 0): it must stop after epoch 2 as
    well, with Lightning's weights. (A count started afresh would find a new best at epoch 1 and
    stop a whole epoch later.)"""
    args = [*EQUIV, *early_stopping(patience=2), "--trainer.max_epochs=5"]
    lit = compare.run_lightning(args, Path("runs"), "full")
    compare.run_reference([*args, "--trainer.max_epochs=1"], Path("runs/first"))
    ckpt = "runs/first/checkpoints/last.ckpt"
    ref = compare.run_reference(args, Path("runs/resumed"), ckpt)
    assert "resuming from epoch 1, batch 0 (step 7)" in capsys.readouterr().out  # not from step 0
    c = compare.compare(compare.from_resume_point(lit, ckpt, 1), ref, atol=0)
    assert c.equivalent, compare.format_table(c)
    assert len(lit.val) == 3 and len(c.val) == 2 and c.batches == 14


def test_the_rule_by_hand():
    """A sequence of validation accuracies, patience 2, min_delta 0.01, worked out by hand: 0.5 is
    the first best; 0.505 is not 0.01 better (wait 1); 0.52 is (best, wait 0); 0.52 and 0.515 are
    not (wait 1, 2): stop after the fifth, epoch 4."""
    rule = EarlyStop("val/acc", min_delta=0.01, patience=2, mode="max")
    decisions = [
        rule.check({"val/acc": torch.tensor(v)}, epoch) for epoch, v in enumerate([0.5, 0.505, 0.52, 0.52, 0.515])
    ]
    assert decisions == [False, False, False, False, True]
    assert rule.stopped_epoch == 4 and rule.wait_count == 2 and float(rule.best_score) == pytest.approx(0.52)


@pytest.mark.parametrize(
    "options",
    [
        {"mode": "min", "patience": 3, "min_delta": 0.02},
        {"mode": "max", "patience": 2, "stopping_threshold": 0.8},
        {"mode": "min", "patience": 5, "divergence_threshold": 3.0},
    ],
)
def test_the_rule_decides_as_lightnings_callback_on_random_sequences(options):
    """Fed the same 200 random sequences (with NaNs), the rule and Lightning's callback stop at the
    same point with the same count and best score."""
    gen = torch.Generator().manual_seed(0)
    for _ in range(200):
        values = torch.rand(12, generator=gen) * 4
        values[torch.rand(12, generator=gen) < 0.05] = float("nan")
        ours, theirs = EarlyStop("m", **options), EarlyStopping("m", **options)
        for epoch, v in enumerate(values):
            stop = ours.check({"m": v}, epoch)
            assert stop == theirs._evaluate_stopping_criteria(v)[0]
            assert ours.wait_count == theirs.wait_count and torch.equal(ours.best_score, theirs.best_score)
            if stop:
                break


def test_the_reference_refuses_what_it_does_not_mirror():
    """Two EarlyStopping callbacks, strict=False, or nothing to monitor: refused by name."""
    with pytest.raises(ConfigError, match="more than one EarlyStopping"):
        load_run([*EQUIV, *early_stopping(), *early_stopping()])
    with pytest.raises(ConfigError, match="strict=False"):
        load_run([*EQUIV, *early_stopping(), "--trainer.callbacks.strict=false"])
    with pytest.raises(ConfigError, match="limit_val_batches=0"):
        load_run([*EQUIV, *early_stopping(), "--trainer.limit_val_batches=0"])
