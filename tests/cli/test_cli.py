import csv
import inspect
import socket
from pathlib import Path

import pytest
import torch
import yaml
from lightning.pytorch.loggers import CSVLogger

from project.cli import TwinloopCLI, main
from project.reference.config import load_run
from tests.helpers import CONFIGS, FAST, make_image_folder

SHORT = [*FAST, "--trainer.max_epochs=2", "--trainer.limit_train_batches=6"]


def fit(*args: str) -> TwinloopCLI:
    return TwinloopCLI(args=["fit", *SHORT, *args])


def predict_csv(args: list[str], ckpt: str, folder: Path, out: Path) -> list[dict]:
    """twinloop predict over ``folder`` with ``ckpt``; the CSV's rows."""
    TwinloopCLI(
        args=["predict", *args, f"--data.predict_root={folder}", f"--predictions.output={out}", "--ckpt_path", ckpt]
    )
    return list(csv.DictReader(out.open()))


def run_dir(root: Path = Path()) -> Path:
    (version,) = (root / "lightning_logs").glob("version_*")
    return version


@pytest.fixture(scope="module")
def bare_fit(tmp_path_factory) -> tuple[TwinloopCLI, Path]:
    """One bare ``fit()`` and the folder it ran in (its paths are relative to it): the tests that only
    read what that run left share it, rather than each training the same run again."""
    root = tmp_path_factory.mktemp("bare_fit")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        return fit(), root


def best_checkpoint(bare_fit: tuple[TwinloopCLI, Path]) -> str:
    cli, root = bare_fit
    return str(root / cli.trainer.checkpoint_callback.best_model_path)


@pytest.mark.xdist_group("bare_fit")
def test_fit_with_no_arguments_trains_on_digits(bare_fit):
    """A bare fit trains on the embedded digits and leaves config, best and last checkpoints, and events."""
    cli, root = bare_fit
    assert cli.datamodule.dataset == "digits"
    assert cli.trainer.callback_metrics["val/acc"] > 0.5
    d = run_dir(root)
    assert (d / "config.yaml").is_file()
    assert list((d / "checkpoints").glob("best-*.ckpt"))
    assert (d / "checkpoints" / "last.ckpt").is_file()
    assert list(d.glob("events.out.tfevents.*"))


def test_command_line_overrides_reach_the_objects():
    """Every init argument can be overridden: model, data and trainer keys."""
    cli = fit("--model.network.dropout=0.5", "--data.batch_size=32", "--model.optimizer.init_args.lr=0.01")
    dropouts = [m.p for m in cli.model.net.modules() if isinstance(m, torch.nn.Dropout)]
    assert dropouts and all(p == 0.5 for p in dropouts)
    assert cli.datamodule.batch_size == 32
    assert cli.trainer.optimizers[0].param_groups[0]["lr"] == 0.01
    saved = yaml.safe_load((run_dir() / "config.yaml").read_text())
    assert saved["model"]["network"]["dropout"] == 0.5 and saved["data"]["batch_size"] == 32


def test_print_config_shows_the_schema(capsys):
    """--print_config prints the full YAML config and exits 0."""
    with pytest.raises(SystemExit) as info:
        main(["fit", "-c", str(CONFIGS / "digits.yaml"), "--print_config"])
    assert info.value.code == 0
    config = yaml.safe_load(capsys.readouterr().out)
    assert config["data"]["dataset"] == "digits"
    assert config["model"]["optimizer"]["class_path"] == "torch.optim.SGD"
    assert config["seed_everything"] == 42


@pytest.mark.parametrize("where", ["command line", "config file"])
def test_typo_in_a_key_exits_2_and_names_it(tmp_path, capsys, where):
    """A misspelt key exits with status 2 and names the key."""
    if where == "command line":
        args = ["fit", "--model.dropuot=0.3"]
    else:
        bad = tmp_path / "bad.yaml"
        bad.write_text("model:\n  dropuot: 0.3\n")
        args = ["fit", "-c", str(bad)]
    with pytest.raises(SystemExit) as info:
        main(args)
    assert info.value.code == 2
    assert "dropuot" in capsys.readouterr().err


