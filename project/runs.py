"""Which run a command works on, and the checkpoint it starts from: the run directory (a named run's,
or the newest version's for ``--ckpt_path last``) and the checks that make a bad checkpoint one
error line naming it, before any run directory exists. The twinloop CLI and the reference CLI
both use them."""

from __future__ import annotations

import csv
import importlib
import sqlite3
import warnings
from contextlib import closing
from inspect import signature
from pathlib import Path

from jsonargparse import Namespace
from lightning.pytorch.loggers import CSVLogger, MLFlowLogger, TensorBoardLogger, WandbLogger
from lightning.pytorch.utilities import rank_zero_only

from project.checkpoint_io import check_class_names, check_state_dict_fits, read_checkpoint
from project.errors import CheckpointError, ConfigError, UserPathError
from project.module import MLFLOW_RUNS, ImageClassifier
from project.preemption import slurm_job_id


def check_ckpt_path(ckpt_path: str | None) -> dict | None:
    """A checkpoint file the user named must exist and be a checkpoint, read with ``weights_only``
    (``read_checkpoint``): returned, for ``check_checkpoint_fits_run``. Lightning's own names (last,
    best, ...) and remote or registry paths are Lightning's to resolve (None)."""
    if not ckpt_path or ckpt_path in ("last", "best", "hpc") or "://" in ckpt_path or ckpt_path.startswith("registry"):
        return None
    if not Path(ckpt_path).is_file():
        raise UserPathError(f"--ckpt_path: no such file: {ckpt_path}")
    try:
        return read_checkpoint(ckpt_path)
    except CheckpointError as exc:
        raise CheckpointError(f"--ckpt_path: {exc}") from None


def check_checkpoint_fits_run(checkpoint: dict, ckpt_path: str, model: ImageClassifier, datamodule) -> None:
    """The checkpoint's classes are the data's, in order, and its tensors fit the model: else one
    ``CheckpointError`` naming the file. The data is prepared first: CIFAR-100 names its classes
    from a downloaded file, and an image folder's are the class folders its scan found usable.
    Every data set knows its class names then (digits and MNIST are always '0'..'9'), so predict,
    which has no labels, is checked too: its inputs are prepared with this data's statistics and size."""
    datamodule.prepare_data()
    try:
        if "pytorch-lightning_version" not in checkpoint:  # Lightning's loader needs it (the reference loop's does not)
            raise CheckpointError(f"{ckpt_path} is not a Lightning checkpoint: it has no pytorch-lightning_version")
        check_class_names(checkpoint, datamodule.class_names, ckpt_path)
        check_state_dict_fits(checkpoint["state_dict"], model.state_dict(), ckpt_path)
    except CheckpointError as exc:
        raise CheckpointError(f"--ckpt_path: {exc}") from None


def slurm_run_name() -> str | None:
    """``slurm-<job id>`` (``slurm-<array job>_<task>``) inside a SLURM job: a requeued job keeps it."""
    job = slurm_job_id()
    return f"slurm-{job}" if job else None


def resume_named_run(loggers: list[Namespace], ckpt_path: str | None) -> tuple[str, dict] | None:
    """A run with a fixed directory (``--run_name`` or a SLURM job; the first logger's, which holds the
    checkpoints, as in Lightning): ``--ckpt_path last`` resumes its ``checkpoints/last.ckpt``. A new
    start in a directory without one (a start that died before its first checkpoint) hides the old
    logs (``hide_logged_from``: the caller does it for loggers that are objects by then)."""
    last = named_run_checkpoint(run_directory(loggers[0]), ckpt_path)
    return resume_from(last, loggers) if last is not None else None


def run_directory(logger: Namespace) -> Path:
    """``<save_dir>/<name>/<version>`` of a logger given as a class path and its arguments."""
    args = logger.init_args
    return Path(args.get("save_dir") or ".") / (args.get("name") or "") / str(args.get("version"))


def named_run_checkpoint(run: Path, ckpt_path: str | None) -> Path | None:
    """``--ckpt_path last`` of a run with a fixed directory: its ``checkpoints/last.ckpt``, which must
    exist; a new start where one exists is refused (its steps would be logged twice)."""
    last = run / "checkpoints" / "last.ckpt"
    if ckpt_path == "last" and not last.is_file():
        raise UserPathError(f"--ckpt_path last: no {last} to resume from; leave --ckpt_path out to start the run")
    if ckpt_path is None and last.is_file():
        raise UserPathError(f"{run} holds a run already ({last}): resume it with --ckpt_path last or use another name")
    return last if ckpt_path == "last" else None


