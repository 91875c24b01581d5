"""The resumable training order (RandomSampler's draws, the rest of an interrupted epoch) and stop signals."""

import os
import signal

import pytest
import torch
from torch.utils.data import BatchSampler, RandomSampler

from project.data import ImageDataModule
from project.data.order import EpochOrder, ShuffledSampler
from project.preemption import StopSignals


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


@pytest.mark.parametrize("device_cache", [False, True])
def test_a_data_module_resumed_inside_an_epoch_gives_the_rest_of_it(device_cache):
    """The data state after 3 of an epoch's batches, loaded into a fresh data module with continue_epoch(3):
    its next training pass is batches 3.. of that epoch and the pass after it the next epoch, on both data paths."""

    def data_module() -> ImageDataModule:
        dm = ImageDataModule(batch_size=100, augment=True, device_cache=device_cache, seed=7)
        dm.setup("fit")
        return dm

    dm = data_module()
    loader = dm.train_dataloader()
    first = [y for _, y in loader]
    second = [y for _, y in loader]
    interrupted = data_module()
    batches = iter(interrupted.train_dataloader())
    for _ in range(3):
        next(batches)
    resumed = data_module()
    resumed.load_state_dict(interrupted.state_dict())
    resumed.continue_epoch(3)
    loader = resumed.train_dataloader()
    rest, after = [y for _, y in loader], [y for _, y in loader]
    assert len(rest) == len(first) - 3
    assert all(torch.equal(a, b) for a, b in zip(rest, first[3:], strict=True))
    assert all(torch.equal(a, b) for a, b in zip(after, second, strict=True))


def test_stop_signals_record_the_first_and_a_second_ctrl_c_interrupts():
    """SIGTERM is only recorded; a second SIGINT raises KeyboardInterrupt; close() puts the old handler back."""
    before = signal.getsignal(signal.SIGINT)
    with StopSignals() as signals:
        os.kill(os.getpid(), signal.SIGTERM)
        assert signals.received == signal.SIGTERM
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is before
