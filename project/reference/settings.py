"""What the Trainer arguments mean to the reference loop: the honoured keys, read as Lightning reads
them (the refusal of everything else is in ``refusal.py``)."""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import torch

from project.errors import ConfigError
from project.reference.budgets import (
    read_limit,
    read_max_epochs,
    read_max_steps,
    read_max_time,
    read_val_check_interval,
)
from project.reference.early_stopping import read_early_stopping
from project.reference.top_k import read_checkpoint_args

# Trainer keys the reference loop carries out. Any other key must keep its default.
HONOURED_TRAINER_KEYS = {
    "max_epochs",
    "max_steps",
    "max_time",
    "accelerator",
    "devices",
    "precision",
    "accumulate_grad_batches",
    "gradient_clip_val",
    "gradient_clip_algorithm",
    "limit_train_batches",
    "limit_val_batches",
    "limit_test_batches",
    "check_val_every_n_epoch",
    "val_check_interval",
    "default_root_dir",  # through the logger's save_dir, which the CLI sets from it
    "deterministic",
    "benchmark",
    "log_every_n_steps",
    # no effect on the numbers: the sanity pass runs under isolate_rng, bars and summaries only print
    "num_sanity_val_steps",
    "enable_progress_bar",
    "enable_model_summary",
    "logger",
    "callbacks",  # EarlyStopping only, by the same rule (early_stopping.py); any other is refused
    "enable_checkpointing",
    # several processes: torchrun starts them, the reference checks that they are what these say
    "strategy",
    "num_nodes",
    "sync_batchnorm",
}
STRATEGIES = ("auto", "ddp")
# The loggers the reference writes as Lightning's do, by class name: the same scalars at the same steps.
LOGGER_KINDS = {"TensorBoardLogger": "tensorboard", "CSVLogger": "csv"}
PRECISIONS = {
    "32": "32-true",
    "32-true": "32-true",
    "bf16": "bf16-mixed",
    "bf16-mixed": "bf16-mixed",
    "16": "16-mixed",
    "16-mixed": "16-mixed",
}


