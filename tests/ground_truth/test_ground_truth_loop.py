"""Ground truth for the reference loop's arithmetic: SGD updates, accumulation, clipping and
scheduling checked against gradients written out by hand for a linear model.

For logits z = x W^T + b and mean cross-entropy over a batch of B, dL/dz = (softmax(z) - onehot(y)) / B,
so dL/dW = (dL/dz)^T x and dL/db = sum over the batch of dL/dz. Every expected weight below comes from
that formula in numpy, never from autograd.
"""

import numpy as np
import pytest
import torch
from torch import nn

from project.metrics import build_stage_metrics
from project.reference import loop

LR = 0.5
CPU = torch.device("cpu")
rng = np.random.default_rng(0)
# Three batches of unequal size (4, 4, 2) of 2 features, 3 classes.
BATCHES = [
    (rng.normal(size=(4, 2)), np.array([0, 1, 2, 1])),
    (rng.normal(size=(4, 2)), np.array([2, 2, 0, 1])),
    (rng.normal(size=(2, 2)), np.array([1, 0])),
]
W0 = np.array([[0.5, -0.2], [0.1, 0.3], [-0.4, 0.2]])
B0 = np.array([0.05, -0.05, 0.0])


def linear() -> nn.Linear:
    model = nn.Linear(2, 3)
    with torch.no_grad():
        model.weight.copy_(torch.tensor(W0))
        model.bias.copy_(torch.tensor(B0))
    return model


def loader(batches=BATCHES) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(torch.tensor(x, dtype=torch.float32), torch.tensor(y)) for x, y in batches]


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def hand_gradient(w: np.ndarray, b: np.ndarray, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Gradient of the batch's mean cross-entropy with respect to W and b."""
    dz = (softmax(x @ w.T + b) - np.eye(3)[y]) / len(y)
    return dz.T @ x, dz.sum(axis=0)


def hand_loss(w: np.ndarray, b: np.ndarray, x: np.ndarray, y: np.ndarray) -> float:
    return float(-np.log(softmax(x @ w.T + b)[np.arange(len(y)), y]).mean())


def train(model: nn.Module, optimizer=None, num_batches: int = 3, **options) -> dict:
    optimizer = optimizer or torch.optim.SGD(model.parameters(), lr=LR)
    return loop.train_one_epoch(
        model,
        loader(),
        nn.CrossEntropyLoss(),
        optimizer,
        CPU,
        build_stage_metrics("train", 3),
        num_batches=num_batches,
        precision="32-true",
        scaler=loop.grad_scaler(CPU, "32-true"),
        **options,
    )


def assert_weights(model: nn.Linear, w: np.ndarray, b: np.ndarray) -> None:
    np.testing.assert_allclose(model.weight.detach().double().numpy(), w, atol=1e-6)
    np.testing.assert_allclose(model.bias.detach().double().numpy(), b, atol=1e-6)


def test_one_sgd_step_per_batch_on_the_batch_mean_loss():
    """Without accumulation each batch moves the weights by -lr times its own mean-loss gradient."""
    w, b = W0.copy(), B0.copy()
    for x, y in BATCHES:
        gw, gb = hand_gradient(w, b, x, y)
        w, b = w - LR * gw, b - LR * gb
    model = linear()
    train(model)
    assert_weights(model, w, b)


def test_accumulation_steps_once_per_window_with_the_windows_mean_gradient():
    """accumulate_grad_batches=2 over 3 batches: one step with (g0 + g1) / 2, then one with g2 / 2."""
    w, b = W0.copy(), B0.copy()
    (g0w, g0b), (g1w, g1b) = hand_gradient(w, b, *BATCHES[0]), hand_gradient(w, b, *BATCHES[1])
    w, b = w - LR * (g0w + g1w) / 2, b - LR * (g0b + g1b) / 2
    g2w, g2b = hand_gradient(w, b, *BATCHES[2])
    w, b = w - LR * g2w / 2, b - LR * g2b / 2  # the last, shorter window is still divided by 2
    model = linear()
    steps = []
    train(model, accumulate_grad_batches=2, on_step=steps.append)
    assert_weights(model, w, b)
    assert len(steps) == 2


@pytest.mark.parametrize("accumulate", [1, 2, 3])
def test_on_step_gets_each_windows_last_loss(accumulate):
    """on_step runs once per optimizer step, with the loss of the window's last batch."""
    losses, model = [], linear()
    w, b = W0.copy(), B0.copy()
    expected = []
    for i, (x, y) in enumerate(BATCHES):
        if (i + 1) % accumulate == 0 or i == 2:
            expected.append(hand_loss(w, b, x, y))
    train(
        model,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.0),
        accumulate_grad_batches=accumulate,
        on_step=losses.append,
    )
    assert [float(x) for x in losses] == pytest.approx(expected, abs=1e-6)


