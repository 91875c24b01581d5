"""Ground truth for the recipe parts both loops share, each against an answer computed another way:
the weight-decay groups, the warm-up's rates, the EMA, the per-image policy, MixUp and CutMix, the
cross-entropy of mixed targets and the accuracy counted under mixing."""

import math

import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.cli import instantiate_class

from project.augment import AugmentSpec, ImagePolicy, Mixer, seeded
from project.ema import WeightEMA
from project.factory import build_criterion, build_optimization
from project.finetuning import optimizer_parameters
from project.metrics import StageMetrics
from project.models import SimpleCNN
from project.specs import EMASpec, NetworkSpec, WarmupSpec

STATS = ((0.5,), (0.25,))


def names(net, group) -> set[str]:
    ids = {id(p) for p in group["params"]}
    return {n for n, p in net.named_parameters() if id(p) in ids}


def test_norm_and_bias_groups_by_name():
    """simple_cnn's parameters, sorted by hand: conv and linear weights decay; BatchNorm weights and
    biases get norm_weight_decay; the linear biases bias_weight_decay."""
    net = SimpleCNN(10, 1)
    groups = optimizer_parameters(net, 0, 1.0, norm_weight_decay=0.0, bias_weight_decay=0.001)
    assert [g["name"] for g in groups] == ["all", "all/norm", "all/bias"]
    assert names(net, groups[0]) == {
        "features.0.0.weight",
        "features.1.0.weight",
        "classifier.2.weight",
        "classifier.5.weight",
    }
    assert names(net, groups[1]) == {f"features.{i}.1.{k}" for i in (0, 1) for k in ("weight", "bias")}
    assert names(net, groups[2]) == {"classifier.2.bias", "classifier.5.bias"}
    assert [g.get("weight_decay") for g in groups] == [None, 0.0, 0.001]
    optimizer = torch.optim.SGD(groups, lr=0.1, weight_decay=0.05)
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.05, 0.0, 0.001]


def test_a_norm_without_decay_does_not_move_under_zero_gradients():
    """SGD with weight decay and zero gradients: p <- p - lr wd p, by hand; the norm group stays put."""
    net = SimpleCNN(10, 1)
    optimizer = torch.optim.SGD(optimizer_parameters(net, 0, 1.0, norm_weight_decay=0.0), lr=0.1, weight_decay=0.5)
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    for p in net.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    for n, p in net.named_parameters():
        batch_norm = n.startswith("features") and n.split(".")[2] == "1"  # features.<block>.1: the BatchNorm
        expected = before[n] if batch_norm else before[n] * (1 - 0.1 * 0.5)
        assert torch.allclose(p, expected), n


def test_fine_tuning_groups_split_by_decay_too():
    net = SimpleCNN(10, 1)
    groups = optimizer_parameters(net, 1, 0.1, norm_weight_decay=0.0)
    assert [g["name"] for g in groups] == ["head", "backbone", "backbone/norm"]
    assert names(net, groups[0]) == {"classifier.5.weight", "classifier.5.bias"}
    assert groups[1]["lr_scale"] == groups[2]["lr_scale"] == 0.1
    assert sum(len(g["params"]) for g in groups) == len(list(net.parameters()))


def rates(scheduler, optimizer, steps: int) -> list[float]:
    out = []
    for _ in range(steps):
        out.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return out


@pytest.mark.parametrize("method", ["linear", "constant"])
def test_warmup_then_cosine_closed_form(method):
    """3 warm-up steps from 0.1 x the rate, then CosineAnnealingLR(T_max=5) from its own step 0."""
    lr, start, n, t_max = 0.2, 0.1, 3, 5

    def cosine(optimizer):
        return instantiate_class(
            optimizer, {"class_path": "torch.optim.lr_scheduler.CosineAnnealingLR", "init_args": {"T_max": t_max}}
        )

    optimizer, scheduler = build_optimization(
        [torch.nn.Parameter(torch.zeros(1))],
        lambda p: torch.optim.SGD(p, lr=lr),
        cosine,
        8,
        WarmupSpec(steps=n, method=method, start_factor=start),
        4,
        "step",
    )
    warm = [lr * (start + (1 - start) * k / n) if method == "linear" else lr * start for k in range(n)]
    after = [lr * (1 + math.cos(math.pi * k / t_max)) / 2 for k in range(5)]
    assert rates(scheduler, optimizer, 8) == pytest.approx(warm + after)


