"""The loop contract, checked on both loops from the outside, through hooks.

Each test runs the Lightning path and the reference loop with a Probe attached to the network,
criterion and optimizers; neither loop's code is read or changed.
"""

from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import Callback
from torch import nn
from torch.optim.optimizer import register_optimizer_step_post_hook

from project.cli import TwinloopCLI
from project.metrics import StageMetrics
from project.recorder import Recorder, RecorderCallback
from project.reference import loop as loop_fns
from project.reference.config import load_run
from tests.helpers import EQUIV

LOOPS = ["lightning", "reference"]
TRAIN_BATCHES, VAL_BATCHES, SANITY_BATCHES = 7, 4, 2


class Probe:
    """Records every forward of the network and every zero_grad/backward/step, in order."""

    def __init__(self):
        self.forwards: list[dict] = []  # per forward: grad on?, which modules train
        # "zero", "backward", "step" (after the update: Lightning calls step(closure), and the
        # closure runs forward, zero_grad and backward inside it)
        self.events: list[str] = []
        self.eval_logits: list[torch.Tensor] = []
        self.dropout_zero_fraction: list[float] = []
        real = torch.optim.Optimizer.zero_grad

        def counting_zero_grad(opt, set_to_none=True):
            self.events.append("zero")
            real(opt, set_to_none)

        # A patch of its own: undoing it must not undo the test's other patches (its tmp cwd).
        self._patch = pytest.MonkeyPatch()
        self._patch.setattr(torch.optim.Optimizer, "zero_grad", counting_zero_grad)
        self._step_hook = register_optimizer_step_post_hook(lambda *a: self.events.append("step"))

    def remove(self) -> None:
        self._step_hook.remove()
        self._patch.undo()

    def attach(self, net: nn.Module, criterion: nn.Module) -> None:
        def before_forward(module, inputs):
            modes = [m.training for m in module.modules()]
            self.forwards.append({"grad": torch.is_grad_enabled(), "all_train": all(modes), "any_train": any(modes)})

        def after_forward(module, inputs, output):
            if not torch.is_grad_enabled():
                self.eval_logits.append(output.detach().clone())

        def after_loss(module, inputs, loss):
            if loss.requires_grad:
                loss.register_hook(lambda g: self.events.append("backward"))

        def after_dropout(module, inputs, output):
            if torch.is_grad_enabled():
                self.dropout_zero_fraction.append(
                    (output == 0).float().mean().item() - (inputs[0] == 0).float().mean().item()
                )

        net.register_forward_pre_hook(before_forward)
        net.register_forward_hook(after_forward)
        criterion.register_forward_hook(after_loss)
        next(m for m in net.modules() if isinstance(m, nn.Dropout)).register_forward_hook(after_dropout)

    @property
    def train_forwards(self):
        return [f for f in self.forwards if f["grad"]]

    @property
    def eval_forwards(self):
        return [f for f in self.forwards if not f["grad"]]


class _Attach(Callback):
    def __init__(self, probe):
        self.probe = probe

    def on_fit_start(self, trainer, pl_module):
        self.probe.attach(pl_module.net, pl_module.criterion)


def run(loop: str, probe: Probe, args: list[str], model_in_eval_mode: bool = False) -> Recorder:
    """Fit with one loop; returns the final-state recording for comparisons."""
    recorder = Recorder()
    if loop == "lightning":
        cli = TwinloopCLI(args=args, run=False)
        if model_in_eval_mode:
            cli.model.eval()
        cli.trainer.callbacks += [_Attach(probe), RecorderCallback(recorder)]
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    else:
        ref = load_run(args, Path("reference"), callbacks=[RecorderCallback(recorder)])
        probe.attach(ref.model.net, ref.model.criterion)
        if model_in_eval_mode:
            ref.model.net.eval()
        ref.trainer.fit(ref.model, ref.datamodule)
    probe.remove()
    return recorder


@pytest.fixture(scope="module")
def probed_run(tmp_path_factory):
    """``probed_run(loop)``: (probe, recording) of one EQUIV fit with a Probe, made once per loop and
    shared by the tests that only read it."""
    runs: dict[str, tuple[Probe, Recorder]] = {}

    def get(loop: str) -> tuple[Probe, Recorder]:
        if loop not in runs:
            with pytest.MonkeyPatch.context() as patch:
                patch.chdir(tmp_path_factory.mktemp(loop))
                probe = Probe()
                runs[loop] = probe, run(loop, probe, EQUIV)
        return runs[loop]

    return get


