"""Stop signals sent by a run to itself at a chosen training step, so that they land mid-step, always
at the same place: a real signal through the real handlers, at a step a test can name."""

from __future__ import annotations

import os
import signal

from lightning.pytorch.callbacks import Callback


class SignalAtStep(Callback):
    """Lightning: ``signal`` to this process at the start of training step ``step``."""

    def __init__(self, step: int, signal: str = "SIGTERM"):
        self.step, self.signal = step, signal

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.Signals[self.signal])


class ReferenceSignalAtStep:
    """The reference trainer: ``signum`` to this process in the forward pass of training step ``step``."""

    def __init__(self, step: int, signum: int = signal.SIGTERM):
        self.step, self.signum, self.forwards = step, signum, 0

    def on_train_start(self, trainer, model) -> None:
        def forward(module, inputs):
            if module.training:
                if self.forwards == self.step:
                    os.kill(os.getpid(), self.signum)
                self.forwards += 1

        model.net.register_forward_pre_hook(forward)

    def on_validation_end(self, trainer, model) -> None:
        pass

    def on_train_end(self, trainer, model) -> None:
        pass
