"""Ground truth for the per-stage metrics both loops share: hand counts on small asymmetric examples.

Every expected number here is written out by hand (or computed another way, e.g. one
``cross_entropy`` over all samples at once), never by the torchmetrics objects under test.
"""

import pytest
import torch
import torch.nn.functional as F

from project.metrics import EpochCounts, StageMetrics, build_stage_metrics

# 10 samples, 4 classes, asymmetric on purpose: true 0 -> predicted 1 twice, true 1 -> predicted 0 once,
# true 2 -> predicted 0 once, never the other way round.
TRUE = [0, 0, 0, 1, 1, 2, 2, 2, 2, 3]
PRED = [0, 1, 1, 0, 1, 2, 2, 2, 0, 3]
# Counted by hand: rows are true classes, columns predictions.
CONFUSION = [
    [1, 2, 0, 0],
    [1, 1, 0, 0],
    [1, 0, 3, 0],
    [0, 0, 0, 1],
]
PER_CLASS = [1 / 3, 1 / 2, 3 / 4, 1 / 1]
ACC = 6 / 10
BATCHES = [slice(0, 3), slice(3, 4), slice(4, 10)]  # of unequal sizes: 3, 1, 6


def logits_predicting(pred: list[int], num_classes: int) -> torch.Tensor:
    """Logits whose argmax is ``pred``: 2 at the predicted class, -1 elsewhere."""
    logits = torch.full((len(pred), num_classes), -1.0)
    logits[torch.arange(len(pred)), torch.tensor(pred)] = 2.0
    return logits


def logits_ranking(target: list[int], ranks: list[int], num_classes: int) -> torch.Tensor:
    """Logits where sample i's true class is the ``ranks[i]``-th largest (0: the top)."""
    logits = torch.empty(len(target), num_classes)
    for i, (t, r) in enumerate(zip(target, ranks)):
        others = [c for c in range(num_classes) if c != t]
        order = others[:r] + [t] + others[r:]  # classes from the largest logit down
        for position, c in enumerate(order):
            logits[i, c] = float(num_classes - position)
    return logits


def fed(stage: str, num_classes: int, logits: torch.Tensor, target: torch.Tensor, batches=BATCHES) -> StageMetrics:
    """Metrics of ``stage`` updated batch by batch, with each batch's mean cross-entropy as its loss."""
    metrics = build_stage_metrics(stage, num_classes)
    for b in batches:
        metrics.update(logits[b], target[b], F.cross_entropy(logits[b], target[b]))
    return metrics


def asymmetric() -> StageMetrics:
    return fed("val", 4, logits_predicting(PRED, 4), torch.tensor(TRUE))


def test_loss_is_weighted_by_batch_size():
    """Three batches of 1, 3 and 6 images with losses 4, 2 and 1 average to 16/10, not to 7/3."""
    metrics = build_stage_metrics("val", 3)
    for size, loss in ((1, 4.0), (3, 2.0), (6, 1.0)):
        metrics.update(torch.zeros(size, 3), torch.zeros(size, dtype=torch.long), torch.tensor(loss))
    assert metrics.compute()["val/loss"].item() == pytest.approx(1.6)


def test_loss_equals_the_mean_over_all_samples_at_once():
    """Per-batch mean losses of unequal batches combine into the one mean over every sample."""
    torch.manual_seed(0)
    logits, target = torch.randn(10, 4), torch.tensor(TRUE)
    metrics = fed("val", 4, logits, target)
    torch.testing.assert_close(metrics.compute()["val/loss"], F.cross_entropy(logits, target))


def test_loss_of_equal_batches_is_their_mean():
    """Batches of one size with losses 4, 2 and 1 average to 7/3 (weighted or not, the same)."""
    metrics = build_stage_metrics("val", 3)
    for loss in (4.0, 2.0, 1.0):
        metrics.update(torch.zeros(2, 3), torch.zeros(2, dtype=torch.long), torch.tensor(loss))
    assert metrics.compute()["val/loss"].item() == pytest.approx(7 / 3)


