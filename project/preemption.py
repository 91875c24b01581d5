"""Stop signals: a checkpoint at the next optimizer step, then a non-zero exit, and under SLURM a requeue.

A scheduler sends SIGTERM before it kills a job (SLURM also a signal of the user's choice before the
time limit, ``--signal=USR1@90``), a user presses Ctrl-C (SIGINT). Either lands in the middle of a
step; acting on it there would save a half-updated model. So the handler only records the signal,
and the training loop acts on it at its next optimizer step: it writes ``last.ckpt`` (the position
in the epoch included, for an exact resume), asks SLURM to requeue the job when the signal was the
requeue signal, and exits with 128 + the signal's number, what a shell reports for a process that
signal killed, so no scheduler mistakes the run for a finished one.

``Preemption`` does this for Lightning's Trainer; the reference trainer uses ``StopSignals``,
``requeue`` and ``Preempted`` directly.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import warnings
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any, Literal, cast

import lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.exceptions import SIGTERMException

from project import checkpoint_contract as contract
from project.callbacks import LatestCheckpoint
from project.metrics import StageMetrics

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
RequeueSignal = Literal["SIGUSR1", "SIGUSR2", "SIGTERM"]
# What signal.signal takes and returns: a function, SIG_DFL or SIG_IGN, or None (not set from Python)
Handler = Callable[[int, FrameType | None], Any] | int | signal.Handlers | None


class Preempted(SystemExit):
    """Training stopped on a signal, after writing its checkpoint; the exit status is 128 + the signal."""

    def __init__(self, signum: int):
        super().__init__(128 + signum)


def slurm_job_id() -> str | None:
    """The job ``scontrol requeue`` takes: ``ARRAYJOB_TASK`` for an array task; None outside SLURM."""
    if (array := os.environ.get("SLURM_ARRAY_JOB_ID")) is not None:
        return f"{array}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    return os.environ.get("SLURM_JOB_ID")


def requeue(job_id: str) -> None:
    """``scontrol requeue JOB``, as Lightning's SLURM handler runs it: the job goes back into the queue
    and its next start resumes from the checkpoint just written."""
    result: int | str
    try:
        result = subprocess.run(["scontrol", "requeue", job_id], check=False).returncode
    except FileNotFoundError:
        result = "no scontrol on PATH"
    if result == 0:
        print(f"requeued SLURM job {job_id}", file=sys.stderr)
    else:
        print(f"error: requeueing SLURM job {job_id} failed ({result})", file=sys.stderr)


class StopSignals:
    """Records the first of ``signals`` that arrives instead of stopping the process mid-step.

    A second SIGINT (Ctrl-C twice) interrupts at once. ``close()`` puts the previous handlers back;
    a handler that outlives its run (Lightning restores handlers itself on an error) hands signals
    to the handler it replaced.
    """

    def __init__(self, signals: tuple[int, ...] = STOP_SIGNALS, requeue_signal: int | None = None):
        self.signals = tuple(dict.fromkeys([*signals, *([requeue_signal] if requeue_signal else [])]))
        self.requeue_signal = requeue_signal
        self.received: int | None = None
        self.active = False
        self._previous: dict[int, Handler] = {}

    def install(self) -> StopSignals:
        if threading.current_thread() is not threading.main_thread():
            return self  # signals reach the main thread only
        for signum in self.signals:
            previous = signal.signal(signum, self._handle)
            if previous is not self._handle:
                self._previous.setdefault(signum, previous)
        self.active = True
        return self

    def close(self) -> None:
        self.active = False
        for signum, previous in self._previous.items():
            if signal.getsignal(signum) == self._handle:
                signal.signal(signum, previous)
        self._previous = {}

    @property
    def requeue_requested(self) -> bool:
        return self.received is not None and self.received == self.requeue_signal

    def _handle(self, signum: int, frame) -> None:
        if not self.active:
            previous = self._previous.get(signum, signal.SIG_DFL)
            if callable(previous):
                previous(signum, frame)
            elif previous != signal.SIG_IGN:  # the default action: what the signal would have done
                signal.signal(signum, signal.SIG_DFL)
                os.kill(os.getpid(), signum)
            return
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        if self.received is None:
            self.received = signum
            print(
                f"\n{signal.Signals(signum).name} received: stopping at the next optimizer step with a checkpoint",
                file=sys.stderr,
                flush=True,
            )

    def __enter__(self) -> StopSignals:
        return self.install()

    def __exit__(self, *exc) -> None:
        self.close()


def stop_message(signum: int, checkpoint: Path | None, where: str, new: bool = True) -> str:
    """What a stop says: where it stopped, and the checkpoint a restart goes on from."""
    name, code = signal.Signals(signum).name, 128 + signum
    if checkpoint is None:
        return f"{name}: stopped {where}, no checkpoint; exit {code}"
    if not new:
        return f"{name}: stopped {where}, {checkpoint} kept; exit {code}; resume with --ckpt_path last"
    return f"{name}: checkpoint {checkpoint} written {where}; exit {code}; resume with --ckpt_path last"


class Preemption(Callback):
    """SIGTERM, SIGINT and (under SLURM) the requeue signal stop Lightning's training at the next
    optimizer step with ``last.ckpt``, then exit non-zero; the requeue signal also requeues the job.

    Args:
        requeue_signal: the signal SLURM is told to send before the time limit
            (``sbatch --signal=USR1@90``); SIGTERM makes the scheduler's own warning requeue too.
    """

    def __init__(self, requeue_signal: RequeueSignal = "SIGUSR1"):
        self.requeue_signal = requeue_signal
        self.signals: StopSignals | None = None
        self._batches_done: int | None = None  # set while the stop checkpoint is written
        self._leaving: tuple[int, str | None] | None = None

    @property
    def requeue_signum(self) -> int | None:
        return int(signal.Signals[self.requeue_signal]) if slurm_job_id() is not None else None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit":
            # Before Lightning's signal connector looks: finding a handler for the requeue signal, it
            # leaves out its own, which would save a checkpoint from inside the handler, mid-step.
            self.signals = StopSignals(requeue_signal=self.requeue_signum).install()

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Again: Lightning put its SIGTERM handler in front of this one at fit start, and that one
        # ends the run at the next batch with exit status 0 and no checkpoint.
        assert self.signals is not None  # setup("fit") made them
        self.signals.install()
        if self._stop_asked(trainer):
            self._stop(trainer, None, "before training", fresh=False)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # A signal during an epoch's last batch, its validation or its checkpoints: last.ckpt now
        # holds that epoch's end.
        if self._stop_asked(trainer):
            self._stop(trainer, None, f"after epoch {trainer.current_epoch - 1}")

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx) -> None:
        done = batch_idx + 1
        if done >= trainer.num_training_batches or done % trainer.accumulate_grad_batches:
            return  # the epoch's end has its own checkpoint; inside an accumulation window, gradients would be lost
        if self._stop_asked(trainer):
            where = f"at epoch {trainer.current_epoch}, batch {batch_idx} (step {trainer.global_step})"
            self._stop(trainer, done, where)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx) -> None:
        # The exit waits for this hook: Lightning logs a step's metrics after its on_train_batch_end.
        if self._leaving is not None:
            self._leave(*self._leaving)

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        if self._batches_done is not None:  # every rank: under DDP it gathers their running sums
            train_metrics = cast(StageMetrics, pl_module.train_metrics)  # the ImageClassifier's
            checkpoint.update(contract.mid_epoch(self._batches_done, train_metrics))

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        # Before Lightning creates the training loader's iterator (a loader's own state_dict would be
        # restored after it, Lightning #20550), so its first pass is the rest of the epoch.
        dm = trainer.datamodule  # type: ignore[attr-defined]  # Lightning's data connector sets it
        start = contract.resume_point(checkpoint, dm, trainer.world_size)
        if start.batch:
            # Lightning warns that a mid-epoch checkpoint with a plain loader repeats samples: not here.
            warnings.filterwarnings("ignore", message=".*resuming from a checkpoint that ended before the epoch ended")
            print(f"resuming from {start}")

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if self.signals is not None:
            self.signals.active = False
        # Lightning's own SIGTERM stop (a signal before training started) exits with status 0
        if isinstance(exception, SIGTERMException) and not exception.code:
            exception.code = 128 + signal.SIGTERM

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.signals is not None:
            self.signals.close()
            self.signals = None

    def _stop_asked(self, trainer: L.Trainer) -> bool:
        asked = self.signals is not None and self.signals.received is not None
        if trainer.world_size > 1:  # every rank stops at the same step, whichever got the signal
            asked = trainer.strategy.reduce_boolean_decision(asked, all=False)
        return asked

    def _stop(self, trainer: L.Trainer, batches_done: int | None, where: str, fresh: bool = True) -> None:
        """Stop with last.ckpt: written here, inside an epoch after ``batches_done`` of its batches, or
        (None) the one already there (``fresh``: the epoch's end just wrote it); requeue; then exit."""
        assert self.signals is not None  # setup("fit") made them
        signum = self.signals.received or signal.SIGTERM  # another rank's signal
        latest = next((c for c in trainer.checkpoint_callbacks if isinstance(c, LatestCheckpoint)), None)
        path = Path(latest.dirpath) / f"{latest.filename}{latest.FILE_EXTENSION}" if latest and latest.dirpath else None
        if path is not None and batches_done is not None:
            self._batches_done = batches_done
            try:
                trainer.save_checkpoint(path)
            finally:
                self._batches_done = None
        elif path is not None and not path.exists():
            path = None
        if self.signals.requeue_requested and trainer.is_global_zero:
            job_id = slurm_job_id()
            assert job_id is not None  # the requeue signal is set under SLURM only
            requeue(job_id)
        self._leaving = (signum, stop_message(signum, path, where, fresh) if trainer.is_global_zero else None)
        if batches_done is None:  # else the exit waits for Lightning to log this step
            self._leave(*self._leaving)

    def _leave(self, signum: int, message: str | None) -> None:
        if message is not None:
            print(message, file=sys.stderr, flush=True)
        raise Preempted(signum)
