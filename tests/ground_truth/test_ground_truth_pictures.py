"""Ground truth for the pictures both loops log: the confusion matrix's embedded counts against the
metric for an asymmetric case, the drawing's orientation read from its pixels, and ``denormalize``.

The drawing is read back without the layout constants of ``project/monitoring.py``: the grid is
found from its grey cell outlines, each cell's shade is the most common colour inside it, and the
labels are told apart by how much ink they take (names of different lengths).
"""

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.utils.tensorboard import SummaryWriter

from project.metrics import build_stage_metrics
from project.monitoring import PictureLog, confusion_matrix_png, denormalize, input_grid, log_png, misclassified_png

# 11 validation images of 3 classes: true 1 is predicted 0 three times, true 0 never predicted 1.
TRUE = [0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2]
PRED = [0, 0, 0, 0, 0, 0, 0, 0, 1, 2, 2]
CONFUSION = [[5, 0, 0], [3, 1, 0], [0, 0, 2]]  # counted by hand: rows true, columns predicted
# Names of different lengths, so their labels take different amounts of ink; none is in sorted order.
NAMES = ["a", "aaaaaaaaaa", "aaaa"]
OUTLINE = (204, 204, 204)  # the cells' light grey outline, as the web palette stores it


def asymmetric_metrics():
    metrics = build_stage_metrics("val", 3)
    logits = torch.full((len(PRED), 3), -1.0)
    logits[torch.arange(len(PRED)), torch.tensor(PRED)] = 1.0
    metrics.update(logits, torch.tensor(TRUE), torch.tensor(0.5))
    return metrics


def rgb(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)


def runs(indices: np.ndarray) -> list[int]:
    """The first index of each run of consecutive indices."""
    return [int(i) for k, i in enumerate(indices) if k == 0 or i != indices[k - 1] + 1]


def grid_lines(image: np.ndarray) -> tuple[list[int], list[int]]:
    """y of each horizontal and x of each vertical grid line: the rows and columns mostly outline grey."""
    grey = (image == OUTLINE).all(axis=-1)
    ys = runs(np.flatnonzero(grey.sum(axis=1) >= grey.sum(axis=1).max() / 2))
    xs = runs(np.flatnonzero(grey.sum(axis=0) >= grey.sum(axis=0).max() / 2))
    return ys, xs


def cell_fills(image: np.ndarray) -> np.ndarray:
    """(rows, cols) red value of the most common colour inside each cell, top to bottom, left to right."""
    ys, xs = grid_lines(image)
    fills = np.zeros((len(ys) - 1, len(xs) - 1), dtype=int)
    for i in range(len(ys) - 1):
        for j in range(len(xs) - 1):
            inside = image[ys[i] + 2 : ys[i + 1] - 1, xs[j] + 2 : xs[j + 1] - 1].reshape(-1, 3)
            colours, counts = np.unique(inside, axis=0, return_counts=True)
            fills[i, j] = colours[counts.argmax()][0]
    return fills


def ink(region: np.ndarray) -> int:
    """Pixels of grey or black text in ``region`` (the fills are blue, the background white)."""
    r, g, b = region[..., 0], region[..., 1], region[..., 2]
    return int(((r == g) & (g == b) & (r < 200)).sum())


def rank(values) -> list[int]:
    return list(np.argsort(np.argsort(values)))


def test_embedded_counts_are_the_metrics_confusion_matrix():
    """The PNG's confusion_matrix text chunk is the metric's matrix, which is the hand count."""
    cm = asymmetric_metrics().confusion_matrix()
    text = Image.open(io.BytesIO(confusion_matrix_png(cm, NAMES))).text
    assert json.loads(text["confusion_matrix"]) == cm.tolist() == CONFUSION
    assert json.loads(text["class_names"]) == NAMES


def test_drawn_grid_has_one_cell_per_class_pair():
    """The drawing has n x n cells: n + 1 grid lines each way."""
    ys, xs = grid_lines(rgb(confusion_matrix_png(torch.tensor(CONFUSION), NAMES)))
    assert (len(ys), len(xs)) == (4, 4)


