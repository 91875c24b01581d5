"""Ground truth for which epoch the "best" and "last" checkpoints hold, for hand-made validation scores.

Each run's validation accuracy is scripted: the validation metrics report the next value of a
hand-made sequence as their accuracy at each validation epoch. Everything else is real: the loss
and the other metrics, ``record_best``, Lightning's ``ModelCheckpoint`` and
``LatestCheckpoint`` as the CLI configures them, and the reference trainer's own checkpoint code.
"""

from pathlib import Path

import pytest
import torch

import project.module
import project.reference.trainer
from project.cli import TwinloopCLI
from project.metrics import StageMetrics, build_stage_metrics
from project.reference.config import load_run
from tests.helpers import FAST

pytestmark = pytest.mark.fit  # every test here trains with a loop


class ScriptedValidation(StageMetrics):
    """Validation metrics whose accuracy (top-1 and top-5) is the next scripted value at each
    validation epoch (the first update after a reset), whatever the predictions were."""

    def __init__(self, script: list[float], num_classes: int, keep_misclassified: int):
        super().__init__("val", num_classes, detailed=True, keep_misclassified=keep_misclassified)
        self.script = script
        self.epoch, self.fresh = -1, True

    def update(self, *args, **kwargs) -> None:
        if self.fresh:
            self.epoch, self.fresh = self.epoch + 1, False
        super().update(*args, **kwargs)

    def compute(self) -> dict[str, torch.Tensor]:
        results = super().compute()
        acc = torch.tensor(self.script[self.epoch])
        return {**results, **{k: acc for k in ("val/acc", "val/acc_top5") if k in results}}

    def reset(self) -> None:
        super().reset()
        self.fresh = True


def script(monkeypatch: pytest.MonkeyPatch, scores: list[float]) -> None:
    """Every validation metrics built from now on (until ``monkeypatch`` is undone) reports ``scores``, epoch
    by epoch."""

    def build(stage, num_classes, num_misclassified_images=16):
        if stage == "val":
            return ScriptedValidation(scores, num_classes, num_misclassified_images)
        return build_stage_metrics(stage, num_classes, num_misclassified_images)

    monkeypatch.setattr(project.module, "build_stage_metrics", build)
    monkeypatch.setattr(project.reference.trainer, "build_stage_metrics", build)


def run_args(epochs: int) -> list[str]:
    return [
        *FAST,
        f"--trainer.max_epochs={epochs}",
        "--trainer.limit_train_batches=1",
        "--trainer.limit_val_batches=1",
        "--data.batch_size=16",
        "--model.pictures.every_n_epochs=0",
    ]


def checkpoint_folder(loop: str, args: list[str]) -> Path:
    """Fit with one loop; the folder of its checkpoints."""
    if loop == "lightning":
        # No sanity pass: it would be a validation the script counts (the module ignores it for the best).
        cli = TwinloopCLI(args=[*args, "--trainer.num_sanity_val_steps=0"], run=False)
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
        return Path(cli.trainer.log_dir) / "checkpoints"
    run = load_run(args, Path("reference"))
    run.trainer.fit(run.model, run.datamodule)
    return run.trainer.log_dir / "checkpoints"


def fit(loop: str, epochs: int) -> tuple[Path, Path]:
    """Fit with one loop; the paths of its best and last checkpoints (exactly one best file)."""
    folder = checkpoint_folder(loop, run_args(epochs))
    best = list(folder.glob("best-*.ckpt"))
    assert len(best) == 1, best
    return best[0], folder / "last.ckpt"


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


SEQUENCES = {
    # scores by epoch: (best epoch, last epoch)
    "rising": ([0.2, 0.5, 0.7], 2),
    "tie_keeps_the_earlier": ([0.3, 0.6, 0.6, 0.4], 1),
    "first_is_best_and_tied": ([0.8, 0.8, 0.1], 0),
    "drop_then_new_high": ([0.5, 0.25, 0.75, 0.75], 2),
}


