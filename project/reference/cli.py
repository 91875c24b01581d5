"""``twinloop-reference fit|validate -c CONFIG [overrides]``: the reference loop on the same configs.

The config goes through the very parser ``twinloop`` uses, and the network, data, loss, metrics,
optimizer and scheduler come from the same classes and factories; only the loop differs.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import lightning
import torch
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from project import monitoring
from project.cli import TwinloopCLI
from project.data import ImageDataModule
from project.errors import ConfigError, reported_as_exit
from project.factory import build_optimization, stepping_batches
from project.metrics import StageMetrics, build_stage_metrics
from project.module import ImageClassifier
from project.reference import loop

# Trainer keys the reference loop carries out. Any other key must keep its default: the loop
# refuses it rather than silently doing something else than Lightning would.
HONOURED_TRAINER_KEYS = {
    "max_epochs",
    "accelerator",
    "devices",
    "precision",
    "accumulate_grad_batches",
    "gradient_clip_val",
    "gradient_clip_algorithm",
    "limit_train_batches",
    "limit_val_batches",
    "check_val_every_n_epoch",
    "default_root_dir",  # through the logger's save_dir, which the CLI sets from it
    "deterministic",
    "log_every_n_steps",
    # no effect on the numbers: the sanity pass runs under isolate_rng, bars and summaries only print
    "num_sanity_val_steps",
    "enable_progress_bar",
    "enable_model_summary",
    "logger",
    "enable_checkpointing",
}
PRECISIONS = {
    "32": "32-true",
    "32-true": "32-true",
    "bf16": "bf16-mixed",
    "bf16-mixed": "bf16-mixed",
    "16": "16-mixed",
    "16-mixed": "16-mixed",
}


class _NoTrainerCLI(TwinloopCLI):
    """Parses and instantiates model and data exactly like ``twinloop``, without a Trainer."""

    def instantiate_trainer(self, **kwargs):
        return None


@dataclass
class TrainerSettings:
    """The honoured trainer keys, checked and normalised."""

    max_epochs: int = 1000
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    precision: str = "32-true"
    accumulate_grad_batches: int = 1
    gradient_clip_val: float | None = None
    gradient_clip_algorithm: str = "norm"
    limit_train_batches: int | float = 1.0
    limit_val_batches: int | float = 1.0
    check_val_every_n_epoch: int = 1
    deterministic: bool | str = False  # True, False or "warn"
    log_every_n_steps: int = 50
    enable_progress_bar: bool = True
    enable_checkpointing: bool = True

    @classmethod
    def from_config(cls, trainer: dict) -> TrainerSettings:
        accelerator = str(trainer.get("accelerator") or "auto")
        if accelerator == "auto":
            accelerator = "cuda" if torch.cuda.is_available() else "cpu"
        accelerator = {"gpu": "cuda"}.get(accelerator, accelerator)
        if accelerator not in ("cpu", "cuda"):
            raise ConfigError(
                f"trainer.accelerator={trainer.get('accelerator')!r}: the reference loop runs on cpu or cuda"
            )
        if accelerator == "cuda" and not torch.cuda.is_available():
            raise ConfigError("trainer.accelerator=cuda, but CUDA is not available on this machine")
        devices = trainer.get("devices", "auto")
        if devices not in ("auto", 1, "1", [0]):
            raise ConfigError(f"trainer.devices={devices!r}: the reference loop runs on one device (devices=1)")
        precision = PRECISIONS.get(str(trainer.get("precision") or "32-true"))
        if precision is None:
            raise ConfigError(f"trainer.precision={trainer.get('precision')!r}: use 32-true, bf16-mixed or 16-mixed")
        if precision == "16-mixed" and accelerator == "cpu":
            # Lightning's own substitution: CPUs have no fp16 autocast worth the name.
            warnings.warn("16-mixed is not supported on the CPU; using bf16-mixed, as Lightning does", stacklevel=2)
            precision = "bf16-mixed"
        max_epochs = trainer.get("max_epochs")
        clip_val = trainer.get("gradient_clip_val")
        return cls(
            max_epochs=1000 if max_epochs in (None, -1) else int(max_epochs),
            device=torch.device(accelerator),
            precision=precision,
            accumulate_grad_batches=int(trainer.get("accumulate_grad_batches") or 1),
            gradient_clip_val=float(clip_val) if clip_val else None,
            gradient_clip_algorithm=trainer.get("gradient_clip_algorithm") or "norm",
            limit_train_batches=_limit(trainer.get("limit_train_batches")),
            limit_val_batches=_limit(trainer.get("limit_val_batches")),
            check_val_every_n_epoch=int(trainer.get("check_val_every_n_epoch") or 1),
            deterministic=trainer.get("deterministic") or False,
            log_every_n_steps=50 if trainer.get("log_every_n_steps") is None else int(trainer["log_every_n_steps"]),
            enable_progress_bar=trainer.get("enable_progress_bar") is not False,
            enable_checkpointing=trainer.get("enable_checkpointing") is not False,
        )


def _limit(value) -> int | float:
    """``limit_*_batches`` read as Lightning reads it: a fraction in [0, 1], else a whole count (4.0 -> 4)."""
    if value is None:
        return 1.0
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if 0 <= value <= 1:
        return float(value)
    if value % 1 == 0:
        return int(value)
    raise ConfigError(f"limit_*_batches={value!r}: use a fraction in [0, 1] or a whole number of batches")


@dataclass
class ReferenceRun:
    """Everything one reference run needs, built from the config through the shared classes."""

    classifier: ImageClassifier
    datamodule: ImageDataModule
    settings: TrainerSettings
    config: dict
    logger_save_dir: str = "."
    logger_name: str = "lightning_logs"


# Config groups that configure Lightning callbacks the reference loop mirrors only at their defaults.
CALLBACK_GROUPS = ("checkpoint", "last_checkpoint", "lr_monitor")


def refuse_unsupported(config: dict, defaults: dict) -> None:
    """Refuse every setting the reference loop would otherwise ignore, naming it."""
    unsupported = [
        f"trainer.{k}={v!r}"
        for k, v in config["trainer"].items()
        if k not in HONOURED_TRAINER_KEYS and v != defaults["trainer"].get(k)
    ]
    for group in CALLBACK_GROUPS:
        unsupported += [f"{group}.{k}={v!r}" for k, v in config[group].items() if v != defaults[group].get(k)]
    logger = config["trainer"].get("logger")
    if not (isinstance(logger, dict) and logger.get("class_path", "").endswith("TensorBoardLogger")):
        unsupported.append(f"trainer.logger={logger!r} (the reference loop logs to TensorBoard)")
    if unsupported:
        raise ConfigError(
            "The reference loop does not implement these settings, so it cannot match Lightning: "
            + ", ".join(sorted(unsupported))
            + ". Remove them from the config to compare."
        )


def load_run(args: list[str]) -> ReferenceRun:
    """Parse ``-c CONFIG`` and overrides like ``twinloop`` does (seeding included), and build the parts."""
    with warnings.catch_warnings():  # it is meant: the arguments come from this command, not sys.argv
        warnings.filterwarnings("ignore", message=".*LightningCLI's args parameter.*")
        cli = _NoTrainerCLI(args=args, run=False)
    config = cli.config.as_dict()
    refuse_unsupported(config, cli.parser.get_defaults().as_dict())
    settings = TrainerSettings.from_config(config["trainer"])
    logger = config["trainer"]["logger"]["init_args"]
    return ReferenceRun(cli.model, cli.datamodule, settings, config, logger["save_dir"], logger.get("name") or "")


def configure_determinism(settings: TrainerSettings) -> None:
    if settings.deterministic:  # what Trainer(deterministic=True) switches on
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=settings.deterministic == "warn")
        torch.backends.cudnn.benchmark = False


class Progress:
    """A DataLoader shown as a progress bar; a fresh bar every pass."""

    def __init__(self, loader, desc: str, enabled: bool = True, total: int | None = None):
        self.loader, self.desc, self.enabled, self.total = loader, desc, enabled, total

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        yield from tqdm(self.loader, desc=self.desc, disable=not self.enabled, leave=False, total=self.total)


class ReferenceLogger:
    """TensorBoard logging with Lightning's tags and step numbering, so the two runs overlay.

    Steps count optimizer steps: per-step scalars go at the index of the step, epoch and validation
    scalars at the index of the epoch's last step.
    """

    def __init__(self, log_dir: Path, log_every_n_steps: int, datamodule: ImageDataModule, classifier: ImageClassifier):
        self.writer = SummaryWriter(str(log_dir))
        self.log_dir = log_dir
        self.every = log_every_n_steps
        self.dm = datamodule
        self.class_names = datamodule.class_names  # after setup: some data sets name classes only then
        self.image_every = classifier.log_images_every_n_epochs
        self.steps = 0
        self.epoch = 0
        self._input_grid_logged = False

    def watch(self, net: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
        """Hooks (not loop code) for what Lightning's callbacks log at the start of each training
        batch: the learning rate (LearningRateMonitor, on logging steps, without an epoch
        scalar) and, once, the augmented inputs."""
        tag = f"lr-{type(optimizer).__name__}"

        def batch_start(module, inputs):
            if not module.training:
                return
            if not self._input_grid_logged:
                self.writer.add_image("train/inputs", monitoring.input_grid(inputs[0], self.dm.mean, self.dm.std), 0)
                self._input_grid_logged = True
            if self.every > 0 and (self.steps + 1) % self.every == 0:
                self.writer.add_scalar(tag, optimizer.param_groups[0]["lr"], self.steps)

        net.register_forward_pre_hook(batch_start)

    def log_hparams(self, config: dict) -> None:
        monitoring.log_hparams(self.writer, monitoring.flatten_config(config))

    def on_step(self, loss: torch.Tensor) -> None:
        k = self.steps
        if self.every > 0 and (k + 1) % self.every == 0:
            self._scalars({"train/loss": loss}, k)
        self.steps += 1

    def on_epoch_end(self, epoch: int, train: dict, val: dict | None, val_metrics: StageMetrics) -> None:
        step = self.steps - 1
        self._scalars(train, step)
        if val is None:
            return
        self._scalars(val_metrics.epoch_summary(self.class_names), step)
        if self.image_every > 0 and epoch % self.image_every == 0:
            monitoring.log_validation_pictures(
                self.writer, val_metrics, self.class_names, self.dm.mean, self.dm.std, self.steps
            )

    def _scalars(self, values: dict, step: int) -> None:
        for tag, value in {**values, "epoch": self.epoch}.items():
            self.writer.add_scalar(tag, float(value), step)
        self.writer.flush()


def next_version_dir(parent: Path) -> Path:
    versions = [int(p.name.split("_")[1]) for p in parent.glob("version_*") if p.name.split("_")[1].isdigit()]
    return parent / f"version_{max(versions, default=-1) + 1}"


def checkpoint_dict(net, optimizer, scheduler, epoch: int, steps: int, best_val_acc) -> dict:
    """A checkpoint in Lightning's layout (``state_dict`` keys under ``net.``), so either loop can read it."""
    return {
        "pytorch-lightning_version": lightning.__version__,  # `twinloop validate --ckpt_path` checks it
        "epoch": epoch,
        "global_step": steps,
        "state_dict": {f"net.{k}": v for k, v in net.state_dict().items()},
        "optimizer_states": [optimizer.state_dict()],
        "lr_schedulers": [scheduler.state_dict()] if scheduler is not None else [],
        "best_val_acc": best_val_acc,
    }