@pytest.mark.parametrize("config", sorted(p.name for p in CONFIGS.glob("*.yaml")))
def test_every_shipped_config_parses(config):
    """Each config in configs/ is valid against the CLI schema."""
    with pytest.raises(SystemExit) as info:
        main(["fit", "-c", str(CONFIGS / config), "--print_config"])
    assert info.value.code == 0


@pytest.mark.xdist_group("bare_fit")
def test_validate_reports_what_fit_logged_for_the_best_checkpoint(bare_fit):
    """validate --ckpt_path on the best checkpoint gives the val/acc that fit recorded for it."""
    cli, _ = bare_fit
    ckpt = cli.trainer.checkpoint_callback
    logged = float(ckpt.best_model_score)
    val = TwinloopCLI(args=["validate", *FAST, "--ckpt_path", best_checkpoint(bare_fit)])
    assert float(val.trainer.callback_metrics["val/acc"]) == logged


def test_last_checkpoint_is_the_latest_epoch_not_the_best():
    """last.ckpt holds the final epoch even when val/acc stopped improving earlier."""
    # lr=0: the weights never move, so val/acc can't beat epoch 0 and the best file stays at epoch 0.
    cli = TwinloopCLI(
        args=[
            "fit",
            *FAST,
            "--trainer.max_epochs=3",
            "--trainer.limit_train_batches=2",
            "--model.optimizer.init_args.lr=0",
            "--model.network.dropout=0",
        ]
    )
    best = cli.trainer.checkpoint_callback.best_model_path
    assert "epoch000" in best
    last = torch.load(run_dir() / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["epoch"] == 2 and last["global_step"] == 6


def test_num_classes_and_channels_are_linked_from_the_data(image_folder):
    """An image folder with 3 classes of RGB files gives a 3-channel, 3-class model with its class names."""
    cli = TwinloopCLI(
        args=[
            "fit",
            *SHORT,
            "--data.dataset=imagefolder",
            f"--data.root={image_folder}",
            "--data.image_size=16",
            "--trainer.max_epochs=1",
        ]
    )
    assert cli.model.hparams.num_classes == 3 and cli.model.hparams.in_channels == 3
    assert cli.model.class_names == ["circles", "squares", "stripes"]
    assert cli.model(torch.zeros(1, 3, 16, 16)).shape == (1, 3)


def test_imagefolder_fit_then_predict_writes_the_csv(image_folder, tmp_path):
    """fit on a folder of mixed PNG/JPEG files, then predict new files into a CSV: path, class, probability."""
    args = ["--data.dataset=imagefolder", f"--data.root={image_folder}", "--data.image_size=16", *FAST]
    cli = TwinloopCLI(args=["fit", *args, "--trainer.max_epochs=3"])
    new = make_image_folder(tmp_path / "new", per_class=2)
    rows = predict_csv(args, cli.trainer.checkpoint_callback.best_model_path, new, tmp_path / "pred.csv")
    files = sorted(str(p) for p in new.rglob("*") if p.is_file())
    assert sorted(r["path"] for r in rows) == files
    assert {r["class_name"] for r in rows} <= {"circles", "squares", "stripes"}
    assert all(1 / 3 <= float(r["probability"]) <= 1 for r in rows)


def test_offline_download_exits_fast_with_the_message_and_no_run_dir(tmp_path, monkeypatch, capsys):
    """fit -c configs/mnist.yaml offline: one 3 s probe, exit 1, a clear message, no run directory."""

    timeouts = []

    def offline(address, timeout=None, **kwargs):
        timeouts.append(timeout)
        raise OSError("network is unreachable")

    monkeypatch.setattr(socket, "create_connection", offline)
    with pytest.raises(SystemExit) as info:
        main(["fit", "-c", str(CONFIGS / "mnist.yaml"), f"--data.root={tmp_path / 'mnist'}"])
    assert timeouts == [3]  # one short probe, then a clean exit: no retries, no default 180 s timeouts
    assert info.value.code == 1
    err = capsys.readouterr().err
    assert "mnist" in err and "--data.root" in err and "Traceback" not in err
    assert not Path("lightning_logs").exists()


@pytest.mark.xdist_group("bare_fit")
def test_predict_new_files_with_a_digits_model(tmp_path, bare_fit):
    """Files of any size and mode are fitted to what a digits model takes: 1 channel, 8 x 8."""
    new = make_image_folder(tmp_path / "new", classes=("x",), per_class=3)
    rows = predict_csv(FAST, best_checkpoint(bare_fit), new, tmp_path / "digits.csv")
    assert len(rows) == 3 and {r["class_name"] for r in rows} <= set("0123456789")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model.network.backbone=resnet19"], "resnet19"),
        (["--data.val_fraction=1.5"], "data.val_fraction"),
        (["--data.dataset=imagefolder", "--data.root=nope"], "nope"),
    ],
)
def test_bad_values_get_one_clear_line_and_no_run_dir(args, message, capsys):
    """A value that cannot work exits non-zero with an `error:` line naming it, and writes no run."""
    with pytest.raises(SystemExit) as info:
        main(["fit", *args])
    assert info.value.code in (1, 2)
    err = capsys.readouterr().err
    assert err.startswith("error:") and message in err and "Traceback" not in err
    assert not Path("lightning_logs").exists()


