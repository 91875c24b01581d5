"""What the pre-flight scan of an image folder costs: seconds per 10,000 files.

Writes generated JPEGs (10,000 of ``--side`` px by default, smooth content with noise, quality 90)
and PNGs into a temporary class folder, then times ``scan_class_folders`` (each file opened,
checked and decoded once: JPEGs at 1/8 scale, PNGs verified and decoded), beside a full decode of
every file with ``read_rgb`` (one epoch's decoding) for scale. Best of ``--repeats`` passes; the
files stay in the page cache between passes.

    python benchmarks/scan_speed.py [--files 10000] [--side 64] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from project.data.files import read_rgb
from project.data.scan import scan_class_folders


def write_images(folder: Path, count: int, side: int, ext: str) -> None:
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
    for i in range(count):
        image = np.roll(base, i % side, axis=1) // 2 + rng.integers(0, 128, (side, side, 3), dtype=np.uint8)
        path = folder / f"class_{i % 10}" / f"{i:05d}{ext}"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(path, **({"quality": 90} if ext == ".jpg" else {}))


def best_of(repeats: int, fn) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--side", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    per_10k = 10_000 / args.files
    results = {"files": args.files, "side": args.side, "cpus": len(os.sched_getaffinity(0))}
    with tempfile.TemporaryDirectory() as tmp:
        for ext in (".jpg", ".png"):
            folder = Path(tmp) / ext[1:]
            write_images(folder, args.files, args.side, ext)
            files = sorted(folder.rglob(f"*{ext}"))
            scan = scan_class_folders(folder)
            assert not scan.problems and len(scan.sizes) == args.files, scan.problems[:3]
            results[ext] = {
                "scan (s per 10k files)": per_10k * best_of(args.repeats, lambda f=folder: scan_class_folders(f)),
                "read_rgb of every file (s per 10k files)": per_10k
                * best_of(args.repeats, lambda fs=files: [read_rgb(str(p)) for p in fs]),
            }
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