def fit(run: ReferenceRun, log_dir: Path | None = None, recorder=None) -> ReferenceLogger:
    """Train with the reference loop, logging and checkpointing like the Lightning path."""
    s, dm, classifier = run.settings, run.datamodule, run.classifier
    configure_determinism(s)
    dm.prepare_data()
    dm.setup("fit")
    train_loader, val_loader = dm.train_dataloader(), dm.val_dataloader()
    net, criterion = classifier.net, classifier.criterion
    net.to(s.device)
    total_steps = stepping_batches(
        loop.num_batches(train_loader, s.limit_train_batches), s.accumulate_grad_batches, s.max_epochs
    )
    optimizer, scheduler = build_optimization(
        net.parameters(), classifier.optimizer_factory, classifier.scheduler_factory, total_steps
    )
    hp = classifier.hparams
    train_metrics, val_metrics = (
        build_stage_metrics(stage, hp.num_classes, hp.num_misclassified_images).to(s.device)
        for stage in ("train", "val")
    )
    scaler = torch.amp.GradScaler(s.device.type) if s.precision == "16-mixed" else None

    log_dir = log_dir or next_version_dir(Path(run.logger_save_dir) / run.logger_name / "reference")
    logger = ReferenceLogger(log_dir, s.log_every_n_steps, dm, classifier)
    logger.log_hparams(run.config)
    logger.watch(net, optimizer)
    if recorder is not None:  # twinloop-compare's hooks
        recorder.attach(net, criterion, optimizer, total_steps)
    ckpt_dir = log_dir / "checkpoints"

    def on_epoch_end(epoch, train_results, val_results):
        previous_best = val_metrics.best_acc
        logger.on_epoch_end(epoch, train_results, val_results, val_metrics)
        if recorder is not None and val_results is not None:
            recorder.on_validation(val_results)
        summary = {**train_results, **(val_results or {})}
        print(f"epoch {epoch}: " + "  ".join(f"{k}={float(v):.4f}" for k, v in summary.items()))
        if s.enable_checkpointing:
            ckpt_dir.mkdir(parents=True, exist_ok=True)
            state = checkpoint_dict(net, optimizer, scheduler, epoch, logger.steps, val_metrics.best_acc)
            torch.save(state, ckpt_dir / "last.ckpt")
            # like ModelCheckpoint(mode="max"): only a strict improvement replaces the best
            if val_results is not None and (previous_best is None or val_metrics.best_acc > previous_best):
                torch.save(state, ckpt_dir / "best.ckpt")
        logger.epoch = epoch + 1

    loop.fit(
        net,
        Progress(
            train_loader,
            "reference train",
            s.enable_progress_bar,
            total=loop.num_batches(train_loader, s.limit_train_batches),
        ),
        Progress(val_loader, "reference val", s.enable_progress_bar),
        criterion,
        optimizer,
        s.device,
        train_metrics,
        val_metrics,
        max_epochs=s.max_epochs,
        scheduler=scheduler,
        scheduler_interval=classifier.scheduler_interval,
        check_val_every_n_epoch=s.check_val_every_n_epoch,
        limit_val_batches=s.limit_val_batches,
        on_epoch_end=on_epoch_end,
        accumulate_grad_batches=s.accumulate_grad_batches,
        gradient_clip_val=s.gradient_clip_val,
        gradient_clip_algorithm=s.gradient_clip_algorithm,
        precision=s.precision,
        scaler=scaler,
        augment=dm.augmenter,
        limit_batches=s.limit_train_batches,
        on_step=logger.on_step,
    )
    logger.writer.close()
    return logger


