"""The two training stages and the callback that switches between them, DDP included.

Stage 1 (domain adaptation) trains the prompts with CLIP frozen; stage 2 (task adaptation)
freezes the prompts and trains CLIP and the identity head. What trains in each stage is decided
by `PromptDecoupleModule.set_stage`; this module decides *when*, and makes the trainer follow.
"""

from __future__ import annotations

import warnings

import lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.strategies import DDPStrategy, SingleDeviceStrategy
from lightning.pytorch.trainer.states import TrainerFn
from torch.nn.parallel import DistributedDataParallel

from promptdecouple.checkpoint_settings import TRAINING, CheckpointSettingsError, SettingDifference

STAGES = (1, 2)


def stage_for_epoch(epoch: int, switch_epoch: int) -> int:
    """Epochs `[0, switch_epoch)` are stage 1, the rest stage 2."""
    return 1 if epoch < switch_epoch else 2


class StageSwitch(Callback):
    """Run stage 1 for epochs `[0, switch_epoch)`, then stage 2 until the end of `fit`.

    `switch_epoch=0` trains stage 2 only: direct fine-tuning, the paper's baseline. At the switch
    the trainable set changes, the DDP wrapper is rebuilt over it (DDP only synchronises the
    parameters that required gradients when it wrapped the model) and the optimizer and schedule
    are rebuilt for stage 2. The stage travels in checkpoints (see `PromptDecoupleModule`), so a
    resumed run continues in the stage it stopped in.

    Args:
        switch_epoch: the first epoch of stage 2; epochs before it are stage 1 (0: stage 2 only,
            the one-stage fine-tuning baseline).
    """

    def __init__(self, switch_epoch: int = 10) -> None:
        if switch_epoch < 0:
            raise ValueError(f"switch_epoch must be >= 0, got {switch_epoch}")
        self.switch_epoch = switch_epoch

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        # Runs before a checkpoint is restored and before DDP wraps the model, so a fresh run starts
        # with the right trainable set; a restored checkpoint then overrides it with its own stage.
        if stage == "fit":
            _check_supported(trainer)
            pl_module.set_stage(stage_for_epoch(0, self.switch_epoch))

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        max_epochs = trainer.max_epochs
        if max_epochs is not None and max_epochs >= 0 and self.switch_epoch >= max_epochs:
            warnings.warn(
                f"StageSwitch(switch_epoch={self.switch_epoch}) with max_epochs={max_epochs}: stage 2 "
                "will never run; only the prompts will be trained",
                UserWarning,
                stacklevel=2,
            )

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        stage = stage_for_epoch(trainer.current_epoch, self.switch_epoch)
        if stage != pl_module.stage:
            switch_stage(trainer, pl_module, stage)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, *args) -> None:
        # Lightning does not call on_train_epoch_start for the epoch a run resumes into, also when the
        # checkpoint was written on the last batch of the epoch before: switch at its first batch then.
        self.on_train_epoch_start(trainer, pl_module)

    def state_dict(self) -> dict:
        return {"switch_epoch": self.switch_epoch}

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        """Refuse to resume a fit with another `switch_epoch`: the checkpoint's schedule was planned for its own."""
        saved = checkpoint.get("callbacks", {}).get(self.state_key, {}).get("switch_epoch", self.switch_epoch)
        if saved != self.switch_epoch and trainer.state.fn == TrainerFn.FITTING:
            difference = SettingDifference("stage_switch", "switch_epoch", saved, self.switch_epoch, TRAINING)
            raise CheckpointSettingsError(str(trainer.ckpt_path), [difference], fitting=True)


def switch_stage(trainer: L.Trainer, pl_module: L.LightningModule, stage: int) -> None:
    """Change the running fit to `stage`: trainable set, DDP wrapper, optimizer and schedule.

    Every rank must call it at the same step: rebuilding the DDP wrapper is a collective.
    """
    pl_module.set_stage(stage)
    strategy = trainer.strategy
    if isinstance(strategy, DDPStrategy) and isinstance(strategy.model, DistributedDataParallel):
        strategy.model = strategy.lightning_module
        strategy.configure_ddp()
    strategy.setup_optimizers(trainer)


def _check_supported(trainer: L.Trainer) -> None:
    strategy = trainer.strategy
    if not isinstance(strategy, (DDPStrategy, SingleDeviceStrategy)):
        raise ValueError(
            f"StageSwitch supports single-device and DDP training (strategy='ddp', 'ddp_spawn', "
            f"'ddp_find_unused_parameters_true', ...), not {type(strategy).__name__}: sharded strategies "
            "restore checkpoints after wrapping the model, which breaks changing what trains"
        )
