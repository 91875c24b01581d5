"""`--trainer.max_steps` in both loops: Lightning's Trainer stops after that optimizer step, and an
epoch it cuts short ends there without its validation (its end still logs, checkpoints and steps
the schedulers); the reference loop does the same by hand."""

from pathlib import Path

import pytest

from project import compare
from project.checkpoint_io import read_checkpoint
from project.errors import ConfigError
from project.reference.config import load_run
from tests.equivalence.test_top_k import assert_same_files, kept
from tests.helpers import EQUIV

# 7 optimizer steps an epoch: 10 ends inside epoch 1, 14 at its end
BUDGETS = {"inside_an_epoch": (10, 1), "at_an_epoch_end": (14, 2)}


@pytest.mark.parametrize("case", list(BUDGETS))
def test_both_loops_stop_after_max_steps(case):
    """Both loops take exactly ``max_steps`` steps with the same tensors, validate only whole epochs,
    and keep the same files: last.ckpt at that step, and (with save_top_k -1) each epoch end's
    candidate, the cut epoch's scored by the last validation."""
    max_steps, validations = BUDGETS[case]
    args = [*EQUIV, f"--trainer.max_steps={max_steps}", "--checkpoint.save_top_k=-1"]
    lit = compare.run_lightning(args, Path("runs"), case)
    ref = compare.run_reference(args, Path(f"runs/{case}/reference"))
    c = compare.compare(lit, ref, atol=0)
    assert c.equivalent, compare.format_table(c)
    assert c.batches == max_steps and len(c.val) == validations
    folders = Path(f"runs/{case}/lightning/checkpoints"), Path(f"runs/{case}/reference/checkpoints")
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