def test_drawn_cells_put_true_classes_on_rows_and_shade_by_count():
    """Cell (row i, column j) is shaded by the count of true i predicted j: empty cells white, more is darker."""
    fills = cell_fills(rgb(confusion_matrix_png(torch.tensor(CONFUSION), NAMES)))
    counts = np.array(CONFUSION)
    assert ((fills == 255) == (counts == 0)).all()  # the transposed drawing would shade (0, 1), not (1, 0)
    for a in zip(*np.nonzero(counts)):
        for b in zip(*np.nonzero(counts)):
            if counts[a] > counts[b]:
                assert fills[a] <= fills[b]
    assert fills[0, 0] < fills[counts != 5].min()  # the largest count is the darkest cell


def test_row_labels_name_the_true_classes_top_to_bottom():
    """Left of row i is class i's name: the rows' label ink ranks like the names' lengths."""
    image = rgb(confusion_matrix_png(torch.tensor(CONFUSION), NAMES))
    ys, xs = grid_lines(image)
    left = [ink(image[ys[i] + 1 : ys[i + 1], : xs[0] - 1]) for i in range(3)]
    assert rank(left) == rank([len(n) for n in NAMES])


def test_column_labels_name_the_predicted_classes_left_to_right():
    """Above column j is class j's name: the columns' label ink ranks like the names' lengths."""
    image = rgb(confusion_matrix_png(torch.tensor(CONFUSION), NAMES))
    ys, xs = grid_lines(image)
    above = [ink(image[: ys[0] - 1, xs[j] + 1 : xs[j + 1]]) for j in range(3)]
    assert rank(above) == rank([len(n) for n in NAMES])


def test_counts_are_written_in_every_cell_of_a_small_matrix():
    """Each cell of a small matrix carries its count as text, zeros included: pixels other than its fill."""
    image = rgb(confusion_matrix_png(torch.tensor(CONFUSION), NAMES))
    ys, xs = grid_lines(image)
    fills = cell_fills(image)
    for i in range(3):
        for j in range(3):
            cell = image[ys[i] + 2 : ys[i + 1] - 1, xs[j] + 2 : xs[j + 1] - 1]
            assert (cell[..., 0] != fills[i, j]).sum() > 10, (i, j)


def test_logged_confusion_matrix_keeps_the_counts(tmp_path):
    """The val/confusion_matrix image in the event file still carries the metric's counts."""
    writer = SummaryWriter(str(tmp_path))
    PictureLog(1, (0.5,), (0.25,)).log_validation(writer, asymmetric_metrics(), NAMES, epoch=0, step=7)
    writer.close()
    events = EventAccumulator(str(tmp_path), size_guidance={"images": 0})
    events.Reload()
    (image,) = events.Images("val/confusion_matrix")
    assert image.step == 7
    text = Image.open(io.BytesIO(image.encoded_image_string)).text
    assert json.loads(text["confusion_matrix"]) == CONFUSION


@pytest.mark.parametrize("channels", [1, 3])
def test_denormalize_inverts_normalisation(channels):
    """denormalize((x - mean) / std) gives back x in [0, 1], as 3 channels (grey repeated)."""
    torch.manual_seed(0)
    x = torch.rand(4, channels, 5, 6)
    mean, std = [0.2, 0.5, 0.7][:channels], [0.3, 0.25, 0.1][:channels]
    normalized = (x - torch.tensor(mean).view(1, -1, 1, 1)) / torch.tensor(std).view(1, -1, 1, 1)
    out = denormalize(normalized, mean, std)
    assert out.shape == (4, 3, 5, 6)
    torch.testing.assert_close(out, x.expand(-1, 3, -1, -1), atol=1e-6, rtol=0)


