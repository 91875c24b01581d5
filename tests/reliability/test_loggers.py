"""Any logger Lightning ships, through a kill -9 and a restart: a CSV logger, TensorBoard with a CSV
logger at once, and TensorBoard with MLflow (an SQLite store). The resumed run's logs are the
uninterrupted run's, each step once in each."""

import csv
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from project.reference.config import load_run
from tests.helpers import EQUIV, FAST, REPO

RUN = [
    *FAST,
    "--data.augment=true",
    "--model.network.dropout=0.5",
    "--trainer.max_epochs=3",
    "--trainer.limit_train_batches=16",
    "--trainer.log_every_n_steps=1",
    "--model.pictures.every_n_epochs=0",
]
CSV = {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": "logs"}}
TENSORBOARD = {"class_path": "lightning.pytorch.loggers.TensorBoardLogger", "init_args": {"save_dir": "logs"}}
WANDB = {"class_path": "lightning.pytorch.loggers.WandbLogger", "init_args": {"save_dir": "logs", "offline": True}}
MLFLOW = {"class_path": "lightning.pytorch.loggers.MLFlowLogger", "init_args": {"tracking_uri": "sqlite:///mlflow.db"}}
LOGGERS = {
    # (the loggers, how the restart finds its run, the run's directory under the root)
    "csv": ([CSV], ["--ckpt_path=last"], "logs/lightning_logs/version_0"),
    "tensorboard+csv": ([TENSORBOARD, CSV], ["--run_name=r", "--ckpt_path=last"], "logs/lightning_logs/r"),
    "tensorboard+mlflow": ([TENSORBOARD, MLFLOW], ["--ckpt_path=last"], "logs/lightning_logs/version_0"),
    "tensorboard+csv+wandb": ([TENSORBOARD, CSV, WANDB], ["--run_name=r", "--ckpt_path=last"], "logs/lightning_logs/r"),
}


def twinloop(root: Path, args: list[str], **kwargs) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    root.mkdir(exist_ok=True)
    return subprocess.Popen([sys.executable, "-m", "project", "fit", *args], cwd=root, env=env, text=True, **kwargs)


def rows(run: Path) -> list[dict[str, str]]:
    path = run / "metrics.csv"
    return list(csv.DictReader(path.open(newline=""))) if path.is_file() else []


def mlflow_values(root: Path) -> list[tuple[str, int, float]]:
    """(name, step, value) of every value in the MLflow store ``root/mlflow.db``, by name and step."""
    try:
        with closing(sqlite3.connect(root / "mlflow.db")) as db:
            return db.execute("SELECT key, step, value FROM metrics ORDER BY key, step, timestamp").fetchall()
    except sqlite3.OperationalError:  # not there yet, or being written
        return []


def logged_steps(run: Path) -> list[int]:
    """The steps whose training loss the CSV file, or else the MLflow store, holds."""
    if rows(run):
        return [int(row["step"]) for row in rows(run) if row.get("train/loss")]
    root = run.parents[2]  # ROOT/logs/lightning_logs/<version>
    return [step for name, step, _ in mlflow_values(root) if name == "train/loss"]


@pytest.mark.slow
@pytest.mark.parametrize("case", LOGGERS)
def test_kill_9_and_restart_log_each_step_once_in_each_logger(case, tmp_path):
    """SIGKILL two steps into epoch 1, after the CSV file shows them; the restart resumes from the
    epoch-0 checkpoint (step 16, said on stdout: not from step 0), drops the rows and events logged
    after it, and ends with the uninterrupted run's weights and the same metrics.csv, row for row."""
    loggers, restart, run_dir = LOGGERS[case]
    for logger, package in ((MLFLOW, "mlflow"), (WANDB, "wandb")):
        if logger in loggers:
            pytest.importorskip(package, reason=f"the optional extra `loggers` ({package}) is not installed")
    logger_args = [f"--trainer.logger={json.dumps(loggers)}", *restart[:-1]]
    full = twinloop(tmp_path / "full", [*RUN, *logger_args])
    victim = twinloop(tmp_path / "cut", [*RUN, *logger_args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    cut = tmp_path / "cut" / run_dir
    deadline = time.monotonic() + 120
    while max(logged_steps(cut), default=-1) < 18 and victim.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert victim.returncode == -signal.SIGKILL
    resume_step = torch.load(cut / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]
    assert resume_step == 16 and max(logged_steps(cut)) >= 18  # rows after the checkpoint, to be dropped
    resumed = twinloop(tmp_path / "cut", [*RUN, *logger_args, restart[-1]], stdout=subprocess.PIPE)
    out, _ = resumed.communicate(timeout=180)
    assert full.wait(timeout=180) == 0 and resumed.returncode == 0
    assert f"resuming {run_dir}/checkpoints/last.ckpt (step 16)" in out
    uninterrupted = tmp_path / "full" / run_dir
    a = torch.load(uninterrupted / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    b = torch.load(cut / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert logged_steps(cut) == list(range(48))  # each step once, in order
    assert rows(cut) == rows(uninterrupted)  # every value, the validation rows too
    if any(logger is MLFLOW for logger in loggers):
        values = mlflow_values(tmp_path / "cut")
        assert values == mlflow_values(tmp_path / "full")  # every value, at its step, once
        with closing(sqlite3.connect(tmp_path / "cut" / "mlflow.db")) as db:
            assert db.execute("SELECT COUNT(*) FROM runs").fetchone() == (1,)  # the restart logged on into it
    if any(logger is WANDB for logger in loggers):
        # W&B (offline) logs the restart under the run's name as its id, in a second offline run
        # folder; its files take no deletions, so the steps logged after the checkpoint stay there.
        offline = sorted((tmp_path / "cut" / "logs" / "wandb").glob("offline-run-*"))
        assert [path.name.rsplit("-", 1)[1] for path in offline] == ["r", "r"]
    if any(logger is TENSORBOARD for logger in loggers):
        events = EventAccumulator(str(cut))
        events.Reload()
        assert [e.step for e in events.Scalars("train/loss")] == list(range(48))


def test_a_resumed_reference_run_keeps_the_csv_rows_before_its_checkpoint_and_writes_the_rest_once(tmp_path):
    """The reference loop's CSV log through a resume from an earlier checkpoint (what a kill leaves):
    the rows before its step stay, the later ones (there already) are dropped and written again, so
    the file ends as the uninterrupted run's, row for row."""
    args = [*EQUIV, f"--trainer.logger={json.dumps([CSV])}", "--trainer.log_every_n_steps=1"]

    def fit(log_dir: Path, ckpt_path: Path | None = None, epochs: int = 3) -> None:
        run = load_run([*args, f"--trainer.max_epochs={epochs}"], log_dir)
        run.trainer.fit(run.model, run.datamodule, str(ckpt_path) if ckpt_path else None)

    fit(tmp_path / "full")
    cut = tmp_path / "cut"
    fit(cut, epochs=2)
    shutil.copy(cut / "checkpoints" / "last.ckpt", tmp_path / "epoch1.ckpt")  # step 14
    fit(cut, cut / "checkpoints" / "last.ckpt")  # on to the end: rows after step 14 in the file
    assert max(int(row["step"]) for row in rows(cut)) == 20
    fit(cut, tmp_path / "epoch1.ckpt")
    assert rows(cut) == rows(tmp_path / "full")
    assert [int(row["step"]) for row in rows(cut) if row["train/loss"]] == list(range(21))
