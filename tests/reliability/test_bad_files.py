"""Bad files (issue 10, items 5 and 7): image folders are scanned before any run directory exists; each problem
is named with its path and reason, ``data.on_bad_file`` stops the run or leaves the files out, and no run meets a
broken file mid-epoch."""

from __future__ import annotations

import logging
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
import torch

from project.cli import main as twinloop
from project.data import ImageDataModule
from project.data.scan import scan_class_folders
from project.module import ImageClassifier
from project.reference.cli import main as twinloop_reference
from tests.helpers import FAST, REPO, make_image_folder, write_image
from tests.reliability.helpers import checkpoint_of

CLASSES = ["circles", "squares", "stripes"]


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def bomb_png(path: Path, side: int) -> None:
    """A 100-byte PNG whose header declares side x side RGB pixels: decoding it would allocate 3 * side**2 bytes."""
    header = png_chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0))
    pixels = png_chunk(b"IDAT", zlib.compress(b"\0" * 64))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + header + pixels + png_chunk(b"IEND", b""))


def bad_crc_png(path: Path) -> None:
    """A PNG whose pixel data fails its CRC: PIL decodes it, torchvision's decoder crashes the process on it."""
    write_image(path, 0, (16, 16), "RGB")
    data = bytearray(path.read_bytes())
    crc_at = data.find(b"IDAT") + 4 + int.from_bytes(data[data.find(b"IDAT") - 4 : data.find(b"IDAT")], "big")
    data[crc_at] ^= 0xFF
    path.write_bytes(bytes(data))


def truncated_jpeg(path: Path) -> None:
    write_image(path, 1, (40, 40), "RGB")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def bmp_named_jpg(path: Path) -> None:
    write_image(path.with_suffix(".bmp"), 2, (16, 16), "RGB")
    path.with_suffix(".bmp").rename(path)


def write_broken_folder(root: Path) -> dict[Path, str]:
    """A good 3-class folder plus one of each problem; the problems' paths, with a word their reason must hold."""
    make_image_folder(root, CLASSES, per_class=6)
    bad = {
        root / "circles" / "truncated.jpg": "truncated",
        root / "circles" / "bad_crc.png": "corrupt",
        root / "squares" / "notes.png": "not an image",
        root / "squares" / "bitmap.jpg": "BMP",
        root / "stripes" / "zero.jpg": "empty file",
        root / "stripes" / "bomb.png": "decompression bomb",  # 10^10 pixels: PIL refuses to open it
        root / "stripes" / "big.png": "decompression bomb",  # 10^8 pixels: PIL only warns
        root / "empty": "class folder without usable image files",
    }
    truncated_jpeg(root / "circles" / "truncated.jpg")
    bad_crc_png(root / "circles" / "bad_crc.png")
    (root / "squares" / "notes.png").write_text("meeting notes, not a picture")
    bmp_named_jpg(root / "squares" / "bitmap.jpg")
    (root / "stripes" / "zero.jpg").write_bytes(b"")
    bomb_png(root / "stripes" / "bomb.png", 100_000)
    bomb_png(root / "stripes" / "big.png", 10_000)
    (root / "empty").mkdir()
    # hidden: never a class or a sample, whatever they hold
    write_image(root / ".ipynb_checkpoints" / "a.png", 0, (16, 16), "RGB")
    write_image(root / "circles" / ".ipynb_checkpoints" / "b.png", 0, (16, 16), "RGB")
    (root / "circles" / "._mac_resource_fork.jpg").write_bytes(b"\0\5\26\7 not an image")
    return bad


IMAGEFOLDER = ["--data.dataset=imagefolder", "--data.image_size=16"]


def test_the_scan_names_each_problem_with_its_path_and_reason(tmp_path):
    """Truncated, corrupt, not-an-image, misnamed, empty and oversized files and an empty class folder are each
    reported with path and reason; hidden folders and files are neither classes nor samples."""
    bad = write_broken_folder(tmp_path / "images")
    scan = scan_class_folders(tmp_path / "images")
    problems = dict(p.split(": ", 1) for p in scan.problems)
    assert set(problems) == {str(p) for p in bad}
    for path, word in bad.items():
        assert word in problems[str(path)], (path, problems[str(path)])
    assert scan.class_names == CLASSES
    samples = [p for files in scan.files.values() for p in files]
    assert len(samples) == 18 and not any(part.startswith(".") for p in samples for part in p.parts[-3:])


