"""``twinloop fit|validate|test|predict``: Lightning's CLI over the classifier and data module."""

from __future__ import annotations

import sys

import torch
from jsonargparse import Namespace
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint, ProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.loggers import TensorBoardLogger

from project.callbacks import EpochCheckpoint, LatestCheckpoint, LogLinesProgressBar, PredictionCSV
from project.console import quiet_lightning
from project.data import SOURCES, ImageDataModule
from project.errors import ConfigError, reported_as_exit
from project.factory import DEFAULT_OPTIMIZER
from project.lightning_trainer import BatchLimitTrainer, with_atomic_checkpoints, with_slurm_requeue
from project.models.pretrained import preprocessing_of
from project.module import ImageClassifier
from project.monitoring import log_hparams, run_hparams
from project.preemption import Preemption
from project.progress import stdout_is_terminal
from project.runs import (
    check_checkpoint_fits_run,
    check_ckpt_path,
    check_first_logger,
    continue_mlflow_runs,
    drop_csv_rows_from,
    drop_mlflow_steps_from,
    purge_tensorboard_from,
    resume_into_last_run,
    resume_named_run,
    run_directory,
    set_version,
    slurm_run_name,
)
from project.specs import grouped

TRAINER_DEFAULTS = {
    "max_epochs": 10,
    "log_every_n_steps": 10,
    "logger": {
        "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
        # the HPARAMS tab gets the settings that shape a result and val/acc, val/loss, val/acc_best
        "init_args": {"save_dir": ".", "name": "lightning_logs", "default_hp_metric": False},
    },
}