def test_denormalize_clamps_to_the_displayable_range():
    """Values beyond [0, 1] after denormalising are clamped, so the picture stays a valid image."""
    out = denormalize(torch.tensor([-10.0, 0.0, 10.0]).view(1, 1, 1, 3), [0.5], [0.25])
    assert out[0, 0, 0].tolist() == [0.0, 0.5, 1.0]


def test_logged_png_keeps_its_own_size(tmp_path):
    """log_png records the PNG's real width and height (read from its header) in the image summary."""
    png = confusion_matrix_png(torch.tensor([[1, 2], [3, 4]]), ["left", "right"])
    width, height = Image.open(io.BytesIO(png)).size
    writer = SummaryWriter(str(tmp_path))
    log_png(writer, "some/picture", png, step=3)
    writer.close()
    events = EventAccumulator(str(tmp_path), size_guidance={"images": 0})
    events.Reload()
    (image,) = events.Images("some/picture")
    assert (image.width, image.height, image.step) == (width, height, 3)
    assert image.encoded_image_string == png


# ---- misclassified images: tiles placed in order, each the denormalised image, captioned true -> predicted ----

MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.1)


def solid(colour: tuple[int, int, int], size: int = 6) -> torch.Tensor:
    """A normalised (3, size, size) image that denormalises to one flat ``colour``."""
    rgb = torch.tensor(colour, dtype=torch.float32).view(3, 1, 1).expand(3, size, size) / 255
    return (rgb - torch.tensor(MEAN).view(3, 1, 1)) / torch.tensor(STD).view(3, 1, 1)


COLOURS = [(20 + 20 * k, 200 - 15 * k, 90) for k in range(10)]  # distinct, and no grey, white or red


def boxes(image: np.ndarray, colours) -> list[tuple[int, int, int, int]]:
    """(top, left, height, width) of the pixels of each colour, and check they fill that box."""
    found = []
    for colour in colours:
        ys, xs = np.nonzero((image == colour).all(axis=-1))
        top, left, h, w = ys.min(), xs.min(), ys.max() - ys.min() + 1, xs.max() - xs.min() + 1
        assert len(ys) == h * w, colour  # one solid block
        found.append((int(top), int(left), int(h), int(w)))
    return found


def test_misclassified_tiles_are_the_images_in_reading_order():
    """Ten images, four per row: each appears once, denormalised, enlarged to a 48 px tile, row by row."""
    samples = [(solid(c), 0, 1) for c in COLOURS]
    image = rgb(misclassified_png(samples, ["a", "b"], MEAN, STD, per_row=4))
    found = boxes(image, COLOURS)
    assert {(h, w) for _, _, h, w in found} == {(48, 48)}
    rows = sorted({top for top, _, _, _ in found})
    cols = sorted({left for _, left, _, _ in found})
    assert len(rows) == 3 and len(cols) == 4
    assert [(rows.index(top), cols.index(left)) for top, left, _, _ in found] == [divmod(k, 4) for k in range(10)]


def test_misclassified_grid_is_only_as_wide_as_its_images():
    """Three images with eight per row make one row of three tiles, not eight."""
    few = rgb(misclassified_png([(solid(c), 0, 1) for c in COLOURS[:3]], ["a", "b"], MEAN, STD))
    many = rgb(misclassified_png([(solid(c), 0, 1) for c in COLOURS[:8]], ["a", "b"], MEAN, STD))
    assert few.shape[0] == many.shape[0] and 2.5 < many.shape[1] / few.shape[1] < 2.8


def test_grey_images_are_shown_grey():
    """A one-channel image is drawn with its grey level in all three colours."""
    grey = (torch.full((1, 4, 4), 0.6) - 0.5) / 0.25  # denormalises to 0.6, i.e. 153
    image = rgb(misclassified_png([(grey, 0, 1)], ["a", "b"], (0.5,), (0.25,)))
    assert boxes(image, [(153, 153, 153)])[0][2:] == (48, 48)


def red(image: np.ndarray) -> np.ndarray:
    return (image[..., 0] > 200) & (image[..., 1] < 80) & (image[..., 2] < 80)


