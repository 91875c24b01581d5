"""Ground truth for the batch augmentation both loops share (random crop with padding + flip).

Every output image is decoded back into the crop offset and flip that made it, by comparing it with
every crop and flip of the padded input computed by hand in numpy (or padded by torchvision). Properties over many draws
(half flipped, every offset reachable, seeded) are then counted on the decoded draws.
"""

from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torchvision.transforms.v2 import functional as tvF

from project.augment import RandomCropFlip
from project.cli import TwinloopCLI
from project.data import ImageDataModule
from project.data.transforms import normalize_batch
from project.errors import ConfigError
from project.reference.config import load_run
from tests.helpers import FAST

# Deterministic examples and no example database: the same cases on every run, nothing written.
PROPERTY = settings(max_examples=40, deadline=None, derandomize=True, database=None)


def distinct_images(b: int, c: int, h: int, w: int) -> torch.Tensor:
    """(B, C, H, W) of distinct positive values, so a crop of it shows which pixels it holds."""
    return torch.arange(1, b * c * h * w + 1, dtype=torch.float32).view(b, c, h, w)


def hand_crops(image: np.ndarray, padding: int, fill: float = 0.0) -> dict[tuple[int, int, bool], np.ndarray]:
    """Every (row offset, column offset, flipped) -> crop of the (C, H, W) ``image`` padded with ``fill``."""
    _, h, w = image.shape
    padded = np.pad(image, ((0, 0), (padding, padding), (padding, padding)), constant_values=fill)
    crops = {}
    for dy in range(2 * padding + 1):
        for dx in range(2 * padding + 1):
            crop = padded[:, dy : dy + h, dx : dx + w]
            crops[(dy, dx, False)] = crop
            crops[(dy, dx, True)] = crop[:, :, ::-1]
    return crops


def decode(x: torch.Tensor, out: torch.Tensor, padding: int, fill: float = 0.0) -> list[list[tuple[int, int, bool]]]:
    """For each image, the (row offset, column offset, flipped) draws whose hand-made crop equals ``out``."""
    found = []
    for image, result in zip(x.numpy(), out.numpy()):
        crops = hand_crops(image, padding, fill)
        found.append([draw for draw, crop in crops.items() if np.array_equal(crop, result)])
    return found


def draws(augment: RandomCropFlip, shape=(1, 4, 4), n: int = 2000) -> list[tuple[int, int, bool]]:
    """The one draw behind each of ``n`` augmented images (each must decode to exactly one)."""
    x = distinct_images(n, *shape)
    found = decode(x, augment(x), augment.padding)
    assert all(len(f) == 1 for f in found)
    return [f[0] for f in found]


@PROPERTY
@given(
    b=st.integers(1, 5),
    c=st.integers(1, 3),
    h=st.integers(2, 9),
    w=st.integers(2, 9),
    padding=st.integers(0, 4),
    seed=st.integers(0, 2**31 - 1),
)
def test_each_output_is_one_hand_made_crop_and_flip_of_the_zero_padded_input(b, c, h, w, padding, seed):
    """Each augmented image equals exactly one crop (offset 0..2p) and optional flip of its own padded image."""
    padding = min(padding, h - 1, w - 1)  # every crop keeps a real pixel, so the draw is unambiguous
    x = distinct_images(b, c, h, w)
    out = RandomCropFlip(padding, seed=seed)(x)
    assert out.shape == x.shape and out.dtype == x.dtype
    assert [len(f) for f in decode(x, out, padding)] == [1] * b


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_about_half_the_images_are_flipped(seed):
    """Over 2,000 draws the flipped share is 0.5 within 0.05 (4.5 standard deviations)."""
    flipped = [f for _, _, f in draws(RandomCropFlip(1, seed=seed))]
    assert abs(sum(flipped) / len(flipped) - 0.5) < 0.05


@pytest.mark.parametrize("padding", [1, 2, 3])
def test_every_crop_offset_is_reachable_and_about_equally_likely(padding):
    """All (2p+1)^2 offsets occur over 4,000 draws, each within half and one and a half times its share."""
    offsets = [(dy, dx) for dy, dx, _ in draws(RandomCropFlip(padding, seed=5), shape=(1, 7, 7), n=4000)]
    counts = {o: offsets.count(o) for o in set(offsets)}
    expected = len(offsets) / (2 * padding + 1) ** 2
    assert set(counts) == {(dy, dx) for dy in range(2 * padding + 1) for dx in range(2 * padding + 1)}
    assert all(0.5 * expected < n < 1.5 * expected for n in counts.values())


