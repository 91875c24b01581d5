"""Bad numbers stop a run at once: a non-finite loss, in training or validation, and running out of memory."""

from pathlib import Path

import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_post_hook

from project.cli import main
from project.metrics import StageMetrics
from project.models.simple_cnn import SimpleCNN
from project.reference.cli import main as reference_main
from tests.helpers import FAST

RUN = [*FAST, "--trainer.max_epochs=3", "--trainer.limit_train_batches=5", "--trainer.limit_val_batches=2"]


def run(loop: str, args: list[str]) -> int:
    """One fit with either loop's command line; its exit status."""
    if loop == "lightning":
        command, args = main, ["fit", *args, "--trainer.default_root_dir=out"]
    else:
        command, args = reference_main, ["fit", *args, "--log_dir=out/ref"]
    with pytest.raises(SystemExit) as info:
        command(args)
    return info.value.code


def poison(monkeypatch, when) -> None:
    """Make the network's output NaN on the training (or evaluation) forwards that ``when(count)`` picks."""
    real, calls = SimpleCNN.forward, {"train": 0, "eval": 0}

    def forward(self, x):
        out = real(self, x)
        mode = "train" if self.training else "eval"
        calls[mode] += 1
        return out * float("nan") if when(mode, calls[mode]) else out

    monkeypatch.setattr(SimpleCNN, "forward", forward)


def last_checkpoint() -> dict:
    (path,) = [p for p in Path("out").rglob("last.ckpt")]
    return torch.load(path, weights_only=True)


@pytest.mark.filterwarnings("error:Converting a tensor with requires_grad=True")  # the message reads a detached loss
@pytest.mark.parametrize("loop", ["lightning", "reference"])
def test_a_nan_loss_stops_training_at_that_batch_and_keeps_the_last_finite_checkpoint(loop, monkeypatch, capsys):
    """The 4th training batch of epoch 1 turns NaN: exit 1 naming epoch 1, batch 3; last.ckpt is epoch 0, finite."""
    poison(monkeypatch, lambda mode, n: mode == "train" and n == 5 + 4)
    assert run(loop, RUN) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: the loss is nan at epoch 1, batch 3") and "Traceback" not in err
    checkpoint = last_checkpoint()
    assert checkpoint["epoch"] == 0
    assert all(torch.isfinite(v).all() for v in checkpoint["state_dict"].values() if v.is_floating_point())


@pytest.mark.parametrize("loop", ["lightning", "reference"])
def test_the_nan_check_waits_for_backward_to_be_queued_and_comes_before_the_optimizer_step(loop, monkeypatch):
    """The check of a step's loss is one host sync: it comes after that step's backward is queued (so a
    GPU keeps working while the host waits) and before its optimizer step, which never runs."""
    poison(monkeypatch, lambda mode, n: mode == "train" and n == 5 + 4)
    backwards, real_backward = [], torch.Tensor.backward

    def backward(self, *args, **kwargs):
        backwards.append(self.isfinite().item())
        return real_backward(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "backward", backward)
    steps = []
    handle = register_optimizer_step_post_hook(lambda *_: steps.append(1))
    try:
        assert run(loop, RUN) == 1
    finally:
        handle.remove()
    assert backwards == [True] * 8 + [False]  # the NaN batch's backward ran ...
    assert len(steps) == 8  # ... and its step did not


@pytest.mark.parametrize("loop", ["lightning", "reference"])
def test_a_nan_validation_loss_stops_before_its_checkpoint(loop, monkeypatch, capsys):
    """Validation of epoch 1 turns NaN: exit 1 naming it, and no checkpoint of epoch 1 is written."""
    sanity = 2 if loop == "lightning" else 0  # Lightning's sanity pass runs 2 validation batches first
    poison(monkeypatch, lambda mode, n: mode == "eval" and n == sanity + 2 + 1)
    assert run(loop, RUN) == 1
    assert "the loss is nan at the validation of epoch 1" in capsys.readouterr().err
    assert last_checkpoint()["epoch"] == 0


def test_epoch_means_never_hide_a_nan():
    """A NaN loss in one batch makes the epoch's mean loss NaN (torchmetrics would drop it by default)."""
    metrics = StageMetrics("train", 10)
    logits, target = torch.zeros(4, 10), torch.zeros(4, dtype=torch.long)
    metrics.update(logits, target, torch.tensor(1.0))
    metrics.update(logits, target, torch.tensor(float("nan")))
    assert torch.isnan(metrics.compute()["train/loss_epoch"])


@pytest.mark.parametrize("loop", ["lightning", "reference"])
def test_out_of_memory_names_the_batch_size_and_what_to_change(loop, monkeypatch, capsys):
    """A device out-of-memory error: exit 1 and one line with the batch size and a hint."""

    def out_of_memory(self, x):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(SimpleCNN, "forward", out_of_memory)
    assert run(loop, [*RUN, "--data.batch_size=48"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: the device ran out of memory with data.batch_size=48")
    assert "--trainer.accumulate_grad_batches" in err and "Traceback" not in err
