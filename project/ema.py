"""The exponential moving average of the weights, as both loops keep it.

Lightning's path adds its own ``EMAWeightAveraging`` callback (``ImageClassifier.configure_callbacks``).
The reference loop keeps ``WeightEMA``: the same ``torch.optim.swa_utils.AveragedModel`` with the same
``get_ema_avg_fn``, over the parameters and buffers, updated after the same optimizer steps, and
saved in the same checkpoint layout (the average as ``state_dict``, the weights being trained as
``current_model_state``), so that either loop resumes, validates or exports the other's.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from lightning.pytorch.callbacks import EMAWeightAveraging
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_avg_fn

from project.specs import EMASpec

CALLBACK_KEY = EMAWeightAveraging.__qualname__  # the callback's state_key in a checkpoint's "callbacks"


def ema_callback(spec: EMASpec, device: torch.device) -> EMAWeightAveraging:
    """Lightning's callback for ``spec``, its average on ``device`` (where the module trains)."""
    return EMAWeightAveraging(
        device=device,
        decay=spec.decay if spec.decay is not None else 0.0,
        update_every_n_steps=spec.every_n_steps,
        update_starting_at_step=spec.start_step or None,
    )


class WeightEMA:
    """``AveragedModel`` of ``net`` (on ``net``'s device), updated after optimizer step ``i`` (from 0)
    when ``i >= start_step`` and ``i % every_n_steps == 0``, as ``EMAWeightAveraging`` does."""

    def __init__(self, net: nn.Module, spec: EMASpec):
        self.spec = spec
        self.averaged = AveragedModel(net, avg_fn=get_ema_avg_fn(spec.decay or 0.0), use_buffers=True)
        self.steps = 0  # optimizer steps taken
        self.latest_update_step = 0

    @property
    def module(self) -> nn.Module:
        """The averaged network (its copy of the network's parameters and buffers)."""
        return self.averaged.module

    @contextmanager
    def swapped(self, net: nn.Module) -> Iterator[None]:
        """Inside: ``net`` holds the average, and the average the weights being trained; as they were
        after (Lightning's callback swaps them around validation the same way). ``net`` itself, not a
        copy, validates: a compiled or distributed network runs as it trains."""
        self._swap(net)
        try:
            yield
        finally:
            self._swap(net)

    def _swap(self, net: nn.Module) -> None:
        with torch.no_grad():
            for average, current in self._pairs(net):
                held = average.clone()
                average.copy_(current)
                current.copy_(held)

    def _pairs(self, net: nn.Module) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(average, current) tensor pairs: parameters, then buffers, as the callback pairs them."""
        average = itertools.chain(self.module.parameters(), self.module.buffers())
        return zip(average, itertools.chain(net.parameters(), net.buffers()))

    def update(self, net: nn.Module) -> None:
        """After an optimizer step."""
        self.steps += 1
        if self.steps - 1 >= self.spec.start_step and (self.steps - 1) % self.spec.every_n_steps == 0:
            self.averaged.update_parameters(net)
            self.latest_update_step = self.steps

    def copy_to(self, net: nn.Module) -> None:
        """The average into ``net``, as the callback leaves the module at the end of training."""
        with torch.no_grad():
            for average, current in self._pairs(net):
                current.copy_(average)

    def checkpoint(self, state: dict) -> dict:
        """``state`` (the reference's, in Lightning's layout) as the callback saves it."""
        average = {f"net.{k}": v for k, v in self.module.state_dict().items()}
        return {
            **state,
            "state_dict": average,
            "current_model_state": state["state_dict"],
            "averaging_state": {"n_averaged": self.averaged.n_averaged},
            "callbacks": {**state.get("callbacks", {}), CALLBACK_KEY: {"latest_update_step": self.latest_update_step}},
        }

    def restore(self, checkpoint: dict) -> None:
        """The average and the step counts of a checkpoint of either loop."""
        self.steps = checkpoint["global_step"]
        if "averaging_state" not in checkpoint:  # written without EMA: the average starts as the weights
            state = {k.removeprefix("net."): v for k, v in checkpoint["state_dict"].items()}
            self.module.load_state_dict(state)
            return
        average = {f"module.{k.removeprefix('net.')}": v for k, v in checkpoint["state_dict"].items()}
        self.averaged.load_state_dict({**average, **checkpoint["averaging_state"]})
        self.latest_update_step = checkpoint.get("callbacks", {}).get(CALLBACK_KEY, {}).get("latest_update_step", 0)
