"""PreemptionCheckpoint: SIGTERM mid-epoch leaves a checkpoint, a clear line and exit status 143."""

import os
import signal

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException

from promptdecouple import PromptDecoupleModule, StageSwitch, TIReIDDataModule
from promptdecouple.data import write_synthetic
from promptdecouple.preemption import EXIT_STATUS, PreemptionCheckpoint

SIZE = (64, 32)


class SigtermAt(Callback):
    """Sends this process SIGTERM after optimizer step `step`, as a scheduler would."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGTERM)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("rstp")
    write_synthetic(root, "rstpreid", num_identities=16, images_per_identity=2, image_size=SIZE, seed=2)
    return root


def fit(tiny_clip_dir, dataset, folder, callbacks, checkpointing=True):
    L.seed_everything(0)
    data = TIReIDDataModule(
        "rstpreid", dataset, str(tiny_clip_dir), image_size=SIZE, text_length=24, batch_size=4, num_workers=0
    )
    model = PromptDecoupleModule(
        str(tiny_clip_dir), num_classes=data.num_classes, image_size=SIZE, text_length=24, encoder_lr=1e-3
    )
    checkpoints = [ModelCheckpoint(folder / "ckpt", save_last=True)] if checkpointing else []
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=3,
        limit_train_batches=4,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=checkpointing,
        num_sanity_val_steps=0,
        callbacks=[StageSwitch(1), *checkpoints, *callbacks],
    )
    trainer.fit(model, datamodule=data)
    return trainer


def test_sigterm_mid_epoch_saves_where_the_run_stopped_and_exits_143(tiny_clip_dir, dataset, tmp_path):
    preemption = PreemptionCheckpoint()
    with (
        pytest.warns(
            UserWarning, match=r"interrupted by SIGTERM at epoch 1, after 7 optimizer steps: checkpoint"
        ),
        pytest.raises(SIGTERMException) as caught,
    ):
        fit(tiny_clip_dir, dataset, tmp_path, [preemption, SigtermAt(7)])
    assert caught.value.code == EXIT_STATUS == 143
    assert preemption.saved_path == str(tmp_path / "ckpt" / "last-interrupted.ckpt")
    checkpoint = torch.load(preemption.saved_path, weights_only=False)
    assert checkpoint["global_step"] == 7 and checkpoint["epoch"] == 1  # 4 batches per epoch: mid-epoch 1
    assert checkpoint["promptdecouple"]["stage"] == 2
    assert checkpoint["loops"]["fit_loop"]["epoch_loop.batch_progress"]["current"]["completed"] == 3


def test_without_checkpointing_it_says_nothing_was_saved(tiny_clip_dir, dataset, tmp_path):
    with pytest.warns(UserWarning, match="no checkpoint saved"), pytest.raises(SIGTERMException) as caught:
        fit(tiny_clip_dir, dataset, tmp_path, [PreemptionCheckpoint(), SigtermAt(2)], checkpointing=False)
    assert caught.value.code == 143
    assert not (tmp_path / "ckpt").exists()


def test_other_errors_are_left_alone(tiny_clip_dir, dataset, tmp_path):
    class Fails(Callback):
        def on_train_batch_end(self, trainer, *args) -> None:
            raise RuntimeError("a bug")

    preemption = PreemptionCheckpoint()
    with pytest.raises(RuntimeError, match="a bug"):
        fit(tiny_clip_dir, dataset, tmp_path, [preemption, Fails()])
    assert preemption.saved_path is None and not (tmp_path / "ckpt" / "last-interrupted.ckpt").exists()


def test_the_file_name_must_be_plain():
    with pytest.raises(ValueError, match="plain file name"):
        PreemptionCheckpoint(filename="runs/x")