def test_warmup_in_epochs_counts_steps_when_the_scheduler_steps_per_step():
    optimizer, scheduler = build_optimization(
        [torch.nn.Parameter(torch.zeros(1))],
        lambda p: torch.optim.SGD(p, lr=1.0),
        None,
        12,
        WarmupSpec(epochs=2, start_factor=0.5),
        3,
        "step",
    )
    assert rates(scheduler, optimizer, 8) == pytest.approx(
        [0.5, 0.5 + 0.5 / 6 * 1, 0.5 + 0.5 / 6 * 2, 0.75, 0.5 + 0.5 / 6 * 4, 0.5 + 0.5 / 6 * 5, 1.0, 1.0]
    )


def test_warmup_in_steps_with_an_epoch_scheduler_is_refused():
    with pytest.raises(ValueError, match="model.warmup.steps"):
        build_optimization(
            [torch.nn.Parameter(torch.zeros(1))],
            lambda p: torch.optim.SGD(p, lr=1.0),
            None,
            12,
            WarmupSpec(steps=2),
            3,
            "epoch",
        )


def test_ema_against_the_recurrence_by_hand():
    """Updates after steps 2, 4, 6 (start 2, every 2): the first copies, then a <- d a + (1 - d) w."""
    net = torch.nn.Linear(2, 1)
    ema = WeightEMA(net, EMASpec(decay=0.75, every_n_steps=2, start_step=2))
    average = None
    for step in range(7):
        with torch.no_grad():
            net.weight.add_(step + 1.0)
        ema.update(net)
        if step >= 2 and step % 2 == 0:
            w = net.weight.detach().clone()
            average = w if average is None else 0.75 * average + 0.25 * w
    assert torch.allclose(ema.module.weight, average)
    assert ema.latest_update_step == 7 and int(ema.averaged.n_averaged) == 3


def test_policy_draws_per_image_from_its_own_generator():
    """A batch of one image repeated: each copy gets its own operations (a v2 transform on the batch
    would give all the same); the global RNG is left as it was; the same generator state draws the same."""
    x = torch.rand(1, 1, 16, 16).repeat(16, 1, 1, 1)
    policy = ImagePolicy(AugmentSpec(policy="trivial_augment_wide", random_erasing=0.5), seed=1)
    state, rng = policy.state_dict(), torch.get_rng_state()
    out = policy(x, STATS)
    assert torch.equal(torch.get_rng_state(), rng)
    assert len({tuple(image.flatten().tolist()) for image in out}) > 8
    policy.load_state_dict(state)
    assert torch.equal(policy(x, STATS), out)


def test_erasing_erases_a_rectangle_to_the_mean_on_some_images():
    x = torch.full((32, 1, 16, 16), 2.0)  # normalized: 2 standard deviations above the mean
    out = ImagePolicy(AugmentSpec(random_erasing=0.5), seed=0)(x, STATS)
    erased = [(image == 0).any().item() for image in out]
    assert 4 < sum(erased) < 28  # about half
    for image in out:
        zeros = (image[0] == 0).nonzero()
        if len(zeros):  # one filled rectangle
            (r0, c0), (r1, c1) = zeros.min(0).values.tolist(), zeros.max(0).values.tolist()
            assert (image[0, r0 : r1 + 1, c0 : c1 + 1] == 0).all()
            assert (image[0] == 0).sum() == (r1 - r0 + 1) * (c1 - c0 + 1)


def test_a_crop_of_the_whole_image_changes_nothing_but_rounding():
    x = (torch.rand(4, 1, 12, 12) - 0.5) / 0.25
    spec = AugmentSpec(resized_crop_scale=(1.0, 1.0), resized_crop_ratio=(1.0, 1.0))
    assert torch.allclose(ImagePolicy(spec, seed=0)(x, STATS), x, atol=1e-5)


