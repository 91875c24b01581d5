"""Stop signals in the reference loop, as ``project.preemption.Preemption`` handles them for Lightning:
the handler only records the signal; after the next optimizer step the loop writes ``last.ckpt`` with
its position in the epoch, requeues under SLURM if asked, and exits with 128 + the signal.
"""

from __future__ import annotations

import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import cast

import torch

from project import checkpoint_contract as contract
from project.metrics import StageMetrics
from project.preemption import Preempted, StopSignals, requeue, slurm_job_id, stop_message
from project.reference.distributed import any_rank, from_rank_zero
from project.reference.logger import ReferenceLogger
from project.reference.settings import TrainerSettings


class ReferenceStop:
    """Acts on ``signals`` at optimizer steps and epoch ends. ``last_checkpoint`` is where
    ``last.ckpt`` goes (rank 0's run directory), ``save(state)`` writes it."""

    def __init__(
        self,
        signals: StopSignals,
        settings: TrainerSettings,
        last_checkpoint: Callable[[], Path],
        save: Callable[[dict], None],
        train_metrics: Callable[[], StageMetrics],
    ):
        self.signals, self.settings = signals, settings
        self.last_checkpoint, self.save, self.train_metrics = last_checkpoint, save, train_metrics

    def after_steps(self, log_step, logger: ReferenceLogger, state: Callable[[], dict], num_train, first_batch):
        """What follows each optimizer step: ``log_step(loss, batches_done)``, and on a stop signal a
        checkpoint that holds the position in the epoch, then the exit. (Not in the epoch's last
        step: its end has a checkpoint of its own.)"""
        every = self.settings.accumulate_grad_batches
        epoch_start = {"epoch": logger.epoch, "step": logger.steps - first_batch // every}

        def on_step(loss: torch.Tensor) -> None:
            if epoch_start["epoch"] != logger.epoch:  # a new epoch began
                epoch_start.update(epoch=logger.epoch, step=logger.steps)
            done = min((logger.steps + 1 - epoch_start["step"]) * every, num_train)
            log_step(loss, done)  # the logger counts this step now
            if done >= num_train or not self.asked():
                return
            where = f"at epoch {logger.epoch}, batch {done - 1} (step {logger.steps})"
            if self.settings.enable_checkpointing:
                marker = contract.mid_epoch(done, self.train_metrics())  # every rank: it gathers their sums
                if self.settings.processes.is_global_zero:
                    self.save({**state(), **marker})
            self.stop(where)

        return on_step

    def asked(self) -> bool:
        asked = self.signals.received is not None
        if self.settings.processes.distributed:  # every rank stops at the same step, whichever got the signal
            asked = any_rank(asked, self.settings.device)
        return asked

    def stop(self, where: str, new: bool = True) -> None:
        """Requeue if asked, say where it stopped and which ``last.ckpt`` a restart goes on from
        (``new``: written just now), and exit with 128 + the signal."""
        signum = self.signals.received or signal.SIGTERM  # another rank's signal
        if self.settings.processes.is_global_zero:
            if self.signals.requeue_requested:
                job_id = slurm_job_id()
                assert job_id is not None  # the requeue signal is set under SLURM only
                requeue(job_id)
            path = self.last_checkpoint()
            written = self.settings.enable_checkpointing and path.is_file()
            print(stop_message(signum, path if written else None, where, new), file=sys.stderr, flush=True)
        raise Preempted(signum)


class TimeLimit:
    """``trainer.max_time``, as Lightning's Timer callback keeps it: the seconds of training since it
    started (``begin``), plus those of the run it resumed (its checkpoint's ``train`` time), checked
    after every training batch and once before training. Its state goes under the Timer's key."""

    state_key = "Timer"
    STAGES = ("train", "sanity_check", "validate", "test", "predict")

    def __init__(self, seconds: float | None, settings: TrainerSettings):
        self.seconds, self.settings = seconds, settings
        self.offset, self.start = 0.0, cast(float | None, None)

    def begin(self) -> None:
        self.start = time.monotonic()

    def elapsed(self) -> float:
        return self.offset + (time.monotonic() - self.start if self.start is not None else 0.0)

    def reached(self) -> bool:
        """Whether the limit is reached: rank 0's clock decides for every rank, as Lightning's broadcast."""
        if self.seconds is None:
            return False
        reached = self.elapsed() >= self.seconds
        if self.settings.processes.distributed:
            reached = from_rank_zero(reached, self.settings.device)
        return reached

    def state_dict(self) -> dict:
        return {"time_elapsed": {stage: self.elapsed() if stage == "train" else 0.0 for stage in self.STAGES}}

    def load_state_dict(self, state: dict) -> None:
        self.offset = state.get("time_elapsed", {}).get("train", 0.0)
