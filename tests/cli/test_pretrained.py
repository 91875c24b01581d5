"""Pretrained weights (``model.network.weights``): torchvision's cache, files, the new head, preprocessing,
offline errors."""

from pathlib import Path

import pytest
import torch
import yaml

from project.cli import TwinloopCLI, main
from project.errors import CheckpointError, ConfigError
from project.models import build_network
from project.models import pretrained as pretrained_module
from project.reference.cli import main as reference_main
from project.reference.config import load_run
from tests.helpers import FAST, make_image_folder, place_torchvision_weights

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


@pytest.fixture
def torch_home(tmp_path, monkeypatch) -> Path:
    """An empty ``$TORCH_HOME``, and no network: a download attempt fails at once, as offline."""
    home = tmp_path / "torch_home"
    monkeypatch.setenv("TORCH_HOME", str(home))

    def offline(*args, **kwargs):
        raise OSError("[Errno 101] Network is unreachable")

    monkeypatch.setattr(pretrained_module.socket, "create_connection", offline)
    return home


def test_default_weights_load_from_torch_home_with_a_new_head(torch_home):
    """DEFAULT loads the cached file strictly into everything but the head, which is made for 3 classes."""
    state = place_torchvision_weights(torch_home)
    net = build_network("resnet18", num_classes=3, weights="DEFAULT")
    loaded = net.state_dict()
    body = [k for k in loaded if not k.startswith("fc.")]
    assert len(body) == len(state) - 2
    mismatched = [k for k in body if not torch.equal(loaded[k], state[k])]
    assert not mismatched, mismatched[:3]
    assert loaded["fc.weight"].shape == (3, 512) and state["fc.weight"].shape == (1000, 512)


def test_one_channel_stem_sums_the_rgb_filters(torch_home):
    """For gray data the first convolution takes the sum of the pretrained RGB filters."""
    state = place_torchvision_weights(torch_home)
    net = build_network("resnet18", num_classes=10, in_channels=1, weights="IMAGENET1K_V1")
    torch.testing.assert_close(net.conv1.weight.detach(), state["conv1.weight"].sum(dim=1, keepdim=True))


def test_offline_without_the_file_is_one_error_line_and_no_run_directory(torch_home, image_folder, capsys):
    """No cached file and no network: exit 1, one error line with the file, the directory and where to put it."""
    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                "fit",
                "--data.dataset=imagefolder",
                f"--data.root={image_folder}",
                *FAST,
                "--model.network.backbone=resnet18",
            ]
            + ["--model.network.weights=DEFAULT"]
        )
    assert exit_info.value.code == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: model.network.weights DEFAULT"), lines
    directory = torch_home / "hub" / "checkpoints"
    assert "resnet18-f37072fd.pth" in lines[0] and str(directory) in lines[0]
    assert f"copy it to {directory / 'resnet18-f37072fd.pth'}" in lines[0] and "Network is unreachable" in lines[0]
    assert not Path("lightning_logs").exists()


def test_a_file_of_another_architecture_names_the_keys(torch_home, tmp_path):
    """resnet34 weights given to resnet18: a CheckpointError naming the file and the keys that do not fit."""
    place_torchvision_weights(torch_home, "resnet34")
    file = next((torch_home / "hub" / "checkpoints").glob("resnet34-*.pth"))
    with pytest.raises(
        CheckpointError, match=r"resnet34-.*\.pth does not fit .* unexpected \(layer1\.2\.conv1\.weight"
    ):
        build_network("resnet18", num_classes=3, weights=str(file))


def test_an_unknown_weights_name_lists_the_choices():
    """A misspelt weights name is a config error naming it and the choices."""
    with pytest.raises(ConfigError, match=r"no weights 'IMAGENET1K_V9'; choose one of DEFAULT, IMAGENET1K_V1"):
        build_network("resnet18", num_classes=3, weights="IMAGENET1K_V9")


def test_weights_from_a_twinloop_checkpoint(torch_home, tmp_path):
    """A .ckpt's ``net.`` tensors load into the backbone; its head, for other classes, is replaced."""
    source = build_network("resnet18", num_classes=7)
    ckpt = tmp_path / "old.ckpt"
    torch.save({"state_dict": {f"net.{k}": v for k, v in source.state_dict().items()}}, ckpt)
    net = build_network("resnet18", num_classes=3, weights=str(ckpt))
    torch.testing.assert_close(net.layer4[1].conv2.weight, source.layer4[1].conv2.weight, rtol=0, atol=0)
    assert net.fc.out_features == 3


