"""``ReferenceTrainer``: the reference loop's counterpart of ``lightning.Trainer``.

``fit``, ``validate`` and ``test`` take the same ``ImageClassifier`` and ``ImageDataModule`` that
Lightning's Trainer takes, and around the textbook loop of ``project/reference/loop.py`` do what the
Trainer does around its own: determinism, batch limits, the optimizer and scheduler from the
module's factories, TensorBoard logging, checkpoints and progress bars.
"""

from __future__ import annotations

import signal
from collections.abc import Sequence
from datetime import timedelta
from functools import partial
from pathlib import Path

import torch
from torch.optim.lr_scheduler import ReduceLROnPlateau

from project import checkpoint_contract as contract
from project import monitoring
from project.checkpoint_io import atomic_torch_save
from project.data import ImageDataModule
from project.ema import WeightEMA
from project.epoch_report import EpochReport, report_epoch
from project.errors import ConfigError, out_of_memory_hinted
from project.factory import build_optimization, stepping_batches, steps_per_epoch
from project.metrics import StageMetrics, build_stage_metrics
from project.module import ImageClassifier
from project.preemption import StopSignals, slurm_job_id
from project.reference import loop
from project.reference.budgets import count_batches, val_check_batch
from project.reference.distributed import EpochShuffled, data_parallel, init_process_group, reseed
from project.reference.early_stopping import EarlyStop
from project.reference.logger import ReferenceLogger, closed_on_error, next_version_dir
from project.reference.progress import ReferenceProgress
from project.reference.settings import TrainerSettings, configure_determinism
from project.reference.stopping import ReferenceStop, TimeLimit
from project.reference.top_k import TopK