def newest_last_checkpoint(runs: Path) -> Path:
    """The newest ``runs/version_*/checkpoints/last.ckpt``; none is an error, not a fresh start."""
    found = sorted(runs.glob("version_*/checkpoints/last.ckpt"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise UserPathError(
            f"--ckpt_path last: no {runs}/version_*/checkpoints/last.ckpt to resume from; "
            "leave --ckpt_path out to start a new run"
        )
    return found[-1]


def resume_into_last_run(loggers: list[Namespace]) -> tuple[str, dict]:
    """``--ckpt_path last``: the newest ``last.ckpt`` of the first logger's versions, resumed into its
    own version folder (every logger takes that version), with what the interrupted run logged after
    it hidden.

    (Lightning would look in a new version folder only, find nothing and start afresh.)
    """
    args = loggers[0].init_args
    last = newest_last_checkpoint(Path(args.get("save_dir") or ".") / (args.get("name") or ""))
    set_version(loggers, int(last.parent.parent.name.removeprefix("version_")))
    return resume_from(last, loggers)


def resume_from(last: Path, loggers: list[Namespace]) -> tuple[str, dict]:
    """Resume ``last`` into the first logger's version folder, which holds it."""
    checkpoint = check_ckpt_path(str(last))
    assert checkpoint is not None  # a file's path, which check_ckpt_path reads
    print(f"resuming {last} (step {checkpoint['global_step']}) into {last.parent.parent}")
    return str(last), checkpoint


def set_version(loggers: list[Namespace], version: int | str) -> None:
    """The run's version (a name or a number) for every logger that has one: they log side by side."""
    for logger in loggers:
        if "version" in signature(logger_class(logger)).parameters:
            logger.init_args.version = version


def logger_class(logger: Namespace) -> type:
    module, _, name = logger.class_path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def purge_tensorboard_from(loggers: list[Namespace], step: int) -> None:
    """TensorBoard loggers hide the interrupted run's events from ``step`` on (``purge_step``): no
    step shows twice. Other loggers are purged once they exist (``drop_csv_rows_from``)."""
    for logger in loggers:
        if issubclass(logger_class(logger), TensorBoardLogger):
            logger.dict_kwargs = {**(logger.get("dict_kwargs") or {}), "purge_step": step}


def drop_csv_rows_from(loggers: list, step: int) -> None:
    """A CSV logger keeps the rows its run wrote before ``step`` and drops the later ones, which a
    resumed run writes again. (Lightning's CSV writer deletes an existing ``metrics.csv`` when it
    opens: the rows kept are handed to it to write first.) Rank 0 only, as the logger writes."""
    for logger in loggers:
        if not isinstance(logger, CSVLogger) or getattr(rank_zero_only, "rank", 0) != 0:
            continue
        path = Path(logger.log_dir) / "metrics.csv"
        rows = list(csv.DictReader(path.open(newline=""))) if path.is_file() else []
        with warnings.catch_warnings():  # "previous log files ... will be deleted": the rows are kept
            warnings.filterwarnings("ignore", message=".*exists and is not empty.*")
            writer = logger.experiment
        writer.metrics = [row for row in rows if int(row["step"]) < step] + writer.metrics


def check_first_logger(loggers: list[Namespace]) -> None:
    """The first logger's folder holds the run (its checkpoints, a restart's ``last.ckpt``): a logger
    that writes to a version folder of its own, not an MLflow store or W&B's run folders."""
    if loggers and issubclass(logger_class(loggers[0]), MLFlowLogger | WandbLogger):
        name = loggers[0].class_path.rpartition(".")[2]
        raise ConfigError(
            f"trainer.logger: {name} first would put the checkpoints in its own store; list a TensorBoardLogger "
            f"or CSVLogger before it (its folder holds the run), e.g. --trainer.logger "
            f"'[{{class_path: TensorBoardLogger}}, {{class_path: {name}}}]'"
        )


def continue_mlflow_runs(loggers: list[Namespace], checkpoint: dict) -> None:
    """A resumed run's MLFlowLoggers log on into the MLflow runs its checkpoint names."""
    run_ids = iter(checkpoint.get(MLFLOW_RUNS, []))
    for logger in loggers:
        if issubclass(logger_class(logger), MLFlowLogger):
            logger.init_args.run_id = next(run_ids, None)


def drop_mlflow_steps_from(loggers: list, step: int) -> None:
    """An MLflow run in a local store keeps the values logged before ``step`` and drops the later ones,
    which a resumed run logs again: in an SQLite store (``tracking_uri: sqlite:///mlflow.db``) the
    rows of the values and of the latest ones (MLflow writes those again as it logs on), in a file
    store the lines. A remote store keeps them (MLflow has no call that deletes a logged value).
    Rank 0 only, as the logger writes."""
    for logger in loggers:
        if not isinstance(logger, MLFlowLogger) or getattr(rank_zero_only, "rank", 0) != 0:
            continue
        uri, run_id = str(getattr(logger, "_tracking_uri", "")), logger.run_id
        if uri.startswith("sqlite:///"):
            with closing(sqlite3.connect(uri.removeprefix("sqlite:///"))) as db, db:
                for table in ("metrics", "latest_metrics"):
                    db.execute(f"DELETE FROM {table} WHERE run_uuid = ? AND step >= ?", (run_id, step))
        elif logger.save_dir is not None and logger.experiment_id is not None and run_id is not None:
            for path in (Path(logger.save_dir) / logger.experiment_id / run_id / "metrics").rglob("*"):
                if path.is_file():  # a line per value: "<timestamp> <value> <step>"
                    lines = path.read_text().splitlines()
                    path.write_text("".join(f"{line}\n" for line in lines if int(line.split()[2]) < step))
        else:
            warnings.warn(f"MLflow at {uri}: the values logged after step {step} stay in the run", stacklevel=2)
