"""Interrupted runs: a checkpoint of where they stopped, a clear line, and a non-zero exit status.

Cluster schedulers stop jobs with SIGTERM (SLURM at preemption or at the time limit, before
SIGKILL). Lightning finishes the current step and raises `SIGTERMException`, a `SystemExit` whose
status is 0: a preempted job would look like a finished one to the scheduler and to scripts, and
nothing would be saved. `PreemptionCheckpoint` saves a checkpoint of the interrupted `fit` next to
the other checkpoints, says where it stopped and how to resume, and sets the exit status to 143
(128 + SIGTERM, what a shell reports for a job killed by SIGTERM). Ctrl+C is handled the same way;
Lightning then exits with status 1.
"""

from __future__ import annotations

import os
import signal

import lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_warn
from lightning.pytorch.utilities.exceptions import SIGTERMException

EXIT_STATUS = 128 + int(signal.SIGTERM)


class PreemptionCheckpoint(Callback):
    """On SIGTERM or Ctrl+C during `fit`: checkpoint where the run stopped, say so, exit non-zero.

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

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        if not isinstance(exception, (SIGTERMException, KeyboardInterrupt)):
            return
        if isinstance(exception, SIGTERMException):
            exception.code = EXIT_STATUS
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
        trainer.save_checkpoint(path)
        self.saved_path = path
        rank_zero_warn(
            f"fit interrupted by {reason} at {where}: checkpoint saved to {path}; resume with "
            f"`--ckpt_path {path}` (or `--ckpt_path last`)"
        )