def test_only_the_first_num_batches_are_used():
    """num_batches=2 trains on the first two batches and ignores the rest of the loader."""
    w, b = W0.copy(), B0.copy()
    for x, y in BATCHES[:2]:
        gw, gb = hand_gradient(w, b, x, y)
        w, b = w - LR * gw, b - LR * gb
    model = linear()
    train(model, num_batches=2)
    assert_weights(model, w, b)


def test_training_metrics_are_each_batchs_loss_at_the_weights_it_saw():
    """train/loss_epoch and train/acc average what each batch scored before its own step (two batches of 4)."""
    w, b = W0.copy(), B0.copy()
    losses, correct = [], 0
    for x, y in BATCHES[:2]:
        losses.append(hand_loss(w, b, x, y))
        correct += int(((x @ w.T + b).argmax(axis=1) == y).sum())
        gw, gb = hand_gradient(w, b, x, y)
        w, b = w - LR * gw, b - LR * gb
    results = train(linear(), num_batches=2)
    assert results["train/loss_epoch"].item() == pytest.approx(np.mean(losses), abs=1e-6)
    assert results["train/acc"].item() == pytest.approx(correct / 8)


def test_clipping_by_norm_scales_the_whole_gradient_to_the_limit():
    """gradient_clip_val=0.01 by norm: the step is -lr * g * 0.01 / ||g|| over all parameters together."""
    gw, gb = hand_gradient(W0, B0, *BATCHES[0])
    scale = 0.01 / np.sqrt((gw**2).sum() + (gb**2).sum())
    assert scale < 1
    model = linear()
    train(model, num_batches=1, gradient_clip_val=0.01, gradient_clip_algorithm="norm")
    assert_weights(model, W0 - LR * gw * scale, B0 - LR * gb * scale)


def test_clipping_by_value_clamps_each_gradient_entry():
    """gradient_clip_val=0.05 by value: each gradient entry is clamped to [-0.05, 0.05]."""
    gw, gb = hand_gradient(W0, B0, *BATCHES[0])
    assert np.abs(gw).max() > 0.05
    model = linear()
    train(model, num_batches=1, gradient_clip_val=0.05, gradient_clip_algorithm="value")
    assert_weights(model, W0 - LR * np.clip(gw, -0.05, 0.05), B0 - LR * np.clip(gb, -0.05, 0.05))


@pytest.mark.parametrize("value", [None, 0.0])
def test_no_clip_value_leaves_the_gradient_alone(value):
    """gradient_clip_val None or 0 means no clipping."""
    model = linear()
    model.weight.grad, model.bias.grad = torch.full((3, 2), 5.0), torch.full((3,), -5.0)
    loop.clip_gradients(model, value, "norm")
    assert model.weight.grad.eq(5.0).all() and model.bias.grad.eq(-5.0).all()


@pytest.mark.parametrize(("interval", "lrs"), [("step", [LR, LR / 2, LR / 4]), ("epoch", [LR, LR, LR])])
def test_scheduler_steps_after_each_optimizer_step_only_when_per_step(interval, lrs):
    """A per-step scheduler halves the rate after every step within the epoch; a per-epoch one is left to fit."""
    model = linear()
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    seen = []

    def note_the_rate(x):  # runs once per batch, before its forward
        seen.append(optimizer.param_groups[0]["lr"])
        return x

    train(model, optimizer, scheduler=scheduler, scheduler_interval=interval, augment=note_the_rate)
    assert seen == pytest.approx(lrs)


def test_augmentation_is_applied_to_training_inputs():
    """The model trains on augment(x): with inputs zeroed, only the bias moves."""
    w, b = W0.copy(), B0.copy()
    for x, y in BATCHES:
        gw, gb = hand_gradient(w, b, np.zeros_like(x), y)
        w, b = w - LR * gw, b - LR * gb
    model = linear()
    train(model, augment=torch.zeros_like)
    assert_weights(model, w, b)
    np.testing.assert_allclose(w, W0)


class ModeProbe(nn.Module):
    """A linear model that notes, at each forward, whether it trains and whether grad is on."""

    def __init__(self):
        super().__init__()
        self.linear = linear()
        self.seen: list[tuple[bool, bool]] = []

    def forward(self, x):
        self.seen.append((self.training, torch.is_grad_enabled()))
        return self.linear(x)


