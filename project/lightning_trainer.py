"""Lightning's Trainer as the CLI builds it: the batch limits parsed int first, and the plugins
it adds, atomic checkpoint writes and, under SLURM, requeueing on the preemption signal."""

from __future__ import annotations

import signal

from lightning.fabric.plugins.environments import ClusterEnvironment, SLURMEnvironment
from lightning.pytorch import Trainer
from lightning.pytorch.plugins.io import CheckpointIO

from project.checkpoint_io import AtomicCheckpointIO

# ``int | float``, not ``typing.Union``: typing caches unions and treats ``Union[int, float]`` and
# ``Union[float, int]`` as one, so Lightning's ``Optional[Union[int, float]]`` batch limits come out as
# ``Union[float, int, None]`` (``lightning/fabric/fabric.py`` spells one first). jsonargparse tries a
# union's types in order, and float takes ``1``: ``limit_train_batches: 1`` became 1.0, every batch.
BatchLimit = int | float | None


class BatchLimitTrainer(Trainer):
    """Lightning's Trainer, with the ``limit_*_batches`` parsed int first: ``1`` is one batch,
    ``1.0`` all of them, as the Trainer's docs say.

    Args:
        limit_train_batches: How much of the training set to use per epoch (float = fraction,
            int = number of batches). Default: ``1.0``.
        limit_val_batches: The same for each validation run.
        limit_test_batches: The same for testing.
        limit_predict_batches: The same for predicting.
    """

    def __init__(
        self,
        *,
        limit_train_batches: BatchLimit = None,
        limit_val_batches: BatchLimit = None,
        limit_test_batches: BatchLimit = None,
        limit_predict_batches: BatchLimit = None,
        **kwargs,
    ):
        super().__init__(
            limit_train_batches=limit_train_batches,
            limit_val_batches=limit_val_batches,
            limit_test_batches=limit_test_batches,
            limit_predict_batches=limit_predict_batches,
            **kwargs,
        )


def with_atomic_checkpoints(plugins, strategy) -> list:
    """The Trainer's ``plugins`` plus an ``AtomicCheckpointIO``, unless they or the strategy already
    bring a CheckpointIO of their own."""
    plugins = [] if plugins is None else list(plugins) if isinstance(plugins, (list, tuple)) else [plugins]
    if not any(isinstance(p, CheckpointIO) for p in plugins) and getattr(strategy, "_checkpoint_io", None) is None:
        plugins.append(AtomicCheckpointIO())
    return plugins


def with_slurm_requeue(plugins: list, requeue_signal: str) -> list:
    """Under SLURM, Lightning's SLURM environment with auto-requeue on ``requeue_signal``, unless the
    plugins name a cluster environment. (``Preemption`` acts on the signal at the next optimizer
    step: Lightning's own handler would save from inside the handler, in the middle of a step.)"""
    if not SLURMEnvironment.detect() or any(isinstance(p, ClusterEnvironment) for p in plugins):
        return plugins
    return [*plugins, SLURMEnvironment(auto_requeue=True, requeue_signal=signal.Signals[requeue_signal])]