def test_mixed_image_sizes_without_image_size_exit_2_before_any_run_dir(image_folder, capsys):
    """An image folder that needs --data.image_size says so and leaves no run directory."""
    with pytest.raises(SystemExit) as info:
        main(["fit", "--data.dataset=imagefolder", f"--data.root={image_folder}"])
    assert info.value.code == 2
    assert "--data.image_size" in capsys.readouterr().err
    assert not Path("lightning_logs").exists()


def test_checkpointing_can_be_turned_off():
    """--trainer.enable_checkpointing=false drops the always-on checkpoint callbacks and saves none."""
    cli = fit("--trainer.enable_checkpointing=false", "--trainer.max_epochs=1")
    assert cli.trainer.checkpoint_callbacks == []
    assert not (run_dir() / "checkpoints").exists()


@pytest.mark.xdist_group("bare_fit")
def test_test_stage_reports_test_metrics(bare_fit):
    """twinloop test logs test/loss and test/acc (digits has no test split: it tests on the validation split)."""
    metrics = TwinloopCLI(args=["test", *FAST, "--ckpt_path", best_checkpoint(bare_fit)]).trainer.callback_metrics
    assert {"test/loss", "test/acc"} <= set(metrics)


@pytest.mark.parametrize("command", ["validate", "test", "predict"])
def test_a_missing_checkpoint_is_one_line_naming_it(command, capsys):
    """--ckpt_path to a file that is not there: exit 1, `error:` naming the path, no run directory."""
    with pytest.raises(SystemExit) as info:
        main([command, *FAST, "--ckpt_path", "no/such.ckpt", "--data.predict_root=."])
    assert info.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith("error: --ckpt_path") and "no/such.ckpt" in err and "Traceback" not in err
    assert not Path("lightning_logs").exists()


def test_a_file_not_found_inside_the_code_keeps_its_traceback(monkeypatch):
    """Only the user's own paths become one-line errors: any other FileNotFoundError is a bug to see."""

    def broken_setup(self, stage=None):
        raise FileNotFoundError("internal file")

    monkeypatch.setattr("project.data.ImageDataModule.setup", broken_setup)
    with pytest.raises(FileNotFoundError, match="internal file"):
        main(["fit", *SHORT])


def test_checkpoints_carry_the_class_names_and_predict_checks_them(image_folder, tmp_path, capsys):
    """Class names travel in every checkpoint; predict names classes from it, and refuses data whose
    classes differ (tests/reliability/test_checkpoint_loading.py has the other commands)."""
    args = [*FAST, "--data.dataset=imagefolder", f"--data.root={image_folder}", "--data.image_size=16"]
    cli = TwinloopCLI(args=["fit", *args, "--trainer.max_epochs=1"])
    ckpt = Path(cli.trainer.checkpoint_callback.best_model_path)
    checkpoint = torch.load(ckpt, weights_only=True)
    assert checkpoint["class_names"] == ["circles", "squares", "stripes"]
    rows = predict_csv(args, str(ckpt), image_folder / "circles", tmp_path / "p.csv")
    assert rows and {r["class_name"] for r in rows} <= {"circles", "squares", "stripes"}
    checkpoint["class_names"] = ["first", "second", "third"]  # as if trained on other data
    torch.save(checkpoint, tmp_path / "renamed.ckpt")
    with pytest.raises(SystemExit) as info:
        main(["predict", *args, f"--data.predict_root={image_folder}", "--ckpt_path", str(tmp_path / "renamed.ckpt")])
    err = capsys.readouterr().err
    assert info.value.code == 1 and "['first', 'second', 'third']" in err and "['circles', 'squares', 'stripes']" in err