def test_a_nan_loss_makes_the_epoch_loss_nan():
    """A NaN batch loss is never averaged away: the epoch's loss is NaN."""
    metrics = build_stage_metrics("train", 3)
    for loss in (1.0, float("nan"), 2.0):
        metrics.update(torch.zeros(2, 3), torch.zeros(2, dtype=torch.long), torch.tensor(loss))
    assert metrics.compute()["train/loss_epoch"].isnan()


@pytest.mark.parametrize(("stage", "tag"), [("train", "train/loss_epoch"), ("val", "val/loss"), ("test", "test/loss")])
def test_loss_tag_per_stage(stage, tag):
    """Training's epoch loss is train/loss_epoch (train/loss is per step); the others are <stage>/loss."""
    logits, target = logits_predicting(PRED, 4), torch.tensor(TRUE)
    assert set(fed(stage, 4, logits, target).compute()) == {tag, f"{stage}/acc"}


def test_top1_accuracy_counts_correct_argmax():
    """6 of the 10 asymmetric predictions are right."""
    assert asymmetric().compute()["val/acc"].item() == pytest.approx(ACC)


@pytest.mark.parametrize("stage", ["train", "val", "test"])
def test_top5_counts_the_true_class_among_the_five_largest(stage):
    """7 classes, true class ranked 0, 4, 5, 6, 2, 1, 5: top-1 is 1/7 and top-5 is 4/7."""
    target = [0, 1, 2, 3, 4, 5, 6]
    ranks = [0, 4, 5, 6, 2, 1, 5]
    logits = logits_ranking(target, ranks, 7)
    results = fed(stage, 7, logits, torch.tensor(target), batches=[slice(0, 2), slice(2, 7)]).compute()
    assert results[f"{stage}/acc"].item() == pytest.approx(1 / 7)
    assert results[f"{stage}/acc_top5"].item() == pytest.approx(4 / 7)


def test_top5_counts_samples_not_classes():
    """Top-5 is over samples (micro): 3 samples of class 0 in the top 5 and 1 of class 1 outside give 3/4, not 1/2."""
    target = [0, 0, 0, 1]
    logits = logits_ranking(target, [0, 1, 4, 6], 7)
    results = fed("val", 7, logits, torch.tensor(target), batches=[slice(0, 4)]).compute()
    assert results["val/acc_top5"].item() == pytest.approx(3 / 4)
    assert results["val/acc"].item() == pytest.approx(1 / 4)


@pytest.mark.parametrize(("num_classes", "has_top5"), [(5, False), (6, True)])
def test_top5_only_when_there_are_more_than_five_classes(num_classes, has_top5):
    """With five classes or fewer top-5 is always 1, so it is not logged."""
    metrics = build_stage_metrics("val", num_classes)
    metrics.update(torch.randn(4, num_classes), torch.tensor([0, 1, 2, 3]), torch.tensor(1.0))
    assert ("val/acc_top5" in metrics.compute()) is has_top5


def test_confusion_matrix_rows_are_true_classes():
    """The confusion matrix equals the hand count, rows = true class, columns = prediction."""
    assert asymmetric().confusion_matrix().tolist() == CONFUSION


def test_per_class_accuracy_is_recall_of_each_true_class():
    """Per-class accuracy is each row's diagonal over the row's sum: 1/3, 1/2, 3/4, 1."""
    summary = asymmetric().epoch_summary(["a", "b", "c", "d"])
    got = [summary[f"val/acc_class/{name}"].item() for name in "abcd"]
    assert got == pytest.approx(PER_CLASS)


def test_epoch_summary_without_a_recorded_best_reports_the_current_accuracy():
    """Before any record_best, val/acc_best is this epoch's accuracy."""
    summary = asymmetric().epoch_summary(["a", "b", "c", "d"])
    assert summary["val/acc_best"] == pytest.approx(ACC)
    assert summary["val/acc"].item() == pytest.approx(ACC)
    assert summary["val/loss"].item() > 0


def test_epoch_summary_reports_the_recorded_best():
    """After record_best(0.9), val/acc_best is 0.9 while val/acc is the epoch's own 0.6."""
    metrics = asymmetric()
    metrics.record_best(0.9)
    summary = metrics.epoch_summary(["a", "b", "c", "d"])
    assert summary["val/acc_best"] == 0.9
    assert summary["val/acc"].item() == pytest.approx(ACC)


