"""Ground truth for the learning-rate schedules both loops share: closed-form values per step and epoch.

The schedulers are built the way a config builds them (the CLI's factories, then
``build_optimization``), stepped by hand, and driven by each loop over a short real run; the learning
rate is read from the optimizer at every optimizer step and from the ``lr-SGD`` TensorBoard scalars.
"""

import math
from pathlib import Path

import pytest
import torch
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.optim.optimizer import register_optimizer_step_pre_hook

from project.cli import TwinloopCLI
from project.factory import build_optimization, default_optimizer, stepping_batches
from project.reference.config import load_run
from tests.helpers import CONFIGS, FAST

LR = 0.05  # the default config's SGD learning rate


def step_lr(k: int, step_size: int, gamma: float) -> float:
    """StepLR after k scheduler steps: lr0 * gamma ** floor(k / step_size)."""
    return LR * gamma ** (k // step_size)


def cosine_lr(k: int, t_max: int, eta_min: float) -> float:
    """CosineAnnealingLR after k steps: eta_min + (lr0 - eta_min) (1 + cos(pi k / T_max)) / 2."""
    return eta_min + (LR - eta_min) * (1 + math.cos(math.pi * k / t_max)) / 2


def one_cycle_lr(k: int, max_lr: float, total: int) -> float:
    """OneCycleLR's defaults (pct_start 0.3, div_factor 25, final_div_factor 1e4, cosine, two phases)
    written out: cosine from max_lr / 25 up to max_lr by step 0.3 total - 1, then down to max_lr / 25e4 at
    the last step."""
    initial, final = max_lr / 25, max_lr / 25 / 1e4
    peak = 0.3 * total - 1

    def cos_between(start, end, fraction):
        return end + (start - end) * (1 + math.cos(math.pi * fraction)) / 2

    if k <= peak:
        return cos_between(initial, max_lr, k / peak)
    return cos_between(max_lr, final, (k - peak) / (total - 1 - peak))


STEP_LR = ["--model.lr_scheduler=StepLR", "--model.lr_scheduler.step_size=2", "--model.lr_scheduler.gamma=0.5"]
COSINE = [
    "--model.lr_scheduler=CosineAnnealingLR",
    "--model.lr_scheduler.T_max=4",
    "--model.lr_scheduler.eta_min=0.001",
]
ONE_CYCLE = ["--model.lr_scheduler=OneCycleLR", "--model.lr_scheduler.max_lr=0.2", "--model.scheduler_interval=step"]
FACTORY_CASES = {
    "step": (STEP_LR, lambda k, total: step_lr(k, 2, 0.5)),
    "cosine": (COSINE, lambda k, total: cosine_lr(k, 4, 0.001)),
    "one_cycle": (ONE_CYCLE, lambda k, total: one_cycle_lr(k, 0.2, total)),
}


def lrs_by_hand(args: list[str], total_steps: int) -> list[float]:
    """The learning rate before each of ``total_steps`` steps of a scheduler built from ``args`` by the factory."""
    model = TwinloopCLI(args=[*FAST, *args], run=False).model
    params = [torch.nn.Parameter(torch.zeros(1))]
    optimizer, scheduler = build_optimization(params, model.optimizer_factory, model.scheduler_factory, total_steps)
    lrs = []
    for _ in range(total_steps):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs


@pytest.mark.parametrize("case", list(FACTORY_CASES))
def test_factory_built_scheduler_follows_the_closed_form(case):
    """StepLR, CosineAnnealingLR and OneCycleLR (its length from the run) give the closed-form rate at every step."""
    args, closed_form = FACTORY_CASES[case]
    total = 20 if case == "one_cycle" else 5
    assert lrs_by_hand(args, total) == pytest.approx([closed_form(k, total) for k in range(total)], rel=1e-9)


def test_one_cycle_closed_form_peaks_and_ends_where_its_definition_says():
    """The hand formula itself: max_lr / 25 at step 0, max_lr at step 0.3 N - 1, max_lr / 25e4 at the last step."""
    assert one_cycle_lr(0, 0.2, 20) == pytest.approx(0.008)
    assert one_cycle_lr(5, 0.2, 20) == pytest.approx(0.2)
    assert one_cycle_lr(19, 0.2, 20) == pytest.approx(0.2 / 25e4)


# ---- both loops over a short real run: 3 epochs of 2 batches ----

EPOCHS, BATCHES = 3, 2
RUN = [
    *FAST,
    f"--trainer.max_epochs={EPOCHS}",
    f"--trainer.limit_train_batches={BATCHES}",
    "--data.batch_size=16",
    "--trainer.limit_val_batches=1",
    "--trainer.log_every_n_steps=1",
    "--model.pictures.every_n_epochs=0",
]
RUN_CASES = {
    # per epoch: every step of epoch e has the rate after e scheduler steps
    "step_per_epoch": (
        ["--model.lr_scheduler=StepLR", "--model.lr_scheduler.step_size=1", "--model.lr_scheduler.gamma=0.5"],
        [step_lr(k // BATCHES, 1, 0.5) for k in range(EPOCHS * BATCHES)],
    ),
    "cosine_per_epoch": (
        ["--model.lr_scheduler=CosineAnnealingLR", "--model.lr_scheduler.T_max=3"],
        [cosine_lr(k // BATCHES, 3, 0.0) for k in range(EPOCHS * BATCHES)],
    ),
    # per step, its length (6 steps) derived from the run
    "one_cycle_per_step": (ONE_CYCLE, [one_cycle_lr(k, 0.2, EPOCHS * BATCHES) for k in range(EPOCHS * BATCHES)]),
}


def fit(loop: str, args: list[str]) -> tuple[list[float], Path]:
    """Fit with one loop; the learning rate at each optimizer step (read just before it) and the log dir."""
    lrs: list[float] = []
    hook = register_optimizer_step_pre_hook(lambda opt, a, kw: lrs.append(opt.param_groups[0]["lr"]))
    try:
        if loop == "lightning":
            cli = TwinloopCLI(args=args, run=False)
            cli.trainer.fit(cli.model, datamodule=cli.datamodule)
            log_dir = Path(cli.trainer.log_dir)
        else:
            run = load_run(args, Path("reference"))
            run.trainer.fit(run.model, run.datamodule)
            log_dir = run.trainer.log_dir
    finally:
        hook.remove()
    return lrs, log_dir


def logged_lrs(log_dir: Path) -> list[tuple[int, float]]:
    events = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    events.Reload()
    return [(e.step, e.value) for e in events.Scalars("lr-SGD")]


@pytest.mark.fit
@pytest.mark.parametrize("loop", ["lightning", "reference"])
@pytest.mark.parametrize("case", list(RUN_CASES))
def test_each_loop_steps_with_the_closed_form_rate_and_logs_it(case, loop):
    """Every optimizer step of a real run uses the closed-form rate, and lr-SGD logs it at that step."""
    args, expected = RUN_CASES[case]
    lrs, log_dir = fit(loop, [*RUN, *args])
    assert lrs == pytest.approx(expected, rel=1e-9)
    logged = logged_lrs(log_dir)
    assert [step for step, _ in logged] == list(range(EPOCHS * BATCHES))
    assert [value for _, value in logged] == pytest.approx(expected, rel=1e-6)  # float32 in the event file


# ---- the optimizer and the run length the factory gives the schedulers ----


def test_default_optimizer_is_the_default_configs_sgd():
    """ImageClassifier's default optimizer from Python is the SGD that configs/digits.yaml spells out."""
    config = yaml.safe_load((CONFIGS / "digits.yaml").read_text())["model"]["optimizer"]
    optimizer = default_optimizer([torch.nn.Parameter(torch.zeros(1))])
    assert f"{type(optimizer).__module__.rpartition('.')[0]}.{type(optimizer).__name__}" == config["class_path"]
    assert {k: optimizer.defaults[k] for k in config["init_args"]} == config["init_args"]


@pytest.mark.parametrize(
    ("batches", "accumulate", "epochs", "steps"),
    [(23, 1, 10, 230), (23, 3, 2, 16), (24, 3, 2, 16), (7, 2, 3, 12), (5, 1, -1, 5)],
)
def test_stepping_batches_counts_optimizer_steps(batches, accumulate, epochs, steps):
    """Steps in a run: ceil(batches / accumulation) per epoch, a last short window included (-1 epochs: one)."""
    assert stepping_batches(batches, accumulate, epochs) == steps


def test_a_scheduler_factory_without_keywords_is_called_with_the_optimizer_alone():
    """A plain callable (no config keywords to read) never gets total_steps."""
    from project.factory import needs_total_steps

    def factory(optimizer):
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=1)

    assert not needs_total_steps(factory)
    _, scheduler = build_optimization([torch.nn.Parameter(torch.zeros(1))], torch.optim.SGD, factory, 10)
    assert scheduler.step_size == 1