@dataclass
class TrainerSettings:
    """The honoured trainer keys, checked and normalised."""

    max_epochs: int = 1000
    max_steps: int = -1  # -1: no limit
    max_time: float | None = None  # seconds of training, Lightning's Timer (stopping.TimeLimit)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    precision: str = "32-true"
    accumulate_grad_batches: int = 1
    gradient_clip_val: float | None = None
    gradient_clip_algorithm: str = "norm"
    limit_train_batches: int | float = 1.0
    limit_val_batches: int | float = 1.0
    limit_test_batches: int | float = 1.0
    check_val_every_n_epoch: int = 1
    val_check_interval: int | float = 1.0  # a fraction of the epoch's batches, or a number of them
    deterministic: bool | str = False  # True, False or "warn"
    benchmark: bool | None = None  # cudnn.benchmark; None leaves it as it is
    log_every_n_steps: int = 50
    enable_progress_bar: bool = True
    enable_checkpointing: bool = True
    log_root: Path = Path("lightning_logs")  # the first logger's save_dir / name
    loggers: tuple[str, ...] = ("tensorboard",)  # what the reference writes: "tensorboard", "csv"
    processes: Processes = field(default_factory=lambda: Processes())
    sync_batchnorm: bool = False
    early_stopping: dict | None = None  # the EarlyStopping callback's arguments, checked
    checkpoint: dict = field(default_factory=lambda: {"monitor": "val/acc", "mode": "max"})  # see TopK

    @classmethod
    def from_config(
        cls, trainer: dict, env: Mapping[str, str] = os.environ, checkpoint: dict | None = None
    ) -> TrainerSettings:
        """The trainer keys, and the CLI's ``checkpoint`` group (the keys ``TopK`` follows)."""
        processes = read_processes(trainer.get("strategy"), env)
        num_nodes = int(trainer.get("num_nodes") or 1)
        device = read_device(trainer.get("accelerator"), trainer.get("devices", "auto"), num_nodes, processes)
        clip_val = trainer.get("gradient_clip_val")
        every = trainer.get("log_every_n_steps")
        logger = trainer.get("logger")  # (the CLI's default is a TensorBoardLogger, as Lightning's)
        loggers: list[dict] = (
            read_loggers(logger) if isinstance(logger, dict | list) else [{"class_path": "TensorBoardLogger"}]
        )
        logger_args: dict = loggers[0].get("init_args") or {}
        sync_batchnorm = bool(trainer.get("sync_batchnorm"))
        if sync_batchnorm and device.type == "cpu":
            raise ConfigError("trainer.sync_batchnorm=true: torch's SyncBatchNorm runs on GPUs only; set it to false")
        return cls(
            max_epochs=read_max_epochs(trainer.get("max_epochs"), trainer.get("max_time")),
            max_time=read_max_time(trainer.get("max_time")),
            max_steps=read_max_steps(trainer.get("max_steps")),
            device=device,
            precision=read_precision(trainer.get("precision"), device),
            accumulate_grad_batches=int(trainer.get("accumulate_grad_batches") or 1),
            gradient_clip_val=float(clip_val) if clip_val else None,
            gradient_clip_algorithm=trainer.get("gradient_clip_algorithm") or "norm",
            limit_train_batches=read_limit(trainer.get("limit_train_batches"), "limit_train_batches"),
            limit_val_batches=read_limit(trainer.get("limit_val_batches"), "limit_val_batches"),
            limit_test_batches=read_limit(trainer.get("limit_test_batches"), "limit_test_batches"),
            check_val_every_n_epoch=int(trainer.get("check_val_every_n_epoch") or 1),
            val_check_interval=read_val_check_interval(trainer),
            deterministic=trainer.get("deterministic") or False,
            benchmark=trainer.get("benchmark"),
            log_every_n_steps=50 if every is None else int(every),
            enable_progress_bar=trainer.get("enable_progress_bar") is not False,
            enable_checkpointing=trainer.get("enable_checkpointing") is not False,
            log_root=Path(logger_args.get("save_dir") or ".") / (logger_args.get("name") or ""),
            loggers=tuple(LOGGER_KINDS[logger["class_path"].rpartition(".")[2]] for logger in loggers),
            processes=processes,
            sync_batchnorm=sync_batchnorm,
            early_stopping=read_early_stopping(trainer),
            checkpoint=read_checkpoint_args(checkpoint),
        )


def read_loggers(logger: object) -> list[dict]:
    """``trainer.logger`` as a list of loggers (one, or several at once), each one the reference
    writes: a TensorBoardLogger or a CSVLogger, each at most once. The first one's folder holds the
    run, as Lightning's checkpoints follow its first logger."""
    loggers = logger if isinstance(logger, list) else [logger]
    names = [item.get("class_path", "").rpartition(".")[2] if isinstance(item, dict) else None for item in loggers]
    if not loggers or any(name not in LOGGER_KINDS for name in names) or len(set(names)) < len(names):
        raise ConfigError(
            f"trainer.logger={logger!r}: the reference loop writes a TensorBoardLogger's and a CSVLogger's files, "
            "each at most once; give one of them or both as a list"
        )
    return cast(list[dict], loggers)


@dataclass(frozen=True)
class Processes:
    """The processes of a run, as torchrun describes them in each one's environment (``WORLD_SIZE``,
    ``RANK``, ``LOCAL_RANK``). ``distributed``: a process group and DistributedDataParallel, as
    Lightning's DDP strategy sets up, even for one process (``strategy: ddp, devices: 1``)."""

    world_size: int = 1
    rank: int = 0
    local_rank: int = 0
    distributed: bool = False

    @property
    def is_global_zero(self) -> bool:
        return self.rank == 0


