"""Preemption: SIGTERM (a scheduler taking the machine back) or Ctrl-C during training becomes a checkpoint of the
step just finished and a clean stop; ``resume=auto`` then continues from that step as if nothing had happened.

Lightning's own SIGTERM handling stops after the current batch but saves nothing, and its Ctrl-C handling stops
anywhere (even between backward and the optimiser step) and exits 1. :class:`Preemption` replaces both while
``fit`` trains: a signal only raises a flag; :func:`stop_point`, called by each training module at the end of
``on_train_batch_end`` (after the module has logged the step, and at an optimiser-step boundary), writes
``weights/last.ckpt`` there and raises :class:`StopTraining`. Under DDP the ranks agree on the flag every step,
so all of them save and stop at the same step. A signal during validation stops at the next validation batch,
without a new checkpoint (a half-done validation cannot be resumed): the run continues from its last checkpoint.
A second Ctrl-C stops at once. The data order and augmentations are functions of (seed, epoch, position)
(:mod:`sarmae.data.sampling`) and the checkpoint carries every RNG, so the resumed run equals an uninterrupted one.
"""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopTraining(BaseException):  # noqa: N818 (not an error: Lightning must not treat it as one to catch)
    """Raised out of ``trainer.fit`` after a signal; ``checkpoint`` is the file written (None: none written)."""

    def __init__(self, signum: int, checkpoint: Path | None, epoch: int, step: int) -> None:
        super().__init__(signum, checkpoint)
        self.signum, self.checkpoint, self.epoch, self.step = int(signum), checkpoint, int(epoch), int(step)

    def advice(self) -> str:
        """One line: what stopped, what was kept, how to continue."""
        name = signal.Signals(self.signum).name
        if self.checkpoint is None:
            return (f"stopped by {name} during validation of epoch {self.epoch}: no new checkpoint; run the same "
                    "command with resume=auto to continue from the last one")
        return (f"stopped by {name} at epoch {self.epoch}, step {self.step}: saved {self.checkpoint}; run the same "
                "command with resume=auto to continue from this step")


class Preemption(Callback):
    """While ``fit`` trains, SIGTERM and SIGINT set :attr:`signum` instead of stopping the process mid-step."""

    def __init__(self, last_path: Path) -> None:
        self.last_path = Path(last_path)
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def _flag(self, signum: int, frame: Any) -> None:  # noqa: ARG002
        if signum == signal.SIGINT and self.signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: the user does not want to wait for the step
        self.signum = self.signum or signum

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Lightning installed its SIGTERM handler when fit began; ours replaces it for the training itself.
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._flag) for s in SIGNALS}

    def _restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)  # None: set from C
        self._previous = {}

    def requested(self, trainer: L.Trainer) -> bool:
        """Whether a signal came, on any rank (every rank must call it at the same point: a collective)."""
        flagged = self.signum is not None
        if trainer.world_size > 1:
            flagged = trainer.strategy.reduce_boolean_decision(flagged, all=False)
        return flagged

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._restore()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._restore()

    def on_validation_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any, **kw: Any
                                ) -> None:
        if trainer.state.fn == "fit" and self.requested(trainer):  # (every rank runs the same validation batches)
            raise StopTraining(self.signum or signal.SIGTERM, None, trainer.current_epoch, trainer.global_step)


def _preemption(trainer: L.Trainer) -> Preemption | None:
    return next((c for c in trainer.callbacks if isinstance(c, Preemption)), None)


def stop_point(trainer: L.Trainer, batch_idx: int) -> None:
    """If a signal came (on any rank): write ``weights/last.ckpt`` of the step just finished and stop training.

    Call it last in the module's ``on_train_batch_end``; steps that only accumulate gradients are not stop points,
    nor is an epoch's last step: the epoch then ends as usual (validation, its checkpoint) and
    :func:`stop_after_checkpoint` stops there, since a checkpoint of an epoch's last batch would resume into
    the next epoch without the first one's end.
    """
    preemption = _preemption(trainer)
    if preemption is None or trainer.is_last_batch or (batch_idx + 1) % trainer.accumulate_grad_batches:
        return
    if not preemption.requested(trainer):
        return
    trainer.save_checkpoint(preemption.last_path, weights_only=False)  # every rank: a barrier; rank 0 writes
    raise StopTraining(preemption.signum or signal.SIGTERM, preemption.last_path, trainer.current_epoch,
                       trainer.global_step)


def stop_after_checkpoint(trainer: L.Trainer, checkpoint: Path) -> None:
    """At an epoch end, after its checkpoint was written: stop if a signal came (on any rank)."""
    preemption = _preemption(trainer)
    if preemption is not None and preemption.requested(trainer):
        raise StopTraining(preemption.signum or signal.SIGTERM, checkpoint, trainer.current_epoch,
                           trainer.global_step)


__all__ = ["Preemption", "StopTraining", "stop_after_checkpoint", "stop_point"]