def test_training_runs_in_train_mode_even_from_eval_mode():
    """train_one_epoch puts the model in train mode, with gradients on."""
    model = ModeProbe().eval()
    train(model)
    assert model.seen == [(True, True)] * 3


def evaluate(model: nn.Module, metrics=None, num_batches: int = 3) -> dict:
    metrics = metrics or build_stage_metrics("val", 3)
    return loop.evaluate(model, loader(), nn.CrossEntropyLoss(), CPU, metrics, num_batches=num_batches)


def test_evaluation_runs_in_eval_mode_without_gradients_and_changes_nothing():
    """evaluate puts the model in eval mode under no_grad and leaves the weights as they were."""
    model = ModeProbe().train()
    evaluate(model)
    assert model.seen == [(False, False)] * 3
    assert_weights(model.linear, W0, B0)


def test_evaluation_metrics_are_the_hand_computed_loss_and_accuracy():
    """evaluate returns the size-weighted mean loss and the accuracy over the first num_batches batches."""
    xs, ys = np.concatenate([x for x, _ in BATCHES[:2]]), np.concatenate([y for _, y in BATCHES[:2]])
    results = evaluate(linear(), num_batches=2)
    assert results["val/loss"].item() == pytest.approx(hand_loss(W0, B0, xs, ys), abs=1e-6)
    assert results["val/acc"].item() == pytest.approx(((xs @ W0.T + B0).argmax(axis=1) == ys).mean())


def test_evaluation_starts_from_fresh_metrics_and_keeps_misclassified_images():
    """evaluate resets the metrics first and hands them the images, so wrong predictions are kept."""
    metrics = build_stage_metrics("val", 3)
    metrics.update(torch.tensor([[9.0, 0, 0]]), torch.tensor([1]), torch.tensor(100.0), images=torch.ones(1, 2))
    evaluate(linear(), metrics, num_batches=2)
    xs, ys = np.concatenate([x for x, _ in BATCHES[:2]]), np.concatenate([y for _, y in BATCHES[:2]])
    wrong = int(((xs @ W0.T + B0).argmax(axis=1) != ys).sum())
    assert metrics.compute()["val/loss"].item() == pytest.approx(hand_loss(W0, B0, xs, ys), abs=1e-6)
    assert len(metrics.misclassified) == wrong > 0
    assert not any(torch.equal(img, torch.ones(2)) for img, _, _ in metrics.misclassified)


@pytest.mark.parametrize(
    ("every", "num_val_batches", "validated"),
    [(1, 3, [0, 1, 2, 3]), (2, 3, [1, 3]), (3, 3, [2]), (1, 0, [])],
)
def test_fit_validates_every_n_epochs_and_calls_back_before_the_epoch_scheduler_step(every, num_val_batches, validated):
    """fit validates after every n-th epoch (never without batches); on_epoch_end sees the epoch's own rate."""
    model = linear()
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    calls = []

    def on_epoch_end(epoch, train_results, val_results):
        calls.append(
            (epoch, val_results is not None, optimizer.param_groups[0]["lr"], "train/loss_epoch" in train_results)
        )

    loop.fit(
        model,
        loader(),
        loader(),
        nn.CrossEntropyLoss(),
        optimizer,
        CPU,
        build_stage_metrics("train", 3),
        build_stage_metrics("val", 3),
        max_epochs=4,
        num_train_batches=3,
        num_val_batches=num_val_batches,
        precision="32-true",
        scheduler=scheduler,
        scheduler_interval="epoch",
        check_val_every_n_epoch=every,
        on_epoch_end=on_epoch_end,
        scaler=loop.grad_scaler(CPU, "32-true"),
    )
    assert calls == [(e, e in validated, LR * 0.5**e, True) for e in range(4)]
    assert optimizer.param_groups[0]["lr"] == LR * 0.5**4


def test_fit_passes_training_options_through():
    """fit hands accumulation and on_step to each training epoch: 2 epochs of 3 batches in windows of 2 -> 4 steps."""
    steps = []
    model = linear()
    loop.fit(
        model,
        loader(),
        loader(),
        nn.CrossEntropyLoss(),
        torch.optim.SGD(model.parameters(), lr=LR),
        CPU,
        build_stage_metrics("train", 3),
        build_stage_metrics("val", 3),
        max_epochs=2,
        num_train_batches=3,
        num_val_batches=1,
        precision="32-true",
        scaler=loop.grad_scaler(CPU, "32-true"),
        accumulate_grad_batches=2,
        on_step=steps.append,
    )
    assert len(steps) == 4