@pytest.mark.parametrize(
    ("scores", "improved", "best"),
    [
        ([0.5], [True], 0.5),
        ([0.0, 0.0], [True, False], 0.0),  # a first score of 0 is still a first best
        ([0.5, 0.5], [True, False], 0.5),  # a tie is not an improvement
        ([0.2, 0.6, 0.6, 0.4, 0.7], [True, True, False, False, True], 0.7),
        ([0.9, 0.1, 0.3], [True, False, False], 0.9),
    ],
)
def test_record_best_counts_only_strict_improvements(scores, improved, best):
    """record_best says True only for a first score or one strictly above the best so far."""
    metrics = build_stage_metrics("val", 4)
    assert [metrics.record_best(s) for s in scores] == improved
    assert metrics.best_acc == best


def test_reset_clears_the_epoch_but_keeps_the_best():
    """After reset the counts start again from nothing, and the best accuracy survives."""
    metrics = asymmetric()
    metrics.record_best(0.6)
    metrics.reset()
    metrics.update(logits_predicting([1], 4), torch.tensor([1]), torch.tensor(3.0))
    assert metrics.confusion_matrix().tolist() == [[0, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]
    assert metrics.compute()["val/loss"].item() == 3.0
    assert metrics.compute()["val/acc"].item() == 1.0
    assert metrics.best_acc == 0.6


def test_reset_clears_per_class_accuracy_and_misclassified():
    """After reset the per-class accuracy and the kept images are the new epoch's alone."""
    metrics = build_stage_metrics("val", 2)
    metrics.update(logits_predicting([1, 1], 2), torch.tensor([0, 1]), torch.tensor(1.0), images=torch.zeros(2, 1))
    metrics.reset()
    metrics.update(logits_predicting([0], 2), torch.tensor([0]), torch.tensor(1.0), images=torch.zeros(1, 1))
    assert metrics.epoch_summary(["a", "b"])["val/acc_class/a"].item() == 1.0
    assert metrics.misclassified == []


@pytest.mark.parametrize(("stage", "detailed"), [("train", False), ("val", True), ("test", False)])
def test_only_validation_keeps_the_detailed_metrics(stage, detailed):
    """build_stage_metrics gives validation per-class accuracy and the confusion matrix."""
    metrics = build_stage_metrics(stage, 4)
    assert metrics.detailed is detailed and metrics.stage == stage
    metrics.update(logits_predicting(PRED, 4), torch.tensor(TRUE), torch.tensor(1.0))
    assert ("acc_per_class" in metrics.counts.compute()) is detailed


def test_misclassified_keeps_the_first_wrong_images_with_true_and_predicted_class():
    """Wrong predictions are kept in order as (image, true, predicted), up to the limit, across batches."""
    metrics = build_stage_metrics("val", 4, num_misclassified_images=3)
    images = torch.arange(10.0).view(10, 1, 1, 1)  # image i holds the value i
    logits, target = logits_predicting(PRED, 4), torch.tensor(TRUE)
    for b in BATCHES:
        metrics.update(logits[b], target[b], torch.tensor(0.0), images=images[b])
    # wrong at 1 (0->1), 2 (0->1), 3 (1->0), 8 (2->0): the first three are kept
    kept = [(float(img.flatten()[0]), true, pred) for img, true, pred in metrics.misclassified]
    assert kept == [(1.0, 0, 1), (2.0, 0, 1), (3.0, 1, 0)]


def test_misclassified_needs_images():
    """Without images, nothing is kept (the training stage passes none)."""
    metrics = build_stage_metrics("val", 4)
    metrics.update(logits_predicting(PRED, 4), torch.tensor(TRUE), torch.tensor(0.0))
    assert metrics.misclassified == []


def test_misclassified_default_limit_is_sixteen():
    """build_stage_metrics keeps 16 misclassified images unless told otherwise."""
    metrics = build_stage_metrics("val", 2)
    metrics.update(logits_predicting([1] * 20, 2), torch.zeros(20, dtype=torch.long), torch.tensor(0.0), torch.ones(20))
    assert len(metrics.misclassified) == 16 == StageMetrics("val", 2, detailed=True).keep_misclassified


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
@pytest.mark.parametrize("deterministic", [False, True])
def test_confusion_matrix_is_the_hand_count_with_and_without_deterministic_algorithms(device, deterministic):
    """The confusion matrix's bincount (without weights) runs and gives the hand count under
    deterministic algorithms too, on the CPU and on a GPU."""
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(deterministic)
    try:
        metrics = build_stage_metrics("val", 4).to(device)
        logits, target = logits_predicting(PRED, 4).to(device), torch.tensor(TRUE, device=device)
        for b in BATCHES:
            metrics.update(logits[b], target[b], torch.tensor(1.0, device=device))
        assert metrics.confusion_matrix().tolist() == CONFUSION
    finally:
        torch.use_deterministic_algorithms(before)


def test_a_mid_epoch_state_of_another_layout_is_refused_with_what_to_do():
    """A checkpoint from inside an epoch whose running sums this version does not keep: a clear
    error naming both layouts, not a KeyError, and nothing loaded."""
    from project.errors import CheckpointError

    metrics = build_stage_metrics("train", 10)
    metrics.update(torch.zeros(2, 10), torch.zeros(2, dtype=torch.long), torch.tensor(1.0))
    old_layout = {"loss_sum.sum_value": torch.tensor(5.0), "samples.sum_value": torch.tensor(2.0)}
    message = (
        "--ckpt_path: the checkpoint was written inside an epoch, and its epoch's running metrics "
        "(loss_sum.sum_value, samples.sum_value) are not the hits, hits_top5, loss_sum, samples this version "
        "keeps: resume from a checkpoint written at an epoch's end"
    )
    with pytest.raises(CheckpointError) as info:
        metrics.load_running_state(old_layout)
    assert str(info.value) == message
    assert metrics.compute()["train/loss_epoch"].item() == 1.0
    again = build_stage_metrics("train", 10)
    again.load_running_state(metrics.running_state())  # this version's own layout loads
    assert again.compute() == metrics.compute()


def test_counts_stay_exact_past_two_to_the_24():
    """Samples, hits and confusion cells are integers: one more sample after 2**24 of them counts
    (a float32 sum would stay at 2**24), and the accuracy of all-correct samples is exactly 1."""
    big = 2**24
    metrics = build_stage_metrics("val", 10)
    state = metrics.running_state()  # each count at 2**24, in the dtype the metric keeps it in
    for name in ("samples", "hits", "hits_top5"):
        state[name] = torch.full_like(state[name], big)
    state["matrix"][3, 3] = big
    metrics.load_running_state(state)
    metrics.update(logits_predicting([3], 10), torch.tensor([3]), torch.tensor(0.0))
    counts = metrics.counts
    assert [int(counts.samples), int(counts.hits), int(counts.hits_top5)] == [big + 1] * 3
    assert metrics.confusion_matrix()[3, 3].item() == big + 1 and metrics.confusion_matrix().dtype == torch.long
    results = metrics.compute()
    assert results["val/acc"].item() == 1.0 and results["val/acc_top5"].item() == 1.0


def test_every_count_is_summed_over_the_ranks():
    """Under DDP torchmetrics gathers each state from every rank and reduces it: two ranks holding
    the same batches give twice every count and the same loss and accuracies."""
    target = [0, 1, 2, 3, 4, 5, 6]  # 7 classes: top-5 hits are counted too
    metrics = fed("val", 7, logits_ranking(target, [0, 4, 5, 6, 2, 1, 5], 7), torch.tensor(target), [slice(0, 7)])
    local = {k: v.clone() for k, v in metrics.running_state().items()}
    assert set(local) == {"loss_sum", "samples", "hits", "hits_top5", "matrix"}
    single = EpochCounts.compute(metrics.counts)  # the class's own compute: no sync around it
    metrics.counts.sync(dist_sync_fn=lambda tensor, group=None: [tensor, tensor], distributed_available=lambda: True)
    for name, value in local.items():
        assert torch.equal(getattr(metrics.counts, name), 2 * value), name
    synced = EpochCounts.compute(metrics.counts)
    for key in ("loss", "acc", "acc_top5", "acc_per_class"):
        torch.testing.assert_close(synced[key], single[key], rtol=0, atol=0)
    assert torch.equal(synced["confusion"], 2 * single["confusion"])
