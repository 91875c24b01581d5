"""``model.network.backbone: timm/<name>``: with the optional timm extra, and without it."""

import sys
from pathlib import Path

import pytest
import torch

from project.cli import TwinloopCLI, main
from project.models import build_network
from project.models import pretrained as pretrained_module
from tests.helpers import FAST

REVISION = "0" * 40


def test_the_project_runs_without_timm_and_says_how_to_get_it(monkeypatch, capsys):
    """With timm not importable, other backbones build and fit; timm/<name> is one error line naming the extra."""
    monkeypatch.setitem(sys.modules, "timm", None)
    assert build_network("resnet18", num_classes=3).eval()(torch.zeros(1, 3, 32, 32)).shape == (1, 3)
    main(["fit", *FAST, "--trainer.max_epochs=1", "--trainer.limit_train_batches=1", "--trainer.limit_val_batches=1"])
    assert Path("lightning_logs/version_0").is_dir()
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", *FAST, "--model.network.backbone=timm/resnet18", "--trainer.default_root_dir=timm_run"])
    assert exit_info.value.code == 1
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "error: model.network.backbone timm/<name> needs timm, which is not installed: pip install 'twinloop[timm]'"
    )
    assert not Path("timm_run").exists()


@pytest.fixture
def hub_cache(tmp_path, monkeypatch) -> Path:
    """An empty Hugging Face cache, and no network."""
    pytest.importorskip("timm")
    import huggingface_hub.constants

    cache = tmp_path / "hf_hub"
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))

    def offline(*args, **kwargs):
        raise OSError("[Errno 101] Network is unreachable")

    monkeypatch.setattr("project.models.timm_backbones.socket.create_connection", offline)
    monkeypatch.setattr(pretrained_module.socket, "create_connection", offline)
    return cache


def place_hub_weights(cache: Path, repo: str = "timm/resnet18.a1_in1k") -> dict:
    """``model.safetensors`` of a timm resnet18 where huggingface_hub keeps it: models--<repo>/snapshots/<rev>/."""
    import timm
    from safetensors.torch import save_file

    folder = cache / f"models--{repo.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(REVISION)
    (folder / "snapshots" / REVISION).mkdir(parents=True)
    torch.manual_seed(0)
    state = timm.create_model("resnet18", num_classes=1000).state_dict()
    save_file(state, folder / "snapshots" / REVISION / "model.safetensors")
    return state


def test_timm_default_weights_load_from_the_hub_cache(hub_cache):
    """timm/resnet18 with DEFAULT: timm's default tag (a1_in1k) from the cache, strict but for the new head."""
    state = place_hub_weights(hub_cache)
    net = build_network("timm/resnet18", num_classes=4, weights="DEFAULT")
    loaded = net.state_dict()
    assert all(torch.equal(loaded[k], state[k]) for k in loaded if not k.startswith("fc."))
    assert net.fc.out_features == 4


def test_timm_offline_without_the_file_names_it_and_the_directory(hub_cache, capsys):
    """Not cached, no network: exit 1, one line with the file, the cache folder and how to fill it; no run directory."""
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", *FAST, "--model.network.backbone=timm/resnet18", "--model.network.weights=a2_in1k"])
    assert exit_info.value.code == 1
    (line,) = capsys.readouterr().err.strip().splitlines()
    folder = hub_cache / "models--timm--resnet18.a2_in1k"
    assert line.startswith(
        "error: model.network.weights resnet18.a2_in1k (timm) needs model.safetensors of timm/resnet18.a2_in1k"
    )
    assert f"not in {folder}" in line and "hf download timm/resnet18.a2_in1k model.safetensors" in line
    assert not Path("lightning_logs").exists()


def test_timm_weights_bring_their_preprocessing(hub_cache, image_folder):
    """An image folder on timm weights gets their resize (224 / crop_pct 0.95 = 235), 224 crop, mean and std."""
    place_hub_weights(hub_cache)
    args = ["--data.dataset=imagefolder", f"--data.root={image_folder}", "--model.network.backbone=timm/resnet18"]
    cli = TwinloopCLI(args=[*args, "--model.network.weights=DEFAULT", *FAST], run=False)
    assert (cli.config.data.image_size, cli.config.data.crop_size) == (235, 224)
    assert cli.config.data.mean == [0.485, 0.456, 0.406] and cli.datamodule.input_hw == (224, 224)
