"""Progress in log files: plain lines instead of tqdm's redraws when stdout is not a terminal, in both
loops, and the bar where it is one. The runs are real processes, with stdout a file or a pty."""

import fcntl
import os
import pty
import re
import struct
import subprocess
import sys
import termios
from pathlib import Path

import pytest
from lightning.pytorch.callbacks import TQDMProgressBar
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import project.cli
from project.callbacks import LogLinesProgressBar
from project.cli import TwinloopCLI
from project.progress import LineProgress
from project.reference.config import load_run
from tests.helpers import CONFIGS, FAST, REPO

pytestmark = pytest.mark.fit  # every test here trains with a loop

MODULES = {"lightning": "project", "reference": "project.reference.cli"}
RUN_DIRS = {"lightning": "lightning_logs/version_0", "reference": "lightning_logs/reference/version_0"}
ENV = {**os.environ, "PYTHONPATH": str(REPO)}


def fit_command(loop: str, *args: str) -> list[str]:
    return [sys.executable, "-m", MODULES[loop], "fit", "-c", str(CONFIGS / "digits.yaml"), *args]


def logged_val_acc(run_dir: Path) -> list[float]:
    """val/acc of every epoch, as TensorBoard has it."""
    events = EventAccumulator(str(run_dir))
    events.Reload()
    return [e.value for e in events.Scalars("val/acc")]


@pytest.mark.slow
@pytest.mark.parametrize("loop", list(MODULES))
def test_the_default_fit_into_a_file_is_under_15_kb_with_every_epochs_validation(loop, tmp_path):
    """The default fit (230 steps) with stdout and stderr in a file: at most 15 KB, no redraws, a line every
    10 steps, and a line per epoch with the val/acc TensorBoard got."""
    log = tmp_path / "job.log"
    with log.open("w") as out:
        proc = subprocess.run(fit_command(loop), cwd=tmp_path, env=ENV, stdout=out, stderr=subprocess.STDOUT)
    text = log.read_text()
    assert proc.returncode == 0, text[-3000:]
    assert log.stat().st_size <= 15_000
    assert "\r" not in text
    assert not re.findall(r"^.*(?:\.py:\d+: |Tip:).*$", text, re.M)  # no warnings, no advertisement
    assert re.findall(r"^step (\d+)/230  epoch \d/9  loss \d\.\d{4}  \d+ samples/s  ETA ", text, re.M) == [
        str(step) for step in range(10, 231, 10)
    ]
    epochs = re.findall(r"^epoch (\d)/9 done  step \d+/230  val/loss \S+  val/acc (\S+)  val/acc_best \S+ ", text, re.M)
    assert [int(epoch) for epoch, _ in epochs] == list(range(10))
    assert [float(acc) for _, acc in epochs] == pytest.approx(logged_val_acc(tmp_path / RUN_DIRS[loop]), abs=5e-5)


@pytest.mark.slow  # a real process on a pseudo-terminal, for each loop
@pytest.mark.parametrize("loop", list(MODULES))
def test_on_a_terminal_the_bar_stays(loop, tmp_path):
    """With stdout a terminal (a pty), tqdm's bar redraws in place and no step lines are printed."""
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))  # a new pty has no width
    args = ["--trainer.max_epochs=1", "--trainer.limit_train_batches=3", "--trainer.limit_val_batches=2"]
    proc = subprocess.Popen(fit_command(loop, *args), cwd=tmp_path, env=ENV, stdout=follower, stderr=subprocess.DEVNULL)
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # EIO: the process closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(leader)
    text = b"".join(chunks).decode(errors="replace")
    assert proc.wait(timeout=300) == 0, text[-3000:]
    assert re.search(r"\r(Epoch 0|reference train): +\d+%", text)  # a redraw (the pty ends lines with \r\n)
    assert not re.search(r"^step \d+", text, re.M)


def test_a_progress_bar_given_in_the_config_is_kept(monkeypatch):
    """With stdout not a terminal the CLI's bar prints lines, unless --trainer.callbacks brings a bar of its own."""
    monkeypatch.setattr(project.cli, "stdout_is_terminal", lambda: False)
    default = TwinloopCLI(args=["--trainer.max_epochs=1"], run=False).trainer
    own = TwinloopCLI(args=["--trainer.callbacks=TQDMProgressBar", "--trainer.max_epochs=1"], run=False).trainer
    off = TwinloopCLI(args=[*FAST, "--trainer.max_epochs=1"], run=False).trainer
    assert isinstance(default.progress_bar_callback, LogLinesProgressBar)
    assert type(own.progress_bar_callback) is TQDMProgressBar
    assert off.progress_bar_callback is None


def test_line_cadence_and_eta_from_the_steps_done_in_this_process(capsys):
    """A line every N steps and at the last; ETA from this process's pace (a resumed run starts at its step)."""
    now = [100.0]
    lines = LineProgress(every_n_steps=5, total_steps=40, max_epochs=4, first_step=20, clock=lambda: now[0])
    for step in range(21, 41):
        now[0] += 0.5  # 2 steps a second
        lines.add_samples(32)
        lines.on_step(step, epoch=2 + (step - 1) // 20, loss=lambda: 0.25)
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "step 25/40  epoch 3/3  loss 0.2500  64 samples/s  ETA 0:00:08"
    assert [line.split()[1] for line in out] == ["25/40", "30/40", "35/40", "40/40"]
    assert out[-1].endswith("ETA 0:00:00")


@pytest.mark.parametrize("loop", list(MODULES))
@pytest.mark.parametrize("stage", ["validate", "test"])
def test_validate_and_test_on_their_own_print_a_line_every_n_batches(loop, stage, capsys):
    """`validate` and `test` with stdout not a terminal: a line every log_every_n_steps batches and at the last."""
    args = ["--trainer.log_every_n_steps=2", "--trainer.enable_model_summary=false"]
    if loop == "lightning":
        TwinloopCLI(args=[stage, *args])
    else:
        run = load_run(args)
        getattr(run.trainer, stage)(run.model, run.datamodule)
    lines = re.findall(rf"^{stage} batch (\d+)/6  \d+ samples/s  ETA \d:\d\d:\d\d$", capsys.readouterr().out, re.M)
    assert lines == ["2", "4", "6"]  # 360 validation digits in batches of 64


def test_predict_prints_a_line_every_n_batches(image_folder, capsys):
    """`predict` with stdout not a terminal: a line every log_every_n_steps batches and at the last."""
    args = ["--data.dataset=imagefolder", f"--data.root={image_folder}", "--data.image_size=16"]
    cli = TwinloopCLI(args=["fit", *FAST, *args, "--trainer.max_epochs=1", "--trainer.limit_train_batches=1"])
    capsys.readouterr()
    ckpt = cli.trainer.checkpoint_callback.best_model_path
    predict = [*args, "--data.batch_size=4", "--trainer.log_every_n_steps=2", "--trainer.enable_model_summary=false"]
    TwinloopCLI(args=["predict", *predict, f"--data.predict_root={image_folder / 'circles'}", "--ckpt_path", ckpt])
    lines = re.findall(r"^predict batch (\d+)/3  ", capsys.readouterr().out, re.M)
    assert lines == ["2", "3"]  # 12 images in batches of 4