@pytest.fixture(scope="module")
def scripted_fit(tmp_path_factory):
    """``scripted_fit(case, loop)``: the best and last checkpoints of a fit with one loop whose validation
    reports the scores of ``SEQUENCES[case]``; each run is made once and shared by the tests that read it."""
    runs: dict[tuple[str, str], tuple[Path, Path]] = {}

    def get(case: str, loop: str) -> tuple[Path, Path]:
        if (case, loop) not in runs:
            scores, _ = SEQUENCES[case]
            with pytest.MonkeyPatch.context() as patch:
                patch.chdir(tmp_path_factory.mktemp(f"{case}-{loop}"))
                script(patch, scores)
                runs[case, loop] = tuple(path.absolute() for path in fit(loop, len(scores)))
        return runs[case, loop]

    return get


@pytest.mark.xdist_group("scripted_fit")
@pytest.mark.parametrize("loop", ["lightning", "reference"])
@pytest.mark.parametrize("case", list(SEQUENCES))
def test_best_holds_the_first_highest_epoch_and_last_the_final_one(scripted_fit, case, loop):
    """ "best" holds the first epoch with the highest score (a tie keeps the earlier one); "last" the final epoch."""
    scores, best_epoch = SEQUENCES[case]
    best, last = scripted_fit(case, loop)
    best_state, last_state = load(best), load(last)
    # one training batch per epoch: epoch e ends at optimizer step e + 1
    assert (best_state["epoch"], best_state["global_step"]) == (best_epoch, best_epoch + 1)
    assert (last_state["epoch"], last_state["global_step"]) == (len(scores) - 1, len(scores))
    assert best_state["best_val_acc"] == pytest.approx(scores[best_epoch])
    assert last_state["best_val_acc"] == pytest.approx(max(scores))
    if best_epoch != len(scores) - 1:  # the weights differ too: best is not a copy of last
        assert any(not torch.equal(best_state["state_dict"][k], v) for k, v in last_state["state_dict"].items())


@pytest.mark.xdist_group("scripted_fit")
@pytest.mark.parametrize("case", ["tie_keeps_the_earlier", "drop_then_new_high"])
def test_lightning_best_file_is_named_by_its_epoch_and_score(scripted_fit, case):
    """Lightning's best checkpoint is named best-epochNNN-accX.XXXX after the epoch it holds."""
    scores, best_epoch = SEQUENCES[case]
    best, _ = scripted_fit(case, "lightning")
    assert best.name == f"best-epoch{best_epoch:03d}-acc{scores[best_epoch]:.4f}.ckpt"


TOP_K = {
    # save_top_k, scores by epoch, the epochs whose files are kept (worked out by hand: a new score
    # must beat the worst kept strictly; of two tied for the worst, the one kept longer goes first)
    "three_of_five": (3, [0.2, 0.5, 0.7, 0.9, 0.1], {1, 2, 3}),
    "a_tie_for_the_worst_drops_the_earlier": (2, [0.5, 0.5, 0.7, 0.5], {1, 2}),
    "a_tie_does_not_enter": (2, [0.6, 0.4, 0.4, 0.3], {0, 1}),
    "all": (-1, [0.3, 0.1, 0.2], {0, 1, 2}),
    "none": (0, [0.3, 0.4], set()),
}


@pytest.mark.parametrize("case", list(TOP_K))
def test_save_top_k_keeps_the_same_files_in_both_loops(case, tmp_path, monkeypatch):
    """`--checkpoint.save_top_k K`: the files of the K best validations, by Lightning's
    ModelCheckpoint and by the reference's rule (project/reference/top_k.py), under the same names."""
    k, scores, kept = TOP_K[case]
    names = {}
    for loop in ("lightning", "reference"):
        (tmp_path / loop).mkdir()
        monkeypatch.chdir(tmp_path / loop)
        script(monkeypatch, scores)
        folder = checkpoint_folder(loop, [*run_args(len(scores)), f"--checkpoint.save_top_k={k}"])
        names[loop] = sorted(path.name for path in folder.glob("best-*.ckpt"))
        assert {load(folder / name)["epoch"] for name in names[loop]} == kept, loop
        assert names[loop] == sorted(f"best-epoch{e:03d}-acc{scores[e]:.4f}.ckpt" for e in kept)
    assert names["lightning"] == names["reference"]
