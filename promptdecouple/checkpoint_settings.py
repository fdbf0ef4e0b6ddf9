"""What a checkpoint fixes: the settings it was trained with, against the ones a run is given.

A `fit` resumed from a checkpoint continues that checkpoint's experiment; `validate`, `test` and
`predict` evaluate its model. Every setting of `PromptDecoupleModule` and `TIReIDDataModule` has a
kind, which says what happens when a run gives a value that differs from the checkpoint's:

| kind | examples | resumed `fit` | `validate` / `test` / `predict` |
|---|---|---|---|
| path | `clip`, `tokenizer`, data `root` | the given value is used (it only locates files), with a note | the same |
| runtime | `eval_chunk_size`, `attn_implementation`, `num_workers` | the given value is used, with a note | the same |
| training | learning rates, losses, batch size, augmentation, seed | refused | the checkpoint's value is kept (it does not change an evaluation), with a note |
| model | prompt lengths and depths, image size, text length, classes | refused | refused |

Refusals list every differing setting at once (`CheckpointSettingsError`), before any training
step. A setting the checkpoint does not know (one added in a later version) counts as "model".
Values that are not given take the checkpoint's (the command line does this through LightningCLI).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

PATH, RUNTIME, TRAINING, MODEL = "path", "runtime", "training", "model"

MODEL_SETTINGS: dict[str, str] = {
    "clip": PATH,
    "tokenizer": PATH,
    "num_classes": MODEL,
    "image_size": MODEL,
    "text_length": MODEL,
    "text_prompt_length": MODEL,
    "vision_prompt_length": MODEL,
    "text_prompt_depth": MODEL,
    "vision_prompt_depth": MODEL,
    "stage1_losses": TRAINING,
    "stage2_losses": TRAINING,
    "temperature": TRAINING,
    "contrastive_scope": TRAINING,
    "id_loss_weight": TRAINING,
    "prompt_lr": TRAINING,
    "encoder_lr": TRAINING,
    "head_lr": TRAINING,
    "bias_lr_factor": TRAINING,
    "weight_decay": TRAINING,
    "optimizer": TRAINING,
    "adam_eps": TRAINING,
    "adam_betas": TRAINING,
    "stage1_warmup_epochs": TRAINING,
    "stage2_warmup_epochs": TRAINING,
    "warmup_start_factor": TRAINING,
    "min_lr_factor": TRAINING,
    "gradient_checkpointing": RUNTIME,
    "attn_implementation": RUNTIME,
    "eval_chunk_size": RUNTIME,
}
"""The kind of every `PromptDecoupleModule` argument."""

DATA_SETTINGS: dict[str, str] = {
    "dataset": TRAINING,
    "root": PATH,
    "tokenizer": PATH,
    "image_size": MODEL,
    "text_length": MODEL,
    "batch_size": TRAINING,
    "global_batch_size": TRAINING,
    "eval_batch_size": RUNTIME,
    "num_workers": RUNTIME,
    "eval_split": TRAINING,
    "predict_split": RUNTIME,
    "holdout_identities": TRAINING,
    "holdout_seed": TRAINING,
    "augment": TRAINING,
    "flip": TRAINING,
    "pad_crop": TRAINING,
    "random_erasing": TRAINING,
    "sampler": TRAINING,
    "instances_per_identity": TRAINING,
    "seed": TRAINING,
    "pin_memory": RUNTIME,
    "check_images": RUNTIME,
    "bad_entries": TRAINING,
}
"""The kind of every `TIReIDDataModule` argument. Evaluations may use other data (another dataset,
another split): data settings are checked for a resumed `fit` only."""


@dataclass(frozen=True)
class SettingDifference:
    """One setting whose given value differs from the checkpoint's."""

    section: str
    name: str
    checkpoint: Any
    given: Any
    kind: str

    @property
    def argument(self) -> str:
        return f"{self.section}.{self.name}"

    def __str__(self) -> str:
        return f"{self.argument}: checkpoint {self.checkpoint!r}, given {self.given!r}"


class CheckpointMismatchError(ValueError):
    """A run cannot continue or evaluate a checkpoint as it was asked to; the message says why."""


class CheckpointSettingsError(CheckpointMismatchError):
    """A run gave settings that a checkpoint fixes; `differences` lists each of them."""

    def __init__(self, checkpoint: str, differences: list[SettingDifference], fitting: bool):
        self.differences = differences
        lines = "\n  ".join(map(str, differences))
        if fitting:
            why = (
                "A resumed fit continues the checkpoint's experiment, which these settings define. Give the "
                "checkpoint's values (or leave them out: the checkpoint's apply), or start a new run without "
                "ckpt_path."
            )
        else:
            why = (
                "These settings define the checkpoint's model. Give the checkpoint's values, or leave them out: "
                "the checkpoint's apply."
            )
        super().__init__(
            f"checkpoint {checkpoint} was trained with other values of {len(differences)} setting(s) than the "
            f"ones given:\n  {lines}\n{why}"
        )


def differences(
    checkpoint: Mapping[str, Any], given: Mapping[str, Any], kinds: Mapping[str, str], section: str
) -> list[SettingDifference]:
    """The settings of `checkpoint` that `given` gives another value, with their kinds.

    Settings missing from either side are not compared; sequences compare by their items.
    """
    found = []
    for name, saved in checkpoint.items():
        if name.startswith("_") or name not in given:
            continue
        if normalize(saved) != normalize(given[name]):
            found.append(SettingDifference(section, name, saved, given[name], kinds.get(name, MODEL)))
    return found


def refused(found: list[SettingDifference], fitting: bool) -> list[SettingDifference]:
    """The differences a run cannot have: model settings, and training settings when resuming `fit`."""
    return [d for d in found if d.kind == MODEL or (fitting and d.kind == TRAINING)]


def normalize(value: Any) -> Any:
    """A comparable form: lists and tuples as tuples, recursively; numbers as they compare in Python."""
    if isinstance(value, (list, tuple)):
        return tuple(normalize(item) for item in value)
    return value