def test_flip_off_never_flips():
    """RandomCropFlip(flip=False) crops but never flips."""
    found = draws(RandomCropFlip(2, flip=False, seed=0), shape=(1, 5, 5), n=500)
    assert not any(f for _, _, f in found)
    assert len({(dy, dx) for dy, dx, _ in found}) == 25


def test_crop_and_flip_are_drawn_independently():
    """Flipped and unflipped images each see about half of every row offset."""
    found = draws(RandomCropFlip(1, seed=3), n=3000)
    for dy in range(3):
        flips = [f for d, _, f in found if d == dy]
        assert abs(sum(flips) / len(flips) - 0.5) < 0.06


@PROPERTY
@given(seed=st.integers(0, 2**31 - 1), padding=st.integers(1, 3))
def test_same_seed_same_draws(seed, padding):
    """Two augmenters with one seed give the same batches, call after call; another seed gives others."""
    x = torch.randn(64, 2, 8, 8)
    a, b, other = (
        RandomCropFlip(padding, seed=seed),
        RandomCropFlip(padding, seed=seed),
        RandomCropFlip(padding, seed=seed + 1),
    )
    first = a(x)
    assert torch.equal(first, b(x))
    assert torch.equal(a(x), b(x))
    assert not torch.equal(first, other(x))


def test_saved_state_resumes_the_same_draws():
    """load_state_dict of a saved state gives the draws that followed the save."""
    x = torch.randn(16, 1, 8, 8)
    a = RandomCropFlip(2, seed=9)
    a(x)
    state = a.state_dict()
    expected = a(x)
    b = RandomCropFlip(2, seed=123)
    b.load_state_dict(state)
    assert torch.equal(b(x), expected)


def test_augmentation_leaves_the_global_rng_alone():
    """Crop and flip draw from their own generator, never from torch's global one (Dropout's)."""
    x = distinct_images(8, 3, 16, 16)
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    RandomCropFlip(4, seed=1)(x)
    assert torch.equal(torch.rand(3), expected)


