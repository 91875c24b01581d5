"""Ground truth for the data both loops share: split sizes, disjointness and completeness,
normalisation statistics against numpy on the raw training split, and class names and their order.

The raw pixels come from where the data lives (scikit-learn's arrays, the image files read with PIL),
never from the project's own loaders.
"""

from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from torch.utils.data import TensorDataset

from project.data import ImageDataModule, imagefolder_stats, seeded_split
from project.data.transforms import normalize_batch

PROPERTY = settings(max_examples=60, deadline=None, derandomize=True, database=None)


def raw_digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits as float64 in [0, 1], (1797, 8, 8), and their labels, read directly."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    return digits.images / 16.0, digits.target


def write_png(path: Path, rgb: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb.astype(np.uint8), "RGB").save(path)


def read_rgb(path: Path | str) -> np.ndarray:
    """An RGB PNG file as float64 (H, W, 3) in [0, 1], read with PIL and numpy alone."""
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"), dtype=np.float64) / 255.0


def noisy_folder(root: Path, classes: dict[str, int], per_class: int = 6, size=(6, 5)) -> Path:
    """root/<class>/*.png of one size: random pixels around a different level per channel and class."""
    rng = np.random.default_rng(0)
    for name, level in classes.items():
        for i in range(per_class):
            base = np.array([level, 255 - level, 128])
            write_png(root / name / f"{i}.png", np.clip(base + rng.integers(-40, 41, (size[1], size[0], 3)), 0, 255))
    return root


# ---- splits ----


@pytest.mark.parametrize(
    ("n", "fraction", "n_val"),
    [(1797, 0.2, 359), (10, 0.2, 2), (10, 0.01, 1), (7, 0.3, 2), (250, 0.88, 220), (4, 0.3, 1)],
)
def test_split_sizes_are_the_rounded_fraction_and_at_least_one(n, fraction, n_val):
    """A split of n items holds out round(n * fraction) of them for validation, and never none."""
    train, val = seeded_split(TensorDataset(torch.arange(n)), fraction, seed=0)
    assert (len(train), len(val)) == (n - n_val, n_val)


@PROPERTY
@given(n=st.integers(2, 400), fraction=st.floats(0.01, 0.99), seed=st.integers(0, 2**31 - 1))
def test_split_is_disjoint_and_complete(n, fraction, seed):
    """Training and validation indices never share an item and together hold every item once."""
    train, val = seeded_split(TensorDataset(torch.arange(n)), fraction, seed)
    assert sorted(train.indices + val.indices) == list(range(n))
    assert len(val) >= 1 and abs(len(val) - n * fraction) <= 0.5 + (len(val) == 1)


def test_split_depends_on_the_seed_only():
    """The same seed gives the same split whatever the global RNG; another seed another split."""
    data = TensorDataset(torch.arange(100))
    torch.manual_seed(1)
    a = seeded_split(data, 0.3, seed=7)
    torch.manual_seed(2)
    b = seeded_split(data, 0.3, seed=7)
    c = seeded_split(data, 0.3, seed=8)
    assert a[1].indices == b[1].indices != c[1].indices


def test_split_is_shuffled_not_a_tail():
    """The held-out items are spread over the data set, not its last block."""
    _, val = seeded_split(TensorDataset(torch.arange(1000)), 0.2, seed=0)
    assert sorted(val.indices) != list(range(800, 1000))
    assert min(val.indices) < 200 and max(val.indices) >= 800


def test_digits_data_module_splits_1797_into_1438_and_359_disjoint_and_complete():
    """The digits data module trains on 1438 images and validates (and tests) on the other 359."""
    dm = ImageDataModule(dataset="digits", val_fraction=0.2, seed=42)
    dm.setup("fit")
    assert (len(dm.train_set), len(dm.val_set)) == (1438, 359)
    assert sorted(dm.train_set.indices + dm.val_set.indices) == list(range(1797))
    assert dm.test_set is dm.val_set


# ---- normalisation statistics and values ----


def test_digits_statistics_are_numpys_over_the_raw_training_split():
    """mean and std are numpy's over the training split's raw pixels (validation left out)."""
    images, _ = raw_digits()
    dm = ImageDataModule(dataset="digits", seed=3)
    dm.setup("fit")
    train = images[dm.train_set.indices]
    (mean,), (std,) = dm.normalization()
    assert mean == pytest.approx(train.mean(), rel=1e-5)
    assert std == pytest.approx(train.std(ddof=1), rel=1e-5)
    assert mean != pytest.approx(images.mean(), rel=1e-5)  # the full set's would leak validation


