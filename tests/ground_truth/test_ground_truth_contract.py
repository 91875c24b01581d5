"""The one checkpoint contract (``project.checkpoint_contract``) and the one epoch report
(``project.epoch_report``), each against an answer worked out by hand, and checkpoints of the layout
before the module's arguments were grouped."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from project import checkpoint_contract as contract
from project.cli import TwinloopCLI
from project.cli import main as twinloop
from project.epoch_report import report_epoch
from project.errors import UserPathError
from project.export import load_network
from project.metrics import build_stage_metrics
from project.module import ImageClassifier
from project.monitoring import PictureLog
from project.specs import NetworkSpec, PictureSpec, as_spec, grouped, plain
from tests.helpers import FAST

DIGITS = [str(i) for i in range(10)]


class Holder:
    class_names = ["a", "b"]


class RecordingData:
    def __init__(self):
        self.continued: list[int] = []
        self.started: list[int] = []

    def start_epoch(self, epoch: int) -> None:
        self.started.append(epoch)

    def continue_epoch(self, batches_done: int) -> None:
        self.continued.append(batches_done)

    def preprocessing(self) -> dict:
        return {"mean": [0.5]}


def metrics_with(stage: str, logits: list[list[float]], target: list[int], loss: float):
    metrics = build_stage_metrics(stage, 2)
    metrics.update(torch.tensor(logits), torch.tensor(target), torch.tensor(loss))
    return metrics


def test_extras_round_trip_best_names_running_sums_and_random_state():
    """What capture_extras saved, restore_extras puts back: the draws after it are the draws after the capture."""
    train = metrics_with("train", [[2.0, 0.0], [0.0, 1.0], [3.0, 0.0]], [0, 0, 0], 0.5)  # 2 of 3 right
    val = build_stage_metrics("val", 2)
    val.best_acc = 0.75
    extras = contract.capture_extras(["x", "y"], val, train, RecordingData())
    expected = (torch.rand(3), np.random.rand(), random.random())
    fresh_train, fresh_val, holder = build_stage_metrics("train", 2), build_stage_metrics("val", 2), Holder()
    contract.restore_extras({**extras, **contract.mid_epoch(3)}, holder, fresh_val, fresh_train)
    assert (torch.rand(3), np.random.rand(), random.random()) == (pytest.approx(expected[0]), *expected[1:])
    assert fresh_val.best_acc == 0.75 and holder.class_names == ["x", "y"]
    assert extras[contract.PREPROCESSING] == {"mean": [0.5]}
    results = fresh_train.compute()
    assert results["train/acc"].item() == pytest.approx(2 / 3) and results["train/loss_epoch"].item() == 0.5


def test_running_sums_come_back_only_for_a_checkpoint_written_inside_an_epoch():
    """At an epoch's end the next epoch starts from zero: the saved sums are not loaded."""
    train = metrics_with("train", [[2.0, 0.0]], [0], 1.0)
    extras = contract.capture_extras(["x", "y"], build_stage_metrics("val", 2), train, None)
    fresh = build_stage_metrics("train", 2)
    contract.restore_extras(extras, Holder(), build_stage_metrics("val", 2), fresh)
    assert int(fresh.counts.samples) == 0 and contract.PREPROCESSING not in extras


@pytest.mark.parametrize(
    ("checkpoint", "world_size", "expected", "continued"),
    [
        ({"epoch": 2, "global_step": 30}, 1, (3, 0, 30), []),  # an epoch's end: the next epoch, from its start
        ({"epoch": 2, "global_step": 27, **contract.mid_epoch(4)}, 1, (2, 4, 27), [4]),  # inside: the same epoch
        ({"epoch": 2, "global_step": 30}, 2, (3, 0, 30), []),
    ],
)
def test_resume_point(checkpoint, world_size, expected, continued):
    """Where a resumed run goes on, and the data told its epoch and to go on inside it."""
    data = RecordingData()
    start = contract.resume_point(checkpoint, data, world_size)
    assert (start.epoch, start.batch, start.step) == expected and data.continued == continued
    assert data.started == [expected[0]]
    assert str(start) == f"epoch {expected[0]}, batch {expected[1]} (step {expected[2]})"


@pytest.mark.parametrize(("written_by", "resumed_by"), [(1, 2), (2, 1), (2, 4)])
def test_a_checkpoint_written_inside_an_epoch_resumes_with_as_many_processes_only(written_by, resumed_by):
    """Each rank took its share of the order, and goes on with it: with another number of processes the
    position does not carry over, refused with what to do."""
    marker = {"batches_done": 3, **({"world_size": written_by} if written_by > 1 else {})}
    checkpoint = {"epoch": 0, "global_step": 3, "mid_epoch": marker}
    with pytest.raises(UserPathError, match=f"by {written_by} process.*resume it with {written_by} "):
        contract.resume_point(checkpoint, RecordingData(), resumed_by)
    assert contract.resume_point(checkpoint, RecordingData(), written_by).batch == 3