def test_model_summary_shows_sizes_and_flops():
    """The model summary is given an example input of the data's shape: sizes and a FLOP count show."""
    from lightning.pytorch.utilities.model_summary import ModelSummary

    cli = fit("--trainer.max_epochs=1")
    assert cli.model.example_input_array.shape == (1, 1, 8, 8)
    summary = ModelSummary(cli.model, max_depth=1)
    assert summary.in_sizes[0] == [1, 1, 8, 8] and summary.out_sizes[0] == [1, 10]
    assert "In sizes" in str(summary)
    # two 3x3 convolutions over 8x8 and 4x4 maps and a linear head: well over 100k multiply-adds
    assert summary.total_flops > 100_000


def test_lightning_cli_still_has_the_trainer_hook_the_project_overrides():
    """TwinloopCLI overrides LightningCLI._instantiate_trainer (a private API): fail loudly if it goes."""
    from lightning.pytorch.cli import LightningCLI

    assert "_instantiate_trainer" in vars(LightningCLI), "LightningCLI._instantiate_trainer is gone: see project/cli.py"
    assert list(inspect.signature(LightningCLI._instantiate_trainer).parameters) == ["self", "config", "callbacks"]


@pytest.mark.parametrize("key", ["limit_train_batches", "limit_val_batches", "limit_test_batches"])
@pytest.mark.parametrize(("value", "expected"), [("1", 1), ("yaml 1", 1), ("1.0", 1.0), ("yaml 1.0", 1.0)])
def test_a_batch_limit_of_1_is_one_batch_and_1_0_every_batch(tmp_path, key, value, expected):
    """`limit_*_batches: 1` (command line or YAML) is one batch and 1.0 every batch, in both loops."""
    if value.startswith("yaml"):
        (tmp_path / "limit.yaml").write_text(f"trainer:\n  {key}: {value.split()[1]}\n")
        args = [*FAST, "-c", str(tmp_path / "limit.yaml")]
    else:
        args = [*FAST, f"--trainer.{key}={value}"]
    lightning_value = getattr(TwinloopCLI(args=args, run=False).trainer, key)
    reference_value = getattr(load_run(args).trainer.settings, key)
    for limit in (lightning_value, reference_value):
        assert (limit, type(limit)) == (expected, type(expected))


class RefusingLogger(CSVLogger):
    """A logger whose store will not open, as MLflow 3 refuses a file store or a package is missing."""

    def __init__(self, save_dir: str = "."):
        raise RuntimeError("this store will not open: set STORE_URI")


def test_a_logger_that_cannot_be_built_is_one_error_line_with_what_it_said(capsys):
    loggers = "[{class_path: TensorBoardLogger}, {class_path: tests.cli.test_cli.RefusingLogger}]"
    with pytest.raises(SystemExit) as info:
        main(["fit", *FAST, "--trainer.logger", loggers])
    assert info.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1:] == [
        "error: a class of the config could not be built: this store will not open: set STORE_URI"
    ]
    assert not Path("lightning_logs").exists()


@pytest.mark.parametrize("first", ["MLFlowLogger", "WandbLogger"])
def test_a_logger_with_a_store_of_its_own_cannot_come_first(first, capsys):
    """The first logger's folder holds the run: MLflow's and W&B's stores do not, refused by name."""
    with pytest.raises(SystemExit) as info:
        main(["fit", *FAST, "--trainer.logger", f"lightning.pytorch.loggers.{first}"])
    assert info.value.code == 2
    assert f"error: trainer.logger: {first} first would put the checkpoints in its own store" in capsys.readouterr().err
