"""The callbacks a run gives Lightning: only those with work to do, each doing nothing where it has none."""

from pathlib import Path

import torch
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint

from project.callbacks import EpochCheckpoint, LatestCheckpoint, PredictionCSV
from project.cli import SaveRunConfig, TwinloopCLI
from project.preemption import Preemption
from tests.helpers import FAST

SHORT = [*FAST, "--trainer.max_epochs=2", "--trainer.limit_train_batches=6", "--model.pictures.every_n_epochs=0"]


def test_fit_gives_lightning_the_project_callbacks_that_have_work_and_no_others():
    """Lightning calls every hook of every callback at every step: fit's own are the checkpoints,
    the learning-rate monitor, the stop signals and the saved config, and no predictions CSV."""
    cli = TwinloopCLI(args=["fit", *SHORT, "--trainer.max_epochs=1"])
    kinds = [type(c) for c in cli.trainer.callbacks]
    assert set(kinds) == {EpochCheckpoint, LatestCheckpoint, LearningRateMonitor, Preemption, SaveRunConfig}
    assert len(kinds) == 5 and PredictionCSV not in kinds


def test_the_checkpoints_keep_the_state_keys_earlier_checkpoints_were_written_with():
    """A resume finds the best checkpoint's state under ``ModelCheckpoint{...}`` and last.ckpt's under
    ``LatestCheckpoint{...}``, as before the per-step shortcut; the key is built once and stays right."""
    ours = EpochCheckpoint(monitor="val/acc", mode="max")
    assert ours.state_key == ModelCheckpoint(monitor="val/acc", mode="max").state_key
    assert ours.state_key.startswith("ModelCheckpoint{'monitor': 'val/acc', 'mode': 'max'")
    assert ours.state_key is ours.state_key
    latest = LatestCheckpoint()
    assert latest.state_key.startswith("LatestCheckpoint{'monitor': None")


def test_a_resume_restores_the_best_checkpoints_score(tmp_path):
    """The best score survives a resume into the same run: saved and found under the same key."""
    args = ["fit", *SHORT, f"--trainer.default_root_dir={tmp_path}", "--run_name=r"]
    best = TwinloopCLI(args=args).trainer.checkpoint_callback
    saved = torch.load(Path(best.dirpath) / "last.ckpt", weights_only=True)["callbacks"]
    assert saved[best.state_key]["best_model_score"] == best.best_model_score
    resumed = TwinloopCLI(args=[*args, "--ckpt_path=last"]).trainer  # at the run's end: nothing left to train
    assert resumed.global_step == 12  # restored, not trained again from step 0
    assert resumed.checkpoint_callback.best_model_score == best.best_model_score
    assert resumed.checkpoint_callback.best_model_path == best.best_model_path


def test_validate_and_test_leave_the_checkpoint_callbacks_state_alone(tmp_path, recwarn):
    """Outside fit the checkpoints' state in a checkpoint is not loaded: nothing is saved there, and
    Lightning would warn that the new run's directory differs from the one that state was saved in."""
    args = [*SHORT, f"--trainer.default_root_dir={tmp_path}"]
    best = TwinloopCLI(args=["fit", *args]).trainer.checkpoint_callback
    kept = [  # each in a run directory of its own, as by default
        TwinloopCLI(args=[command, *args, f"--ckpt_path={best.best_model_path}"]).trainer.checkpoint_callback
        for command in ("validate", "test")
    ]
    messages = [str(w.message) for w in recwarn]
    assert not [m for m in messages if "dirpath has changed" in m], messages
    assert [c.best_model_path for c in kept] == ["", ""]  # not the fit's


def test_a_checkpoint_every_n_train_steps_still_saves_inside_epochs(tmp_path):
    """The per-step shortcut only applies where nothing is due per step: every_n_train_steps saves."""
    TwinloopCLI(
        args=[
            "fit",
            *SHORT,
            f"--trainer.default_root_dir={tmp_path}",
            "--checkpoint.monitor=null",
            "--checkpoint.every_n_train_steps=4",
            "--checkpoint.save_top_k=-1",
            "--checkpoint.filename=step{step:02d}",
        ]
    )
    saved = sorted(p.name for p in tmp_path.rglob("step*.ckpt"))
    assert saved == ["step04.ckpt", "step08.ckpt", "step12.ckpt"]