def caption_band(image: np.ndarray, tile: tuple[int, int, int, int], pitch: int) -> np.ndarray:
    """The strip under ``tile``, as wide as its column (``pitch``: the distance between columns)."""
    top, left, h, w = tile
    margin = (pitch - w) // 2
    return image[top + h : top + h + 18, max(left - margin, 0) : left + w + margin]


def caption_ink(band: np.ndarray) -> tuple[int, int, int]:
    """Ink left of the red arrow, red pixels, and ink right of it, in a caption band."""
    xs = np.nonzero(red(band).any(axis=0))[0]
    return ink(band[:, : xs.min()]), int(red(band).sum()), ink(band[:, xs.max() + 1 :])


LONG, SHORT = "aaaaaaaaaa", "a"


@pytest.mark.parametrize(("true", "pred"), [(0, 1), (1, 0)])
def test_caption_reads_true_arrow_predicted_under_every_image(true, pred):
    """Under each image of a row: the true class's name, a red arrow, then the predicted class's name."""
    names = [SHORT, LONG]  # their ink tells which side each name is on
    samples = [(solid(c), true, pred) for c in COLOURS[:3]]
    image = rgb(misclassified_png(samples, names, MEAN, STD))
    tiles = boxes(image, COLOURS[:3])
    pitch = tiles[1][1] - tiles[0][1]
    for tile in tiles:
        before, arrow, after = caption_ink(caption_band(image, tile, pitch))
        assert arrow > 10 and before > 0 and after > 0
        assert (before < after) is (len(names[true]) < len(names[pred]))


def test_caption_arrow_points_from_true_to_predicted():
    """The arrow is a shaft ending in a head on the right: its tallest columns are right of its thinnest."""
    image = rgb(misclassified_png([(solid(COLOURS[0]), 0, 1)], ["a", "b"], MEAN, STD))
    top, left, h, w = boxes(image, [COLOURS[0]])[0]
    heights = red(image[top + h :]).sum(axis=0)
    columns = np.nonzero(heights)[0]
    assert columns.max() - columns.min() >= 10  # a shaft and a head, not a dot
    assert heights[columns.min()] == 1  # the shaft starts thin on the left
    assert np.argmax(heights) > columns.min() + 5 and heights.max() >= 5  # the head is wide and on the right


def test_captions_are_dark_text_on_white():
    """Caption names are ink on the white background, not filled boxes."""
    image = rgb(misclassified_png([(solid(COLOURS[0]), 1, 0)], [SHORT, LONG], MEAN, STD))
    tile = boxes(image, [COLOURS[0]])[0]
    band = caption_band(image, tile, image.shape[1])
    assert 0 < ink(band) < 0.4 * band[..., 0].size