class TwinloopCLI(LightningCLI):
    _purge_from: int | None = None  # a resumed run's step: what its loggers hold from it on is dropped

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("trainer_class", BatchLimitTrainer)
        kwargs.setdefault("trainer_defaults", TRAINER_DEFAULTS)
        kwargs.setdefault("seed_everything_default", 42)
        kwargs.setdefault("save_config_callback", SaveRunConfig)
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        quiet_lightning()
        # `twinloop export` is dispatched by main() before this parser: its help names it
        kwargs.setdefault(
            "parser_kwargs",
            {"epilog": "Also: twinloop export --help (a checkpoint to ONNX, TorchScript or torch.export)."},
        )
        super().__init__(ImageClassifier, ImageDataModule, *args, **kwargs)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("data.num_classes", "model.num_classes", apply_on="instantiate")
        parser.link_arguments("data.in_channels", "model.in_channels", apply_on="instantiate")
        parser.link_arguments("data.class_names", "model.class_names", apply_on="instantiate")
        parser.link_arguments("data.declared_hw", "model.input_hw", apply_on="instantiate")
        # One seed for the run: the data split, shuffling and augmentation follow seed_everything.
        parser.link_arguments("seed_everything", "data.seed", compute_fn=data_seed, apply_on="parse")
        parser.add_lightning_class_args(EpochCheckpoint, "checkpoint")
        parser.set_defaults(
            {
                "checkpoint.monitor": "val/acc",
                "checkpoint.mode": "max",
                "checkpoint.save_top_k": 1,
                "checkpoint.filename": "best-epoch{epoch:03d}-acc{val/acc:.4f}",
                "checkpoint.auto_insert_metric_name": False,
                "model.optimizer": DEFAULT_OPTIMIZER,
            }
        )
        parser.add_lightning_class_args(LatestCheckpoint, "last_checkpoint")
        parser.add_lightning_class_args(LearningRateMonitor, "lr_monitor")
        parser.set_defaults({"lr_monitor.logging_interval": "step"})
        parser.add_lightning_class_args(PredictionCSV, "predictions")
        parser.add_lightning_class_args(Preemption, "preemption")
        parser.add_argument(
            "--run_name",
            type=str | None,
            default=None,
            help="log into <save_dir>/<name>/RUN_NAME, the same directory every time (a restart with "
            "--ckpt_path last resumes it); under SLURM it defaults to slurm-<job id>",
        )

    def _parse_ckpt_path(self) -> None:
        """LightningCLI's first look at ``--ckpt_path`` (private API; ``tests/reliability`` fails if it
        goes): it reads the checkpoint's hyperparameters into the config. The file is read and checked
        here first, so that a bad one is one error line naming it."""
        if not self.config.get("subcommand"):
            return
        self._user_checkpoint = check_ckpt_path(self.config[self.config.subcommand].get("ckpt_path"))
        saved = (self._user_checkpoint or {}).get("hyper_parameters") or {}
        # Lightning's own parse, from the file read once, with the arguments of an earlier layout grouped
        if hparams := grouped({k: v for k, v in saved.items() if k != "_instantiator"}):
            try:
                self.config = self.parser.parse_object({self.config.subcommand: {"model": hparams}}, self.config)
            except SystemExit:
                sys.stderr.write("Parsing of ckpt_path hyperparameters failed!\n")
                raise

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        # Logs and checkpoints go under trainer.default_root_dir when it is set, as with
        # Lightning's own default logger, unless the logger's save_dir was set too.
        trainer = config.trainer
        given = trainer.logger if isinstance(trainer.logger, list) else [trainer.logger]
        loggers = [logger for logger in given if isinstance(logger, Namespace)]
        for logger in loggers:
            if trainer.default_root_dir and logger.init_args.get("save_dir") == ".":
                logger.init_args.save_dir = trainer.default_root_dir
        if loggers:
            self._choose_run_directory(config, loggers)
        on_cpu = trainer.accelerator == "cpu" or (trainer.accelerator == "auto" and not torch.cuda.is_available())
        if trainer.sync_batchnorm and on_cpu:  # else each rank dies in DistributedDataParallel with a traceback
            raise ConfigError("trainer.sync_batchnorm=true: torch's SyncBatchNorm runs on GPUs only; set it to false")
        use_weights_preprocessing(config.model, config.data)
        # A checkpoint brings every weight: the pretrained ones are not loaded (nor downloaded) under it,
        # and the config and hyperparameters still name them.
        from_checkpoint = config.get("ckpt_path") or getattr(self, "checkpoint_brings_weights", False)
        self._named_weights = config.model.network.weights if from_checkpoint else None
        if self._named_weights is not None:
            config.model.network.weights = None

    def _choose_run_directory(self, config: Namespace, loggers: list[Namespace]) -> None:
        """A named run (``--run_name``, or the SLURM job's) logs into its own directory (the first
        logger's holds the checkpoints; every logger takes the name), and a fit there resumes from its
        ``last.ckpt``; ``--ckpt_path last`` otherwise takes the newest version's. A resumed run hides
        what the interrupted one logged after its checkpoint, a new start in an old directory all of it."""
        check_first_logger(loggers)
        version = loggers[0].init_args.get("version")
        run_name = config.get("run_name") or (slurm_run_name() if version is None else None)
        if run_name:
            set_version(loggers, run_name)
        if self.subcommand != "fit":
            return
        resumed = None
        if run_name:
            resumed = resume_named_run(loggers, config.get("ckpt_path"))
            if resumed is None and config.get("ckpt_path") is None and run_directory(loggers[0]).exists():
                self._purge_from = 0
        elif config.get("ckpt_path") == "last":
            resumed = resume_into_last_run(loggers)
        if resumed is not None:
            config.ckpt_path, self._user_checkpoint = resumed  # checked like any other
            self._purge_from = resumed[1]["global_step"]
            continue_mlflow_runs(loggers, resumed[1])
        if self._purge_from is not None:
            purge_tensorboard_from(loggers, self._purge_from)

    def before_fit(self) -> None:
        if self._purge_from is not None:
            drop_csv_rows_from(self.trainer.loggers, self._purge_from)
            drop_mlflow_steps_from(self.trainer.loggers, self._purge_from)

    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except ValueError as exc:  # a class of the config that could not be built: what it said, not a traceback
            raise ConfigError(class_build_error(exc)) from exc
        if (weights := getattr(self, "_named_weights", None)) is not None:
            (self.config[self.subcommand] if self.subcommand else self.config).model.network.weights = weights
            self.model.hparams.network["weights"] = weights
        # The checkpoint against the model and the data, before Lightning creates a run directory;
        # Lightning then reads the file again itself.
        checkpoint, self._user_checkpoint = getattr(self, "_user_checkpoint", None), None
        if checkpoint is not None:
            config = self.config[self.subcommand] if self.subcommand else self.config
            check_checkpoint_fits_run(checkpoint, config.ckpt_path, self.model, self.datamodule)

    def _instantiate_trainer(self, config: dict, callbacks: list):
        """LightningCLI's one place to change the callbacks it gives the Trainer (private API;
        ``tests/cli/test_cli.py`` fails if it changes): the checkpoint callbacks are always added from
        the config, so `--trainer.enable_checkpointing=false` drops them here, and the predictions
        CSV goes outside predict (each callback costs Lightning a dispatch per hook at every step).
        Checkpoints are written and read through ``AtomicCheckpointIO`` unless ``--trainer.plugins``
        names a CheckpointIO.
        A stdout that is not a terminal (a log file) gets progress lines instead of tqdm's bar,
        unless the bar is off or ``--trainer.callbacks`` brings a progress bar of its own."""
        if config.get("enable_checkpointing") is False:
            callbacks = [c for c in callbacks if not isinstance(c, EpochCheckpoint)]
        if self.subcommand in ("fit", "validate", "test"):
            callbacks = [c for c in callbacks if not isinstance(c, PredictionCSV)]
        run_config = self.config[self.subcommand] if self.subcommand else self.config
        plugins = with_atomic_checkpoints(config.get("plugins"), config.get("strategy"))
        requeue_signal = (run_config.get("preemption") or {}).get("requeue_signal", "SIGUSR1")
        config = {**config, "plugins": with_slurm_requeue(plugins, requeue_signal)}
        own = config.get("callbacks") or []
        if wants_log_lines(config.get("enable_progress_bar"), [*(own if isinstance(own, list) else [own]), *callbacks]):
            callbacks = [*callbacks, LogLinesProgressBar()]
        return super()._instantiate_trainer(config, callbacks)

    def after_fit(self) -> None:
        if not self.trainer.is_global_zero:  # under DDP every rank gets here; rank 0 speaks for the run
            return
        ckpt = self.trainer.checkpoint_callback
        if isinstance(ckpt, ModelCheckpoint) and ckpt.best_model_path:
            print(f"\nbest checkpoint: {ckpt.best_model_path}")
        metrics = self.trainer.callback_metrics
        if "val/acc" in metrics:
            best = float(metrics.get("val/acc_best", metrics["val/acc"]))
            print(f"val/acc {float(metrics['val/acc']):.4f} (best {best:.4f})")


