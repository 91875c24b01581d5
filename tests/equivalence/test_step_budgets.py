"""Step budgets and validation inside epochs, in both loops. `--trainer.max_steps`: Lightning's
Trainer stops after that optimizer step, and an epoch it cuts short ends there without its
validation (its end still logs, checkpoints and steps the schedulers). `--trainer.val_check_interval`:
a validation after every N-th batch (a fraction of the epoch, or a number), with its checkpoints and
early stopping there. The reference loop does the same by hand."""

import csv
import json
import time
from pathlib import Path

import pytest
from torch.optim.optimizer import register_optimizer_step_post_hook

from project import compare
from project.checkpoint_io import read_checkpoint
from project.errors import ConfigError
from project.reference.config import load_run
from tests.equivalence.test_top_k import assert_same_files, kept
from tests.helpers import EQUIV


def run_both(args: list[str], name: str) -> tuple[compare.Comparison, tuple[Path, Path]]:
    """Both loops on ``args``, equal step for step (atol 0); the comparison and their checkpoint folders."""
    lit = compare.run_lightning(args, Path("runs"), name)
    ref = compare.run_reference(args, Path(f"runs/{name}/reference"))
    c = compare.compare(lit, ref, atol=0)
    c.problems += compare.csv_problems(Path(f"runs/{name}/lightning"), Path(f"runs/{name}/reference"))
    assert c.equivalent, compare.format_table(c)
    return c, (Path(f"runs/{name}/lightning/checkpoints"), Path(f"runs/{name}/reference/checkpoints"))


# 7 optimizer steps an epoch: 10 ends inside epoch 1, 14 at its end
BUDGETS = {"inside_an_epoch": (10, 1), "at_an_epoch_end": (14, 2)}


@pytest.mark.parametrize("case", list(BUDGETS))
def test_both_loops_stop_after_max_steps(case):
    """Both loops take exactly ``max_steps`` steps with the same tensors, validate only whole epochs,
    and keep the same files: last.ckpt at that step, and (with save_top_k -1) each epoch end's
    candidate, the cut epoch's scored by the last validation."""
    max_steps, validations = BUDGETS[case]
    args = [*EQUIV, f"--trainer.max_steps={max_steps}", "--checkpoint.save_top_k=-1"]
    c, folders = run_both(args, case)
    assert c.batches == max_steps and len(c.val) == validations
    assert_same_files(kept(folders[0]), kept(folders[1]))
    assert len(kept(folders[0])) == 2  # epochs 0 and 1, either way
    for folder in folders:
        last = read_checkpoint(folder / "last.ckpt")
        assert (last["epoch"], last["global_step"]) == (1, max_steps)


def test_one_cycle_runs_its_cycle_over_max_steps():
    """OneCycleLR's total_steps comes from the step budget when it is the smaller (Lightning's
    estimated_stepping_batches): both loops end the cycle at step 10, not 21."""
    args = [
        *EQUIV,
        "--trainer.max_steps=10",
        "--model.scheduler_interval=step",
        "--model.lr_scheduler=torch.optim.lr_scheduler.OneCycleLR",
        "--model.lr_scheduler.max_lr=0.1",
    ]
    run = load_run([*args, "--trainer.default_root_dir=ref"])
    run.trainer.fit(run.model, run.datamodule)
    assert run.trainer.scheduler.total_steps == 10 and run.trainer.scheduler.last_epoch == 10
    c = compare.compare(compare.run_lightning(args, Path("runs"), "cycle"), compare.run_reference(args, Path("r")))
    assert c.equivalent, compare.format_table(c)


def test_a_bad_max_steps_is_refused_by_name():
    with pytest.raises(ConfigError, match="trainer.max_steps=-2"):
        load_run([*EQUIV, "--trainer.max_steps=-2"])


# 7 batches an epoch: 0.5 validates after batches 3 and 6 (not after the 7th), 2 after 2, 4 and 6, 7 after the 7th
INTERVALS = {"half_an_epoch": ("0.5", 6), "every_2_batches": ("2", 9), "every_7_batches": ("7", 3)}


@pytest.mark.parametrize("case", list(INTERVALS))
def test_both_loops_validate_inside_epochs(case):
    """`val_check_interval`: the same validations at the same batches, step for step equal, and the
    same top-3 files, each saved at its validation."""
    interval, validations = INTERVALS[case]
    args = [*EQUIV, f"--trainer.val_check_interval={interval}", "--checkpoint.save_top_k=3"]
    c, folders = run_both(args, case)
    assert len(c.val) == validations and c.batches == 21
    assert len(kept(folders[0])) == 3
    assert_same_files(kept(folders[0]), kept(folders[1]))