@pytest.mark.xdist_group("probed_run")
@pytest.mark.parametrize("loop", LOOPS)
def test_train_steps_in_train_mode_with_grad_and_eval_steps_without(loop, probed_run):
    """Every training forward has all modules training and grad on; every evaluation one neither."""
    probe, _ = probed_run(loop)
    sanity = SANITY_BATCHES if loop == "lightning" else 0
    assert len(probe.train_forwards) == 3 * TRAIN_BATCHES
    assert len(probe.eval_forwards) == 3 * VAL_BATCHES + sanity
    assert all(f["all_train"] for f in probe.train_forwards)
    assert not any(f["any_train"] for f in probe.eval_forwards)


@pytest.mark.parametrize("loop", LOOPS)
def test_a_model_left_in_eval_mode_still_trains_in_train_mode(loop):
    """model.eval() before fit: the loop still switches to train mode for training steps."""
    probe = Probe()
    run(loop, probe, EQUIV, model_in_eval_mode=True)
    assert probe.train_forwards and all(f["all_train"] for f in probe.train_forwards)


@pytest.mark.parametrize("loop", LOOPS)
def test_zero_grad_once_per_step_and_one_step_per_window(loop):
    """With accumulation 3: per window one zero_grad before its first backward, 3 backwards, one step."""
    probe = Probe()
    run(loop, probe, [*EQUIV, "--trainer.accumulate_grad_batches=3"])
    windows, current = [], []
    for event in probe.events:
        current.append(event)
        if event == "step":
            windows.append(current)
            current = []
    assert current == []  # nothing after the last step
    assert len(windows) == 3 * 3  # 7 batches -> windows of 3, 3 and 1 per epoch
    for window in windows:
        assert window.count("zero") == 1 and window.count("step") == 1
        assert window.index("zero") < window.index("backward")
    assert [w.count("backward") for w in windows] == [3, 3, 1] * 3


@pytest.mark.xdist_group("probed_run")
@pytest.mark.parametrize("loop", LOOPS)
def test_validation_changes_nothing_in_training(loop, probed_run):
    """Training with validation every epoch ends bit-identical (weights, BN buffers, optimizer) to training without."""
    _, with_val = probed_run(loop)
    without = run(loop, Probe(), [*EQUIV, "--trainer.check_val_every_n_epoch=100"])
    assert with_val.val and not without.val  # validation really ran in one and not the other
    assert with_val.final.keys() == without.final.keys()
    for name, value in with_val.final.items():
        assert torch.equal(value, without.final[name]), name


@pytest.mark.parametrize("loop", LOOPS)
def test_dropout_active_in_training_and_inert_in_evaluation(loop):
    """Dropout zeroes ~p of its inputs in training; after training, two evaluation passes in a row
    (the RNG moving on in between) give identical logits."""
    args = [*EQUIV, "--trainer.max_epochs=1", "--model.network.dropout=0.5"]
    probe = Probe()
    if loop == "lightning":
        cli = TwinloopCLI(args=args, run=False)
        cli.trainer.callbacks.append(_Attach(probe))
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
        evaluate_once = lambda: cli.trainer.validate(cli.model, datamodule=cli.datamodule, verbose=False)  # noqa: E731
    else:
        ref = load_run(args, Path("reference"))
        probe.attach(ref.model.net, ref.model.criterion)
        ref.trainer.fit(ref.model, ref.datamodule)
        net, dm = ref.model.net, ref.datamodule
        evaluate_once = lambda: loop_fns.evaluate(  # noqa: E731
            net,
            dm.val_dataloader(),
            ref.model.criterion,
            torch.device("cpu"),
            StageMetrics("val", 10),
            num_batches=VAL_BATCHES,
        )
    probe.remove()
    assert sum(probe.dropout_zero_fraction) / len(probe.dropout_zero_fraction) == pytest.approx(0.5, abs=0.1)
    probe.eval_logits.clear()
    evaluate_once()
    first = list(probe.eval_logits)
    probe.eval_logits.clear()
    evaluate_once()
    assert len(first) == len(probe.eval_logits) == VAL_BATCHES
    for a, b in zip(first, probe.eval_logits):
        assert torch.equal(a, b)