def test_the_validation_report_by_hand():
    """Loss 0.25 and 3 of 4 right (class a 2/2, class b 1/2): shown, best, per class, improved, and the pictures."""
    metrics = build_stage_metrics("val", 2)
    metrics.update(
        torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 0.0]]), torch.tensor([0, 0, 1, 1]), torch.tensor(0.25)
    )
    metrics.best_acc = 0.5
    report = report_epoch(metrics, 3, ["a", "b"], PictureLog(3, (0.5,), (0.25,)))
    assert {k: float(v) for k, v in report.shown.items()} == {"val/loss": 0.25, "val/acc": 0.75}
    assert report.scalars == {"val/acc_best": 0.75} and report.improved
    assert report.per_class == {"val/acc_class/a": 1.0, "val/acc_class/b": 0.5}
    assert set(report.pictures) == {"val/confusion_matrix", "val/misclassified"}
    assert report_epoch(metrics, 4, ["a", "b"], PictureLog(3, (0.5,), (0.25,))).pictures == {}  # not due
    assert not report_epoch(metrics, 5, ["a", "b"]).improved  # 0.75 again: a tie is no improvement


def test_a_non_finite_validation_loss_stops_the_report():
    """The report checks the loss before anything can keep the epoch."""
    metrics = metrics_with("val", [[1.0, 0.0]], [0], float("nan"))
    with pytest.raises(Exception, match="validation of epoch 2"):
        report_epoch(metrics, 2, ["a", "b"])


def test_the_test_report_is_the_metrics():
    """A test epoch reports its metrics, nothing more."""
    report = report_epoch(metrics_with("test", [[0.0, 1.0]], [0], 2.0), 0, ["a", "b"])
    assert {k: float(v) for k, v in report.values.items()} == {"test/loss": 2.0, "test/acc": 0.0}


def test_flat_arguments_of_the_earlier_layout_are_grouped():
    """The earlier flat hyperparameters map into network and pictures; the rest stays."""
    flat = {"num_classes": 10, "backbone": "resnet18", "dropout": 0.1, "log_images_every_n_epochs": 0, "lr": 3}
    assert grouped(flat) == {
        "num_classes": 10,
        "lr": 3,
        "network": {"backbone": "resnet18", "dropout": 0.1},
        "pictures": {"every_n_epochs": 0},
    }


def test_the_module_keeps_plain_hyperparameters():
    """Specs go into the hyperparameters as dicts, which weights_only loading reads, and come back as specs."""
    model = ImageClassifier(network=NetworkSpec(dropout=0.1), pictures=PictureSpec(every_n_epochs=0))
    assert model.hparams["network"]["dropout"] == 0.1 and model.hparams["pictures"]["every_n_epochs"] == 0
    again = ImageClassifier(**model.hparams)
    assert again.network == model.network and again.picture_spec == model.picture_spec


@pytest.fixture(scope="module")
def earlier_layout_checkpoint(tmp_path_factory):
    """A fit's last.ckpt with its hyperparameters rewritten in the flat layout of earlier versions."""
    root = tmp_path_factory.mktemp("earlier")
    args = [*FAST, "--trainer.max_epochs=1", "--trainer.limit_train_batches=2", "--trainer.limit_val_batches=1"]
    twinloop(["fit", *args, "--model.network.dropout=0.1", f"--trainer.default_root_dir={root}"])
    (last,) = root.glob("lightning_logs/version_0/checkpoints/last.ckpt")
    checkpoint = torch.load(last, weights_only=True)
    hp = checkpoint["hyper_parameters"]
    flat = {**{k: v for k, v in hp.items() if k not in ("network", "pictures")}, **hp.pop("network")}
    flat["log_images_every_n_epochs"] = hp["pictures"]["every_n_epochs"]
    flat["num_misclassified_images"] = hp["pictures"]["num_misclassified"]
    checkpoint["hyper_parameters"] = flat
    torch.save(checkpoint, last)
    return last, args


@pytest.mark.fit
def test_a_checkpoint_of_the_earlier_layout_validates(earlier_layout_checkpoint):
    """validate --ckpt_path reads its flat hyperparameters into the grouped config: dropout 0.1 comes back."""
    last, args = earlier_layout_checkpoint
    cli = TwinloopCLI(args=["validate", *args, f"--ckpt_path={last}"])
    assert cli.model.network.dropout == 0.1 and "val/acc" in cli.trainer.callback_metrics


