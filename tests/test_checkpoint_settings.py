"""What a checkpoint fixes: the kinds of settings, and the checks of the Python API (Trainer.fit/validate)."""

import inspect

import lightning as L
import pytest
from lightning.pytorch.callbacks import ModelCheckpoint

from promptdecouple import PromptDecoupleModule, StageSwitch, TIReIDDataModule
from promptdecouple.checkpoint_settings import (
    DATA_SETTINGS,
    MODEL,
    MODEL_SETTINGS,
    PATH,
    RUNTIME,
    TRAINING,
    CheckpointMismatchError,
    CheckpointSettingsError,
    differences,
    refused,
)
from promptdecouple.data import write_synthetic

SIZE = (64, 32)


def arguments(cls) -> set[str]:
    return set(inspect.signature(cls.__init__).parameters) - {"self"}


def test_every_argument_has_a_kind():
    """A new argument must be given a kind: resuming with it changed is then applied or refused, knowingly."""
    assert set(MODEL_SETTINGS) == arguments(PromptDecoupleModule)
    assert set(DATA_SETTINGS) == arguments(TIReIDDataModule)
    assert set(MODEL_SETTINGS.values()) | set(DATA_SETTINGS.values()) == {PATH, RUNTIME, TRAINING, MODEL}


def test_differences_compare_sequences_by_items_and_refusals_depend_on_the_run():
    saved = {
        "image_size": [64, 32],
        "encoder_lr": 1e-5,
        "clip": "a",
        "eval_chunk_size": 8,
        "_instantiator": "x",
    }
    given = {"image_size": (64, 32), "encoder_lr": 0.5, "clip": "b", "eval_chunk_size": 16, "new_setting": 1}
    found = differences(saved, given, MODEL_SETTINGS, "model")
    assert [(d.name, d.kind) for d in found] == [
        ("encoder_lr", TRAINING),
        ("clip", PATH),
        ("eval_chunk_size", RUNTIME),
    ]
    assert str(found[0]) == "model.encoder_lr: checkpoint 1e-05, given 0.5"
    assert [d.name for d in refused(found, fitting=True)] == ["encoder_lr"]
    assert refused(found, fitting=False) == []
    unknown = differences({"mystery": 1}, {"mystery": 2}, MODEL_SETTINGS, "model")
    assert refused(unknown, fitting=False) == unknown  # a setting nobody classified is taken as a model one


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("rstp")
    write_synthetic(root, "rstpreid", num_identities=16, images_per_identity=2, image_size=SIZE, seed=1)
    return root


def data_module(dataset, clip, **kwargs):
    options = dict(image_size=SIZE, text_length=24, batch_size=8, num_workers=0, augment=False)
    return TIReIDDataModule("rstpreid", dataset, str(clip), **{**options, **kwargs})


def module(clip, data, **kwargs):
    options = dict(
        image_size=SIZE, text_length=24, text_prompt_length=2, vision_prompt_length=2, encoder_lr=1e-3
    )
    return PromptDecoupleModule(str(clip), num_classes=data.num_classes, **{**options, **kwargs})


def trainer(tmp_path, max_epochs=2, **kwargs):
    return L.Trainer(
        accelerator="cpu",
        max_epochs=max_epochs,
        limit_train_batches=2,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=[StageSwitch(1), ModelCheckpoint(tmp_path / "ckpt", filename="{epoch}", save_top_k=-1)],
        **kwargs,
    )


@pytest.fixture(scope="module")
def checkpoints(dataset, tiny_clip_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("run")
    L.seed_everything(0)
    data = data_module(dataset, tiny_clip_dir)
    trainer(folder).fit(module(tiny_clip_dir, data), datamodule=data)
    return folder / "ckpt"


def test_resuming_a_fit_with_other_settings_is_refused_listing_them(
    checkpoints, dataset, tiny_clip_dir, tmp_path
):
    data = data_module(dataset, tiny_clip_dir)
    other = module(tiny_clip_dir, data, text_prompt_length=3, encoder_lr=0.5)
    with pytest.raises(CheckpointSettingsError) as caught:
        trainer(tmp_path).fit(other, datamodule=data, ckpt_path=checkpoints / "epoch=0.ckpt")
    message = str(caught.value)
    assert "model.text_prompt_length: checkpoint 2, given 3" in message
    assert "model.encoder_lr: checkpoint 0.001, given 0.5" in message


def test_evaluating_with_other_training_settings_is_fine(checkpoints, dataset, tiny_clip_dir, tmp_path):
    data = data_module(dataset, tiny_clip_dir)
    other = module(tiny_clip_dir, data, encoder_lr=0.5, eval_chunk_size=3)
    metrics = trainer(tmp_path).validate(other, datamodule=data, ckpt_path=checkpoints / "epoch=1.ckpt")
    assert metrics[0]["val/R1"] >= 0
    with pytest.raises(CheckpointSettingsError, match="vision_prompt_length: checkpoint 2, given 1"):
        trainer(tmp_path).validate(
            module(tiny_clip_dir, data, vision_prompt_length=1),
            datamodule=data,
            ckpt_path=checkpoints / "epoch=1.ckpt",
        )


def test_a_moved_clip_folder_is_given_as_a_path(checkpoints, tiny_clip_dir, tmp_path):
    import shutil

    moved = tmp_path / "moved_clip"
    shutil.copytree(tiny_clip_dir, moved)
    loaded = PromptDecoupleModule.load_from_checkpoint(checkpoints / "epoch=1.ckpt", clip=str(moved))
    assert loaded.hparams.clip == str(moved) and loaded.stage == 2


def test_resuming_with_other_data_settings_is_refused(checkpoints, dataset, tiny_clip_dir, tmp_path):
    data = data_module(dataset, tiny_clip_dir, seed=5, num_workers=0)
    with pytest.raises(CheckpointSettingsError, match="data.seed: checkpoint 0, given 5"):
        trainer(tmp_path).fit(
            module(tiny_clip_dir, data), datamodule=data, ckpt_path=checkpoints / "epoch=0.ckpt"
        )


def test_resuming_with_another_switch_epoch_is_refused(checkpoints, dataset, tiny_clip_dir, tmp_path):
    data = data_module(dataset, tiny_clip_dir)
    run = trainer(tmp_path)
    run.callbacks[0].switch_epoch = 2
    with pytest.raises(CheckpointSettingsError, match="stage_switch.switch_epoch: checkpoint 1, given 2"):
        run.fit(module(tiny_clip_dir, data), datamodule=data, ckpt_path=checkpoints / "epoch=0.ckpt")


def test_resuming_with_a_schedule_of_another_length_is_refused(checkpoints, dataset, tiny_clip_dir, tmp_path):
    """A stage-2 checkpoint carries its schedule; max_epochs=3 would silently keep the old one."""
    data = data_module(dataset, tiny_clip_dir)
    with pytest.raises(
        CheckpointMismatchError, match="schedule for stage 2 spans 2 optimizer steps .* plans 4"
    ):
        trainer(tmp_path, max_epochs=3).fit(
            module(tiny_clip_dir, data), datamodule=data, ckpt_path=checkpoints / "epoch=1.ckpt"
        )
    # from a stage-1 checkpoint the stage-2 schedule is not planned yet: a longer run is fine
    trainer(tmp_path, max_epochs=3).fit(
        module(tiny_clip_dir, data), datamodule=data, ckpt_path=checkpoints / "epoch=0.ckpt"
    )
