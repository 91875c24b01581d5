"""Ground truth for the criterion both loops share: every option against a hand-written cross-entropy."""

import inspect
import math

import pytest
import torch
import torch.nn.functional as F

from project.cli import TwinloopCLI
from project.factory import build_criterion
from project.module import ImageClassifier
from project.reference.config import load_run
from tests.helpers import FAST

# Fixed logits of 3 samples over 4 classes, and their targets.
LOGITS = torch.tensor([[2.0, -1.0, 0.5, 0.0], [0.1, 0.2, 0.3, 3.0], [-2.0, 1.5, 1.5, -0.5]])
TARGET = torch.tensor([0, 2, 1])
SMOOTHING = [0.0, 0.1, 0.25, 0.9]
# Every option build_criterion has and the values this file checks it at; a new option must be added here.
OPTIONS = {"label_smoothing": SMOOTHING}


def hand_cross_entropy(logits: torch.Tensor, target: torch.Tensor, label_smoothing: float) -> float:
    """Mean over samples of -sum_c q_c log p_c, with q = (1 - e) one-hot + e / C, in plain Python floats."""
    total = 0.0
    for row, t in zip(logits.tolist(), target.tolist()):
        log_z = math.log(sum(math.exp(v) for v in row))
        log_p = [v - log_z for v in row]
        q = [(1 - label_smoothing) * (c == t) + label_smoothing / len(row) for c in range(len(row))]
        total -= sum(qc * lp for qc, lp in zip(q, log_p))
    return total / len(target)


def test_every_criterion_option_is_checked_here():
    """The options in this file's matrix are exactly build_criterion's parameters."""
    assert set(inspect.signature(build_criterion).parameters) == set(OPTIONS)


@pytest.mark.parametrize("label_smoothing", SMOOTHING)
def test_criterion_matches_the_formula(label_smoothing):
    """build_criterion(label_smoothing=e) is the smoothed cross-entropy written out by hand."""
    loss = build_criterion(label_smoothing=label_smoothing)(LOGITS, TARGET)
    assert loss.item() == pytest.approx(hand_cross_entropy(LOGITS, TARGET, label_smoothing), rel=1e-6)


@pytest.mark.parametrize("label_smoothing", SMOOTHING)
def test_criterion_matches_torch_functional(label_smoothing):
    """build_criterion(label_smoothing=e) is F.cross_entropy(..., label_smoothing=e) on the raw logits."""
    loss = build_criterion(label_smoothing=label_smoothing)(LOGITS, TARGET)
    torch.testing.assert_close(loss, F.cross_entropy(LOGITS, TARGET, label_smoothing=label_smoothing))


def test_default_criterion_is_plain_cross_entropy():
    """Without options the criterion is unsmoothed cross-entropy."""
    assert build_criterion()(LOGITS, TARGET).item() == pytest.approx(hand_cross_entropy(LOGITS, TARGET, 0.0))


def test_criterion_takes_logits_not_probabilities():
    """The criterion applies log-softmax itself: shifting every logit of a row by a constant changes nothing."""
    criterion = build_criterion()
    torch.testing.assert_close(criterion(LOGITS + 7.0, TARGET), criterion(LOGITS, TARGET))
    assert criterion(LOGITS.softmax(1), TARGET).item() != pytest.approx(criterion(LOGITS, TARGET).item())


@pytest.mark.parametrize("label_smoothing", [0.0, 0.25])
def test_module_option_reaches_the_loss(label_smoothing):
    """ImageClassifier(label_smoothing=e).criterion computes the smoothed loss."""
    criterion = ImageClassifier(num_classes=4, label_smoothing=label_smoothing).criterion
    assert criterion(LOGITS, TARGET).item() == pytest.approx(hand_cross_entropy(LOGITS, TARGET, label_smoothing))


@pytest.mark.parametrize("loop", ["lightning", "reference"])
def test_config_option_reaches_both_loops_criterion(loop):
    """--model.label_smoothing=0.25 in a config gives both loops the smoothed loss (digits: 10 classes)."""
    args = [*FAST, "--model.label_smoothing=0.25"]
    model = TwinloopCLI(args=args, run=False).model if loop == "lightning" else load_run(args).model
    logits = torch.cat([LOGITS, torch.linspace(-1, 1, 18).view(3, 6)], dim=1)  # (3, 10)
    assert model.criterion(logits, TARGET).item() == pytest.approx(hand_cross_entropy(logits, TARGET, 0.25))