@pytest.mark.parametrize(
    ("precision", "enabled", "dtype"),
    [("32-true", False, None), ("bf16-mixed", True, torch.bfloat16), ("16-mixed", True, torch.float16)],
)
def test_autocast_is_on_only_for_mixed_precision(precision, enabled, dtype):
    """32-true runs as it is; bf16-mixed and 16-mixed run forward and loss under autocast of their dtype."""
    with loop.autocast(CPU, precision):
        assert torch.is_autocast_enabled("cpu") is enabled
        out = linear()(torch.ones(1, 2))
    assert out.dtype == (dtype if enabled else torch.float32)
    if enabled:
        with loop.autocast(CPU, precision):
            assert torch.get_autocast_dtype("cpu") == dtype


@pytest.mark.parametrize(("precision", "enabled"), [("32-true", False), ("bf16-mixed", False), ("16-mixed", True)])
def test_loss_scaling_only_for_float16(precision, enabled):
    """Only 16-mixed scales the loss; bf16 and fp32 have the range to do without."""
    assert loop.grad_scaler(CPU, precision).is_enabled() is enabled


def test_batches_yields_the_first_limit_pairs():
    """batches() yields the loader's first ``limit`` (x, y) pairs on the device, unchanged."""
    got = list(loop.batches(loader(), CPU, 2))
    assert len(got) == 2
    for (x, y), (ex, ey) in zip(got, loader()):
        assert torch.equal(x, ex) and torch.equal(y, ey) and x.device == CPU


class Moved:
    """A batch part that notes where it is moved to, and becomes the real tensor there."""

    def __init__(self, tensor: torch.Tensor, moves: list):
        self.tensor, self.moves = tensor, moves

    def to(self, device, non_blocking=False):
        self.moves.append(device)
        return self.tensor


@pytest.mark.parametrize("stage", ["train", "evaluate"])
def test_every_batch_is_moved_to_the_device_it_is_given(stage):
    """Both images and labels of every batch go to the loop's device before the model sees them."""
    moves: list = []
    batches = [(Moved(x, moves), Moved(y, moves)) for x, y in loader()]
    device = torch.device("cpu", 0)  # a device object of its own, so the test knows it was passed on
    model = linear()
    if stage == "train":
        loop.train_one_epoch(
            model,
            batches,
            nn.CrossEntropyLoss(),
            torch.optim.SGD(model.parameters(), lr=LR),
            device,
            build_stage_metrics("train", 3),
            num_batches=3,
            precision="32-true",
            scaler=loop.grad_scaler(CPU, "32-true"),
        )
    else:
        loop.evaluate(model, batches, nn.CrossEntropyLoss(), device, build_stage_metrics("val", 3), num_batches=3)
    assert moves == [device] * 6


class MoveRecorder(nn.Module):
    """A linear model that notes where it is moved to."""

    def __init__(self):
        super().__init__()
        self.linear = linear()
        self.moved_to: list = []

    def forward(self, x):
        return self.linear(x)

    def to(self, *args, **kwargs):
        self.moved_to.append(args[0] if args else kwargs.get("device"))
        return super().to(*args, **kwargs)


def run_fit(model=None, **options) -> list[tuple]:
    """fit over 4 epochs of the three batches with SGD; (epoch, val results) per epoch."""
    model = model or linear()
    options.setdefault("optimizer", torch.optim.SGD(model.parameters(), lr=LR))
    calls = []
    loop.fit(
        model,
        loader(),
        loader(),
        nn.CrossEntropyLoss(),
        options.pop("optimizer"),
        options.pop("device", CPU),
        build_stage_metrics("train", 3),
        build_stage_metrics("val", 3),
        max_epochs=options.pop("max_epochs", 4),
        num_train_batches=3,
        num_val_batches=options.pop("num_val_batches", 3),
        precision=options.pop("precision", "32-true"),
        on_epoch_end=lambda epoch, train_results, val_results: calls.append((epoch, val_results)),
        scaler=loop.grad_scaler(CPU, "32-true"),
        **options,
    )
    return calls


def test_fit_moves_the_model_to_its_device():
    """fit puts the model on the device it is given before training."""
    model, device = MoveRecorder(), torch.device("cpu", 0)
    run_fit(model, device=device, max_epochs=1)
    assert model.moved_to == [device]


def test_fit_validates_every_epoch_by_default():
    """Without check_val_every_n_epoch, every epoch ends with a validation."""
    assert [val is not None for _, val in run_fit()] == [True] * 4


def test_fit_validates_on_as_few_as_one_batch():
    """num_val_batches=1 validates, on the first batch alone."""
    model = linear()
    calls = run_fit(model, optimizer=torch.optim.SGD(model.parameters(), lr=0.0), num_val_batches=1)
    x, y = BATCHES[0]
    assert all(val is not None for _, val in calls)
    assert calls[0][1]["val/loss"].item() == pytest.approx(hand_loss(W0, B0, x, y), abs=1e-6)


