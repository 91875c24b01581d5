"""The resumable training order: RandomSampler's draws, and an interrupted epoch's remaining batches."""

import pytest
import torch
from torch.utils.data import BatchSampler, RandomSampler

from project.data.order import EpochOrder, ShuffledSampler


@pytest.mark.parametrize("n", [40, 37])
def test_the_sampler_draws_what_random_sampler_draws(n):
    """Three epochs: the same batches and the same generator state after each, whole or partial last batch."""
    ours, theirs = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    a = BatchSampler(ShuffledSampler(n, EpochOrder(ours), 8), 8, drop_last=False)
    b = BatchSampler(RandomSampler(range(n), generator=theirs), 8, drop_last=False)
    for _ in range(3):
        assert list(a) == list(b)
        assert torch.equal(ours.get_state(), theirs.get_state())


def test_a_resumed_epoch_yields_the_batches_not_yet_taken():
    """Interrupted after 2 of 5 batches: the resumed pass gives batches 2..4 of that epoch, then the next epoch."""
    gen = torch.Generator().manual_seed(5)
    order = EpochOrder(gen)
    batches = BatchSampler(ShuffledSampler(37, order, 8), 8, drop_last=False)
    uninterrupted = [list(batches), list(batches)]
    gen.manual_seed(5)
    interrupted = iter(batches)
    taken = [next(interrupted), next(interrupted)]
    resumed_gen = torch.Generator()
    resumed_order = EpochOrder(resumed_gen)
    resumed_order.resume(order.epoch_start, batches_done=2)
    resumed = BatchSampler(ShuffledSampler(37, resumed_order, 8), 8, drop_last=False)
    assert taken + list(resumed) == uninterrupted[0]
    assert list(resumed) == uninterrupted[1]
