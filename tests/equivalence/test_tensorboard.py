"""What TensorBoard shows, read back from the event files and from a real TensorBoard server."""

import io
import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2
from torch.utils.tensorboard import SummaryWriter

from project import compare
from project.cli import TwinloopCLI
from project.metrics import build_stage_metrics
from project.monitoring import PictureLog, file_writer
from project.reference.cli import main as reference_main
from tests.helpers import FAST

DIGITS = [str(i) for i in range(10)]
SCALAR_TAGS = {
    "train/loss",
    "train/loss_epoch",
    "train/acc",
    "val/loss",
    "val/acc",
    "val/acc_best",
    "epoch",
    "lr-SGD",
    *(f"val/acc_class/{c}" for c in DIGITS),
}
IMAGE_TAGS = {"train/inputs", "val/confusion_matrix", "val/misclassified"}
# Two full epochs of digits: 23 steps each, logged every 10 steps.
RUN = [*FAST, "--trainer.max_epochs=2", "--trainer.log_every_n_steps=10"]


def events(log_dir: Path) -> EventAccumulator:
    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    return acc


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """One twinloop-compare run on digits: Lightning and reference event files side by side."""
    root = tmp_path_factory.mktemp("tb")
    lit = compare.run_lightning(RUN, root, "digits")
    ref = compare.run_reference(RUN, root / "digits" / "reference")
    return root / "digits", lit, ref


@pytest.mark.xdist_group("tensorboard_pair")
def test_every_tag_is_logged(pair):
    """Scalars (loss, acc, best, lr, epoch, per-class), images and the hparams entry are all there."""
    acc = events(pair[0] / "lightning")
    assert set(acc.Tags()["scalars"]) >= SCALAR_TAGS
    assert set(acc.Tags()["images"]) >= IMAGE_TAGS
    assert [e.step for e in acc.Scalars("train/loss")] == [9, 19, 29, 39]  # per step, every 10 steps
    assert len(acc.Scalars("train/loss_epoch")) == 2  # per epoch


@pytest.mark.xdist_group("tensorboard_pair")
def test_last_val_acc_is_what_the_run_reported(pair):
    """The last val/acc in the event file is the value the run's last validation reported."""
    _, lit, _ = pair
    assert events(pair[0] / "lightning").Scalars("val/acc")[-1].value == pytest.approx(lit.val[-1]["val/acc"], abs=0)


def hparams_tab(log_dir: Path) -> tuple[dict, set[str]]:
    """The HPARAMS tab's data as TensorBoard reads it from the event file: settings and metric tags."""
    acc = events(log_dir)
    content = acc.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    settings = {
        k: v.WhichOneof("kind") and getattr(v, v.WhichOneof("kind"))
        for k, v in start.session_start_info.hparams.items()
    }
    return settings, {m.name.tag for m in experiment.metric_infos}


@pytest.mark.parametrize("side", ["lightning", "reference"])
@pytest.mark.xdist_group("tensorboard_pair")
def test_hparams_tab_shows_the_settings_that_shape_a_result(pair, side):
    """HPARAMS: a compact set of settings (no callback or logger defaults) and val/acc, val/loss and
    val/acc_best as metric columns, in both loops."""
    settings, metrics = hparams_tab(pair[0] / side)
    assert metrics == {"val/acc", "val/loss", "val/acc_best"}
    assert 8 <= len(settings) <= 20
    assert not any(k.startswith(("checkpoint", "last_checkpoint", "lr_monitor", "trainer/logger")) for k in settings)
    assert settings["model/backbone"] == "simple_cnn"
    assert settings["model/dropout"] == 0.25
    assert settings["data/dataset"] == "digits"
    assert settings["data/batch_size"] == 64 and settings["data/augment"] == "false"
    assert settings["optimizer"] == "SGD" and settings["optimizer/lr"] == 0.05
    assert settings["lr_scheduler"] == "none"
    assert settings["trainer/max_epochs"] == 2 and settings["seed"] == 42


@pytest.mark.xdist_group("tensorboard_pair")
def test_both_loops_fill_the_hparams_tab_alike(pair):
    """The two loops log the same HPARAMS entry, so their runs line up in one table."""
    assert hparams_tab(pair[0] / "lightning") == hparams_tab(pair[0] / "reference")


@pytest.mark.xdist_group("tensorboard_pair")
def test_confusion_matrix_png_counts_the_validation_set(pair):
    """The confusion-matrix image decodes as a PNG whose counts sum to the validation set's size."""
    acc = events(pair[0] / "lightning")
    image = acc.Images("val/confusion_matrix")[-1]
    png = Image.open(io.BytesIO(image.encoded_image_string))
    assert png.format == "PNG"
    counts = json.loads(png.text["confusion_matrix"])
    assert len(counts) == 10 and sum(map(sum, counts)) == round(1797 * 0.2)  # the digits val split
    assert json.loads(png.text["class_names"]) == DIGITS


@pytest.fixture(scope="module")
def accumulated_pair(tmp_path_factory):
    """A pair with gradient accumulation and a log every 2 steps: LR logged on every micro-batch."""
    root = tmp_path_factory.mktemp("tb-acc")
    args = [*RUN, "--trainer.max_epochs=1", "--trainer.accumulate_grad_batches=3", "--trainer.log_every_n_steps=2"]
    compare.run_lightning(args, root, "digits")
    compare.run_reference(args, root / "digits" / "reference")
    return root / "digits", None, None


