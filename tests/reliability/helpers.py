"""Helpers of the reliability tests."""

from __future__ import annotations

import lightning

from project.module import ImageClassifier


def checkpoint_of(model: ImageClassifier, **extra) -> dict:
    """A checkpoint of ``model`` in Lightning's layout, as both loops write it."""
    return {
        "pytorch-lightning_version": lightning.__version__,
        "state_dict": model.state_dict(),
        "class_names": list(model.class_names),
        **extra,
    }
