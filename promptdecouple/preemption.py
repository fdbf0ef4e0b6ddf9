"""Interrupted runs: a checkpoint of where they stopped, a clear line, and a non-zero exit status.

Cluster schedulers stop jobs with SIGTERM (SLURM at preemption or at the time limit, before
SIGKILL). Left to itself, Lightning 2.6 finishes the current step and raises `SIGTERMException`, a
`SystemExit` whose status is 0, so a preempted job looks finished to the scheduler and to scripts,
and nothing is saved. Under DDP it can also hang: each process that receives the signal stops on
its own, possibly one step apart from the others, and its signal handler runs a collective
(measured here: 2 CPU processes, one stuck in a barrier while the other had gone on to the next
step's forward).

`PreemptionCheckpoint` takes over SIGTERM during `fit`:

- its signal handler only records the signal (no collective, no I/O);
- at the end of every training step the processes agree whether any of them received it (one
  all-reduce of one number), so all of them stop after the same step;
- it saves a checkpoint of that point next to the other checkpoints, says where the run stopped and
  how to resume, and sets the exit status to 143 (128 + SIGTERM, what a shell reports for a job
  killed by SIGTERM).

A signal during validation takes effect after the next training step. Ctrl+C in a single process
saves the same checkpoint; Lightning then exits with status 1.
"""

from __future__ import annotations

import contextlib
import os
import signal
from types import FrameType

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_warn
from lightning.pytorch.utilities.exceptions import SIGTERMException

EXIT_STATUS = 128 + int(signal.SIGTERM)


class PreemptionCheckpoint(Callback):
    """On SIGTERM (or Ctrl+C in one process) during `fit`: checkpoint where the run stopped, exit 143.

    The checkpoint goes to the folder of the trainer's `ModelCheckpoint` (none is saved when the
    trainer does not checkpoint). Its name starts with "last", so `--ckpt_path last` picks it when it
    is the newest checkpoint there; resuming from it continues that epoch.

    Args:
        save_checkpoint: save a checkpoint when the run is interrupted.
        filename: name of that checkpoint, without ".ckpt".
    """

    def __init__(self, save_checkpoint: bool = True, filename: str = "last-interrupted") -> None:
        if not filename or os.sep in filename:
            raise ValueError(f"filename must be a plain file name, got {filename!r}")
        self.save_checkpoint = save_checkpoint
        self.filename = filename
        self.saved_path: str | None = None
        """Where the checkpoint of the last interruption went (None: none was saved)."""
        self._signalled = False
        self._stopping = False

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Lightning registered its own SIGTERM handler when the run started; this one replaces it
        # (Lightning restores the handlers of before the run when it ends).
        self._signalled = self._stopping = False
        with contextlib.suppress(ValueError):  # not the main thread: Lightning's handler stays
            signal.signal(signal.SIGTERM, self._on_sigterm)

    def _on_sigterm(self, signum: int, frame: FrameType | None) -> None:
        self._signalled = True

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args) -> None:
        signalled = self._signalled
        if trainer.world_size > 1:  # every process is here after the same step: agree
            flag = torch.tensor([float(signalled)], device=pl_module.device)
            signalled = bool(trainer.strategy.reduce(flag, reduce_op="sum").item() > 0)
        if signalled and not self._stopping:
            self._stopping = True
            _stop_after_this_step(trainer)

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        if isinstance(exception, SIGTERMException):
            exception.code = EXIT_STATUS
        elif not (isinstance(exception, KeyboardInterrupt) and trainer.world_size == 1):
            return  # other errors, and Ctrl+C under DDP (processes stop at different points)
        if trainer.state.fn != TrainerFn.FITTING or trainer.sanity_checking:
            return
        reason = "SIGTERM" if isinstance(exception, SIGTERMException) else "Ctrl+C"
        where = f"epoch {trainer.current_epoch}, after {trainer.global_step} optimizer steps"
        checkpoint = trainer.checkpoint_callback
        if not self.save_checkpoint or checkpoint is None or getattr(checkpoint, "dirpath", None) is None:
            rank_zero_warn(
                f"fit interrupted by {reason} at {where}; no checkpoint saved (checkpointing is off)"
            )
            return
        path = os.path.join(checkpoint.dirpath, f"{self.filename}.ckpt")
        trainer.save_checkpoint(path)  # a collective: every process stopped after the same step
        self.saved_path = path
        rank_zero_warn(
            f"fit interrupted by {reason} at {where}: checkpoint saved to {path}; resume with "
            f"`--ckpt_path {path}` (or `--ckpt_path last`)"
        )


def _stop_after_this_step(trainer: L.Trainer) -> None:
    """Make Lightning raise `SIGTERMException` at the end of the current step, as after its own handler.

    Lightning 2.6 keeps the flag its loops check at `trainer._signal_connector.received_sigterm`
    (`Trainer.received_sigterm` reads it; there is no public setter). Private: this is the one place
    that writes it, and tests/test_preemption.py fails if a release moves it.
    """
    trainer._signal_connector.received_sigterm = True