def ink_fills_its_box(region: np.ndarray) -> float:
    """How much of the bounding box of ``region``'s ink is ink: letters leave most of it white, a
    filled box none of it."""
    r, g, b = region[..., 0], region[..., 1], region[..., 2]
    ys, xs = np.nonzero((r == g) & (g == b) & (r < 200))
    box = region[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
    return ink(box) / (box.shape[0] * box.shape[1])


def test_caption_names_are_strokes_not_boxes():
    """A caption name is drawn as letters: its ink covers well under its bounding box."""
    image = rgb(misclassified_png([(solid(COLOURS[0]), 0, 0)], ["wwww"], MEAN, STD))
    band = caption_band(image, boxes(image, [COLOURS[0]])[0], image.shape[1])
    left_of_arrow = band[:, : int(np.nonzero((band == (255, 0, 0)).all(axis=-1))[1].min())]
    assert 0 < ink_fills_its_box(left_of_arrow) < 0.6


def test_none_is_written_in_letters_not_a_box():
    """With nothing misclassified, "none" is letters on white: its ink covers well under its bounding box."""
    assert 0 < ink_fills_its_box(rgb(misclassified_png([], ["a", "b"], MEAN, STD))) < 0.6


def test_long_captions_stay_inside_the_picture_and_images_sit_centred():
    """Long class names widen the columns: captions are not cut off, and each image is centred in its column."""
    names = ["automobile", "airplane"]  # CIFAR-10's widest caption
    image = rgb(misclassified_png([(solid(c), 0, 1) for c in COLOURS[:2]], names, MEAN, STD))
    assert ink(image[:, -2:]) == 0  # nothing runs off the right edge
    (_, first, _, w), (_, second, _, _) = boxes(image, COLOURS[:2])
    pitch = second - first
    assert pitch > 2 * w  # the columns are as wide as the captions, not the images
    assert abs(first - (pitch - first - w)) <= 5  # about as much room left as right of the first image


def test_misclassified_grid_is_as_small_as_its_images_allow():
    """One image makes a picture of one tile: not two rows, not two columns."""
    image = rgb(misclassified_png([(solid(COLOURS[0]), 0, 1)], ["a", "b"], MEAN, STD))
    assert image.shape[0] < 2 * 48 and image.shape[1] < 2 * 48


def test_misclassified_default_is_eight_per_row():
    """Without per_row, a row holds eight images."""
    image = rgb(misclassified_png([(solid(c), 0, 1) for c in COLOURS], ["a", "b"], MEAN, STD))
    tops = [top for top, _, _, _ in boxes(image, COLOURS)]
    assert tops == [tops[0]] * 8 + [tops[8]] * 2 and tops[8] > tops[0]


@pytest.mark.parametrize("picture", ["misclassified", "confusion"])
def test_pictures_are_drawn_on_white(picture):
    """The background of both pictures is white."""
    if picture == "misclassified":
        png = misclassified_png([(solid(COLOURS[0]), 0, 1)], ["a", "b"], MEAN, STD)
    else:
        png = confusion_matrix_png(torch.tensor(CONFUSION), NAMES)
    image = rgb(png)
    assert (image[0, -1] == 255).all() and (image[-1, 0] == 255).all() and (image[-1, -1] == 255).all()


def test_no_misclassified_images_draws_none():
    """With nothing misclassified the picture still exists and says so with a little text."""
    image = rgb(misclassified_png([], ["a", "b"], MEAN, STD))
    assert ink(image) > 0 and image.shape[0] >= 48


# ---- the training-input grid ----


def test_input_grid_lays_out_denormalised_inputs_enlarged_to_about_48_px():
    """10 digits of 8 px: 8 per row, 1 px white borders, each pixel drawn 6 x 6 (48 px tiles)."""
    torch.manual_seed(0)
    x = torch.rand(10, 1, 8, 8)
    grid = input_grid((x - 0.5) / 0.25, (0.5,), (0.25,))
    assert grid.shape == (3, (2 * 9 + 1) * 6, (8 * 9 + 1) * 6)
    for k in (0, 9):
        row, col = divmod(k, 8)
        top, left = (1 + 9 * row) * 6, (1 + 9 * col) * 6
        tile = grid[:, top : top + 48, left : left + 48]
        expected = x[k].repeat_interleave(6, 1).repeat_interleave(6, 2).expand(3, -1, -1)
        torch.testing.assert_close(tile, expected, atol=1e-6, rtol=0)
    assert grid[:, :6, :].eq(1.0).all()  # the top border is white


def test_input_grid_shows_at_most_32_images_and_keeps_large_images_as_they_are():
    """Only the first 32 inputs are shown; 64 px images are not enlarged."""
    grid = input_grid(torch.zeros(40, 3, 64, 64), (0.5,) * 3, (0.5,) * 3)
    assert grid.shape == (3, 4 * 65 + 1, 8 * 65 + 1)


def test_misclassified_images_are_enlarged_pixel_for_pixel():
    """A 4 x 4 checkerboard is drawn as 12 px squares of its two exact colours (nearest neighbour, no blur)."""
    board = torch.tensor([[(i + j) % 2 for j in range(4)] for i in range(4)], dtype=torch.float32)
    colours = torch.where(board.bool(), 200.0, 40.0).expand(3, 4, 4) / 255
    normalized = (colours - torch.tensor(MEAN).view(3, 1, 1)) / torch.tensor(STD).view(3, 1, 1)
    image = rgb(misclassified_png([(normalized, 0, 1)], ["a", "b"], MEAN, STD))
    (top, left, _, _), *_ = boxes_of_any(image, (40, 40, 40))
    tile = image[top : top + 48, left : left + 48, 0]
    expected = np.kron(np.where(board.numpy() > 0, 200, 40), np.ones((12, 12), dtype=int))
    assert (tile == expected).all()


def boxes_of_any(image: np.ndarray, colour) -> list[tuple[int, int, int, int]]:
    """(top, left) of the first pixel of ``colour``, as a box without size."""
    ys, xs = np.nonzero((image == colour).all(axis=-1))
    return [(int(ys.min()), int(xs[ys == ys.min()].min()), 0, 0)]


# ---- confusion matrix: legible at every size ----


def test_the_largest_count_is_the_darkest_whatever_the_scale():
    """Even when every count is 1, the cells holding 1 are drawn in the darkest shade."""
    fills = cell_fills(rgb(confusion_matrix_png(torch.eye(3, dtype=torch.long), NAMES)))
    dark = cell_fills(rgb(confusion_matrix_png(torch.tensor(CONFUSION), NAMES)))[0, 0]
    assert (np.diag(fills) == dark).all() and (fills[~np.eye(3, dtype=bool)] == 255).all()


@pytest.mark.parametrize(("n", "pitch"), [(3, 30), (25, 25), (40, 22)])
def test_cells_shrink_with_many_classes_but_stay_legible(n, pitch):
    """Cells are 640 / n px wide, but never wider than 30 px nor narrower than 22 px."""
    cm = torch.arange(n * n).view(n, n) % 7
    ys, xs = grid_lines(rgb(confusion_matrix_png(cm, [f"c{k}" for k in range(n)])))
    assert len(xs) == n + 1 and {b - a for a, b in zip(xs, xs[1:])} == {pitch}
    assert {b - a for a, b in zip(ys, ys[1:])} == {pitch}


def test_zero_counts_are_left_blank_above_twenty_classes():
    """With more than 20 classes only non-zero counts are written, so the numbers stand out."""
    cm = torch.zeros(21, 21, dtype=torch.long)
    cm[3, 4] = 7
    image = rgb(confusion_matrix_png(cm, [f"c{k}" for k in range(21)]))
    ys, xs = grid_lines(image)
    fills = cell_fills(image)

    def written(i, j):
        cell = image[ys[i] + 2 : ys[i + 1] - 1, xs[j] + 2 : xs[j + 1] - 1]
        return (cell[..., 0] != fills[i, j]).sum() > 10

    assert written(3, 4) and not written(0, 0) and not written(4, 3)


def test_long_class_names_are_not_cut_off():
    """Row labels end left of the grid and column labels above it, with nothing touching the picture's edges."""
    names = ["x" * 16, "yy", "z" * 12]
    image = rgb(confusion_matrix_png(torch.tensor(CONFUSION), names))
    ys, xs = grid_lines(image)
    assert ink(image[:, :2]) == 0 and ink(image[:2, xs[0] :]) == 0
    assert ink(image[ys[0] :, xs[0] - 3 : xs[0]]) == 0  # a gap between the row labels and the grid
    assert ink(image[ys[0] - 2 : ys[0], xs[0] :]) == 0  # and between the column labels and the grid


def test_cells_are_flat_colours_without_dithering():
    """Each cell is one flat shade around its number (no dithered speckle), whatever the count."""
    cm = torch.tensor([[9, 1, 2], [3, 4, 5], [6, 7, 8]])
    image = rgb(confusion_matrix_png(cm, NAMES))
    ys, xs = grid_lines(image)
    fills = cell_fills(image)
    for i in range(3):
        for j in range(3):
            cell = image[ys[i] + 2 : ys[i + 1] - 1, xs[j] + 2 : xs[j + 1] - 1, 0]
            ring = np.concatenate([cell[:3].ravel(), cell[-3:].ravel(), cell[:, :3].ravel(), cell[:, -3:].ravel()])
            assert (ring == fills[i, j]).all(), (i, j)


def test_logged_png_declares_what_add_image_declares(tmp_path):
    """log_png's summary says what SummaryWriter.add_image says of the same RGB picture: size and 3 channels."""
    from tensorboard.backend.event_processing.event_file_loader import RawEventFileLoader
    from tensorboard.compat.proto.event_pb2 import Event

    png = misclassified_png([(solid(COLOURS[0]), 0, 1)], ["a", "b"], MEAN, STD)
    writer = SummaryWriter(str(tmp_path))
    log_png(writer, "ours", png, step=0)
    writer.add_image("theirs", torch.from_numpy(rgb(png)).permute(2, 0, 1).to(torch.uint8), 0)
    writer.close()
    (path,) = tmp_path.glob("events.out.tfevents.*")
    events = [Event.FromString(record) for record in RawEventFileLoader(str(path)).Load()]
    images = {value.tag: value.image for event in events for value in event.summary.value}
    ours, theirs = images["ours"], images["theirs"]
    assert (ours.width, ours.height, ours.colorspace) == (theirs.width, theirs.height, theirs.colorspace)
    assert (ours.width, ours.height) == png_size(png) and ours.colorspace == 3


def png_size(png: bytes) -> tuple[int, int]:
    return Image.open(io.BytesIO(png)).size


def test_input_grid_is_logged_once_at_the_step_of_the_first_batch(tmp_path):
    """PictureLog logs train/inputs at the first call's step only, whatever step that is."""
    writer = SummaryWriter(str(tmp_path))
    pictures = PictureLog(1, (0.5,), (0.25,))
    for step in (5, 6, 7):
        pictures.log_inputs(writer, torch.zeros(2, 1, 8, 8), step)
    writer.close()
    events = EventAccumulator(str(tmp_path), size_guidance={"images": 0})
    events.Reload()
    assert [e.step for e in events.Images("train/inputs")] == [5]


def test_counts_are_dark_on_light_cells_and_white_on_the_darkest():
    """Counts are legible: thin dark strokes on light cells, white strokes on the darkest cell, never boxes."""
    image = rgb(confusion_matrix_png(torch.tensor(CONFUSION), NAMES))
    ys, xs = grid_lines(image)
    fills = cell_fills(image)
    for i in range(3):
        for j in range(3):
            cell = image[ys[i] + 2 : ys[i + 1] - 1, xs[j] + 2 : xs[j + 1] - 1, 0]
            if fills[i, j] >= 153:
                assert 5 < (cell < 100).sum() < 60, (i, j)  # a digit's strokes, not a filled box
            else:
                assert (cell > 200).sum() > 5, (i, j)  # white strokes on the dark fill


def test_the_corner_says_which_axis_is_which():
    """The top-left corner, left of the column labels and above the row labels, holds the "true \\ predicted" title."""
    image = rgb(confusion_matrix_png(torch.tensor(CONFUSION), NAMES))
    ys, xs = grid_lines(image)
    assert ink(image[:16, : xs[0] - 1]) > 20


@pytest.mark.parametrize(("n", "zeros_written"), [(20, True), (21, False)])
def test_zero_counts_are_written_up_to_twenty_classes(n, zeros_written):
    """Up to 20 classes every zero is written; above, zeros are left blank."""
    cm = torch.zeros(n, n, dtype=torch.long)
    cm[3, 4] = 7
    image = rgb(confusion_matrix_png(cm, [f"c{k}" for k in range(n)]))
    ys, xs = grid_lines(image)
    cell = image[ys[0] + 2 : ys[1] - 1, xs[0] + 2 : xs[1] - 1, 0]
    assert bool((cell != 255).sum() > 5) is zeros_written
