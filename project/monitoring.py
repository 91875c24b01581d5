"""What both loops show in TensorBoard beyond scalars: input grids, confusion matrices,
misclassified images, and the flattened run config for the HPARAMS tab.

Everything here takes a ``SummaryWriter`` and plain tensors, so the Lightning path and the reference
loop log the same pictures under the same tags.
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping, Sequence

import torch
from PIL import Image, ImageDraw, ImageFont, PngImagePlugin
from tensorboard.compat.proto.summary_pb2 import Summary
from torch import Tensor
from torchvision.utils import make_grid

TILE = 64  # px per image in the grids, so 8 px digits stay visible


def denormalize(x: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """(B, C, H, W) normalized -> (B, 3, H, W) in [0, 1], the way a person should see it."""
    mean_t = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    x = (x.detach().float().cpu() * std_t + mean_t).clamp(0, 1)
    return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x


def _to_pil(img: Tensor) -> Image.Image:
    arr = (img.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    return Image.fromarray(arr).resize((TILE, TILE), Image.NEAREST)


def _png(image: Image.Image, text: Mapping[str, str] | None = None) -> bytes:
    info = PngImagePlugin.PngInfo()
    for k, v in (text or {}).items():
        info.add_text(k, v)
    buf = io.BytesIO()
    image.save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


def log_png(writer, tag: str, png: bytes, step: int) -> None:
    """Write an already encoded PNG as an image summary (keeps its text chunks intact)."""
    with Image.open(io.BytesIO(png)) as im:
        width, height = im.size
    image = Summary.Image(height=height, width=width, colorspace=3, encoded_image_string=png)
    writer._get_file_writer().add_summary(Summary(value=[Summary.Value(tag=tag, image=image)]), step)


def input_grid(x: Tensor, mean: Sequence[float], std: Sequence[float], max_images: int = 64) -> Tensor:
    """A (3, H, W) grid of training inputs after augmentation, denormalized."""
    imgs = denormalize(x[:max_images], mean, std)
    imgs = torch.nn.functional.interpolate(imgs, size=(TILE, TILE), mode="nearest")
    return make_grid(imgs, nrow=8, padding=2, pad_value=1.0)


def confusion_matrix_png(cm: Tensor, class_names: Sequence[str]) -> bytes:
    """A drawn confusion matrix: rows are true classes, columns predictions, counts in the cells.

    The counts also travel in the PNG's ``confusion_matrix`` text chunk as JSON, so a tool can read
    the numbers back from the image.
    """
    cm = cm.detach().cpu().long()
    n = cm.shape[0]
    font = ImageFont.load_default(size=11)
    label_w = max(48, 7 * max(len(c) for c in class_names) + 8)
    cell = max(24, min(40, 640 // max(n, 1)))
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
                draw.text((box[0] + cell / 2, box[1] + cell / 2), str(v), font=font, anchor="mm",
                          fill="white" if shade < 128 else "black")
    for k, name in enumerate(class_names):
        draw.text((left - 4, top + k * cell + cell / 2), name, font=font, anchor="rm", fill="black")
        # column labels written vertically: draw on a strip, rotate it, paste it above the column
        strip = Image.new("RGB", (label_w, cell), "white")
        ImageDraw.Draw(strip).text((2, cell / 2), name, font=font, anchor="lm", fill="black")
        img.paste(strip.rotate(90, expand=True), (left + k * cell, top - label_w - 2))
    draw.text((2, 2), "true \\ predicted", font=font, fill="black")
    return _png(img, {"confusion_matrix": json.dumps(cm.tolist()), "class_names": json.dumps(list(class_names))})


def _caption(draw: ImageDraw.ImageDraw, x: int, y: int, true: str, pred: str, font) -> None:
    """Write "true → predicted"; the arrow is drawn, since the built-in font has no arrow glyph."""
    draw.text((x, y), true, font=font, fill="black", anchor="lm")
    x += int(draw.textlength(true, font=font)) + 3
    draw.line((x, y, x + 10, y), fill="red", width=1)
    draw.polygon([(x + 12, y), (x + 8, y - 3), (x + 8, y + 3)], fill="red")
    draw.text((x + 15, y), pred, font=font, fill="black", anchor="lm")


def misclassified_png(samples: Sequence[tuple[Tensor, int, int]], class_names: Sequence[str],
                      mean: Sequence[float], std: Sequence[float], per_row: int = 8) -> bytes:
    """A grid of misclassified images, each captioned "true → predicted"."""
    font = ImageFont.load_default(size=10)
    cap = 14
    rows = max(1, -(-len(samples) // per_row))
    cols = min(per_row, max(1, len(samples)))
    tile_w = max(TILE, 6 * max(len(c) for c in class_names) * 2 + 24)
    img = Image.new("RGB", (cols * (tile_w + 4), rows * (TILE + cap + 4)), "white")
    draw = ImageDraw.Draw(img)
    if not samples:
        draw.text((4, 4), "none", font=font, fill="black")
    for k, (image, true, pred) in enumerate(samples):
        r, c = divmod(k, per_row)
        x0, y0 = c * (tile_w + 4), r * (TILE + cap + 4)
        img.paste(_to_pil(denormalize(image[None], mean, std)[0]), (x0 + (tile_w - TILE) // 2, y0))
        _caption(draw, x0 + 2, y0 + TILE + cap // 2 + 1, class_names[true], class_names[pred], font)
    return _png(img)


def flatten_config(config: Mapping, prefix: str = "") -> dict[str, object]:
    """``{"model": {"dropout": 0.25}}`` -> ``{"model/dropout": 0.25}``, values made TensorBoard-safe."""
    flat: dict[str, object] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten_config(value, prefix=f"{name}/"))
        elif isinstance(value, bool | int | float | str):
            flat[name] = value
        else:
            flat[name] = str(value)
    return flat


def log_hparams(writer, flat_config: Mapping[str, object]) -> None:
    """HPARAMS tab entry: the run config, with ``hp_metric`` (best val/acc) as its metric."""
    from torch.utils.tensorboard.summary import hparams

    exp, ssi, sei = hparams(dict(flat_config), {"hp_metric": 0.0})
    file_writer = writer._get_file_writer()
    for summary in (exp, ssi, sei):
        file_writer.add_summary(summary)
