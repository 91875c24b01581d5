"""What one loop did, recorded through hooks on the network, the loss and the optimizer (never by
editing the loop): the loss of every training batch, the parameters and BatchNorm buffers after
every optimizer step, the validation metrics of every epoch and the final state."""

from __future__ import annotations

import math

import torch
from lightning.pytorch.callbacks import Callback
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

SNAPSHOT_BUDGET_BYTES = 512 * 2**20  # per loop; larger models are snapshotted every k-th step


class Recorder:
    """What one loop did, captured with hooks on the network, criterion and optimizer."""

    def __init__(self) -> None:
        self.losses: list[Tensor] = []  # every training batch, as the criterion returned it
        self.loss_windows: list[int] = []  # per batch: optimizer steps done before it (its window)
        self.snapshots: list[tuple[int, dict[str, Tensor]]] = []  # (optimizer step, tensors after it)
        self.val: list[dict[str, float]] = []  # one entry per validation epoch
        self.final: dict[str, Tensor] = {}
        self.steps = 0
        self.every = 1
        self.net: nn.Module | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self._hooks: list[RemovableHandle] = []

    def attach(self, net: nn.Module, criterion: nn.Module, optimizer: torch.optim.Optimizer, total_steps: int) -> None:
        self.net, self.optimizer = net, optimizer
        size = sum(t.numel() * t.element_size() for t in self._state().values())
        self.every = max(1, math.ceil(size * max(total_steps, 1) / SNAPSHOT_BUDGET_BYTES))

        def on_loss(module, inputs, output):
            if torch.is_grad_enabled():  # training forward; evaluation runs without grad
                self.losses.append(output.detach().float().cpu().clone())
                self.loss_windows.append(self.steps)

        def after_step(opt, args, kwargs):
            self.steps += 1
            if self.steps % self.every == 0:
                tensors = {k: v.cpu().clone() for k, v in self._state().items()}
                self.snapshots.append((self.steps, {**tensors, **self._groups()}))

        self._hooks = [criterion.register_forward_hook(on_loss), optimizer.register_step_post_hook(after_step)]

    def on_validation(self, metrics: dict) -> None:
        self.val.append({k: float(metrics[k]) for k in ("val/loss", "val/acc")})

    def finish(self) -> None:
        """Record the final state and remove the hooks."""
        for hook in self._hooks:
            hook.remove()
        state = {k: v.cpu().clone() for k, v in self._state().items()}
        assert self.net is not None and self.optimizer is not None  # attach() set them
        # the optimizer numbers parameters in the order of its groups, which need not be the network's
        name_of = {id(p): n for n, p in self.net.named_parameters()}
        names = [name_of[id(p)] for group in self.optimizer.param_groups for p in group["params"]]
        for index, slots in self.optimizer.state_dict()["state"].items():
            for slot, value in slots.items():
                if isinstance(value, Tensor):
                    state[f"optimizer.{names[index]}.{slot}"] = value.detach().float().cpu().clone()
        state.update(self._groups())
        self.final = state

    def _groups(self) -> dict[str, Tensor]:
        """The optimizer's parameter groups: each numeric setting (lr, momentum, weight decay, ...)
        and the positions of its parameters in the network, as tensors, so groups are compared too."""
        assert self.net is not None and self.optimizer is not None  # attach() set them
        position = {id(p): i for i, p in enumerate(self.net.parameters())}
        tensors = {}
        for g, group in enumerate(self.optimizer.param_groups):
            tensors[f"param_groups.{g}.params"] = torch.tensor([position[id(p)] for p in group["params"]])
            for key, value in group.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    tensors[f"param_groups.{g}.{key}"] = torch.tensor(float(value), dtype=torch.float64)
        return tensors

    def _state(self) -> dict[str, Tensor]:
        assert self.net is not None  # attach() set it
        tensors = {f"param.{k}": v.detach() for k, v in self.net.named_parameters()}
        tensors.update({f"buffer.{k}": v.detach() for k, v in self.net.named_buffers()})
        return tensors


class RecorderCallback(Callback):
    """Attaches a Recorder to a run of either loop: Lightning's Trainer and the ReferenceTrainer
    call the same three hooks. The final state is the one after every callback's ``on_train_end``
    (Lightning's EMA copies the average into the weights there)."""

    def __init__(self, recorder: Recorder):
        self.recorder = recorder

    def on_train_start(self, trainer, pl_module) -> None:
        self.recorder.attach(
            pl_module.net, pl_module.criterion, trainer.optimizers[0], trainer.estimated_stepping_batches
        )

    def on_validation_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self.recorder.on_validation(trainer.callback_metrics)

    def on_fit_end(self, trainer, pl_module) -> None:
        self.recorder.finish()