@pytest.mark.parametrize("runs", ["pair", "accumulated_pair"])
@pytest.mark.xdist_group("tensorboard_pair")
def test_reference_logs_the_same_tags_and_values(runs, request):
    """The reference run logs the same events: same tags, same (step, value) sequences within 1e-6."""
    root = request.getfixturevalue(runs)[0]
    lit, ref = events(root / "lightning"), events(root / "reference")
    assert set(lit.Tags()["scalars"]) == set(ref.Tags()["scalars"])
    assert set(ref.Tags()["images"]) >= IMAGE_TAGS
    for tag in lit.Tags()["scalars"]:
        a = [(e.step, e.value) for e in lit.Scalars(tag)]
        b = [(e.step, e.value) for e in ref.Scalars(tag)]
        assert [step for step, _ in a] == [step for step, _ in b], tag
        for (step, x), (_, y) in zip(a, b):
            assert abs(x - y) <= 1e-6, (tag, step, x, y)


SHORT = [*FAST, "--trainer.max_epochs=1", "--trainer.limit_train_batches=4"]


@pytest.fixture(scope="module")
def short_fit(tmp_path_factory) -> str:
    """The best checkpoint of one short Lightning fit, which both stages validate or test."""
    root = tmp_path_factory.mktemp("short_fit")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        cli = TwinloopCLI(args=["fit", *SHORT, "--trainer.default_root_dir=fit"])
    return str(root / cli.trainer.checkpoint_callback.best_model_path)


@pytest.mark.xdist_group("short_fit")
@pytest.mark.parametrize("stage", ["validate", "test"])
def test_reference_validate_and_test_write_what_lightning_writes(stage, short_fit):
    """`twinloop-reference validate|test` write event files with Lightning's tags, steps and values."""
    args, ckpt = SHORT, short_fit
    TwinloopCLI(args=[stage, *args, "--trainer.default_root_dir=lit", "--ckpt_path", ckpt])
    reference_main([stage, *args, "--log_dir=ref", "--ckpt_path", ckpt])
    (lit_dir,) = Path("lit/lightning_logs").glob("version_*")
    lit, ref = events(lit_dir), events(Path("ref"))
    prefix = "val" if stage == "validate" else "test"
    assert f"{prefix}/acc" in lit.Tags()["scalars"]
    assert set(lit.Tags()["scalars"]) == set(ref.Tags()["scalars"])
    assert set(lit.Tags()["images"]) == set(ref.Tags()["images"])
    for tag in lit.Tags()["scalars"]:
        assert [(e.step, e.value) for e in lit.Scalars(tag)] == [(e.step, e.value) for e in ref.Scalars(tag)], tag


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(url: str):
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


@pytest.mark.xdist_group("tensorboard_pair")
def test_a_real_tensorboard_server_serves_both_runs(pair):
    """tensorboard on a loopback port serves both runs with their scalar and image tags."""
    port = free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tensorboard.main",
            "--logdir",
            str(pair[0]),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--load_fast=false",
            "--reload_interval=1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        runs = []
        while time.monotonic() < deadline and set(runs) != {"lightning", "reference"}:
            time.sleep(0.5)
            try:
                runs = get_json(f"{base}/data/runs")
            except OSError:
                continue
        assert set(runs) == {"lightning", "reference"}
        scalars = get_json(f"{base}/data/plugin/scalars/tags")
        images = get_json(f"{base}/data/plugin/images/tags")
        for run in ("lightning", "reference"):
            assert set(scalars[run]) >= SCALAR_TAGS
            assert set(images[run]) >= IMAGE_TAGS
    finally:
        server.terminate()
        server.wait(timeout=20)


def test_one_picture_schedule_for_both_loops(tmp_path):
    """PictureLog, which both loops call: the input grid once, validation pictures every n-th epoch."""
    writer = SummaryWriter(str(tmp_path))
    pictures = PictureLog(every_n_epochs=2, mean=(0.5,), std=(0.25,))
    metrics = build_stage_metrics("val", 3)
    x, target = torch.randn(4, 1, 8, 8), torch.tensor([0, 1, 2, 0])
    metrics.update(torch.eye(3)[[0, 2, 2, 1]], target, torch.tensor(0.5), images=x)
    for step in range(3):
        pictures.log_inputs(writer, x, step)
    for epoch in range(5):
        pictures.log_validation(writer, metrics, ["a", "b", "c"], epoch, step=10 * epoch)
    writer.close()
    acc = events(tmp_path)
    assert [e.step for e in acc.Images("train/inputs")] == [0]
    assert [e.step for e in acc.Images("val/confusion_matrix")] == [0, 20, 40]
    assert [e.step for e in acc.Images("val/misclassified")] == [0, 20, 40]


def test_the_private_summary_writer_api_is_still_there(tmp_path):
    """monitoring.file_writer reaches into SummaryWriter (no public way to keep a PNG's bytes): fail loudly
    if it changes."""
    writer = SummaryWriter(str(tmp_path))
    inner = file_writer(writer)
    assert callable(inner.add_summary) and inner.get_logdir() == str(tmp_path)
    writer.close()