def test_digits_images_and_labels_are_the_raw_ones_normalized():
    """Each training item is sklearn's image at that index, (x - mean) / std, with sklearn's label."""
    images, labels = raw_digits()
    dm = ImageDataModule(dataset="digits")
    dm.setup("fit")
    (mean,), (std,) = dm.normalization()
    for i in (0, 1, 500, len(dm.train_set) - 1):
        x, y = dm.train_set[i]
        index = dm.train_set.indices[i]
        np.testing.assert_allclose(x.numpy()[0], (images[index] - mean) / std, atol=1e-5)
        assert int(y) == labels[index]


def test_digits_class_names_are_the_digits_in_order():
    """Digits name their classes "0" to "9", label k being the digit k."""
    dm = ImageDataModule(dataset="digits")
    assert dm.class_names == [str(k) for k in range(10)]
    assert (dm.num_classes, dm.in_channels, dm.input_hw) == (10, 1, (8, 8))


def test_imagefolder_statistics_are_numpys_over_the_training_split_files(tmp_path):
    """Per-channel mean and std equal numpy's over the pixels of the training split's files alone."""
    root = noisy_folder(tmp_path / "images", {"a": 40, "b": 120, "c": 200})
    dm = ImageDataModule(dataset="imagefolder", root=str(root), val_fraction=0.25, seed=7)
    dm.setup("fit")
    files = [dm.train_set.dataset.samples[i][0] for i in dm.train_set.indices]
    pixels = np.stack([read_rgb(f) for f in files]).reshape(-1, 3)
    mean, std = dm.normalization()
    np.testing.assert_allclose(mean, pixels.mean(axis=0), rtol=1e-5)
    np.testing.assert_allclose(std, pixels.std(axis=0, ddof=1), rtol=1e-5)
    every = np.stack([read_rgb(f) for f in sorted(root.rglob("*.png"))]).reshape(-1, 3)
    assert not np.allclose(mean, every.mean(axis=0), rtol=1e-5)


def test_imagefolder_statistics_beside_a_val_folder_are_the_whole_train_folder(tmp_path):
    """With root/train and root/val, the statistics are numpy's over every file in root/train."""
    noisy_folder(tmp_path / "train", {"a": 60, "b": 160})
    noisy_folder(tmp_path / "val", {"a": 250, "b": 10}, per_class=2)
    mean, std = ImageDataModule(dataset="imagefolder", root=str(tmp_path)).normalization()
    pixels = np.stack([read_rgb(f) for f in sorted((tmp_path / "train").rglob("*.png"))]).reshape(-1, 3)
    np.testing.assert_allclose(mean, pixels.mean(axis=0), rtol=1e-5)
    np.testing.assert_allclose(std, pixels.std(axis=0, ddof=1), rtol=1e-5)


def test_imagefolder_images_are_the_files_normalized(tmp_path):
    """A training item is its file's pixels, (x - mean) / std per channel, as (C, H, W)."""
    root = noisy_folder(tmp_path / "images", {"a": 40, "b": 120})
    dm = ImageDataModule(dataset="imagefolder", root=str(root), val_fraction=0.25)
    dm.setup("fit")
    mean, std = (np.array(s) for s in dm.normalization())
    for i in (0, len(dm.train_set) - 1):
        x, _ = dm.train_set[i]
        path = dm.train_set.dataset.samples[dm.train_set.indices[i]][0]
        expected = ((read_rgb(path) - mean) / std).transpose(2, 0, 1)
        np.testing.assert_allclose(x.numpy(), expected, atol=1e-5)


def test_imagefolder_statistics_of_flat_images_keep_a_usable_std(tmp_path):
    """One flat colour everywhere: std is clamped to 1e-3 rather than 0, so normalising never divides by 0."""
    for name in ("a", "b"):
        for i in range(3):
            write_png(tmp_path / name / f"{i}.png", np.full((4, 4, 3), 77))
    mean, std = ImageDataModule(dataset="imagefolder", root=str(tmp_path)).normalization()
    assert mean == pytest.approx((77 / 255,) * 3) and std == pytest.approx((1e-3,) * 3)


def test_imagefolder_stats_of_a_few_files_use_them_all(tmp_path):
    """Under max_images files, every file counts (numpy over all of them)."""
    root = noisy_folder(tmp_path / "images", {"a": 30, "b": 220}, per_class=3)
    files = sorted(root.rglob("*.png"))
    from project.data import image_transform

    mean, std = imagefolder_stats(files, image_transform(None), max_images=256)
    pixels = np.stack([read_rgb(f) for f in files]).reshape(-1, 3)
    np.testing.assert_allclose(mean, pixels.mean(axis=0), rtol=1e-5)
    np.testing.assert_allclose(std, pixels.std(axis=0, ddof=1), rtol=1e-5)