def test_early_stopping_inside_an_epoch_with_step_checkpoints_and_two_loggers():
    """EarlyStopping (patience 1, min_delta 0.5: only the first validation improves), validation every
    half epoch, top 3 and a checkpoint look every 4 steps, a TensorBoard and a CSV logger, at once:
    both loops stop after the second validation, inside epoch 0 (after its 6th batch), with the same
    weights and files, and the same metrics.csv, row for row (each step, both validations)."""
    loggers = [{"class_path": f"lightning.pytorch.loggers.{name}"} for name in ("TensorBoardLogger", "CSVLogger")]
    args = [
        *EQUIV,
        f"--trainer.logger={json.dumps(loggers)}",
        "--trainer.log_every_n_steps=1",
        "--trainer.val_check_interval=0.5",
        "--checkpoint.save_top_k=3",
        "--checkpoint.every_n_train_steps=4",
        "--trainer.callbacks+=EarlyStopping",
        "--trainer.callbacks.monitor=val/loss",
        "--trainer.callbacks.patience=1",
        "--trainer.callbacks.min_delta=0.5",
    ]
    c, folders = run_both(args, "all")
    assert len(c.val) == 2 and c.batches == 6
    assert_same_files(kept(folders[0]), kept(folders[1]))
    assert [read_checkpoint(folder / "last.ckpt")["global_step"] for folder in folders] == [6, 6]
    with open("runs/all/reference/metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(row["step"]) for row in rows if row["train/loss"]] == list(range(6))
    assert [int(row["step"]) for row in rows if row["val/acc"]] == [2, 5]  # after batches 3 and 6
    assert list(Path("runs/all/reference").glob("events.out.tfevents.*"))  # and TensorBoard's file


@pytest.mark.parametrize(
    ("setting", "named"),
    [
        (["--trainer.val_check_interval=0.5", "--trainer.check_val_every_n_epoch=2"], "check_val_every_n_epoch"),
        (["--trainer.val_check_interval=1.5"], "trainer.val_check_interval=1.5"),
    ],
)
def test_what_the_reference_cannot_validate_inside_an_epoch_is_refused_by_name(setting, named):
    with pytest.raises(ConfigError, match=named):
        load_run([*EQUIV, *setting])


@pytest.fixture
def step_clock(monkeypatch):
    """A clock that reads one second more after every optimizer step, of either loop: Lightning's
    Timer and the reference's time limit read the same time at the same step, whatever the machine."""
    steps = [0]
    hook = register_optimizer_step_post_hook(lambda *_: steps.__setitem__(0, steps[0] + 1))
    monkeypatch.setattr(time, "monotonic", lambda: float(steps[0]))
    yield
    hook.remove()


# (max_time, extra settings, batches trained, validations): 7 batches an epoch; Lightning validates
# where the time runs out, if that epoch validates, and stops there
TIME_LIMITS = {
    "inside_an_epoch": ("00:00:00:10", [], 10, 2),
    "at_an_epoch_end": ("00:00:00:14", [], 14, 2),
    "in_an_epoch_without_validation": ("00:00:00:05", ["--trainer.check_val_every_n_epoch=2"], 5, 0),
}


@pytest.mark.parametrize("case", list(TIME_LIMITS))
def test_both_loops_stop_at_max_time(case, step_clock):
    """`trainer.max_time`, read on a clock that ticks once per optimizer step: both loops stop after
    the same batch, validate there as Lightning does, and keep the same files and tensors."""
    max_time, extra, batches, validations = TIME_LIMITS[case]
    args = [*EQUIV, f"--trainer.max_time={max_time}", "--checkpoint.save_top_k=-1", *extra]
    c, folders = run_both(args, f"time_{case}")
    assert c.batches == batches and len(c.val) == validations
    assert_same_files(kept(folders[0]), kept(folders[1]))
    for folder in folders:
        assert read_checkpoint(folder / "last.ckpt")["callbacks"]["Timer"]["time_elapsed"]["train"] == batches


def test_a_resumed_reference_counts_the_time_its_checkpoint_spent(step_clock):
    """The reference resumes Lightning's epoch-0 checkpoint (7 s spent of 10): it trains 3 more steps
    and stops where the uninterrupted run did, equal step for step; had it not restored the time
    spent, it would train 10 more (and a fresh start, 10 from step 0)."""
    args = [*EQUIV, "--trainer.max_time=00:00:00:10", "--checkpoint.save_top_k=-1"]
    lit = compare.run_lightning(args, Path("runs"), "time_resume")
    ckpt = next(Path("runs/time_resume/lightning/checkpoints").glob("best-epoch000-*.ckpt"))
    assert read_checkpoint(ckpt)["global_step"] == 7
    ref = compare.run_reference(args, Path("runs/time_resume/reference"), str(ckpt))
    c = compare.compare(compare.from_resume_point(lit, str(ckpt), 1), ref, atol=0)
    assert c.equivalent, compare.format_table(c)
    assert ref.steps == 3 and c.batches == 3


@pytest.mark.parametrize(("value", "named"), [("10 minutes", "trainer.max_time='10 minutes'")])
def test_a_bad_max_time_is_refused_by_name(value, named):
    with pytest.raises(ConfigError, match=named):
        load_run([*EQUIV, f"--trainer.max_time={value}"])