def test_fit_steps_a_per_step_scheduler_after_every_optimizer_step():
    """A per-step scheduler given to fit steps with each optimizer step: 4 epochs x 3 steps halve the rate 12 times."""
    model = linear()
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    run_fit(model, optimizer=optimizer, scheduler=scheduler, scheduler_interval="step")
    assert optimizer.param_groups[0]["lr"] == pytest.approx(LR * 0.5**12)


def test_fit_steps_a_scheduler_once_an_epoch_by_default():
    """A scheduler given to fit without an interval steps after each epoch: 4 epochs halve the rate 4 times."""
    model = linear()
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    run_fit(model, optimizer=optimizer, scheduler=scheduler)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(LR * 0.5**4)


def test_fit_validates_under_the_runs_precision():
    """With bf16-mixed, validation forwards run under bf16 autocast too, as training does."""
    model = ModeProbe()
    autocast: list[tuple[bool, bool]] = []
    model.register_forward_pre_hook(lambda m, a: autocast.append((m.training, torch.is_autocast_enabled("cpu"))))
    run_fit(model, max_epochs=1, precision="bf16-mixed")
    assert autocast == [(True, True)] * 3 + [(False, True)] * 3


def test_clipping_defaults_to_the_norm():
    """gradient_clip_val alone clips by the total norm."""
    gw, gb = hand_gradient(W0, B0, *BATCHES[0])
    scale = 0.01 / np.sqrt((gw**2).sum() + (gb**2).sum())
    model = linear()
    train(model, num_batches=1, gradient_clip_val=0.01)
    assert_weights(model, W0 - LR * gw * scale, B0 - LR * gb * scale)


def test_float16_loss_scaling_clips_the_true_gradients():
    """With 16-mixed the loss is scaled up, but the gradients are unscaled before clipping and stepping."""
    gw, gb = hand_gradient(W0, B0, *BATCHES[0])
    model = linear()
    loop.train_one_epoch(
        model,
        loader(),
        nn.CrossEntropyLoss(),
        torch.optim.SGD(model.parameters(), lr=LR),
        CPU,
        build_stage_metrics("train", 3),
        num_batches=1,
        precision="16-mixed",
        scaler=loop.grad_scaler(CPU, "16-mixed"),
        gradient_clip_val=0.05,
        gradient_clip_algorithm="value",
    )
    w, b = W0 - LR * np.clip(gw, -0.05, 0.05), B0 - LR * np.clip(gb, -0.05, 0.05)
    np.testing.assert_allclose(model.weight.detach().double().numpy(), w, atol=2e-3)
    np.testing.assert_allclose(model.bias.detach().double().numpy(), b, atol=2e-3)


def test_fit_resumed_at_an_epoch_trains_only_the_epochs_left():
    """fit(first_epoch=2, max_epochs=4) runs epochs 2 and 3, and calls them so."""
    assert [epoch for epoch, _ in run_fit(first_epoch=2)] == [2, 3]


@pytest.mark.parametrize(("first_epoch", "bad_batch"), [(0, 1), (2, 2)])
def test_a_non_finite_loss_stops_training_naming_its_epoch_and_batch(first_epoch, bad_batch):
    """A NaN in batch i of epoch e stops fit with "epoch e, batch i" before any step is taken with it."""
    from project.errors import NonFiniteLossError

    nan_batches = [(x.copy(), y) for x, y in BATCHES]
    nan_batches[bad_batch][0][0, 0] = np.nan
    model = linear()
    with pytest.raises(NonFiniteLossError, match=f"epoch {first_epoch}, batch {bad_batch}"):
        loop.fit(
            model,
            loader(nan_batches),
            loader(),
            nn.CrossEntropyLoss(),
            torch.optim.SGD(model.parameters(), lr=LR),
            CPU,
            build_stage_metrics("train", 3),
            build_stage_metrics("val", 3),
            max_epochs=first_epoch + 1,
            first_epoch=first_epoch,
            num_train_batches=3,
            num_val_batches=3,
            precision="32-true",
            scaler=loop.grad_scaler(CPU, "32-true"),
        )
    assert not model.weight.isnan().any()


def test_train_one_epoch_names_epoch_zero_by_default():
    """Called on its own, train_one_epoch reports a non-finite loss as epoch 0."""
    from project.errors import NonFiniteLossError

    with pytest.raises(NonFiniteLossError, match="epoch 0, batch 0"):
        train(linear(), augment=lambda x: x * np.nan)
