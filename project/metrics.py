"""Per-stage metrics, shared by the LightningModule and the reference loop."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torchmetrics import Metric

from project.errors import CheckpointError


class EpochCounts(Metric):
    """What one epoch adds up, as one torchmetrics state (summed over the ranks at ``compute``, once):
    the loss times the batch size and the samples (a batch-size weighted mean, NaNs kept), the
    top-1 hits, the top-5 hits (with more than five classes) and, if ``confusion``, the confusion
    matrix (rows: true classes). One metric and a few tensor operations a step: one torchmetrics
    object per number cost four times as much, every step."""

    full_state_update = False
    # The states add_state registers (as attributes torchmetrics sets, unseen by a type checker)
    loss_sum: Tensor
    samples: Tensor
    hits: Tensor
    hits_top5: Tensor  # with more than five classes
    matrix: Tensor  # with ``confusion``

    def __init__(self, num_classes: int, confusion: bool):
        super().__init__()
        self.num_classes = num_classes
        self.top5 = num_classes > 5
        self.confusion = confusion
        self.add_state("loss_sum", torch.zeros(()), dist_reduce_fx="sum")
        # counts are integers: exact past the 2**24 samples a float32 sum can count one by one
        self.add_state("samples", torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("hits", torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")
        if self.top5:
            self.add_state("hits_top5", torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")
        if confusion:
            self.add_state("matrix", torch.zeros(num_classes, num_classes, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, logits: Tensor, target: Tensor, loss: Tensor) -> None:
        self.loss_sum += loss * target.shape[0]
        self.samples += target.shape[0]
        pred = logits.argmax(dim=1)
        self.hits += (pred == target).sum()
        if self.top5:
            self.hits_top5 += (logits.topk(5, dim=1).indices == target[:, None]).sum()
        if self.confusion:
            c = self.num_classes
            # bincount (no weights) is deterministic on a GPU too
            self.matrix += torch.bincount(target * c + pred, minlength=c * c).view(c, c)

    def compute(self) -> dict[str, Tensor]:
        out = {"loss": self.loss_sum / self.samples, "acc": self.hits / self.samples}
        if self.top5:
            out["acc_top5"] = self.hits_top5 / self.samples
        if self.confusion:
            # each true class's hits over its samples; 0 for a class with none this epoch
            out["acc_per_class"] = self.matrix.diagonal() / self.matrix.sum(dim=1).clamp(min=1)
            out["confusion"] = self.matrix.clone()
        return out


class StageMetrics(nn.Module):
    """Loss and accuracy for one stage (``train``, ``val`` or ``test``), with tags ``f"{stage}/..."``.

    The loss is a batch-size weighted mean, so a smaller last batch counts for what it holds.
    ``detailed`` adds per-class accuracy, the confusion matrix and a few misclassified images.
    """

    def __init__(self, stage: str, num_classes: int, detailed: bool = False, keep_misclassified: int = 16):
        super().__init__()
        self.stage = stage
        self.counts = EpochCounts(num_classes, confusion=detailed)
        self.detailed = detailed
        self.keep_misclassified = keep_misclassified
        self.misclassified: list[tuple[Tensor, int, int]] = []
        self.best_acc: float | None = None  # over epochs: reset() keeps it

    @torch.no_grad()
    def update(self, logits: Tensor, target: Tensor, loss: Tensor, images: Tensor | None = None) -> None:
        """One batch. ``target`` is the class index per image, or (MixUp, CutMix) the mixed class
        probabilities, whose largest share counts as the image's class for the accuracy."""
        logits, loss = logits.detach().float(), loss.detach().float()
        if target.ndim == 2:
            target = target.argmax(dim=1)
        self.counts.update(logits, target, loss)
        if self.detailed and images is not None and len(self.misclassified) < self.keep_misclassified:
            pred = logits.argmax(dim=1)
            for i in torch.nonzero(pred != target).flatten()[: self.keep_misclassified - len(self.misclassified)]:
                self.misclassified.append((images[i].detach().cpu(), int(target[i]), int(pred[i])))

    def compute(self) -> dict[str, Tensor]:
        """Scalars by TensorBoard tag, e.g. ``{"val/loss": ..., "val/acc": ...}``."""
        counts = self.counts.compute()
        # Training logs the loss per step as train/loss, so its epoch mean gets a tag of its own.
        out = {f"{self.stage}/{'loss_epoch' if self.stage == 'train' else 'loss'}": counts["loss"]}
        out.update({f"{self.stage}/{k}": counts[k] for k in ("acc", "acc_top5") if k in counts})
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

        Under a process group every rank calls it: the counts are summed over the ranks here, the
        confusion matrix included, so that rank 0 alone can draw it afterwards (torchmetrics keeps
        the summed value until ``reset``; a collective on one rank only would hang or crash the others).
        """
        results = self.compute()
        per_class = self.counts.compute()["acc_per_class"]
        best = self.best_acc if self.best_acc is not None else float(results[f"{self.stage}/acc"])
        return {
            **results,
            f"{self.stage}/acc_best": best,
            **{f"{self.stage}/acc_class/{name}": per_class[i] for i, name in enumerate(class_names)},
        }

    def confusion_matrix(self) -> Tensor:
        return self.counts.compute()["confusion"]

    def running_state(self) -> dict[str, Tensor]:
        """The sums and counts gathered so far this epoch: a checkpoint written inside an epoch carries
        them, so that the resumed epoch's means cover all of its batches."""
        return {name: getattr(self.counts, name).detach().clone() for name in self.counts._defaults}

    def load_running_state(self, state: dict[str, Tensor]) -> None:
        if set(state) != set(self.counts._defaults):
            raise CheckpointError(
                f"--ckpt_path: the checkpoint was written inside an epoch, and its epoch's running metrics "
                f"({', '.join(sorted(state))}) are not the {', '.join(sorted(self.counts._defaults))} this version "
                "keeps: resume from a checkpoint written at an epoch's end"
            )
        for name, value in state.items():
            setattr(self.counts, name, value.to(getattr(self.counts, name).device))
        self.counts._update_count, self.counts._computed = max(self.counts._update_count, 1), None

    def reset(self) -> None:
        self.counts.reset()
        self.misclassified = []


def build_stage_metrics(stage: str, num_classes: int, num_misclassified_images: int = 16) -> StageMetrics:
    """The metrics of one stage, the same for both loops: validation keeps the detailed ones
    (per-class accuracy, confusion matrix, misclassified images) that TensorBoard shows."""
    if stage == "val":
        return StageMetrics(stage, num_classes, detailed=True, keep_misclassified=num_misclassified_images)
    return StageMetrics(stage, num_classes)