def test_the_data_takes_the_weights_preprocessing_unless_the_config_sets_it(torch_home, tmp_path):
    """Unset, an image folder gets the weights' resize 256, crop 224, mean and std; set, the config's stay."""
    place_torchvision_weights(torch_home)
    images = make_image_folder(tmp_path / "images", per_class=4)
    base = [
        "--data.dataset=imagefolder",
        f"--data.root={images}",
        "--model.network.backbone=resnet18",
        "--model.network.weights=DEFAULT",
    ]
    cli = TwinloopCLI(args=[*base, *FAST], run=False)
    assert cli.datamodule.input_hw == (224, 224)
    assert (cli.config.data.image_size, cli.config.data.crop_size) == (256, 224)
    assert [round(m, 3) for m in cli.datamodule.mean] == IMAGENET_MEAN and list(cli.datamodule.std) == IMAGENET_STD
    cli = TwinloopCLI(args=[*base, *FAST, "--data.image_size=36", "--data.crop_size=32"], run=False)
    assert cli.datamodule.input_hw == (32, 32)
    cli.datamodule.setup("fit")
    assert cli.datamodule.train_set[0][0].shape == (3, 32, 32)


def test_the_saved_config_shows_the_preprocessing_used(torch_home, tmp_path):
    """A pretrained fit's config.yaml holds the mean and std it normalized with, and its checkpoint the same."""
    place_torchvision_weights(torch_home)
    images = make_image_folder(tmp_path / "images", per_class=4)
    main(
        ["fit", "--data.dataset=imagefolder", f"--data.root={images}", "--data.image_size=36", "--data.crop_size=32"]
        + ["--model.network.backbone=resnet18", "--model.network.weights=DEFAULT", "--trainer.max_epochs=1", *FAST]
        + ["--data.batch_size=10"]  # one batch of the 10 training images: a batch of 2 alike ones breaks BatchNorm
        + ["--model.pictures.every_n_epochs=0", "--data.num_workers=0"]
    )
    run = Path("lightning_logs/version_0")
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["model"]["network"]["weights"] == "DEFAULT"
    assert config["data"]["mean"] == IMAGENET_MEAN and config["data"]["std"] == IMAGENET_STD
    assert (config["data"]["image_size"], config["data"]["crop_size"]) == (36, 32)
    checkpoint = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["preprocessing"] == {
        "input_size": [32, 32],
        "channels": 3,
        "resize": 36,
        "crop": 32,
        "mean": IMAGENET_MEAN,
        "std": IMAGENET_STD,
    }


@pytest.fixture(scope="module")
def pretrained_checkpoint(tmp_path_factory) -> tuple[Path, list[str]]:
    """A checkpoint of a short fit from (placed) DEFAULT resnet18 weights on digits, and its arguments."""
    root = tmp_path_factory.mktemp("pretrained_fit")
    args = [
        *FAST,
        "--model.network.backbone=resnet18",
        "--model.network.weights=DEFAULT",
        "--model.pictures.every_n_epochs=0",
    ]
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TORCH_HOME", str(root / "torch_home"))
        place_torchvision_weights(root / "torch_home")
        fit = ["fit", *args, "--trainer.max_epochs=1", "--trainer.limit_train_batches=2"]
        main([*fit, "--trainer.limit_val_batches=1", f"--trainer.default_root_dir={root}"])
    return root / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt", args


@pytest.mark.xdist_group("pretrained_checkpoint")
def test_with_a_checkpoint_the_weights_file_is_not_needed(torch_home, pretrained_checkpoint):
    """validate --ckpt_path of a pretrained run works offline with an empty cache: the checkpoint has all weights."""
    last, args = pretrained_checkpoint
    cli = TwinloopCLI(args=["validate", *args, "--ckpt_path", str(last), "--trainer.limit_val_batches=1"])
    assert "val/acc" in cli.trainer.callback_metrics
    assert cli.model.hparams.network["weights"] == "DEFAULT"
    assert (
        yaml.safe_load(Path(cli.trainer.log_dir, "config.yaml").read_text())["model"]["network"]["weights"] == "DEFAULT"
    )


@pytest.mark.xdist_group("pretrained_checkpoint")
def test_the_reference_validates_a_pretrained_checkpoint_without_the_weights_file(
    torch_home, pretrained_checkpoint, capsys
):
    """twinloop-reference validate --ckpt_path: the checkpoint's weights, no cache needed, the weights' mean."""
    last, args = pretrained_checkpoint
    reference_main(["validate", *args, "--ckpt_path", str(last), "--trainer.limit_val_batches=1", "--log_dir=ref"])
    assert "val/acc " in capsys.readouterr().out
    run = load_run(args, checkpoint_brings_weights=True)
    assert run.datamodule.mean == (sum(IMAGENET_MEAN) / 3,)