def test_imagefolder_stats_reads_at_most_max_images_files(tmp_path):
    """imagefolder_stats reads no more than max_images files, as its docstring says."""
    files = []
    for i in range(300):
        files.append(tmp_path / f"{i}.png")
        write_png(files[-1], np.full((1, 1, 3), i % 256))
    read = []

    def counting(image):
        read.append(1)
        return torch.from_numpy(np.asarray(image, dtype=np.float32)).permute(2, 0, 1) / 255

    imagefolder_stats(files, counting, max_images=256)
    assert len(read) <= 256


def test_fake_data_statistics_describe_its_pixels():
    """FakeData's declared (0.5, 0.2887) match the mean and std of its raw pixels to within 0.01."""
    dm = ImageDataModule(dataset="fake", fake_size=64, fake_image_shape=(3, 16, 16))
    dm.setup("fit")
    mean, std = (np.array(s) for s in dm.normalization())
    x = np.stack([dm.train_set.dataset[i][0].numpy() for i in range(64)])  # normalized (N, C, H, W)
    raw = x * std[None, :, None, None] + mean[None, :, None, None]
    assert raw.min() >= -1e-6 and raw.max() <= 1 + 1e-6
    np.testing.assert_allclose(raw.mean(axis=(0, 2, 3)), mean, atol=0.01)
    np.testing.assert_allclose(raw.std(axis=(0, 2, 3)), std, atol=0.01)


# ---- class names and order ----

# Creation order, sorted order and case-insensitive order all differ: the classes are the sorted names.
FOLDERS = ["zebra", "Apple", "mango", "10", "9"]
SORTED = ["10", "9", "Apple", "mango", "zebra"]


def flat_folder(root: Path, names: list[str], per_class: int = 3) -> Path:
    """root/<name>/*.png, each image one flat grey level that names its folder: 10 + 40 * (index in ``names``)."""
    for k, name in enumerate(names):
        for i in range(per_class):
            write_png(root / name / f"{i}.png", np.full((4, 4, 3), 10 + 40 * k))
    return root


