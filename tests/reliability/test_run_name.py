"""A run with a fixed directory (`--run_name`, or the SLURM job): resumed there with `--ckpt_path last`,
never started over on top of itself, in both loops."""

from pathlib import Path

import pytest

from project.cli import main
from project.reference.cli import main as reference_main
from tests.helpers import FAST

SHORT = [*FAST, "--trainer.max_epochs=1", "--trainer.limit_train_batches=2", "--trainer.limit_val_batches=1"]
LOOPS = {"lightning": (main, "lightning_logs"), "reference": (reference_main, "lightning_logs/reference")}


@pytest.mark.fit
@pytest.mark.parametrize("loop", LOOPS)
def test_a_named_run_goes_to_its_directory_and_is_not_started_over(loop, capsys):
    """`--run_name a` logs and checkpoints into <runs>/a; a second start without --ckpt_path is refused
    naming its last.ckpt, and the directory keeps one event file."""
    fit, runs = LOOPS[loop]
    fit(["fit", *SHORT, "--run_name=a"])
    assert (Path(runs) / "a/checkpoints/last.ckpt").is_file()
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        fit(["fit", *SHORT, "--run_name=a"])
    assert info.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: {runs}/a holds a run already ({runs}/a/checkpoints/last.ckpt)")
    assert len(list(Path(runs, "a").glob("events.out.tfevents.*"))) == 1


@pytest.mark.parametrize("loop", LOOPS)
def test_resuming_a_named_run_without_a_checkpoint_says_so(loop, capsys):
    """`--run_name b --ckpt_path last` with no <runs>/b/checkpoints/last.ckpt: exit 1 naming it, nothing created."""
    fit, runs = LOOPS[loop]
    with pytest.raises(SystemExit) as info:
        fit(["fit", *SHORT, "--run_name=b", "--ckpt_path=last"])
    assert info.value.code == 1
    assert capsys.readouterr().err.startswith(f"error: --ckpt_path last: no {runs}/b/checkpoints/last.ckpt")
    assert not Path("lightning_logs").exists()
