"""The data module's random state, all from its one seed and all kept in a checkpoint: a generator
per loader, one for the DataLoaders' worker seeds, the training order (resumable inside an epoch)
and the augmenter's."""

from __future__ import annotations

import torch
from torch import Tensor

from project.augment import AugmentSpec, ImagePolicy, Mixer, RandomCropFlip
from project.data.order import EpochOrder

STAGES = ("train", "val", "test", "predict")


class DataSeeds:
    """Every random draw of the data module, seeded from ``seed``; the augmenter crops with
    ``augment_padding`` pixels of padding (None: no crop and flip); ``augmentation``'s per-image
    policy and mixing each draw from a generator of their own."""

    def __init__(self, seed: int, augment_padding: int | None = None, augmentation: AugmentSpec | None = None):
        # One generator per loader: iterator creation and shuffling then never draw from the
        # global RNG, which dropout uses. Their states belong in a checkpoint.
        self.generators = {s: torch.Generator().manual_seed(seed + i) for i, s in enumerate(STAGES)}
        # The seeds DataLoaders draw for their worker processes come from a generator of their own:
        # a resumed run creates its loader afresh where the uninterrupted one reused its persistent
        # workers, and that extra draw must not move the shuffling.
        self.worker_seeds = torch.Generator().manual_seed(seed + 20)
        # The training order, resumable inside an epoch (see ``continue_epoch``).
        self.train_order = EpochOrder(self.generators["train"])
        self.augmenter = None if augment_padding is None else RandomCropFlip(padding=augment_padding, seed=seed + 10)
        spec = augmentation or AugmentSpec()
        self.policy = ImagePolicy(spec, seed + 11) if spec.per_image else None
        self.mixer = Mixer(spec, seed + 12) if spec.mixing else None
        self._loaded_epoch_start: Tensor | None = None

    def _augmenters(self) -> dict:
        return {"augmenter": self.augmenter, "policy": self.policy, "mixer": self.mixer}

    def state_dict(self) -> dict:
        state: dict[str, object] = {f"generator.{k}": g.get_state() for k, g in self.generators.items()}
        state["worker_seeds"] = self.worker_seeds.get_state()
        state["train_epoch_start"] = self.train_order.epoch_start  # for a resume inside the epoch
        for name, part in self._augmenters().items():
            if part is not None:
                state[name] = part.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        for k, g in self.generators.items():
            if f"generator.{k}" in state:
                g.set_state(state[f"generator.{k}"])
        if "worker_seeds" in state:
            self.worker_seeds.set_state(state["worker_seeds"])
        self._loaded_epoch_start = state.get("train_epoch_start")
        for name, part in self._augmenters().items():
            if part is not None and name in state:
                part.load_state_dict(state[name])

    def continue_epoch(self, batches_done: int) -> None:
        """After ``load_state_dict`` of a state saved inside an epoch, after ``batches_done`` of its
        training batches: the training order's next epoch is the rest of that one, in its order."""
        if self._loaded_epoch_start is None:
            raise RuntimeError("continue_epoch: the loaded data state has no train_epoch_start")
        self.train_order.resume(self._loaded_epoch_start, batches_done)