def load_weights(net: torch.nn.Module, ckpt_path: str) -> dict:
    """Load a Lightning (or reference) checkpoint's network weights; tensors and plain data only."""
    path = Path(ckpt_path)
    if not path.is_file():
        raise FileNotFoundError(f"--ckpt_path: no such file: {path}")
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    state = {k.removeprefix("net."): v for k, v in checkpoint["state_dict"].items() if k.startswith("net.")}
    net.load_state_dict(state)
    return checkpoint


def validate(run: ReferenceRun, ckpt_path: str | None) -> dict[str, float]:
    s, dm, classifier = run.settings, run.datamodule, run.classifier
    configure_determinism(s)
    if ckpt_path is not None:
        load_weights(classifier.net, ckpt_path)
    dm.prepare_data()
    dm.setup("validate")
    metrics = build_stage_metrics("val", classifier.hparams.num_classes).to(s.device)
    classifier.net.to(s.device)
    results = loop.evaluate(
        classifier.net,
        Progress(dm.val_dataloader(), "reference validate", s.enable_progress_bar),
        classifier.criterion,
        s.device,
        metrics,
        precision=s.precision,
        limit_batches=s.limit_val_batches,
    )
    return {k: float(v) for k, v in results.items()}


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog="twinloop-reference",
        description="Run the plain-PyTorch reference loop on a twinloop config. Other options are the "
        "config options of `twinloop` (-c CONFIG, --model.*, --data.*, --trainer.*).",
    )
    parser.add_argument("command", choices=["fit", "validate"])
    parser.add_argument("--ckpt_path", default=None, help="checkpoint to validate (Lightning or reference)")
    parser.add_argument("--log_dir", default=None, help="TensorBoard/checkpoint directory for fit")
    opts, rest = parser.parse_known_args(argv)
    with reported_as_exit():
        run = load_run(rest)
        if opts.command == "fit":
            logger = fit(run, Path(opts.log_dir) if opts.log_dir else None)
            print(f"logs and checkpoints: {logger.log_dir}")
        else:
            results = validate(run, opts.ckpt_path)
            width = max(len(k) for k in results)
            for k, v in results.items():
                print(f"{k:<{width}}  {v:.6f}")


if __name__ == "__main__":
    main()