@pytest.mark.parametrize("tool", ["twinloop", "twinloop-reference"])
def test_bad_files_stop_the_run_before_any_run_directory_with_the_list(tmp_path, capsys, tool):
    """data.on_bad_file=error (the default): exit 1 before step 0, one `error:` block listing every problem,
    no run directory."""
    bad = write_broken_folder(tmp_path / "images")
    entry = twinloop if tool == "twinloop" else twinloop_reference
    with pytest.raises(SystemExit) as info:
        entry(["fit", *FAST, *IMAGEFOLDER, f"--data.root={tmp_path / 'images'}"])
    err = capsys.readouterr().err
    assert info.value.code == 1 and err.startswith("error: data.root: 8 problems") and "Traceback" not in err
    assert sum(line.startswith("error:") for line in err.splitlines()) == 1
    assert all(str(path) in err for path in bad) and "--data.on_bad_file skip" in err
    assert not Path("lightning_logs").exists()


def test_skip_leaves_bad_files_out_of_every_split_and_the_statistics(tmp_path, caplog):
    """data.on_bad_file=skip: train, val, test and the statistics see only good files, and the log says how many
    were left out."""
    root = tmp_path / "images"
    for split in ("train", "val", "test"):
        make_image_folder(root / split, CLASSES, per_class=4)
        truncated_jpeg(root / split / "circles" / "truncated.jpg")
        bad_crc_png(root / split / "squares" / "bad_crc.png")
    dm = ImageDataModule(dataset="imagefolder", root=str(root), image_size=16, on_bad_file="skip")
    with caplog.at_level(logging.WARNING):
        dm.prepare_data()
    dm.setup("fit")
    assert "left out 6 bad image file(s)" in caplog.text
    for split in (dm.train_set, dm.val_set, dm.test_set):
        assert len(split) == 12 and all("truncated" not in p and "bad_crc" not in p for p, _ in split.samples)
        assert split[11][0].shape == (3, 16, 16)  # decodes
    assert len(dm.normalization()[0]) == 3


@pytest.mark.fit
@pytest.mark.slow  # a whole run on a folder of broken files: 10 s
def test_skip_trains_a_real_run_to_the_end_on_a_broken_folder(tmp_path):
    """A real `twinloop fit --data.on_bad_file skip` on the broken folder (a PNG in it crashes torchvision's
    decoder outright): it trains to the end, exit 0, and says how many files it left out."""
    write_broken_folder(tmp_path / "images")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "project",
            "fit",
            *FAST,
            *IMAGEFOLDER,
            f"--data.root={tmp_path / 'images'}",
            "--data.on_bad_file=skip",
            "--data.batch_size=4",
            "--trainer.max_epochs=2",
        ],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "left out 7 bad image file(s) and 1 class folder(s)" in done.stderr
    assert (tmp_path / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt").is_file()


def test_bad_new_images_for_predict_stop_before_any_run_directory(tmp_path, capsys):
    """predict on a folder with a truncated file: one `error:` block naming it, exit 1, no run directory;
    with on_bad_file=skip the other files are predicted."""
    images = make_image_folder(tmp_path / "images", CLASSES, per_class=4)
    new = make_image_folder(tmp_path / "new", ("x",), per_class=3)
    truncated_jpeg(new / "x" / "truncated.jpg")
    model = ImageClassifier(num_classes=3, in_channels=3, class_names=CLASSES, input_hw=(16, 16))  # image_size 16
    torch.save(checkpoint_of(model), tmp_path / "model.ckpt")
    args = ["predict", *FAST, *IMAGEFOLDER, f"--data.root={images}", f"--data.predict_root={new}"]
    args += ["--ckpt_path", str(tmp_path / "model.ckpt"), f"--predictions.output={tmp_path / 'p.csv'}"]
    with pytest.raises(SystemExit) as info:
        twinloop(args)
    err = capsys.readouterr().err
    assert info.value.code == 1 and err.startswith("error: data.predict_root: 1 problem") and "truncated.jpg" in err
    assert not Path("lightning_logs").exists()
    twinloop([*args, "--data.on_bad_file=skip"])
    assert len((tmp_path / "p.csv").read_text().splitlines()) == 1 + 3
