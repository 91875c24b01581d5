"""Per-stage metrics, shared by the LightningModule and the reference loop."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torchmetrics import Metric, MetricCollection, SumMetric
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix


class StageMetrics(nn.Module):
    """Loss and accuracy for one stage (``train``, ``val`` or ``test``), with tags ``f"{stage}/..."``.

    The loss is a batch-size weighted mean, so a smaller last batch counts for what it holds.
    ``detailed`` adds per-class accuracy, the confusion matrix and a few misclassified images.
    """

    def __init__(self, stage: str, num_classes: int, detailed: bool = False, keep_misclassified: int = 16):
        super().__init__()
        self.stage = stage
        # The batch-size weighted mean as two sums, NaNs kept: MeanMetric drops NaNs by default, and
        # with nan_strategy="disable" it drops the weights instead (torchmetrics 1.9).
        self.loss_sum = SumMetric(nan_strategy="disable")
        self.samples = SumMetric(nan_strategy="disable")
        # validate_args=False: the checks count the distinct labels of every batch (torch.unique), a
        # host sync per step on a GPU; the labels come from the data sources, in range by construction.
        metrics = {"acc": MulticlassAccuracy(num_classes, average="micro", validate_args=False)}
        if num_classes > 5:
            metrics["acc_top5"] = MulticlassAccuracy(num_classes, top_k=5, average="micro", validate_args=False)
        self.scores = MetricCollection(metrics)
        self.detailed = detailed
        if detailed:
            self.per_class = MulticlassAccuracy(num_classes, average=None, validate_args=False)
            self.confusion = MulticlassConfusionMatrix(num_classes, validate_args=False)
        self.keep_misclassified = keep_misclassified
        self.misclassified: list[tuple[Tensor, int, int]] = []
        self.best_acc: float | None = None  # over epochs: reset() keeps it

    @torch.no_grad()
    def update(self, logits: Tensor, target: Tensor, loss: Tensor, images: Tensor | None = None) -> None:
        logits, loss = logits.detach().float(), loss.detach().float()
        self.loss_sum.update(loss * target.shape[0])
        self.samples.update(torch.full((), float(target.shape[0]), device=loss.device))  # a fill, not a host copy
        self.scores.update(logits, target)
        if self.detailed:
            self.per_class.update(logits, target)
            self.confusion.update(logits, target)
            if images is not None and len(self.misclassified) < self.keep_misclassified:
                pred = logits.argmax(dim=1)
                for i in torch.nonzero(pred != target).flatten()[: self.keep_misclassified - len(self.misclassified)]:
                    self.misclassified.append((images[i].detach().cpu(), int(target[i]), int(pred[i])))

    def compute(self) -> dict[str, Tensor]:
        """Scalars by TensorBoard tag, e.g. ``{"val/loss": ..., "val/acc": ...}``."""
        # Training logs the loss per step as train/loss, so its epoch mean gets a tag of its own.
        loss_tag = "loss_epoch" if self.stage == "train" else "loss"
        out = {f"{self.stage}/{loss_tag}": self.loss_sum.compute() / self.samples.compute()}
        out.update({f"{self.stage}/{k}": v for k, v in self.scores.compute().items()})
        return out

    def record_best(self, acc: float) -> bool:
        """Keep ``acc`` as the best accuracy if it beats the best so far; True if it did (strictly,
        as ``ModelCheckpoint(mode="max")`` counts an improvement)."""
        improved = self.best_acc is None or acc > self.best_acc
        if improved:
            self.best_acc = acc
        return improved

    def epoch_summary(self, class_names: list[str]) -> dict[str, Tensor | float]:
        """``compute()`` plus the best accuracy so far (``record_best`` keeps it) and per-class
        accuracy ``f"{stage}/acc_class/<name>"``.

        Under a process group every rank calls it: each metric is summed over the ranks here, the
        confusion matrix included, so that rank 0 alone can draw it afterwards (torchmetrics keeps
        the synced value until ``reset``; a collective on one rank only would hang or crash the others).
        """
        results = self.compute()
        per_class = self.per_class.compute()
        self.confusion.compute()
        best = self.best_acc if self.best_acc is not None else float(results[f"{self.stage}/acc"])
        return {
            **results,
            f"{self.stage}/acc_best": best,
            **{f"{self.stage}/acc_class/{name}": per_class[i] for i, name in enumerate(class_names)},
        }

    def confusion_matrix(self) -> Tensor:
        return self.confusion.compute()

    def running_state(self) -> dict[str, Tensor]:
        """The sums and counts gathered so far this epoch: a checkpoint written inside an epoch carries
        them, so that the resumed epoch's means cover all of its batches."""
        return {
            f"{name}.{attr}": getattr(metric, attr).detach().clone()
            for name, metric in self.named_modules()
            if isinstance(metric, Metric)
            for attr in metric._defaults
        }

    def load_running_state(self, state: dict[str, Tensor]) -> None:
        metrics = dict(self.named_modules())
        for key, value in state.items():
            name, attr = key.rsplit(".", 1)
            metric = metrics[name]
            setattr(metric, attr, value.to(getattr(metric, attr).device))
            metric._update_count, metric._computed = max(metric._update_count, 1), None

    def reset(self) -> None:
        self.loss_sum.reset()
        self.samples.reset()
        self.scores.reset()
        if self.detailed:
            self.per_class.reset()
            self.confusion.reset()
        self.misclassified = []


def build_stage_metrics(stage: str, num_classes: int, num_misclassified_images: int = 16) -> StageMetrics:
    """The metrics of one stage, the same for both loops: validation keeps the detailed ones
    (per-class accuracy, confusion matrix, misclassified images) that TensorBoard shows."""
    if stage == "val":
        return StageMetrics(stage, num_classes, detailed=True, keep_misclassified=num_misclassified_images)
    return StageMetrics(stage, num_classes)