@pytest.mark.fit
def test_a_checkpoint_of_the_earlier_layout_exports(earlier_layout_checkpoint):
    """export builds the network from the flat hyperparameters too."""
    net, _ = load_network(earlier_layout_checkpoint[0])
    assert [m.p for m in net.modules() if isinstance(m, torch.nn.Dropout)][-1] == 0.1


def test_the_network_spec_builds_what_it_names():
    """Dropout, the small-input stem and the memory format reach the network built."""
    net = NetworkSpec(dropout=0.1).build(10, 1)
    assert [m.p for m in net.modules() if isinstance(m, torch.nn.Dropout)][-1] == 0.1
    resnet = NetworkSpec(backbone="resnet18", small_input_stem=True, channels_last=True).build(3, 1)
    assert (resnet.conv1.in_channels, resnet.conv1.kernel_size, resnet.conv1.stride) == (1, (3, 3), (1, 1))
    assert resnet.fc.out_features == 3 and resnet.conv1.weight.is_contiguous(memory_format=torch.channels_last)


def test_the_network_spec_gives_the_optimizer_one_group_or_head_and_backbone():
    """All parameters in one list; when fine-tuning, a head group and a backbone group at lr_scale."""
    net = NetworkSpec().build(10, 1)
    assert NetworkSpec().optimizer_parameters(net) == list(net.parameters())
    head, backbone = NetworkSpec(freeze_backbone_epochs=1, backbone_lr_scale=0.1).optimizer_parameters(net)
    assert (head["name"], backbone["name"], backbone["lr_scale"]) == ("head", "backbone", 0.1)
    assert len(head["params"]) + len(backbone["params"]) == len(list(net.parameters())) and head["params"]


def test_specs_and_plain_data_convert_both_ways():
    """A dict becomes a spec, a spec stays itself; plain() turns a spec into a dict and leaves the rest."""
    spec = NetworkSpec(dropout=0.3)
    assert as_spec(NetworkSpec, {"dropout": 0.3}) == spec and as_spec(NetworkSpec, spec) is spec
    assert plain(spec)["dropout"] == 0.3 and plain({"a": 1}) == {"a": 1} and plain(NetworkSpec) is NetworkSpec


class StateData:
    def state_dict(self) -> dict:
        return {"generator": 7}


def test_the_reference_state_is_in_lightnings_layout():
    """Weights under net., one optimizer and scheduler state each, the counters, the data under its class name."""
    net = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, 1)
    state = contract.lightning_state(net, optimizer, scheduler, StateData(), epoch=3, step=40)
    assert set(state["state_dict"]) == {"net.weight", "net.bias"} and state["StateData"] == {"generator": 7}
    assert (state["epoch"], state["global_step"]) == (3, 40) and state["pytorch-lightning_version"]
    assert len(state["optimizer_states"]) == len(state["lr_schedulers"]) == 1
    assert contract.lightning_state(net, optimizer, None, StateData(), 0, 0)["lr_schedulers"] == []


def test_network_weights_load_from_a_checkpoint_with_its_class_names(tmp_path):
    """The weights and class names come back; another class order is refused, naming the file."""
    source = ImageClassifier(num_classes=2, in_channels=1, class_names=["a", "b"])
    path = tmp_path / "c.ckpt"
    torch.save({"state_dict": source.state_dict(), "class_names": ["a", "b"]}, path)
    target = ImageClassifier(num_classes=2, in_channels=1, class_names=["a", "b"])
    contract.load_network_weights(target, str(path))
    assert all(torch.equal(v, source.net.state_dict()[k]) for k, v in target.net.state_dict().items())
    other = ImageClassifier(num_classes=2, in_channels=1, class_names=["b", "a"])
    with pytest.raises(Exception, match=r"--ckpt_path: the classes differ: the checkpoint .*c\.ckpt"):
        contract.load_network_weights(other, str(path))


class RecordingFileWriter:
    def __init__(self):
        self.summaries = []

    def add_summary(self, summary, step):
        self.summaries.append((summary.value[0].tag, step))


class RecordingWriter:
    def __init__(self):
        self.file_writer = RecordingFileWriter()

    def _get_file_writer(self):
        return self.file_writer


def test_a_report_writes_its_pictures_and_holds_every_scalar():
    """write_pictures writes each picture at the step given; values holds shown, other and per-class scalars."""
    metrics = build_stage_metrics("val", 2)
    metrics.update(torch.tensor([[1.0, 0.0]]), torch.tensor([1]), torch.tensor(0.5))
    report = report_epoch(metrics, 0, ["a", "b"], PictureLog(1, (0.5,), (0.25,)))
    writer = RecordingWriter()
    report.write_pictures(writer, 9)
    assert writer.file_writer.summaries == [("val/confusion_matrix", 9), ("val/misclassified", 9)]
    assert set(report.values) == {"val/loss", "val/acc", "val/acc_best", "val/acc_class/a", "val/acc_class/b"}
