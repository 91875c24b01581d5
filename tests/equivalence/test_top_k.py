"""`--checkpoint.save_top_k` (with `checkpoint.monitor` and `mode`) in both loops: Lightning's
ModelCheckpoint, and the same rule by hand in the reference (project/reference/top_k.py), keep the
same files under the same names with the same tensors in them, through a resume too. Which epochs
a given sequence of scores keeps is checked by hand in tests/ground_truth/test_ground_truth_checkpoints.py."""

from pathlib import Path

import torch

from project import compare
from project.checkpoint_io import read_checkpoint
from tests.helpers import EQUIV

TOP_2_BY_LOSS = ["--checkpoint.save_top_k=2", "--checkpoint.monitor=val/loss", "--checkpoint.mode=min"]


def kept(folder: Path) -> dict[str, dict]:
    """The top-k files of a run's checkpoint folder: name -> the network's tensors."""
    return {path.name: read_checkpoint(path)["state_dict"] for path in sorted(folder.glob("best-*.ckpt"))}


def assert_same_files(lightning: dict[str, dict], reference: dict[str, dict]) -> None:
    assert list(lightning) == list(reference)
    for name, tensors in lightning.items():
        assert all(torch.equal(tensors[k], reference[name][k]) for k in tensors), name


def assert_same_state_key(lightning: str, reference: str) -> None:
    """The reference keeps the rule's state under the key of Lightning's ModelCheckpoint, whose files
    and scores it names (``best_k_models``) as Lightning's does its own."""
    (key,) = [k for k in read_checkpoint(lightning)["callbacks"] if k.startswith("ModelCheckpoint")]
    ours, theirs = read_checkpoint(reference)["callbacks"][key], read_checkpoint(lightning)["callbacks"][key]
    assert [Path(p).name for p in ours["best_k_models"]] == [Path(p).name for p in theirs["best_k_models"]]
    assert list(ours["best_k_models"].values()) == list(theirs["best_k_models"].values())


def test_both_loops_keep_the_same_top_k_files():
    """The 2 lowest val/loss of 3 epochs: two files in each loop, the same names and tensors, and
    the loops equal step for step."""
    args = [*EQUIV, *TOP_2_BY_LOSS]
    lit = compare.run_lightning(args, Path("runs"), "k")
    ref = compare.run_reference(args, Path("runs/k/reference"))
    c = compare.compare(lit, ref, atol=0)
    assert c.equivalent, compare.format_table(c)
    lightning, reference = kept(Path("runs/k/lightning/checkpoints")), kept(Path("runs/k/reference/checkpoints"))
    assert len(lightning) == 2
    assert_same_files(lightning, reference)
    assert_same_state_key("runs/k/lightning/checkpoints/last.ckpt", "runs/k/reference/checkpoints/last.ckpt")


def test_a_resumed_reference_keeps_the_files_of_the_run_before(capsys):
    """The reference trains epoch 0, then resumes from its last.ckpt in the same folder: the top 2
    of the three epochs, as Lightning's uninterrupted run keeps them. (A rule started afresh would
    keep epoch 0's file and add two more.)"""
    args = [*EQUIV, *TOP_2_BY_LOSS]
    compare.run_lightning(args, Path("runs"), "full")
    compare.run_reference([*args, "--trainer.max_epochs=1"], Path("runs/ref"))
    compare.run_reference(args, Path("runs/ref"), "runs/ref/checkpoints/last.ckpt")
    assert "resuming from epoch 1, batch 0 (step 7)" in capsys.readouterr().out  # not from step 0
    assert_same_files(kept(Path("runs/full/lightning/checkpoints")), kept(Path("runs/ref/checkpoints")))


def test_every_n_train_steps_keeps_the_same_files_in_both_loops():
    """`--checkpoint.every_n_train_steps 5` (7 steps an epoch): candidates at steps 5, 10, 15 and
    20 only, with the last validation's val/acc (none at step 5, before the first validation), and
    no candidate at the epochs' ends: the same files in both loops, with the same tensors."""
    args = [*EQUIV, "--checkpoint.every_n_train_steps=5", "--checkpoint.save_top_k=-1"]
    lit = compare.run_lightning(args, Path("runs"), "n")
    ref = compare.run_reference(args, Path("runs/n/reference"))
    c = compare.compare(lit, ref, atol=0)
    assert c.equivalent, compare.format_table(c)
    lightning, reference = kept(Path("runs/n/lightning/checkpoints")), kept(Path("runs/n/reference/checkpoints"))
    assert_same_files(lightning, reference)
    steps = sorted(read_checkpoint(Path("runs/n/reference/checkpoints") / name)["global_step"] for name in reference)
    assert steps == [10, 15, 20]
    assert_same_state_key("runs/n/lightning/checkpoints/last.ckpt", "runs/n/reference/checkpoints/last.ckpt")