class ReferenceTrainer:
    """Runs an ``ImageClassifier`` with the reference loop.

    ``callbacks`` get ``on_train_start``, ``on_validation_end``, ``on_train_end`` and
    ``on_fit_end(trainer, model)``,
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
        self.callback_metrics: dict[str, torch.Tensor | float] = {}  # val/acc_best is a float
        self.progress = ReferenceProgress(settings)

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
        self.model, self.datamodule = model, datamodule
        self._setup(model, datamodule, "fit")
        checkpoint = contract.load_network_weights(model, ckpt_path, training=True) if ckpt_path else None
        self.resumed_from = Path(ckpt_path).absolute() if ckpt_path else None  # kept, as Lightning keeps it
        train_loader, val_loader = datamodule.train_dataloader(), datamodule.val_dataloader()
        self.num_training_batches = count_batches(len(train_loader), s.limit_train_batches, "limit_train_batches")
        num_val = count_batches(len(val_loader), s.limit_val_batches, "limit_val_batches")
        self.val_check_batch = val_check_batch(s.val_check_interval, self.num_training_batches)
        # Lightning's ModelCheckpoint then looks at each epoch's end, not at each validation's
        self.top_k_at_epoch_end = s.check_val_every_n_epoch == 1 and num_val > 0 and s.val_check_interval == 1.0
        self.should_stop = False  # set by a validation inside an epoch (early stopping), as Lightning's
        # Under DDP the loop trains the wrapped network; model.net is the one with SyncBatchNorm layers
        # if asked for (same parameters and buffers), until the fit ends.
        single = model.net.to(s.device)
        net, model.net = data_parallel(single, s.processes, s.device, s.sync_batchnorm)
        self._build_fit_parts(model, checkpoint)
        self.logger.watch(net, self.optimizers[0])
        self._call("on_train_start", model)
        start = self._resume(checkpoint) if checkpoint is not None else contract.ResumePoint(0, 0, 0)
        time_spent = self.time_limit.reached()  # a resumed run whose max_time is spent trains no more
        self.time_limit.begin()
        self.progress.start_fit(self.estimated_stepping_batches, s.max_epochs, self.logger.steps)
        signals = StopSignals(requeue_signal=self.requeue_signal)
        self.stop = ReferenceStop(
            signals, s, lambda: self.log_dir / "checkpoints" / "last.ckpt", self._save_last, lambda: self.train_metrics
        )
        model.backbone_freeze.set_epoch(start.epoch)  # each later epoch's at the end of the one before
        with signals, out_of_memory_hinted(datamodule.batch_size, s.precision), closed_on_error(self.logger):
            if not time_spent:
                self._train(net, EpochShuffled(train_loader, start.epoch), val_loader, num_val, start)
        self._call("on_train_end", model)
        self._call("on_fit_end", model)
        model.net = single
        self.logger.close()

    def _build_fit_parts(self, model: ImageClassifier, checkpoint: dict | None) -> None:
        """The optimizer and scheduler from the module's factories, the metrics and the logger."""
        s = self.settings
        self.estimated_stepping_batches = stepping_batches(
            self.num_training_batches, s.accumulate_grad_batches, s.max_epochs, s.max_steps
        )
        optimizer, self.scheduler = build_optimization(
            model.network.optimizer_parameters(model.net),
            model.optimizer_factory,
            model.scheduler_factory,
            self.estimated_stepping_batches,
            model.warmup,
            steps_per_epoch(self.num_training_batches, s.accumulate_grad_batches),
            model.scheduler_interval,
            model.lr,
        )
        if isinstance(self.scheduler, ReduceLROnPlateau) and self.val_check_batch < self.num_training_batches:
            raise ConfigError(
                f"trainer.val_check_interval={s.val_check_interval!r} with ReduceLROnPlateau: the reference "
                "steps it on the epoch-end validation only"
            )
        self.optimizers = [optimizer]
        self.ema = WeightEMA(model.net, model.ema) if model.ema.decay is not None else None
        stopping = s.early_stopping
        self.early_stopping = EarlyStop.from_config(stopping) if stopping is not None else None
        self.top_k = TopK.from_config(s.checkpoint, self.log_dir / "checkpoints")
        self.time_limit = TimeLimit(s.max_time, s)
        self.train_metrics, self.val_metrics = (self._metrics(stage, model) for stage in ("train", "val"))
        self.logger = self._logger(model, self.datamodule, purge_step=checkpoint["global_step"] if checkpoint else None)
        self.logger.log_hparams(self.hparams)

    def _train(self, net, train_loader, val_loader, num_val: int, start: contract.ResumePoint) -> None:
        """The textbook loop over the epochs, with this trainer's hooks after each step and epoch."""
        s, model, num_train = self.settings, self.model, self.num_training_batches
        loop.fit(
            net,
            self.progress.loader(train_loader, "train", num_train),
            self.progress.loader(val_loader, "val", num_val),
            model.criterion,
            self.optimizers[0],
            s.device,
            self.train_metrics,
            self.val_metrics,
            max_epochs=s.max_epochs,
            max_steps=s.max_steps,
            first_epoch=start.epoch,
            first_batch=start.batch,
            first_step=start.step,
            num_train_batches=num_train,
            num_val_batches=num_val,
            precision=s.precision,
            scheduler=self.scheduler,
            scheduler_interval=model.scheduler_interval,
            check_val_every_n_epoch=s.check_val_every_n_epoch,
            monitor=getattr(self.scheduler, "monitor", model.monitor),
            ema=self.ema,
            on_epoch_end=self._on_epoch_end,
            should_stop=lambda: self.should_stop,
            after_batch=partial(self._after_batch, net, val_loader, num_val),
            val_check_batch=self.val_check_batch,
            scaler=loop.grad_scaler(s.device, s.precision),
            accumulate_grad_batches=s.accumulate_grad_batches,
            gradient_clip_val=s.gradient_clip_val,
            gradient_clip_algorithm=s.gradient_clip_algorithm,
            augment=self.datamodule.augmenter,
            mix=self.datamodule.mixer,
            on_step=self.stop.after_steps(self._on_step, self.logger, self._state, num_train, start.batch),
        )

    def _on_step(self, loss: torch.Tensor, batches_done: int) -> None:
        """After each optimizer step (``batches_done`` of the epoch's batches): the logger's step, the
        progress line when one is due, and a top-k checkpoint when ``every_n_train_steps`` asks."""
        self.logger.on_step(loss)
        self.progress.on_step(self.logger.steps, self.logger.epoch, loss)
        if self.settings.enable_checkpointing and self.top_k.at_step(self.logger.steps, self.callback_metrics):
            self._save_top_k(self.logger.epoch, contract.mid_epoch(batches_done))

    def _after_batch(self, net, val_loader, num_val: int, batches_done: int) -> bool:
        """What Lightning does after each training batch: the time limit (its Timer), then a validation
        when one is due inside the epoch (``val_check_interval``), or when the time limit stops an epoch
        that validates. True: the epoch ends here."""
        epoch = self.logger.epoch
        if not self.should_stop and self.time_limit.reached():
            self.should_stop = True
            if self.is_global_zero:
                elapsed = timedelta(seconds=int(self.time_limit.elapsed()))
                print(f"Time limit reached ({elapsed}): training stops after epoch {epoch}, batch {batches_done - 1}")
        due = batches_done % self.val_check_batch == 0 and batches_done < self.num_training_batches
        if due or (self.should_stop and (epoch + 1) % self.settings.check_val_every_n_epoch == 0):
            self._validate_inside(net, val_loader, num_val, batches_done)
            net.train()
        return self.should_stop

    def _validate_inside(self, net, val_loader, num_val: int, batches_done: int) -> None:
        """A validation inside an epoch (``val_check_interval``), after its ``batches_done``-th batch,
        as Lightning's runs there: the report and its logs, the callbacks, a top-k checkpoint that
        holds the position in the epoch, and early stopping (which sets ``should_stop``)."""
        s, epoch = self.settings, self.logger.epoch
        if num_val == 0:
            return
        loop.validate(
            net,
            self.progress.loader(val_loader, "val", num_val),
            self.model.criterion,
            s.device,
            self.val_metrics,
            num_batches=num_val,
            precision=s.precision,
            ema=self.ema,
        )
        self._report_validation(epoch)
        if s.enable_checkpointing and self.top_k.at_validation():
            self._save_top_k(epoch, contract.mid_epoch(batches_done))
        self.should_stop = self._stops_early(epoch) or self.should_stop

    def _report_validation(self, epoch: int) -> EpochReport:
        """What follows every validation, inside an epoch or at its end: the report (loss check and
        best score) logged at the last step, the metrics the callbacks see, and their hook."""
        report = report_epoch(self.val_metrics, epoch, self.model.class_names, self.logger.drawing)
        self.logger.log_report(report, self.logger.steps - 1)
        self.callback_metrics = {**self.callback_metrics, **report.shown, **report.scalars}  # kept, as Lightning's
        self._call("on_validation_end", self.model)
        return report

    def _stops_early(self, epoch: int) -> bool:
        """Early stopping's rule on the latest validation (never without the callback)."""
        return self.early_stopping is not None and self.early_stopping.check(self.callback_metrics, epoch)

    def _on_epoch_end(self, epoch: int, train_results: dict, val_results: dict | None) -> bool:
        """What follows each epoch, as Lightning's hooks and callbacks do it: its validation's report,
        the training metrics, the epoch's line, the best checkpoints, early stopping and
        ``last.ckpt`` (before the epoch's scheduler step). True: training stops here."""
        report = self._report_validation(epoch) if val_results is not None else None
        self.logger.on_epoch_end(epoch, train_results)
        self.callback_metrics = {**self.callback_metrics, **train_results}
        shown = {**report.shown, **report.scalars} if report is not None else {}
        if self.is_global_zero:  # the other ranks hold the same state: rank 0 reports and saves it
            self.progress.on_epoch_end(epoch, self.logger.steps, shown)
        # an epoch that max_steps cut short has no validation: its end looks at the last one's score
        candidate = report is not None or (self.top_k_at_epoch_end and self.top_k.monitor in self.callback_metrics)
        if self.settings.enable_checkpointing and candidate and self.top_k.at_validation():
            self._save_top_k(epoch)
        stop = report is not None and self._stops_early(epoch)
        if self.is_global_zero and self.settings.enable_checkpointing:
            self._save(self._state(epoch), "last.ckpt")  # with the early-stopping count, as Lightning's
        self.model.backbone_freeze.set_epoch(epoch + 1)
        if epoch + 1 < self.settings.max_epochs and self.stop.asked():
            self.stop.stop(f"after epoch {epoch}")
        return stop

    def _save_top_k(self, epoch: int, mid_epoch: dict | None = None) -> None:
        """A checkpoint now, if it is among the best ``checkpoint.save_top_k``; the file it replaces
        goes (but not the one this run resumed from). Every rank decides, rank 0 writes."""
        path, replaced = self.top_k.consider(self.callback_metrics, epoch, self.logger.steps)
        if path is not None and self.is_global_zero:
            atomic_torch_save({**self._state(epoch), **(mid_epoch or {})}, path)
            if replaced is not None and replaced.absolute() != self.resumed_from:
                replaced.unlink(missing_ok=True)

    def _state(self, epoch: int | None = None) -> dict:
        """A checkpoint of the run now: Lightning's layout and the contract's extras."""
        model, datamodule = self.model, self.datamodule
        epoch = self.logger.epoch if epoch is None else epoch
        state = contract.lightning_state(
            model.net, self.optimizers[0], self.scheduler, datamodule, epoch, self.logger.steps
        )
        if self.ema is not None:
            state = self.ema.checkpoint(state)
        callbacks = {part.state_key: part.state_dict() for part in self._callback_parts()}
        state["callbacks"] = {**state.get("callbacks", {}), **callbacks}
        return {**state, **contract.capture_extras(model.class_names, self.val_metrics, self.train_metrics, datamodule)}

    def _callback_parts(self) -> list:
        """What the reference does by hand of Lightning's callbacks, each keeping its state under that
        callback's key: top-k checkpoints, and early stopping and the time limit when configured."""
        parts = [self.top_k, self.early_stopping, self.time_limit if self.time_limit.seconds is not None else None]
        return [part for part in parts if part is not None]

    def _resume(self, checkpoint: dict) -> contract.ResumePoint:
        """Load the training state of a checkpoint of either loop, written at an epoch's end or inside
        it; returns where the run goes on."""
        self.optimizers[0].load_state_dict(checkpoint["optimizer_states"][0])
        if self.scheduler is not None:
            self.scheduler.load_state_dict(checkpoint["lr_schedulers"][0])
            at_epoch_end = contract.MID_EPOCH not in checkpoint and self.scheduler.last_epoch == checkpoint["epoch"]
            plateau = isinstance(self.scheduler, ReduceLROnPlateau)  # stepped after the checkpoint in both loops
            if self.model.scheduler_interval == "epoch" and at_epoch_end and not plateau:
                # saved before its epoch's step (the reference's are; Lightning's last.ckpt is after)
                self.scheduler.step()
        if self.ema is not None:
            self.ema.restore(checkpoint)
        saved = checkpoint.get("callbacks", {})
        for part in self._callback_parts():
            if part.state_key in saved:
                part.load_state_dict(saved[part.state_key])
        self.datamodule.load_state_dict(checkpoint.get(type(self.datamodule).__qualname__, {}))
        start = contract.resume_point(checkpoint, self.datamodule, self.settings.processes.world_size)
        self.logger.steps, self.logger.epoch = start.step, start.epoch
        self.logger.pictures.inputs_logged = True  # the run logged them before
        contract.restore_extras(checkpoint, self.model, self.val_metrics, self.train_metrics)  # RNG last
        if self.is_global_zero:
            print(f"resuming from {start}")
        return start

    def validate(self, model: ImageClassifier, datamodule: ImageDataModule, ckpt_path: str | None = None) -> dict:
        """Validation metrics of ``model`` (or of the weights in ``ckpt_path``), logged at step 0."""
        return self._evaluate("validate", model, datamodule, ckpt_path)

    def test(self, model: ImageClassifier, datamodule: ImageDataModule, ckpt_path: str | None = None) -> dict:
        """Test metrics on the data module's test split, logged at step 0."""
        return self._evaluate("test", model, datamodule, ckpt_path)

    def _evaluate(self, stage: str, model: ImageClassifier, datamodule: ImageDataModule, ckpt_path) -> dict:
        s = self.settings
        self._setup(model, datamodule, stage)
        checkpoint = contract.load_network_weights(model, ckpt_path) if ckpt_path is not None else {}
        loader = datamodule.val_dataloader() if stage == "validate" else datamodule.test_dataloader()
        key = "limit_val_batches" if stage == "validate" else "limit_test_batches"
        num_batches = count_batches(len(loader), getattr(s, key), key)
        metrics = self._metrics("val" if stage == "validate" else "test", model)
        model.net.to(s.device)
        loop.evaluate(
            model.net,
            self.progress.loader(loader, stage, num_batches),
            model.criterion,
            s.device,
            metrics,
            num_batches=num_batches,
            precision=s.precision,
        )
        metrics.best_acc = checkpoint.get(contract.BEST_VAL_ACC)  # the best so far, as the module restores it
        logger = self._logger(model, datamodule)
        report = report_epoch(metrics, 0, model.class_names, logger.drawing)
        logger.log_report(report)
        logger.close()
        return {k: float(v) for k, v in report.values.items()}

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
        metrics = build_stage_metrics(stage, model.hparams["num_classes"], model.picture_spec.num_misclassified)
        return metrics.to(self.settings.device)

    def _logger(self, model: ImageClassifier, datamodule: ImageDataModule, purge_step: int | None = None):
        pictures = monitoring.PictureLog(model.picture_spec.every_n_epochs, datamodule.mean, datamodule.std)
        log_dir = self.log_dir if self.is_global_zero else None  # one writer for the run: rank 0's
        return ReferenceLogger(log_dir, self.settings.log_every_n_steps, pictures, purge_step, self.settings.loggers)

    def _save_last(self, state: dict) -> None:
        self._save(state, "last.ckpt")

    def _save(self, state: dict, name: str) -> None:
        atomic_torch_save(state, self.log_dir / "checkpoints" / name)  # whole or not at all, as Lightning's are

    def _call(self, hook: str, model: ImageClassifier) -> None:
        for callback in self.callbacks:
            if hasattr(callback, hook):  # a callback of the reference's own may leave a hook out
                getattr(callback, hook)(self, model)
