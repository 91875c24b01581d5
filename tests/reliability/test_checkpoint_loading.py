"""Safe, checked loading (issue 10, items 4 and 7): a checkpoint that is not one, holds code, or does not fit
the model or the data gives one `error:` line naming the file, exit 1, and no run directory, for every
command that takes ``--ckpt_path``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from project.cli import main as twinloop
from project.module import ImageClassifier
from project.reference.cli import main as twinloop_reference
from project.specs import NetworkSpec
from tests.helpers import FAST, REPO
from tests.reliability.helpers import checkpoint_of

DIGITS = [str(i) for i in range(10)]
COMMANDS = [
    ("twinloop", "validate"),
    ("twinloop", "test"),
    ("twinloop", "predict"),
    ("twinloop-reference", "validate"),
    ("twinloop-reference", "test"),
]


class RunsCode:
    """Unpickling this runs a shell command: what a malicious checkpoint carries."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def write_bad_checkpoint(kind: str, folder: Path) -> Path:
    path = folder / f"{kind.replace(' ', '_')}.ckpt"
    good = checkpoint_of(ImageClassifier(num_classes=10, in_channels=1, class_names=DIGITS))
    if kind == "pickle payload":
        torch.save({**good, "hyper_parameters": RunsCode(f"touch {folder / 'MARKER'}")}, path)
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        torch.save(good, path)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif kind == "another model":  # resnet18 weights, given to the digits simple_cnn config
        resnet = ImageClassifier(
            num_classes=10, in_channels=1, network=NetworkSpec(backbone="resnet18"), class_names=DIGITS
        )
        torch.save(checkpoint_of(resnet), path)
    return path


def run(tool: str, command: str, ckpt: Path, *args: str) -> int:
    """One command line, in this process; its exit status."""
    argv = [command, *FAST, "--ckpt_path", str(ckpt), *args]
    entry = twinloop if tool == "twinloop" else twinloop_reference
    if tool == "twinloop" and command == "predict" and not any(a.startswith("--data.predict_root") for a in args):
        argv.append("--data.predict_root=.")
    with pytest.raises(SystemExit) as info:
        entry(argv)
    return info.value.code


def one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: --ckpt_path") and "Traceback" not in err, err
    return lines[0]


@pytest.mark.parametrize(("tool", "command"), COMMANDS)
@pytest.mark.parametrize("kind", ["pickle payload", "empty", "truncated", "another model"])
def test_a_bad_checkpoint_is_one_error_line_and_no_run_directory(tmp_path, capsys, tool, command, kind):
    """Code in a pickle, an empty, truncated or other model's checkpoint: exit 1, one `error:` line naming the file,
    no code run and no run directory."""
    ckpt = write_bad_checkpoint(kind, tmp_path)
    assert run(tool, command, ckpt) == 1
    line = one_error_line(capsys.readouterr().err)
    assert str(ckpt) in line
    reason = {
        "pickle payload": "could run code",
        "empty": "empty",
        "truncated": "truncated or corrupt",
        "another model": "another model",
    }[kind]
    assert reason in line
    assert not (tmp_path / "MARKER").exists(), "the checkpoint ran code"
    assert not Path("lightning_logs").exists()


def test_resuming_from_another_model_stops_before_the_run_directory(tmp_path, capsys):
    """`twinloop fit --ckpt_path` with a checkpoint that does not fit: one `error:` line, no run directory."""
    ckpt = write_bad_checkpoint("another model", tmp_path)
    assert run("twinloop", "fit", ckpt) == 1
    assert "another model" in one_error_line(capsys.readouterr().err)
    assert not Path("lightning_logs").exists()


def test_a_checkpoint_with_code_runs_none_in_a_real_process(tmp_path):
    """A real `twinloop validate` process given a pickle that would run `touch MARKER`: exit 1, one line, no MARKER."""
    ckpt = write_bad_checkpoint("pickle payload", tmp_path)
    done = subprocess.run(
        [sys.executable, "-m", "project", "validate", *FAST, "--ckpt_path", str(ckpt)],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 1
    assert str(ckpt) in one_error_line(done.stderr)
    assert not (tmp_path / "MARKER").exists()
    assert not (tmp_path / "lightning_logs").exists()


@pytest.mark.parametrize(("tool", "command"), COMMANDS)
def test_data_with_other_classes_is_refused_naming_both_lists(image_folder, tmp_path, capsys, tool, command):
    """A checkpoint trained on the same classes in another order: refused by every command, both lists named."""
    other_order = ["stripes", "squares", "circles"]  # the folder's are circles, squares, stripes
    model = ImageClassifier(num_classes=3, in_channels=3, class_names=other_order)
    ckpt = tmp_path / "other_order.ckpt"
    torch.save(checkpoint_of(model), ckpt)
    args = ["--data.dataset=imagefolder", f"--data.root={image_folder}", "--data.image_size=16"]
    if command == "predict":
        args.append(f"--data.predict_root={image_folder / 'circles'}")
    assert run(tool, command, ckpt, *args) == 1
    line = one_error_line(capsys.readouterr().err)
    assert str(ckpt) in line and str(other_order) in line and "['circles', 'squares', 'stripes']" in line
    assert not Path("lightning_logs").exists()