def test_mixup_is_the_convex_combination_with_the_rolled_batch():
    """MixUp: x' = l x + (1 - l) roll(x), y' = l onehot(y) + (1 - l) onehot(roll(y)), l read from y'."""
    x, y = torch.rand(6, 1, 8, 8), torch.tensor([0, 1, 2, 3, 4, 5])
    mixed_x, mixed_y = Mixer(AugmentSpec(mixup_alpha=0.4), seed=3)(x, y, 10)
    lam = float(mixed_y[0, 0])
    onehot = F.one_hot(y, 10).float()
    assert torch.allclose(mixed_y, lam * onehot + (1 - lam) * onehot.roll(1, 0))
    assert torch.allclose(mixed_x, lam * x + (1 - lam) * x.roll(1, 0), atol=1e-6)


def test_cutmix_pastes_one_box_whose_area_is_the_label_share():
    x, y = torch.arange(4.0)[:, None, None, None].expand(4, 1, 16, 16).clone(), torch.tensor([0, 1, 2, 3])
    mixed_x, mixed_y = Mixer(AugmentSpec(cutmix_alpha=1.0), seed=5)(x, y, 4)
    for i in range(4):
        pasted = (mixed_x[i] == x[(i - 1) % 4]).float().mean()  # from the rolled batch
        assert torch.allclose(mixed_y[i, y[(i - 1) % 4]], pasted)
        assert torch.allclose(mixed_y[i, y[i]], 1 - pasted)


def test_the_mixer_leaves_the_global_rng_and_is_reproducible():
    x, y = torch.rand(8, 1, 8, 8), torch.arange(8) % 3
    mixer = Mixer(AugmentSpec(mixup_alpha=0.2, cutmix_alpha=1.0), seed=7)
    state, rng = mixer.state_dict(), torch.get_rng_state()
    first = mixer(x, y, 3)
    assert torch.equal(torch.get_rng_state(), rng)
    mixer.load_state_dict(state)
    second = mixer(x, y, 3)
    assert all(torch.equal(a, b) for a, b in zip(first, second))


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_cross_entropy_of_mixed_targets_by_hand(smoothing):
    """-sum_c q_c log softmax(z)_c with q = (1 - e) p + e / C, for probability targets p."""
    logits, p = torch.randn(5, 4), torch.softmax(torch.randn(5, 4), 1)
    q = (1 - smoothing) * p + smoothing / 4
    expected = -(q * torch.log_softmax(logits, 1)).sum(1).mean()
    assert torch.allclose(build_criterion(smoothing)(logits, p), expected)


def test_training_accuracy_under_mixing_counts_the_largest_share():
    metrics = StageMetrics("train", 3)
    logits = torch.tensor([[3.0, 0, 0], [0, 3.0, 0], [0, 0, 3.0]])
    mixed = torch.tensor([[0.7, 0.3, 0], [0.6, 0.4, 0], [0, 0.2, 0.8]])  # largest shares: 0, 0, 2
    metrics.update(logits, mixed, torch.tensor(1.0))
    assert float(metrics.compute()["train/acc"]) == pytest.approx(2 / 3)


def test_seeded_draws_come_from_the_generator():
    g = torch.Generator().manual_seed(0)
    with seeded(g):
        a = torch.rand(3)
    g.manual_seed(0)
    with seeded(g):
        b = torch.rand(3)
    assert torch.equal(a, b)


def test_network_spec_passes_the_decay_options_on():
    spec = NetworkSpec(norm_weight_decay=0.0)
    net = spec.build(10, 1)
    assert [g["name"] for g in spec.optimizer_parameters(net)] == ["all", "all/norm"]


def test_validation_swaps_the_average_in_and_back():
    net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    ema = WeightEMA(net, EMASpec(decay=0.5))
    ema.update(net)
    with torch.no_grad():
        net[0].weight.add_(1.0)
        net[1].running_mean.add_(2.0)
    ema.update(net)  # average = (copy + new) / 2
    trained = {k: v.clone() for k, v in net.state_dict().items()}
    average = {k: v.clone() for k, v in ema.module.state_dict().items()}
    with ema.swapped(net):
        assert all(torch.equal(v, average[k]) for k, v in net.state_dict().items())
        assert torch.allclose(net[0].weight, trained["0.weight"] - 0.5)
    assert all(torch.equal(v, trained[k]) for k, v in net.state_dict().items())
    assert all(torch.equal(v, average[k]) for k, v in ema.module.state_dict().items())
