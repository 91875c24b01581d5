"""``twinloop export``: each format run on validation images against the checkpoint's PyTorch model."""

import json
import sys
from pathlib import Path

import pytest
import torch

from project.cli import main
from project.data import ImageDataModule
from project.export import load_exported
from project.module import ImageClassifier
from tests.helpers import FAST

FORMATS = {"onnx": ".onnx", "torchscript": ".pt", "exported_program": ".pt2"}
PARITY: dict[str, float] = {}  # format -> max |Δ| logits, printed at the end of the module


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A checkpoint of a short digits fit (simple_cnn: BatchNorm, Dropout, pooling, two linear layers)."""
    root = tmp_path_factory.mktemp("fit")
    main(
        [
            "fit",
            *FAST,
            "--trainer.max_epochs=1",
            "--trainer.limit_train_batches=4",
            f"--trainer.default_root_dir={root}",
        ]
    )
    (last,) = root.glob("lightning_logs/version_0/checkpoints/last.ckpt")
    yield last
    if PARITY:
        print("\nexport parity, max |Δ| logits: " + ", ".join(f"{k} {v:.3g}" for k, v in PARITY.items()))


def pytorch_logits(checkpoint: Path, images: torch.Tensor) -> torch.Tensor:
    """The checkpoint's model as the project builds it (not through the export code), in eval mode."""
    saved = torch.load(checkpoint, weights_only=True)
    model = ImageClassifier(**{k: v for k, v in saved["hyper_parameters"].items() if not k.startswith("_")})
    model.load_state_dict(saved["state_dict"])
    with torch.no_grad():
        return model.eval()(images)


@pytest.mark.parametrize("fmt", list(FORMATS))
@pytest.mark.xdist_group("export_checkpoint")
def test_exported_model_gives_the_checkpoints_logits(fmt, checkpoint, tmp_path):
    """On 359 validation digits in batches of 1, 7 and 351, logits within 1e-4 and the same classes."""
    out = tmp_path / f"model{FORMATS[fmt]}"
    main(["export", "--ckpt_path", str(checkpoint), "--format", fmt, "--output", str(out)])
    data = ImageDataModule()
    data.setup("fit")
    images = torch.stack([x for x, _ in data.val_set])
    run = load_exported(out, fmt)
    got = torch.cat([run(images[:1]), run(images[1:8]), run(images[8:])])
    want = pytorch_logits(checkpoint, images)
    assert got.shape == want.shape == (359, 10)
    PARITY[fmt] = (got - want).abs().max().item()
    assert PARITY[fmt] <= 1e-4
    assert torch.equal(got.argmax(1), want.argmax(1))


@pytest.mark.xdist_group("export_checkpoint")
def test_the_sidecar_says_how_to_prepare_an_image(checkpoint, tmp_path):
    """Class names, input size, channels, mean and std of the data the checkpoint was trained on."""
    out = tmp_path / "digits.onnx"
    main(["export", "--ckpt_path", str(checkpoint), "--format", "torchscript", "--output", str(out)])
    meta = json.loads((tmp_path / "digits.onnx.json").read_text())
    data = ImageDataModule()
    assert meta["class_names"] == [str(i) for i in range(10)] and meta["format"] == "torchscript"
    assert meta["input_size"] == [8, 8] and meta["channels"] == 1 and meta["crop"] is None
    assert meta["mean"] == list(data.mean) and meta["std"] == list(data.std)


@pytest.mark.xdist_group("export_checkpoint")
def test_onnx_without_its_packages_says_what_to_install(checkpoint, tmp_path, monkeypatch, capsys):
    """No onnxscript: exit 1 with one line naming it and the extra, and no file written."""
    monkeypatch.setitem(sys.modules, "onnxscript", None)
    with pytest.raises(SystemExit) as exit_info:
        main(["export", "--ckpt_path", str(checkpoint), "--format", "onnx", "--output", str(tmp_path / "m.onnx")])
    assert exit_info.value.code == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "onnxscript" in lines[0] and "pip install 'twinloop[export]'" in lines[0]
    assert not list(tmp_path.iterdir())


def test_a_missing_checkpoint_is_one_error_line(capsys):
    """A --ckpt_path that does not exist is named, exit 1."""
    with pytest.raises(SystemExit) as exit_info:
        main(["export", "--ckpt_path", "nowhere.ckpt", "--format", "torchscript"])
    assert exit_info.value.code == 1
    assert capsys.readouterr().err.strip() == "error: --ckpt_path: no such file: nowhere.ckpt"