def read_processes(strategy: str | None, env: Mapping[str, str]) -> Processes:
    """This process's place in the run: torchrun's environment, or one process without it."""
    name = str(strategy or "auto")
    if name not in STRATEGIES:
        raise ConfigError(f"trainer.strategy={strategy!r}: the reference loop runs {' or '.join(STRATEGIES)}")
    world_size = int(env.get("WORLD_SIZE", 1))
    return Processes(
        world_size=world_size,
        rank=int(env.get("RANK", 0)),
        local_rank=int(env.get("LOCAL_RANK", 0)),
        distributed=name == "ddp" or world_size > 1,  # Lightning's choice for several devices is DDP
    )


def device_ids(name: str, devices) -> list[int]:
    """The devices of one node that Lightning would use: ``auto`` is one CPU or every GPU."""
    if isinstance(devices, (list, tuple)):
        return [int(d) for d in devices]
    text = str(devices)
    if "," in text:
        return [int(d) for d in text.split(",") if d.strip()]
    if text in ("auto", "-1"):
        if name == "cpu" and text == "auto":
            return [0]
        if name == "cuda":
            return list(range(torch.cuda.device_count()))
    elif text.isdigit() and int(text) > 0:
        return list(range(int(text)))
    raise ConfigError(f"trainer.devices={devices!r}: use a number of devices, a list of GPU ids or auto")


def requested_processes(trainer: dict) -> int:
    """How many processes Lightning runs for these trainer settings: one per device and node."""
    name = str(trainer.get("accelerator") or "auto")
    name = {"gpu": "cuda", "auto": "cuda" if torch.cuda.is_available() else "cpu"}.get(name, name)
    return len(device_ids(name, trainer.get("devices", "auto"))) * int(trainer.get("num_nodes") or 1)


def read_device(
    accelerator: str | None, devices, num_nodes: int = 1, processes: Processes = Processes()
) -> torch.device:
    """This process's device. Lightning runs one process per device on each of ``num_nodes`` nodes;
    the reference needs torchrun to have started exactly those, and refuses anything else."""
    name = str(accelerator or "auto")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    name = {"gpu": "cuda"}.get(name, name)
    if name not in ("cpu", "cuda"):
        raise ConfigError(f"trainer.accelerator={accelerator!r}: the reference loop runs on cpu or cuda")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("trainer.accelerator=cuda, but CUDA is not available on this machine")
    ids = device_ids(name, devices)
    wanted = len(ids) * num_nodes
    if wanted != processes.world_size:
        nodes = f" x trainer.num_nodes={num_nodes}" if num_nodes != 1 else ""
        if processes.world_size == 1:
            raise ConfigError(
                f"trainer.devices={devices!r}{nodes}: Lightning would run {wanted} processes here "
                f"({'every GPU' if devices in ('auto', -1, '-1') else 'one per device'}), and the reference loop "
                f"runs one per process: launch it with `torchrun --nnodes {num_nodes} --nproc_per_node {len(ids)} "
                "-m project.reference ...`, or set --trainer.devices=1"
            )
        raise ConfigError(
            f"torchrun started {processes.world_size} processes, but trainer.devices={devices!r}{nodes} "
            f"asks for {wanted}: set --nproc_per_node and --nnodes to match"
        )
    if name == "cuda" and (processes.world_size > 1 or ids != [0]):
        return torch.device("cuda", ids[processes.local_rank])
    return torch.device(name)


def read_precision(precision: str | int | None, device: torch.device) -> str:
    name = PRECISIONS.get(str(precision or "32-true"))
    if name is None:
        raise ConfigError(f"trainer.precision={precision!r}: use 32-true, bf16-mixed or 16-mixed")
    if name == "16-mixed" and device.type == "cpu":
        # Lightning's own substitution: CPUs have no fp16 autocast worth the name.
        warnings.warn("16-mixed is not supported on the CPU; using bf16-mixed, as Lightning does", stacklevel=2)
        return "bf16-mixed"
    return name


def configure_determinism(settings: TrainerSettings) -> None:
    """What Trainer(deterministic=..., benchmark=...) switches: deterministic algorithms, and
    cuDNN's autotuner (off under determinism unless asked for)."""
    if settings.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=settings.deterministic == "warn")
    if settings.benchmark is not None or settings.deterministic:
        torch.backends.cudnn.benchmark = bool(settings.benchmark)
