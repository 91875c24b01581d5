"""What the DataLoader path can feed from a folder of JPEGs: images per second by decoder and workers.

Writes a folder of generated JPEGs (10,000 by default) into a temporary directory, then reads
it through a DataLoader as the image-folder source does (decode, convert to RGB, to a uint8 tensor,
resize), with 0, 1 and 2 worker processes, decoding with PIL and with ``torchvision.io``; on a GPU also
with ``torchvision.io.decode_jpeg(device="cuda")`` on whole batches. Passes alternate, best of N.

    python benchmarks/decode_speed.py [--files 10000] [--side 64] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np
import torch
import torchvision
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision.io import ImageReadMode, decode_image, decode_jpeg, read_file
from torchvision.transforms import v2

from project.data.files import load_rgb


def write_jpegs(folder: Path, count: int, side: int) -> list[Path]:
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
    paths = []
    for i in range(count):
        # smooth content with some noise, so files compress like photos rather than pure noise
        image = np.roll(base, i % side, axis=1) // 2 + rng.integers(0, 128, (side, side, 3), dtype=np.uint8)
        path = folder / f"{i:05d}.jpg"
        Image.fromarray(image).save(path, quality=90)
        paths.append(path)
    return paths


class Files(Dataset):
    def __init__(self, paths: list[Path], decoder: str, side: int):
        self.paths, self.decoder = paths, decoder
        self.resize = v2.Resize((side // 2, side // 2), antialias=True)  # a resize, as image_size asks for

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        if self.decoder == "pil":
            image = v2.functional.pil_to_tensor(load_rgb(str(self.paths[i])))
        elif self.decoder == "torchvision.io":
            image = decode_image(read_file(str(self.paths[i])), mode=ImageReadMode.RGB)
        else:  # raw bytes, decoded on the GPU per batch
            return read_file(str(self.paths[i]))
        return self.resize(image)


def images_per_second(paths: list[Path], decoder: str, workers: int, side: int) -> float:
    collate = (lambda batch: batch) if decoder == "cuda" else None
    loader = DataLoader(
        Files(paths, decoder, side),
        batch_size=256,
        num_workers=workers,
        collate_fn=collate,
        generator=torch.Generator(),
    )
    start = time.perf_counter()
    for batch in loader:
        if decoder == "cuda":
            decode_jpeg(batch, device="cuda", mode=ImageReadMode.RGB)
    if decoder == "cuda":
        torch.cuda.synchronize()
    return len(paths) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--side", type=int, default=64, help="generated JPEGs are side x side")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", default="benchmarks/results/decode_speed.json")
    opts = parser.parse_args()
    decoders = ["pil", "torchvision.io", *(["cuda"] if torch.cuda.is_available() else [])]
    with tempfile.TemporaryDirectory() as tmp:
        print(f"writing {opts.files} JPEGs of {opts.side} x {opts.side} ...", flush=True)
        paths = write_jpegs(Path(tmp), opts.files, opts.side)
        results: dict[str, list[float]] = {}
        for _ in range(opts.repeats):
            for workers in (0, 1, 2):
                for decoder in decoders:
                    if decoder == "cuda" and workers:
                        continue  # CUDA decoding happens in the main process
                    rate = images_per_second(paths, decoder, workers, opts.side)
                    results.setdefault(f"{decoder}, {workers} workers", []).append(rate)
    best = {k: max(v) for k, v in results.items()}
    print(f"{'decoder, workers':<28}{'img/s (best of ' + str(opts.repeats) + ')':>22}")
    for key, rate in best.items():
        print(f"{key:<28}{rate:>22.0f}")
    summary = {
        "date": date.today().isoformat(),
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({os.cpu_count()} cores)",
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "files": opts.files,
        "side": opts.side,
        "img_per_s": best,
        "runs": results,
    }
    Path(opts.json).parent.mkdir(parents=True, exist_ok=True)
    Path(opts.json).write_text(json.dumps(summary, indent=2))
    print(f"wrote {opts.json}")


if __name__ == "__main__":
    main()