def folder_of(x: torch.Tensor, dm: ImageDataModule, names: list[str]) -> str:
    """The folder an item came from, read from its pixels (denormalised) rather than from its path."""
    mean, std = (torch.tensor(s).view(-1, 1, 1) for s in dm.normalization())
    level = round(float((x * std + mean).mean() * 255))
    return names[(level - 10) // 40]


def test_imagefolder_classes_are_the_sorted_folder_names(tmp_path):
    """Class names are the folder names in sorted (code point) order, whatever the order they were made in."""
    dm = ImageDataModule(dataset="imagefolder", root=str(flat_folder(tmp_path, FOLDERS)))
    assert dm.class_names == SORTED
    assert dm.num_classes == 5


def test_imagefolder_label_k_is_the_kth_sorted_folder(tmp_path):
    """Every image's label is the index of its own folder among the sorted names (checked by its pixels)."""
    dm = ImageDataModule(dataset="imagefolder", root=str(flat_folder(tmp_path, FOLDERS)), val_fraction=0.2)
    dm.setup("fit")
    for dataset in (dm.train_set, dm.val_set):
        for x, y in dataset:
            assert dm.class_names[int(y)] == folder_of(x, dm, FOLDERS)


def test_imagefolder_val_folder_labels_follow_the_train_folder_names(tmp_path):
    """With root/train and root/val, label k means the same folder name in both."""
    flat_folder(tmp_path / "train", FOLDERS)
    flat_folder(tmp_path / "val", FOLDERS, per_class=1)
    dm = ImageDataModule(dataset="imagefolder", root=str(tmp_path))
    dm.setup("fit")
    assert len(dm.val_set) == 5
    for x, y in dm.val_set:
        assert dm.class_names[int(y)] == folder_of(x, dm, FOLDERS)


def test_a_folder_without_images_is_never_a_class(tmp_path):
    """A sub-folder holding no image is named as a problem, or with on_bad_file=skip left out of the classes."""
    from project.errors import UserPathError

    flat_folder(tmp_path, ["b", "a"])
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("not an image")
    with pytest.raises(UserPathError, match="notes"):
        ImageDataModule(dataset="imagefolder", root=str(tmp_path)).prepare_data()
    assert ImageDataModule(dataset="imagefolder", root=str(tmp_path), on_bad_file="skip").class_names == ["a", "b"]


def test_batch_normalisation_is_numpys():
    """normalize_batch of a uint8 batch is (x / 255 - mean) / std per channel, as numpy computes it."""
    x = np.random.default_rng(1).integers(0, 256, (2, 3, 4, 5), dtype=np.uint8)
    mean, std = (0.1, 0.5, 0.9), (0.2, 0.3, 0.4)
    out = normalize_batch(torch.from_numpy(x), (mean, std))
    expected = (x / 255 - np.array(mean)[:, None, None]) / np.array(std)[:, None, None]
    assert out.dtype == torch.float32
    np.testing.assert_allclose(out.numpy(), expected, atol=1e-5)


def test_fake_data_is_fixed_by_its_seed():
    """FakeData gives the same images for one seed and other images for another."""

    def first_image(seed):
        dm = ImageDataModule(dataset="fake", fake_size=4, fake_image_shape=(1, 4, 4), seed=seed)
        return dm.source.full_train()[0][0]

    assert torch.equal(first_image(1), first_image(1)) and not torch.equal(first_image(1), first_image(2))


@pytest.mark.parametrize("dataset", ["digits", "fake", "imagefolder"])
def test_raw_images_become_exactly_the_normalized_ones(dataset, tmp_path):
    """A source's raw (uint8, as stored) images, made into model input, equal its normalized images."""
    for split in ("train", "val", "test"):
        noisy_folder(tmp_path / split, {"a": 40, "b": 120}, per_class=2)
    dm = ImageDataModule(dataset=dataset, root=str(tmp_path), fake_size=4, fake_image_shape=(3, 4, 4))
    pairs = [(dm.source.full_train(raw=True), dm.source.full_train())]
    if dataset == "imagefolder":
        pairs += [
            (dm.source.own_val(raw=True), dm.source.own_val()),
            (dm.source.own_test(raw=True), dm.source.own_test()),
        ]
    for raw, normalized in pairs:
        x, y = raw[1]
        assert x.dtype == torch.uint8 and normalized[1][0].dtype == torch.float32
        torch.testing.assert_close(dm.source.to_model_input(x[None])[0], normalized[1][0], atol=1e-6, rtol=0)
        assert int(y) == int(normalized[1][1])


def test_hidden_folders_and_files_are_never_classes_or_samples(tmp_path):
    """A hidden folder holding images is no class, and a hidden image file in a class folder no sample."""
    flat_folder(tmp_path, ["b", "a"])
    write_png(tmp_path / ".ipynb_checkpoints" / "0.png", np.full((4, 4, 3), 10))
    write_png(tmp_path / "a" / "._0.png", np.full((4, 4, 3), 10))
    dm = ImageDataModule(dataset="imagefolder", root=str(tmp_path), val_fraction=0.2)
    assert dm.class_names == ["a", "b"]
    dm.prepare_data()
    dm.setup("fit")
    assert len(dm.train_set) + len(dm.val_set) == 6


def test_every_listed_image_extension_is_loaded(tmp_path):
    """Files of each extension the project lists (GIF, BMP, TIFF, WebP as well as PNG and JPEG) are samples."""
    from project.data import IMAGE_EXTENSIONS

    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        for k, ext in enumerate(IMAGE_EXTENSIONS):
            Image.fromarray(np.full((4, 4, 3), 100, np.uint8)).save(tmp_path / name / f"{k}{ext}")
    dm = ImageDataModule(dataset="imagefolder", root=str(tmp_path))
    dm.prepare_data()
    assert len(dm.source.full_train()) == 2 * len(IMAGE_EXTENSIONS)


def test_imagefolder_without_root_says_which_option_to_set():
    """imagefolder without --data.root stops with an error naming the option and the layout."""
    from project.errors import ConfigError

    expected = r"^data\.dataset=imagefolder needs --data\.root DIR \(with DIR/<class>/\* or DIR/train/<class>/\*\)$"
    with pytest.raises(ConfigError, match=expected):
        ImageDataModule(dataset="imagefolder").prepare_data()


def test_large_folder_statistics_are_close_to_numpys_over_every_file(tmp_path):
    """Over 600 training files the statistics (from an evenly spaced subset) are within 0.01 of numpy's over all."""
    rng = np.random.default_rng(2)
    files = []
    for i in range(600):
        files.append(tmp_path / f"{i:03d}.png")
        write_png(files[-1], rng.integers(0, 256, (2, 2, 3)) // (1 + i % 3))
    from project.data import image_transform

    mean, std = imagefolder_stats(files, image_transform(None))
    pixels = np.stack([read_rgb(f) for f in files]).reshape(-1, 3)
    np.testing.assert_allclose(mean, pixels.mean(axis=0), atol=0.01)
    np.testing.assert_allclose(std, pixels.std(axis=0, ddof=1), atol=0.01)


def test_resizing_averages_rather_than_samples(tmp_path):
    """image_size downscales with antialiasing: 1 px black and white stripes become an even grey."""
    stripes = np.zeros((32, 32, 3), np.uint8)
    stripes[:, ::2] = 255
    for name in ("a", "b"):
        for i in range(2):
            write_png(tmp_path / name / f"{i}.png", stripes)
    dm = ImageDataModule(dataset="imagefolder", root=str(tmp_path), image_size=8)
    x, _ = dm.source.full_train(raw=True)[0]
    assert x.shape == (3, 8, 8) and (x[:, :, 1:-1].int() - 128).abs().max() <= 2  # the edges see half a stripe


def test_sources_built_by_hand_default_to_the_data_modules_defaults(tmp_path):
    """DigitsData(), FakeData() and ImageFolderData(root) split, size and check files as ImageDataModule() does."""
    from project.data import DigitsData, FakeData, ImageFolderData

    dm = ImageDataModule()
    checks = {
        DigitsData(): {"val_fraction": dm.val_fraction, "seed": dm.seed},
        FakeData(): {"size": dm.fake_size, "num_classes": dm.fake_num_classes, "seed": dm.seed},
        ImageFolderData(tmp_path): {"val_fraction": dm.val_fraction, "seed": dm.seed, "on_bad_file": dm.on_bad_file},
    }
    for source, expected in checks.items():
        assert {name: getattr(source, name) for name in expected} == expected, type(source).__name__
    assert FakeData().image_shape == dm.fake_image_shape


def broken_folder(root: Path) -> Path:
    """Two classes of good images, and one file in class b that is not an image at all."""
    flat_folder(root, ["a", "b"])
    (root / "b" / "broken.png").write_bytes(b"not a png")
    return root


def test_a_broken_file_is_named_before_anything_is_read(tmp_path):
    """By default a broken image stops the run at once, naming the file and the folder it was found in."""
    from project.errors import UserPathError

    root = broken_folder(tmp_path / "images")
    with pytest.raises(UserPathError, match=r"data\.root: 1 problem in .*images(.|\n)*broken\.png"):
        ImageDataModule(dataset="imagefolder", root=str(root)).prepare_data()


def test_image_folder_read_directly_names_a_broken_file(tmp_path):
    """image_folder(folder) on its own checks the files too, and names the broken one under that folder."""
    from project.data import image_folder
    from project.errors import UserPathError

    root = broken_folder(tmp_path / "images")
    with pytest.raises(UserPathError, match=r"1 problem in .*images(.|\n)*broken\.png"):
        image_folder(root)
    (root / "b" / "broken.png").unlink()
    assert len(image_folder(root)) == 6


def test_skipping_broken_files_leaves_them_out_and_says_so(tmp_path, caplog):
    """on_bad_file=skip trains on the good files only and logs how many it left out, where, with an example."""
    root = broken_folder(tmp_path / "images")
    dm = ImageDataModule(dataset="imagefolder", root=str(root), on_bad_file="skip")
    with caplog.at_level("WARNING"):
        dm.prepare_data()
        dm.setup("fit")
    assert len(dm.train_set) + len(dm.val_set) == 6
    assert dm.class_names == ["a", "b"]
    assert (
        f"left out 1 bad image file(s) and 0 class folder(s) without usable images under {root}, e.g. " in caplog.text
    )
    assert "broken.png" in caplog.text


def test_resizing_matches_pils_antialiased_resize(tmp_path):
    """Downscaling 32 -> 4 px gives what PIL's bilinear (antialiased) resize gives, not point samples."""
    stripes = np.zeros((32, 32, 3), np.uint8)
    stripes[:, [x for x in range(32) if x % 8 in (3, 4)]] = 255  # where point sampling would land
    for name in ("a", "b"):
        for i in range(2):
            write_png(tmp_path / name / f"{i}.png", stripes)
    dm = ImageDataModule(dataset="imagefolder", root=str(tmp_path), image_size=4)
    x, _ = dm.source.full_train(raw=True)[0]
    expected = np.asarray(Image.fromarray(stripes).resize((4, 4), Image.BILINEAR)).transpose(2, 0, 1)
    assert np.abs(x.numpy().astype(int) - expected).max() <= 3 and expected.max() < 200