def wants_log_lines(enable_progress_bar: bool | None, callbacks: list) -> bool:
    """Progress lines replace tqdm's bar when stdout is not a terminal and the bar is wanted."""
    has_bar = any(isinstance(c, ProgressBar) for c in callbacks)
    return enable_progress_bar is not False and not has_bar and not stdout_is_terminal()


def data_seed(seed_everything: int | bool) -> int:
    """``seed_everything: true`` (a random seed) or ``false`` still give the data a fixed seed."""
    return seed_everything if not isinstance(seed_everything, bool) else 42


def use_weights_preprocessing(model: Namespace, data: Namespace) -> None:
    """With pretrained weights, the data takes their preprocessing where the config leaves it unset:
    resize and centre crop (image folders, when neither ``image_size`` nor ``crop_size`` is set), and
    mean and std (when neither is set; averaged over RGB for 1-channel data). The run's saved
    config.yaml then shows them."""
    pre = preprocessing_of(model.network.backbone, model.network.weights)
    if pre is None:
        return
    if data.dataset == "imagefolder" and data.image_size is None and data.crop_size is None:
        data.image_size, data.crop_size = pre.resize, pre.crop
    if data.mean is None and data.std is None:
        channels = data.fake_image_shape[0] if data.dataset == "fake" else SOURCES[data.dataset].channels
        mean, std = (list(pre.mean), list(pre.std)) if channels == len(pre.mean) else ([], [])
        if not mean:  # gray data: one channel stands for R = G = B
            mean, std = [sum(pre.mean) / len(pre.mean)] * channels, [sum(pre.std) / len(pre.std)] * channels
        data.mean, data.std = mean, std


class SaveRunConfig(SaveConfigCallback):
    """LightningCLI's ``config.yaml`` in the run directory and, for ``fit``, the settings that shape a
    result in TensorBoard's HPARAMS tab, with val/acc, val/loss and val/acc_best as its metrics (the
    full config is in config.yaml). One callback for both: Lightning calls each callback at every step.

    Both are written when the run sets up, after the data is prepared: a run that fails on missing
    data leaves no log directory behind.
    """

    def save_config(self, trainer: Trainer, pl_module, stage: str) -> None:
        if stage == "fit" and isinstance(trainer.logger, TensorBoardLogger):
            log_hparams(trainer.logger.experiment, run_hparams(self.config.as_dict()))


GENERIC = (
    "Not a valid subclass",
    "Expected a ",
    "Does not validate",
    "Subclass types",
    "Subtypes:",
    "Given value",
    "a ",
    "Errors:",
)


def class_build_error(exc: BaseException) -> str:
    """What a class of the config said when it could not be built (an MLflow store it refuses, a
    package missing), out of the errors jsonargparse wraps it in; else jsonargparse's first line."""
    texts = []
    while exc is not None:
        texts.append(str(exc))
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    lines = [line.strip().removeprefix("- ").strip() for text in texts for line in text.splitlines()]
    for i, line in enumerate(lines[:-1]):
        if line.startswith("Problem with given class_path") and lines[i + 1]:
            return f"{line.split(chr(39))[1]}: {lines[i + 1]}"  # the class, then what it said
    said = [line for line in lines if line and not line.startswith(GENERIC)]
    return f"a class of the config could not be built: {said[0] if said else texts[0].splitlines()[0]}"


def main(args: list[str] | None = None) -> None:
    argv = sys.argv[1:] if args is None else args
    if argv and argv[0] == "export":  # not a Trainer run: a command of its own
        from project.export import main as export_main

        export_main(argv[1:])
        return
    with reported_as_exit():
        TwinloopCLI(args=args)


if __name__ == "__main__":
    main()
