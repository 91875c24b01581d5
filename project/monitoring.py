"""What both loops show in TensorBoard beyond scalars: input grids, confusion matrices,
misclassified images, when each is due, and the settings for the HPARAMS tab.

Everything here takes a ``SummaryWriter`` and plain tensors, so the Lightning path and the reference
loop log the same pictures under the same tags at the same steps.
"""

from __future__ import annotations

import functools
import io
import json
from collections.abc import Mapping, Sequence

import torch
from PIL import Image, ImageDraw, ImageFont, PngImagePlugin
from tensorboard.compat.proto.summary_pb2 import Summary
from torch import Tensor
from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.writer import FileWriter
from torchvision.utils import make_grid

TILE = 48  # px per image in the grids, so 8 px digits stay visible


def denormalize(x: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """(B, C, H, W) normalized -> (B, 3, H, W) in [0, 1], the way a person should see it."""
    mean_t = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    x = (x.detach().float().cpu() * std_t + mean_t).clamp(0, 1)
    return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x


def _to_pil(img: Tensor) -> Image.Image:
    arr = (img.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    return Image.fromarray(arr).resize((TILE, TILE), Image.Resampling.NEAREST)


def _png(image: Image.Image, text: Mapping[str, str] | None = None, web_palette: bool = False) -> bytes:
    """Encode as PNG. ``web_palette`` suits flat-colour drawings: a third of the bytes, and
    TensorBoard's writer checksums every byte in pure Python on a thread that holds the GIL."""
    info = PngImagePlugin.PngInfo()
    for k, v in (text or {}).items():
        info.add_text(k, v)
    if web_palette:
        image = image.convert("P", dither=Image.Dither.NONE)
    buf = io.BytesIO()
    image.save(buf, format="PNG", pnginfo=info, compress_level=6 if web_palette else 1)
    return buf.getvalue()


def file_writer(writer: SummaryWriter) -> FileWriter:
    """The event-file writer behind ``writer``, for the two summaries ``SummaryWriter`` has no public
    method for: a PNG kept byte for byte (``add_image`` re-encodes it and drops its text chunks) and
    the HPARAMS tab in the run's own folder (``add_hparams`` starts a new one). A private API, used
    here only; ``tests/equivalence/test_tensorboard.py`` fails loudly if it changes."""
    return writer._get_file_writer()


def log_png(writer: SummaryWriter, tag: str, png: bytes, step: int) -> None:
    """Write an already encoded PNG as an image summary (keeps its text chunks intact)."""
    width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")  # IHDR
    image = Summary.Image(height=height, width=width, colorspace=3, encoded_image_string=png)
    file_writer(writer).add_summary(Summary(value=[Summary.Value(tag=tag, image=image)]), step)


def input_grid(x: Tensor, mean: Sequence[float], std: Sequence[float], max_images: int = 32) -> Tensor:
    """A (3, H, W) grid of training inputs after augmentation, denormalized; small images are
    enlarged (nearest neighbour) to about ``TILE`` px so they can be seen."""
    imgs = denormalize(x[:max_images], mean, std)
    grid = make_grid(imgs, nrow=8, padding=1, pad_value=1.0)
    k = max(1, TILE // imgs.shape[-1])
    return grid.repeat_interleave(k, dim=1).repeat_interleave(k, dim=2)


def confusion_matrix_png(cm: Tensor, class_names: Sequence[str]) -> bytes:
    """A drawn confusion matrix: rows are true classes, columns predictions, counts in the cells.

    The counts also travel in the PNG's ``confusion_matrix`` text chunk as JSON, so a tool can read
    the numbers back from the image.
    """
    cm = cm.detach().cpu().long()
    n = cm.shape[0]
    font = ImageFont.load_default(size=11)
    label_w = max(48, 7 * max(len(c) for c in class_names) + 8)
    cell = max(22, min(30, 640 // max(n, 1)))
    left, top = label_w + 18, label_w + 18
    size = (left + n * cell + 10, top + n * cell + 10)
    img = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(img)
    peak = max(int(cm.max()), 1)
    for i in range(n):
        for j in range(n):
            v = int(cm[i, j])
            shade = int(255 - 200 * v / peak)
            box = (left + j * cell, top + i * cell, left + (j + 1) * cell, top + (i + 1) * cell)
            draw.rectangle(box, fill=(shade, shade, 255), outline=(200, 200, 200))
            if v or n <= 20:
                label = _rendered_text(str(v), "white" if shade < 128 else "black")
                img.paste(label, (box[0] + (cell - label.width) // 2, box[1] + (cell - label.height) // 2), label)
    # Column labels run vertically: write them on one horizontal strip, rotate it, paste it on top.
    strip = Image.new("RGB", (label_w, n * cell), "white")
    strip_draw = ImageDraw.Draw(strip)
    for k, name in enumerate(class_names):
        draw.text((left - 4, top + k * cell + cell / 2), name, font=font, anchor="rm", fill="black")
        strip_draw.text((2, k * cell + cell / 2), name, font=font, anchor="lm", fill="black")
    img.paste(strip.rotate(90, expand=True), (left, top - label_w - 2))
    draw.text((2, 2), "true \\ predicted", font=font, fill="black")
    counts = {"confusion_matrix": json.dumps(cm.tolist()), "class_names": json.dumps(list(class_names))}
    return _png(img, counts, web_palette=True)


@functools.lru_cache(maxsize=512)
def _rendered_text(text: str, fill: str) -> Image.Image:
    """Text on a transparent tile, rendered once: most cells repeat a few counts (0 above all)."""
    font = ImageFont.load_default(size=11)
    left, top, right, bottom = font.getbbox(text)  # whole pixels, though typed as floats
    tile = Image.new("RGBA", (int(right - left) + 2, int(bottom - top) + 2), (0, 0, 0, 0))
    ImageDraw.Draw(tile).text((1 - left, 1 - top), text, font=font, fill=fill)
    return tile


def _caption(img: Image.Image, draw: ImageDraw.ImageDraw, x: int, y: int, true: str, pred: str) -> None:
    """Write "true → predicted" centred on height ``y``; the built-in font has no arrow glyph, so
    the arrow is drawn."""
    for text in (true, None, pred):
        if text is None:
            draw.line((x, y, x + 10, y), fill="red", width=1)
            draw.polygon([(x + 12, y), (x + 8, y - 3), (x + 8, y + 3)], fill="red")
            x += 15
            continue
        label = _rendered_text(text, "black")
        img.paste(label, (x, y - label.height // 2), label)
        x += label.width + 3


def misclassified_png(
    samples: Sequence[tuple[Tensor, int, int]],
    class_names: Sequence[str],
    mean: Sequence[float],
    std: Sequence[float],
    per_row: int = 8,
) -> bytes:
    """A grid of misclassified images, each captioned "true → predicted"."""
    cap = 14
    rows = max(1, -(-len(samples) // per_row))
    cols = min(per_row, max(1, len(samples)))
    tile_w = max(TILE, 6 * max(len(c) for c in class_names) * 2 + 24)
    img = Image.new("RGB", (cols * (tile_w + 4), rows * (TILE + cap + 4)), "white")
    draw = ImageDraw.Draw(img)
    if not samples:
        img.paste(_rendered_text("none", "black"), (4, 4), _rendered_text("none", "black"))
    for k, (image, true, pred) in enumerate(samples):
        r, c = divmod(k, per_row)
        x0, y0 = c * (tile_w + 4), r * (TILE + cap + 4)
        img.paste(_to_pil(denormalize(image[None], mean, std)[0]), (x0 + (tile_w - TILE) // 2, y0))
        _caption(img, draw, x0 + 2, y0 + TILE + cap // 2 + 1, class_names[true], class_names[pred])
    return _png(img)


class PictureLog:
    """The pictures of one run and when they are due, the same for both loops.

    The training inputs once, at the first training batch; the confusion matrix and the
    misclassified grid every ``every_n_epochs`` epochs (0: never). ``step`` is the number of optimizer
    steps done so far, Lightning's ``global_step``.
    """

    def __init__(self, every_n_epochs: int, mean: Sequence[float], std: Sequence[float]):
        self.every_n_epochs = every_n_epochs
        self.mean, self.std = mean, std
        self.inputs_logged = False

    def log_inputs(self, writer: SummaryWriter, x: Tensor, step: int) -> None:
        if not self.inputs_logged:
            writer.add_image("train/inputs", input_grid(x, self.mean, self.std), step)
            self.inputs_logged = True

    def validation_pngs(self, metrics, class_names: Sequence[str], epoch: int) -> dict[str, bytes]:
        """The pictures of validation epoch ``epoch`` from a detailed ``StageMetrics`` by tag, if due."""
        if self.every_n_epochs <= 0 or epoch % self.every_n_epochs != 0:
            return {}
        return {
            "val/confusion_matrix": confusion_matrix_png(metrics.confusion_matrix(), class_names),
            "val/misclassified": misclassified_png(metrics.misclassified, class_names, self.mean, self.std),
        }

    def log_validation(self, writer: SummaryWriter, metrics, class_names: Sequence[str], epoch: int, step: int) -> None:
        """The pictures of validation epoch ``epoch``, if due, logged at ``step``."""
        for tag, png in self.validation_pngs(metrics, class_names, epoch).items():
            log_png(writer, tag, png, step)


# The HPARAMS tab's metric columns; their values are the runs' own scalars under these tags.
HPARAM_METRICS = ("val/acc", "val/loss", "val/acc_best")


def run_hparams(config: Mapping) -> dict[str, int | float | str]:
    """The few settings that make runs differ, for the HPARAMS tab; ``config.yaml`` keeps the rest."""
    model, data, trainer = config["model"], config["data"], config["trainer"]
    network = model.get("network") or {}
    optimizer = model.get("optimizer") or {}
    scheduler = model.get("lr_scheduler") or {}
    values = {
        "seed": config.get("seed_everything"),
        "data/dataset": data.get("dataset"),
        "data/batch_size": data.get("batch_size"),
        "data/augment": data.get("augment"),
        "model/backbone": network.get("backbone"),
        "model/weights": network.get("weights"),
        "model/freeze_backbone_epochs": network.get("freeze_backbone_epochs"),
        "model/backbone_lr_scale": network.get("backbone_lr_scale"),
        "model/dropout": network.get("dropout"),
        "model/label_smoothing": model.get("label_smoothing"),
        "optimizer": str(optimizer.get("class_path", "default")).rpartition(".")[2],
        "optimizer/lr": optimizer.get("init_args", {}).get("lr"),
        "optimizer/weight_decay": optimizer.get("init_args", {}).get("weight_decay"),
        "lr_scheduler": str(scheduler.get("class_path", "none")).rpartition(".")[2],
        "trainer/max_epochs": trainer.get("max_epochs"),
        "trainer/precision": trainer.get("precision"),
        "trainer/accumulate_grad_batches": trainer.get("accumulate_grad_batches"),
    }
    # TensorBoard shows a bool as 0.0000 or 1.0000: words read better
    return {
        k: v if isinstance(v, int | float | str) and not isinstance(v, bool) else str(v).lower()
        for k, v in values.items()
    }


def log_hparams(writer: SummaryWriter, hparams: Mapping[str, int | float | str]) -> None:
    """One HPARAMS-tab entry for the run: its settings, with ``HPARAM_METRICS`` as the metric columns."""
    from torch.utils.tensorboard.summary import hparams as hparams_summaries

    for summary in hparams_summaries(dict(hparams), dict.fromkeys(HPARAM_METRICS, 0.0)):
        file_writer(writer).add_summary(summary)
