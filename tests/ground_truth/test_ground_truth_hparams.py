"""Ground truth for the HPARAMS entry both loops log: the settings picked from a hand-written config,
as TensorBoard reads them back, and when pictures are switched off."""

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2
from torch.utils.tensorboard import SummaryWriter

from project.metrics import build_stage_metrics
from project.monitoring import HPARAM_METRICS, PictureLog, log_hparams, run_hparams

CONFIG = {
    "seed_everything": 7,
    "model": {
        "network": {
            "backbone": "resnet18",
            "weights": "DEFAULT",
            "freeze_backbone_epochs": 2,
            "backbone_lr_scale": 0.1,
            "dropout": 0.1,
        },
        "label_smoothing": 0.2,
        "optimizer": {"class_path": "torch.optim.AdamW", "init_args": {"lr": 0.003, "weight_decay": 0.01}},
        "lr_scheduler": {"class_path": "torch.optim.lr_scheduler.OneCycleLR", "init_args": {"max_lr": 0.1}},
    },
    "data": {"dataset": "cifar10", "batch_size": 128, "augment": True},
    "trainer": {"max_epochs": 30, "precision": "bf16-mixed", "accumulate_grad_batches": 2},
}
EXPECTED = {
    "seed": 7,
    "data/dataset": "cifar10",
    "data/batch_size": 128,
    "data/augment": "true",
    "model/backbone": "resnet18",
    "model/weights": "DEFAULT",
    "model/freeze_backbone_epochs": 2,
    "model/backbone_lr_scale": 0.1,
    "model/dropout": 0.1,
    "model/label_smoothing": 0.2,
    "optimizer": "AdamW",
    "optimizer/lr": 0.003,
    "optimizer/weight_decay": 0.01,
    "lr_scheduler": "OneCycleLR",
    "trainer/max_epochs": 30,
    "trainer/precision": "bf16-mixed",
    "trainer/accumulate_grad_batches": 2,
}


def test_hparams_are_the_settings_that_shape_a_result():
    """run_hparams picks seed, data, model, optimizer, scheduler and trainer settings by name; True reads "true"."""
    assert run_hparams(CONFIG) == EXPECTED


def test_missing_optimizer_and_scheduler_read_as_words():
    """No optimizer reads "default", no scheduler "none", and unset values "none" (not 0.0000)."""
    config = {"model": {"optimizer": None, "lr_scheduler": None}, "data": {}, "trainer": {}}
    hparams = run_hparams(config)
    assert hparams["optimizer"] == "default" and hparams["lr_scheduler"] == "none"
    assert hparams["seed"] == "none" and hparams["optimizer/lr"] == "none" and hparams["data/augment"] == "none"


def test_logged_hparams_are_what_tensorboard_reads_back(tmp_path):
    """log_hparams writes the settings and val/acc, val/loss, val/acc_best as metric columns."""
    writer = SummaryWriter(str(tmp_path))
    log_hparams(writer, EXPECTED)
    writer.close()
    events = EventAccumulator(str(tmp_path))
    events.Reload()
    content = events.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    logged = {k: getattr(v, v.WhichOneof("kind")) for k, v in start.session_start_info.hparams.items()}
    assert logged == pytest.approx(EXPECTED)
    assert [m.name.tag for m in experiment.metric_infos] == list(HPARAM_METRICS)
    assert set(HPARAM_METRICS) == {"val/acc", "val/loss", "val/acc_best"}


def test_pictures_every_zero_epochs_means_never(tmp_path):
    """PictureLog(every_n_epochs=0) logs no validation pictures at any epoch."""
    writer = SummaryWriter(str(tmp_path))
    metrics = build_stage_metrics("val", 2)
    metrics.update(torch.eye(2), torch.tensor([1, 0]), torch.tensor(1.0), images=torch.zeros(2, 1, 4, 4))
    for epoch in range(3):
        PictureLog(0, (0.5,), (0.25,)).log_validation(writer, metrics, ["a", "b"], epoch, step=epoch)
    writer.close()
    events = EventAccumulator(str(tmp_path), size_guidance={"images": 0})
    events.Reload()
    assert events.Tags()["images"] == []
