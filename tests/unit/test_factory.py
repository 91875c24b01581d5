"""The optimizer and scheduler factory that both loops call."""

import functools

import pytest
import torch

from project.cli import TwinloopCLI
from project.factory import build_optimization, needs_total_steps
from tests.helpers import FAST

ONE_CYCLE = ["--model.lr_scheduler=OneCycleLR", "--model.lr_scheduler.max_lr=0.05", "--model.scheduler_interval=step"]


def factories(*args: str):
    model = TwinloopCLI(args=[*FAST, *ONE_CYCLE, *args], run=False).model
    return model.optimizer_factory, model.scheduler_factory


def test_one_cycle_without_total_steps_gets_the_run_length():
    """OneCycleLR from a config without total_steps runs for the steps the trainer will take."""
    optimizer_factory, scheduler_factory = factories()
    assert needs_total_steps(scheduler_factory)
    _, scheduler = build_optimization([torch.nn.Parameter(torch.zeros(1))], optimizer_factory, scheduler_factory, 123)
    assert scheduler.total_steps == 123


def test_one_cycle_with_its_own_length_keeps_it():
    """epochs x steps_per_epoch in the config are not replaced."""
    optimizer_factory, scheduler_factory = factories(
        "--model.lr_scheduler.epochs=2", "--model.lr_scheduler.steps_per_epoch=5"
    )
    assert not needs_total_steps(scheduler_factory)
    _, scheduler = build_optimization([torch.nn.Parameter(torch.zeros(1))], optimizer_factory, scheduler_factory, 123)
    assert scheduler.total_steps == 10


def test_a_bad_total_steps_is_not_papered_over():
    """total_steps=0 in the config is OneCycleLR's error, not silently swapped for the run length."""
    optimizer_factory, scheduler_factory = factories("--model.lr_scheduler.total_steps=0")
    with pytest.raises(ValueError, match="total_steps"):
        build_optimization([torch.nn.Parameter(torch.zeros(1))], optimizer_factory, scheduler_factory, 123)


def test_other_schedulers_are_built_as_configured():
    """A scheduler without total_steps (StepLR) is called with the optimizer alone."""
    factory = functools.partial(torch.optim.lr_scheduler.StepLR, step_size=3)
    assert not needs_total_steps(factory)
    _, scheduler = build_optimization([torch.nn.Parameter(torch.zeros(1))], torch.optim.SGD, factory, 123)
    assert scheduler.step_size == 3