def test_the_crop_pads_with_black_as_torchvisions_random_crop_does_before_normalization():
    """Each augmented image of a normalized batch is one crop (and flip) of its raw image padded with
    black by torchvision (``RandomCrop(padding=1)``'s fill 0), then normalized: the same numbers,
    border included, and not the data set's mean grey that a fill of 0 after normalization gives."""
    dm = ImageDataModule(dataset="fake", augment=True, fake_image_shape=(3, 8, 8))
    raw = torch.randint(1, 256, (64, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    stats = dm.normalization()
    out = dm.augment_batch(normalize_batch(raw, stats))
    padded = normalize_batch(tvF.pad(raw, [1, 1, 1, 1], fill=0), stats)
    shifted = 0
    for image, result in zip(padded, out):
        crops = {(dy, dx): image[:, dy : dy + 8, dx : dx + 8] for dy in range(3) for dx in range(3)}
        found = [at for at, crop in crops.items() if torch.equal(crop, result) or torch.equal(crop.flip(-1), result)]
        assert len(found) == 1
        shifted += found[0] != (1, 1)
    assert shifted > 32  # 8 of 9 offsets show a border
    assert dm.black() == normalize_batch(torch.zeros(1, 3, 1, 1, dtype=torch.uint8), stats).flatten().tolist()
    assert all(value < -1.7 for value in dm.black())  # (0 - 0.5) / 0.2887: below every pixel's value


@pytest.mark.parametrize(("shape", "padding"), [((1, 8, 8), 1), ((3, 32, 32), 4), ((3, 16, 64), 2), ((1, 4, 4), 1)])
def test_data_module_pads_an_eighth_of_the_shorter_side(shape, padding):
    """The data module pads by min(H, W) // 8, at least 1: 4 px on 32 px images, 1 px on 8 px digits."""
    dm = ImageDataModule(dataset="fake", augment=True, fake_size=8, fake_image_shape=shape)
    assert dm.seeds.augmenter.padding == padding


def test_data_crop_padding_sets_the_padding_and_0_flips_only():
    """``data.crop_padding`` replaces the eighth of the side; at 0 every image is itself or its mirror."""
    assert ImageDataModule(dataset="fake", augment=True, crop_padding=2).seeds.augmenter.padding == 2
    dm = ImageDataModule(dataset="fake", augment=True, crop_padding=0, fake_image_shape=(1, 8, 8))
    x = distinct_images(200, 1, 8, 8)
    found = decode(x, dm.augment_batch(x), 0)
    assert all(len(f) == 1 and f[0][:2] == (0, 0) for f in found)
    assert 60 < sum(f[0][2] for f in found) < 140  # about half mirrored


@pytest.mark.parametrize(
    ("arguments", "named"),
    [
        ({"augment": True, "crop_padding": -1}, "data.crop_padding must be 0 or more"),
        ({"crop_padding": 2}, "data.augment"),
    ],
)
def test_a_bad_crop_padding_is_refused_by_name(arguments, named):
    with pytest.raises(ConfigError, match=named):
        ImageDataModule(dataset="fake", **arguments)


@pytest.mark.parametrize("training", [True, False])
def test_data_module_hook_augments_training_images_only_and_never_labels(training):
    """on_after_batch_transfer crops/flips training images, passes validation batches through, keeps labels."""
    from types import SimpleNamespace

    dm = ImageDataModule(dataset="fake", augment=True, fake_image_shape=(1, 8, 8))
    dm.trainer = SimpleNamespace(training=training)
    x, y = distinct_images(32, 1, 8, 8), torch.arange(32)
    out, labels = dm.on_after_batch_transfer((x, y), 0)
    assert torch.equal(labels, torch.arange(32))
    if training:
        (black,) = dm.black()  # (0 - 0.5) / 0.2887, fake data's normalized black
        assert [len(f) for f in decode(x, out, 1, black)] == [1] * 32 and not torch.equal(out, x)
    else:
        assert out is x


# ---- both loops, over a short real run ----

AUGMENTED_RUN = [
    *FAST,
    "--data.augment=true",
    "--data.batch_size=32",
    "--trainer.max_epochs=1",
    "--trainer.limit_train_batches=3",
    "--trainer.limit_val_batches=2",
    "--model.pictures.every_n_epochs=0",
]


class Seen:
    """What the network and the criterion get, through hooks: (training?, inputs) and (training?, targets)."""

    def __init__(self):
        self.inputs: list[tuple[bool, torch.Tensor]] = []
        self.targets: list[tuple[bool, torch.Tensor]] = []

    def attach(self, net: torch.nn.Module, criterion: torch.nn.Module) -> None:
        net.register_forward_pre_hook(lambda m, args: self.inputs.append((m.training, args[0].detach().clone())))
        criterion.register_forward_pre_hook(lambda m, args: self.targets.append((net.training, args[1].clone())))

    def stage(self, what: str, training: bool) -> list[torch.Tensor]:
        return [t for flag, t in getattr(self, what) if flag is training]


def raw_batches(stage: str, n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The first ``n`` batches a fresh data module of the run's config yields, before any augmentation."""
    dm = TwinloopCLI(args=AUGMENTED_RUN, run=False).datamodule
    dm.setup("fit")
    loader = dm.train_dataloader() if stage == "train" else dm.val_dataloader()
    return [batch for _, batch in zip(range(n), loader)]


@pytest.mark.fit
@pytest.mark.parametrize("loop", ["lightning", "reference"])
def test_both_loops_augment_training_images_and_nothing_else(loop):
    """In a real run, training inputs are crops/flips of the loader's images with their own labels;
    validation inputs and labels arrive exactly as the loader gives them."""
    seen = Seen()
    if loop == "lightning":
        from lightning.pytorch.callbacks import Callback

        class Attach(Callback):
            def on_fit_start(self, trainer, pl_module):
                seen.attach(pl_module.net, pl_module.criterion)

        cli = TwinloopCLI(args=AUGMENTED_RUN, run=False)
        cli.trainer.callbacks.append(Attach())
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    else:
        run = load_run(AUGMENTED_RUN, Path("reference"))
        seen.attach(run.model.net, run.model.criterion)
        run.trainer.fit(run.model, run.datamodule)

    train, val = raw_batches("train", 3), raw_batches("val", 2)
    (black,) = TwinloopCLI(args=AUGMENTED_RUN, run=False).datamodule.black()
    assert len(seen.stage("inputs", True)) == 3
    for (x, y), seen_x, seen_y in zip(train, seen.stage("inputs", True), seen.stage("targets", True)):
        assert torch.equal(seen_y, y)
        assert [len(f) for f in decode(x, seen_x, 1, black)] == [1] * len(x)
        assert not torch.equal(seen_x, x)
    eval_inputs, eval_targets = seen.stage("inputs", False), seen.stage("targets", False)
    assert len(eval_inputs) >= 2  # Lightning's sanity pass repeats the first validation batches
    for i, (seen_x, seen_y) in enumerate(zip(eval_inputs, eval_targets)):
        x, y = val[i % 2]
        assert torch.equal(seen_x, x) and torch.equal(seen_y, y)


def test_augmentation_stays_on_the_inputs_device():
    """Every tensor of the crop and flip lives on the batch's device (the meta device stands in for a GPU)."""
    out = RandomCropFlip(2, seed=0)(torch.empty(4, 3, 8, 8, device="meta"))
    assert out.device.type == "meta" and out.shape == (4, 3, 8, 8)
