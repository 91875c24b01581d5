"""``ReferenceTrainer``: the reference loop's counterpart of ``lightning.Trainer``.

``fit``, ``validate`` and ``test`` take the same ``ImageClassifier`` and ``ImageDataModule`` that
Lightning's Trainer takes, and around the textbook loop of ``project/reference/loop.py`` do what the
Trainer does around its own: determinism, batch limits, the optimizer and scheduler from the
module's factories, TensorBoard logging, checkpoints and progress bars.
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import torch

from project import monitoring
from project.checkpoint_io import atomic_torch_save
from project.data import ImageDataModule
from project.errors import UserPathError, check_finite_loss, out_of_memory_hinted
from project.factory import build_optimization, stepping_batches
from project.finetuning import optimizer_parameters
from project.metrics import StageMetrics, build_stage_metrics
from project.module import ImageClassifier
from project.preemption import StopSignals, slurm_job_id
from project.progress import CountedBatches, EvaluationLines, LineProgress, ProgressBar, stdout_is_terminal
from project.reference import loop
from project.reference.checkpoints import checkpoint_dict, load_checkpoint
from project.reference.distributed import EpochShuffled, data_parallel, init_process_group, reseed
from project.reference.logger import ReferenceLogger, closed_on_error, next_version_dir
from project.reference.settings import TrainerSettings, configure_determinism, count_batches
from project.reference.stopping import ReferenceStop
from project.rng import restore_rng


class ReferenceTrainer:
    """Runs an ``ImageClassifier`` with the reference loop.

    ``callbacks`` get ``on_train_start``, ``on_validation_end`` and ``on_train_end(trainer, model)``,
    where the trainer offers what Lightning's offers for the same purpose (``optimizers``,
    ``estimated_stepping_batches``, ``callback_metrics``, ``sanity_checking``), so one recording
    callback serves both loops.
    """

    sanity_checking = False  # the reference loop has no sanity pass

    def __init__(
        self,
        settings: TrainerSettings,
        log_dir: Path | None = None,
        hparams: dict | None = None,
        callbacks: Sequence = (),
        requeue_signal: str = "SIGUSR1",
    ):
        self.settings = settings
        # under SLURM: the signal that writes a checkpoint and requeues the job (SIGTERM and SIGINT stop it)
        self.requeue_signal = signal.Signals[requeue_signal] if slurm_job_id() is not None else None
        self._log_dir = log_dir
        self.hparams = hparams or {}
        self.callbacks = list(callbacks)
        self.optimizers: list[torch.optim.Optimizer] = []
        self.estimated_stepping_batches = 0
        self.callback_metrics: dict[str, torch.Tensor] = {}

    @property
    def log_dir(self) -> Path:
        """``<save_dir>/<name>/reference/version_N``, fixed at first use, as Lightning's logger does."""
        if self._log_dir is None:
            self._log_dir = next_version_dir(self.settings.log_root / "reference")
        return self._log_dir

    @log_dir.setter
    def log_dir(self, path: Path) -> None:
        self._log_dir = path

    @property
    def is_global_zero(self) -> bool:
        """Rank 0 of a distributed run, or the one process: the one that logs, saves and reports."""
        return self.settings.processes.is_global_zero

    def fit(self, model: ImageClassifier, datamodule: ImageDataModule, ckpt_path: str | None = None) -> None:
        """Train and validate with the reference loop; checkpoints go to ``log_dir/checkpoints``.
        With ``ckpt_path`` (a checkpoint of either loop), go on from the batch after it.

        SIGTERM, SIGINT (and under SLURM the requeue signal) stop training at the next optimizer
        step with ``last.ckpt``, then exit with 128 + the signal (``project.preemption``)."""
        s = self.settings
        self._setup(model, datamodule, "fit")
        checkpoint = load_checkpoint(model, ckpt_path) if ckpt_path is not None else None
        train_loader, val_loader = datamodule.train_dataloader(), datamodule.val_dataloader()
        num_train = count_batches(len(train_loader), s.limit_train_batches, "limit_train_batches")
        num_val = count_batches(len(val_loader), s.limit_val_batches, "limit_val_batches")
        # Under DDP the loop trains the wrapped network; model.net is the one with SyncBatchNorm layers
        # if asked for (same parameters and buffers), until the fit ends.
        single = model.net.to(s.device)
        net, model.net = data_parallel(single, s.processes, s.device, s.sync_batchnorm)
        self.estimated_stepping_batches = stepping_batches(num_train, s.accumulate_grad_batches, s.max_epochs)
        hp = model.hparams
        optimizer, scheduler = build_optimization(
            optimizer_parameters(model.net, hp.freeze_backbone_epochs, hp.backbone_lr_scale),
            model.optimizer_factory,
            model.scheduler_factory,
            self.estimated_stepping_batches,
        )
        self.optimizers = [optimizer]
        train_metrics, val_metrics = (self._metrics(stage, model) for stage in ("train", "val"))
        logger = self._logger(model, datamodule, purge_step=checkpoint["global_step"] if checkpoint else None)
        logger.log_hparams(self.hparams)
        logger.watch(net, optimizer)
        self._call("on_train_start", model)
        first_epoch, first_batch = (
            self._resume(checkpoint, model, datamodule, optimizer, scheduler, (train_metrics, val_metrics), logger)
            if checkpoint
            else (0, 0)
        )
        lines = self._line_progress(logger.steps)

        signals = StopSignals(requeue_signal=self.requeue_signal)

        def state() -> dict:
            best = val_metrics.best_acc
            state = checkpoint_dict(model, datamodule, optimizer, scheduler, logger.epoch, logger.steps, best)
            return {**state, "train_metrics": train_metrics.running_state()}

        last = "last.ckpt"
        stop = ReferenceStop(signals, s, lambda: self.log_dir / "checkpoints" / last, lambda c: self._save(c, last))
        on_step = stop.after_steps(self._on_step(logger, lines), logger, state, num_train, first_batch)
        on_epoch_end = self._epoch_end(model, datamodule, optimizer, scheduler, val_metrics, logger, lines, stop)
        # fine-tuning: the first epoch frozen or not here, each later one at the end of the one before
        model.backbone_freeze.set_epoch(first_epoch)
        with signals, out_of_memory_hinted(datamodule.batch_size, s.precision), closed_on_error(logger):
            loop.fit(
                net,
                self._progress(EpochShuffled(train_loader, first_epoch), "train", num_train, lines),
                self._progress(val_loader, "val", num_val),
                model.criterion,
                optimizer,
                s.device,
                train_metrics,
                val_metrics,
                max_epochs=s.max_epochs,
                first_epoch=first_epoch,
                first_batch=first_batch,
                num_train_batches=num_train,
                num_val_batches=num_val,
                precision=s.precision,
                scheduler=scheduler,
                scheduler_interval=model.scheduler_interval,
                check_val_every_n_epoch=s.check_val_every_n_epoch,
                on_epoch_end=on_epoch_end,
                scaler=loop.grad_scaler(s.device, s.precision),
                accumulate_grad_batches=s.accumulate_grad_batches,
                gradient_clip_val=s.gradient_clip_val,
                gradient_clip_algorithm=s.gradient_clip_algorithm,
                augment=datamodule.augmenter,
                on_step=on_step,
            )
        self._call("on_train_end", model)
        model.net = single
        logger.close()

    def _epoch_end(self, model, datamodule, optimizer, scheduler, val_metrics, logger, lines, stop: ReferenceStop):
        """What follows each epoch, as Lightning's hooks and callbacks do it: the loss check, the best
        score, logging, the callbacks, the epoch's progress line, and the checkpoints (before the
        epoch's scheduler step)."""

        def on_epoch_end(epoch: int, train_results: dict, val_results: dict | None) -> None:
            if val_results is not None:  # before any checkpoint, as in the module
                check_finite_loss(val_results["val/loss"], f"the validation of epoch {epoch}")
            improved = val_results is not None and val_metrics.record_best(float(val_results["val/acc"]))
            logger.on_epoch_end(epoch, train_results, val_metrics if val_results is not None else None)
            self.callback_metrics = {**train_results, **(val_results or {})}
            if val_results is not None:
                self._call("on_validation_end", model)
            if self.is_global_zero:  # the other ranks hold the same state: rank 0 reports and saves it
                if lines is not None:
                    results = {**(val_results or {}), "val/acc_best": val_metrics.best_acc}
                    lines.on_epoch_end(epoch, logger.steps, results)
                if self.settings.enable_checkpointing:
                    best = val_metrics.best_acc
                    state = checkpoint_dict(model, datamodule, optimizer, scheduler, epoch, logger.steps, best)
                    self._save(state, "last.ckpt")
                    if improved:  # like ModelCheckpoint(mode="max"): a tie keeps the earlier best
                        self._save(state, "best.ckpt")
            model.backbone_freeze.set_epoch(epoch + 1)
            if epoch + 1 < self.settings.max_epochs and stop.asked():
                stop.stop(f"after epoch {epoch}")

        return on_epoch_end

    def _resume(self, checkpoint: dict, model, datamodule, optimizer, scheduler, metrics, logger) -> tuple:
        """Load the training state of a checkpoint of either loop, written at an epoch's end or inside
        it (``mid_epoch``); returns the epoch and the batch to go on with."""
        batches_done = checkpoint.get("mid_epoch", {}).get("batches_done", 0)
        optimizer.load_state_dict(checkpoint["optimizer_states"][0])
        if scheduler is not None:
            scheduler.load_state_dict(checkpoint["lr_schedulers"][0])
            at_epoch_end = not batches_done and scheduler.last_epoch == checkpoint["epoch"]
            if model.scheduler_interval == "epoch" and at_epoch_end:
                scheduler.step()  # saved before its epoch's step (the reference's are; Lightning's last.ckpt is after)
        datamodule.load_state_dict(checkpoint.get(type(datamodule).__qualname__, {}))
        train_metrics, val_metrics = metrics
        if batches_done and self.settings.processes.distributed:  # each rank takes its share of the order
            raise UserPathError(
                "--ckpt_path: this checkpoint was written inside an epoch by one process; resume it with one "
                "process, or from a checkpoint of an epoch's end"
            )
        if batches_done:
            datamodule.continue_epoch(batches_done)  # the next training pass is the rest of that epoch
            train_metrics.load_running_state(checkpoint["train_metrics"])
        val_metrics.best_acc = checkpoint.get("best_val_acc")
        epoch = checkpoint["epoch"] + (0 if batches_done else 1)
        logger.steps, logger.epoch = checkpoint["global_step"], epoch
        logger.pictures.inputs_logged = True  # the run logged them before
        if "rng_states" in checkpoint:  # last: nothing may draw between here and the first batch
            restore_rng(checkpoint["rng_states"])
        if self.is_global_zero:
            print(f"resuming from epoch {epoch}, batch {batches_done} (step {checkpoint['global_step']})")
        return epoch, batches_done

    def validate(self, model: ImageClassifier, datamodule: ImageDataModule, ckpt_path: str | None = None) -> dict:
        """Validation metrics of ``model`` (or of the weights in ``ckpt_path``), logged at step 0."""
        return self._evaluate("validate", model, datamodule, ckpt_path)

    def test(self, model: ImageClassifier, datamodule: ImageDataModule, ckpt_path: str | None = None) -> dict:
        """Test metrics on the data module's test split, logged at step 0."""
        return self._evaluate("test", model, datamodule, ckpt_path)

    def _evaluate(self, stage: str, model: ImageClassifier, datamodule: ImageDataModule, ckpt_path) -> dict:
        s = self.settings
        self._setup(model, datamodule, stage)
        checkpoint = load_checkpoint(model, ckpt_path) if ckpt_path is not None else {}
        loader = datamodule.val_dataloader() if stage == "validate" else datamodule.test_dataloader()
        key = "limit_val_batches" if stage == "validate" else "limit_test_batches"
        num_batches = count_batches(len(loader), getattr(s, key), key)
        metrics = self._metrics("val" if stage == "validate" else "test", model)
        model.net.to(s.device)
        results = loop.evaluate(
            model.net,
            self._progress(loader, stage, num_batches),
            model.criterion,
            s.device,
            metrics,
            num_batches=num_batches,
            precision=s.precision,
        )
        if metrics.detailed:  # validation: the best so far, as the module restores and updates it
            metrics.best_acc = checkpoint.get("best_val_acc")
            metrics.record_best(float(results["val/acc"]))
            results = metrics.epoch_summary(model.class_names)  # what Lightning's validate reports
        logger = self._logger(model, datamodule)
        logger.log_evaluation(metrics)
        logger.close()
        return {k: float(v) for k, v in results.items()}

    def _setup(self, model: ImageClassifier, datamodule: ImageDataModule, stage: str) -> None:
        """What Lightning does before a run: determinism, the process group, the data, the module's ``setup``."""
        configure_determinism(self.settings)
        processes = self.settings.processes
        init_process_group(processes, self.settings.device)
        if processes.distributed:
            reseed()
        datamodule.device = self.settings.device  # where a device_cache holds the data
        datamodule.shard = (processes.rank, processes.world_size) if processes.distributed else None
        datamodule.prepare_data()
        datamodule.setup(stage)
        model.class_names = list(datamodule.class_names)  # some data sets name their classes only now

    def _metrics(self, stage: str, model: ImageClassifier) -> StageMetrics:
        hp = model.hparams
        return build_stage_metrics(stage, hp.num_classes, hp.num_misclassified_images).to(self.settings.device)

    def _logger(self, model: ImageClassifier, datamodule: ImageDataModule, purge_step: int | None = None):
        pictures = monitoring.PictureLog(model.log_images_every_n_epochs, datamodule.mean, datamodule.std)
        log_dir = self.log_dir if self.is_global_zero else None  # one writer for the run: rank 0's
        return ReferenceLogger(log_dir, self.settings.log_every_n_steps, pictures, model.class_names, purge_step)

    def _progress(self, loader: Iterable, desc: str, total: int, lines: LineProgress | None = None) -> Iterable:
        """The loader as a progress bar over the batches the loop will take, a fresh bar every pass
        (rank 0's only); on a stdout that is not a terminal, no bar: the training batches are
        counted for the fit's lines, and a validate or test run gets lines of its own."""
        s = self.settings
        if not s.enable_progress_bar or not self.is_global_zero:
            return loader
        if stdout_is_terminal():
            return ProgressBar(loader, f"reference {desc}", total)
        if desc == "train" and lines is not None:
            return CountedBatches(loader, lines.add_samples)
        if desc in ("validate", "test"):
            return CountedBatches(loader, EvaluationLines(desc, s.log_every_n_steps or 50, total).on_batch)
        return loader  # the validation inside fit: its results go into the epoch line

    def _line_progress(self, first_step: int) -> LineProgress | None:
        """The progress lines of a fit (epoch lines under the bars too), as Lightning's progress bars
        show them; none with the bar off, and none but rank 0's."""
        s = self.settings
        if not s.enable_progress_bar or not self.is_global_zero:
            return None
        return LineProgress(s.log_every_n_steps or 50, self.estimated_stepping_batches, s.max_epochs, first_step)

    @staticmethod
    def _on_step(logger: ReferenceLogger, lines: LineProgress | None) -> Callable[[torch.Tensor], None]:
        """The logger's step hook, and the step lines where stdout is not a terminal."""
        if lines is None or stdout_is_terminal():
            return logger.on_step

        def on_step(loss: torch.Tensor) -> None:
            logger.on_step(loss)
            lines.on_step(logger.steps, logger.epoch, lambda: float(loss))

        return on_step

    def _save(self, state: dict, name: str) -> None:
        atomic_torch_save(state, self.log_dir / "checkpoints" / name)  # whole or not at all, as Lightning's are

    def _call(self, hook: str, model: ImageClassifier) -> None:
        for callback in self.callbacks:
            getattr(callback, hook)(self, model)
