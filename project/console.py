"""What a run's console leaves out: Lightning's messages that ask nothing of the user."""

from __future__ import annotations

import logging
import warnings


def quiet_lightning() -> None:
    """Filter out Lightning's warnings that do not apply to this project and its advertisement."""
    # Under DDP Lightning asks for self.log(..., sync_dist=True) at epoch level; the module logs
    # values that torchmetrics has already summed over the ranks, so the advice does not apply.
    warnings.filterwarnings("ignore", message=r"It is recommended to use `self.log\('(train|val|test)/")
    # Lightning 2.6 calls a pytree check that newer torch releases deprecate: nothing for a user to change.
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")
    # and every Trainer prints an advertisement for a cloud logger; a run's console keeps the rest
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(not_an_advert)


def not_an_advert(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith("💡 Tip:")
