"""TIReIDDataModule: CUHK-PEDES, ICFG-PEDES or RSTPReid, from the download folder to batches."""

from __future__ import annotations

import os
import warnings
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import lightning as L
import numpy as np
import pandas as pd
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch.utils.data import DataLoader
from torchdata.stateful_dataloader import StatefulDataLoader

from promptdecouple.checkpoint_settings import DATA_SETTINGS, CheckpointSettingsError, differences, refused
from promptdecouple.data.annotations import (
    AnnotationProblem,
    BadEntries,
    apply_bad_entries,
    check_bad_entries,
    dataset_layout,
    describe_skipped,
    load_annotations,
)
from promptdecouple.data.datasets import (
    UNREADABLE_KEY,
    GalleryImages,
    QueryCaptions,
    TrainingPairs,
    collate_items,
    tokenize_captions,
    unreadable_image_message,
)
from promptdecouple.data.images import check_image_files
from promptdecouple.data.samplers import EpochOrder, IdentityOrder, RandomOrder
from promptdecouple.data.transforms import ImageTransform

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

EVAL_SPLITS = ("val", "test")
MISSING_SHOWN = 5


def check_eval_split(split: str, name: str = "split") -> str:
    """`split` if it is an evaluation split (``"val"`` or ``"test"``); a clear error otherwise."""
    if split not in EVAL_SPLITS:
        raise ValueError(f"{name} must be one of {', '.join(EVAL_SPLITS)}, got {split!r}")
    return split


class ImageFilesError(OSError):
    """Images listed by the annotations are missing or cannot be decoded (the message lists them)."""


class TIReIDDataModule(L.LightningDataModule):
    """Training pairs and evaluation (query captions, gallery images) for one TIReID benchmark.

    Args:
        dataset: ``"cuhk-pedes"``, ``"icfg-pedes"`` or ``"rstpreid"``.
        root: the dataset folder as downloaded (annotation JSON and ``imgs/``).
        tokenizer: Hugging Face hub name or local directory of the tokenizer (the CLIP's).
        image_size: (height, width) of the model input.
        text_length: tokens per caption, padded and truncated (EOS kept last).
        batch_size: training batch per process (Lightning's convention), when `global_batch_size`
            is not given.
        global_batch_size: training pairs per optimizer step over all processes; each process
            loads `global_batch_size / world_size` (an error if that does not divide). The same
            value on 1 or 8 GPUs trains the same experiment. None: `batch_size` per process.
        eval_batch_size: evaluation batch size; None: the per-process training batch.
        num_workers: DataLoader worker processes.
        eval_split: the split `val_dataloader` evaluates: ``"val"`` or ``"test"``. ICFG-PEDES has no
            val split: choose ``"test"`` (as IRRA does; model selection then sees the test set) or
            hold out training identities with `holdout_identities`.
        predict_split: the split `predict_dataloader` serves (``[queries, gallery]``, as validation):
            ``"val"`` or ``"test"``.
        holdout_identities: if > 0, this many training identities (drawn with `holdout_seed`) leave
            the training set and form the ``"val"`` split. Only for datasets without a val split.
        holdout_seed: seed of the held-out identities (fixed, so every run validates on the same).
        augment: training augmentation on or off (the three below pick which, when on).
        flip: horizontal flip with probability 0.5.
        pad_crop: shift by up to 10 px with black fill (IRRA's pad 10 + random crop).
        random_erasing: erase a random rectangle (2-40% of the area) with the mean colour, p=0.5.
        sampler: ``"random"`` (shuffled pairs) or ``"identity"`` (identity-balanced global batches
            of P identities x K = `instances_per_identity` items).
        instances_per_identity: K of the identity sampler; the per-process batch must be a multiple.
        seed: seed of the training order and of the augmentation draws; None: the run's seed
            (`seed_everything`, 0 if none was set), read at `setup`.
        pin_memory: pin host memory for faster GPU copies; None: when CUDA is available.
        check_images: at `setup`, check every image file of the splits in use: that it exists, is
            not empty, begins like an image and (JPEG, PNG) ends like one; files flagged so are
            decoded to tell truncated ones (they train, as in the reference code, and are
            reported) from unreadable ones (an error, or left out with ``bad_entries="skip"``).
        bad_entries: ``"error"`` (default): an annotation entry with a problem (an empty caption, a
            bad split, ...) or an image that is missing or unreadable is an error that lists them
            all. ``"skip"``: those entries are left out, and a warning reports how many, of which
            kinds, and the first few (`skipped` holds them all).

    `num_classes` (training identities) can be read right after construction: it reads the
    annotations once (LightningCLI links it into the model before `setup`).

    Batches: images travel as uint8 and are normalised on the model's device, after the transfer
    (a quarter of the bytes of float32 to write, share between workers, pin and copy):
    `pixel_values` is uint8 (B, 3, H, W) in 0..255, resized and (in training) augmented; the model's
    steps turn it into CLIP-normalised floats with `promptdecouple.data.normalize_pixels`.

    - training: `pixel_values`, `input_ids` and `attention_mask` long (B, L), `labels` long (the
      identity as a training label 0..C-1; `train_pids[label]` is its stored id), `index` (position
      in the training pairs); full batches only.
    - `val_dataloader` / `test_dataloader` return ``[queries, gallery]``: query batches hold
      `input_ids`, `attention_mask`, raw `pids` and `index` (position in `eval_set(split)[0]`);
      gallery batches `pixel_values`, raw `pids` and `index` (position in `eval_set(split)[1]`).

    Training order (`promptdecouple.data.samplers`): each epoch is a list of global batches, a
    function of the seed and the epoch; each process loads its slice of every global batch, and each
    item's augmentation is drawn from (seed, epoch, item). One config therefore trains on the same
    global batches with the same augmentation on any number of processes, and the train loader (a
    torchdata `StatefulDataLoader`, whose state Lightning saves in checkpoints) resumes at the next
    batch of an interrupted epoch.
    """

    def __init__(
        self,
        dataset: str,
        root: str | Path,
        tokenizer: str,
        image_size: tuple[int, int] = (384, 128),
        text_length: int = 77,
        batch_size: int = 64,
        global_batch_size: int | None = None,
        eval_batch_size: int | None = None,
        num_workers: int = 4,
        eval_split: Literal["val", "test"] = "val",
        predict_split: Literal["val", "test"] = "test",
        holdout_identities: int = 0,
        holdout_seed: int = 0,
        augment: bool = True,
        flip: bool = True,
        pad_crop: bool = True,
        random_erasing: bool = True,
        sampler: Literal["random", "identity"] = "random",
        instances_per_identity: int = 4,
        seed: int | None = None,
        pin_memory: bool | None = None,
        check_images: bool = True,
        bad_entries: BadEntries = "error",
    ):
        super().__init__()
        self.layout = dataset_layout(dataset)
        for name, value in (("eval_split", eval_split), ("predict_split", predict_split)):
            check_eval_split(value, name)
        if holdout_identities < 0:
            raise ValueError(f"holdout_identities must be >= 0, got {holdout_identities}")
        if "val" not in self.layout.splits and eval_split == "val" and not holdout_identities:
            raise ValueError(
                f"{self.layout.title} has no val split (its annotations have only "
                f"{' and '.join(self.layout.splits)}). Set eval_split='test' to validate on the test split "
                "(as IRRA does, so model selection sees the test set), or holdout_identities=N to hold out N "
                "training identities as a val split."
            )
        if "val" in self.layout.splits and holdout_identities:
            raise ValueError(
                f"{self.layout.title} has its own val split; holdout_identities is for datasets without one"
            )
        if sampler not in ("random", "identity"):
            raise ValueError(f"sampler must be 'random' or 'identity', got {sampler!r}")
        if global_batch_size is not None and global_batch_size < 1:
            raise ValueError(f"global_batch_size must be >= 1, got {global_batch_size}")
        if sampler == "identity" and instances_per_identity < 1:
            raise ValueError(f"instances_per_identity must be >= 1, got {instances_per_identity}")
        if sampler == "identity" and global_batch_size is None and batch_size % instances_per_identity:
            raise ValueError(
                f"sampler='identity' needs batch_size ({batch_size}) to be a multiple of "
                f"instances_per_identity ({instances_per_identity})"
            )
        check_bad_entries(bad_entries)
        if len(image_size) != 2 or min(image_size) < 1:
            raise ValueError(f"image_size must be (height, width), got {image_size!r}")
        for name, value in (("batch_size", batch_size), ("text_length", text_length)):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        # Hyperparameters are stored in checkpoints, which Lightning loads with torch.load(weights_only=True):
        # a pathlib.Path there would make every checkpoint unloadable.
        root = str(root)
        self.save_hyperparameters()
        self.dataset = self.layout.name
        self.root = Path(root).expanduser()
        self.tokenizer_name = str(tokenizer)
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.text_length = text_length
        self.batch_size = batch_size
        self.global_batch_size = global_batch_size
        self._eval_batch_size = eval_batch_size
        self.num_workers = num_workers
        self.eval_split = eval_split
        self.predict_split = predict_split
        self.holdout_identities = holdout_identities
        self.holdout_seed = holdout_seed
        self.sampler = sampler
        self.instances_per_identity = instances_per_identity
        self.seed = seed
        self.order_seed: int | None = seed
        """The seed the training order and augmentation use (`seed`, or the run's, fixed at setup)."""
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
        self.check_images = check_images
        self.bad_entries = bad_entries
        self.skipped: list[AnnotationProblem] = []
        """Every entry left out with ``bad_entries="skip"`` (annotation and image problems)."""
        self.truncated_images: dict[str, str] = {}
        """Truncated image files found at setup (path: what is wrong); they train as they decode."""
        self.unreadable_images: dict[str, int] = {}
        """Images that could not be decoded while loading (path: times), replaced by the mean colour."""
        self._dropped_images: set[int] = set()
        self.train_transform = ImageTransform(
            self.image_size, train=augment, flip=flip, pad_crop=pad_crop, random_erasing=random_erasing
        )
        self.eval_transform = ImageTransform(self.image_size)
        self._tokenizer = None
        self._datasets: dict[str, object] = {}

    # ---- annotations: read once, on first use ----

    @cached_property
    def annotations(self) -> pd.DataFrame:
        """All captions (`read_annotations`), with the held-out identities moved to split ``"val"``.

        With ``bad_entries="skip"`` the entries with problems are left out (and reported once).
        """
        table, skipped = apply_bad_entries(*load_annotations(self.layout.name, self.root), self.bad_entries)
        if skipped:
            self.skipped.extend(skipped)
            rank_zero_warn(describe_skipped(skipped, table.attrs["entries"], str(skipped[0].file)))
        if self.holdout_identities:
            train_pids = np.unique(table.loc[table["split"] == "train", "pid"])
            if self.holdout_identities >= len(train_pids):
                raise ValueError(
                    f"holdout_identities={self.holdout_identities} leaves no training identity "
                    f"({len(train_pids)} in the train split)"
                )
            held_out = np.random.default_rng(self.holdout_seed).choice(
                train_pids, self.holdout_identities, replace=False
            )
            moved = (table["split"] == "train") & table["pid"].isin(held_out)
            table = table.assign(split=table["split"].where(~moved, "val"))
        return table

    @cached_property
    def train_pids(self) -> np.ndarray:
        """The raw ids of the training identities, sorted: label `i` is identity `train_pids[i]`."""
        return np.unique(self.annotations.loc[self.annotations["split"] == "train", "pid"].to_numpy())

    @property
    def num_classes(self) -> int:
        """Number of training identities (the identity classifier's classes)."""
        return len(self.train_pids)

    def split(self, name: str) -> pd.DataFrame:
        """The captions of split `name`, with a clear error if the annotations have none.

        Entries whose image was left out at setup (``bad_entries="skip"``) are not in it.
        """
        table = self.annotations
        rows = table[(table["split"] == name) & ~table["image_id"].isin(self._dropped_images)]
        rows = rows.reset_index(drop=True)
        if rows.empty:
            found = ", ".join(sorted(self.annotations["split"].unique())) or "none"
            left_out = " once the entries with unusable images were left out" if self._dropped_images else ""
            raise ValueError(
                f"{self.layout.title} annotations under {self.root} have no {name!r} entries{left_out} "
                f"(splits found: {found})"
            )
        return rows

    def eval_set(self, split: str) -> tuple[pd.DataFrame, pd.DataFrame]:
        """(queries, gallery) of `split`, row `i` = item `index == i` of the matching loader.

        Queries: one row per caption (`pid, image_id, image_path, caption`); gallery: one row per
        image (`pid, image_id, image_path`), in order of first appearance.
        """
        check_eval_split(split)
        rows = self.split(split)
        queries = rows[["pid", "image_id", "image_path", "caption"]].reset_index(drop=True)
        gallery = rows.drop_duplicates("image_id")[["pid", "image_id", "image_path"]].reset_index(drop=True)
        return queries, gallery

    # ---- Lightning hooks ----

    def setup(self, stage: str | None = None) -> None:
        """Build the datasets the stage needs; finds missing images and splits now, not mid-epoch.

        Also fixes the seed of the training order (`order_seed`) and, for `fit`, checks that the
        global batch divides among the processes.
        """
        if self.order_seed is None:
            self.order_seed = int(os.environ.get("PL_GLOBAL_SEED", 0))
        if stage in ("fit", None):
            self.per_process_batch_size()
        splits = {
            "fit": ["train", self.eval_split],
            "validate": [self.eval_split],
            "test": ["test"],
            "predict": [self.predict_split],
            None: ["train", self.eval_split, "test"],
        }[stage]
        self._build(splits)

    def _build(self, splits: list[str]) -> None:
        splits = [s for s in dict.fromkeys(splits) if s not in self._datasets]
        if not splits:
            return
        if self.check_images:
            self._check_images({name: self.split(name) for name in splits})
        tables = {name: self.split(name) for name in splits}
        for name, rows in tables.items():
            tokens = tokenize_captions(self.tokenizer, rows["caption"].tolist(), self.text_length)
            if name == "train":
                labels = np.searchsorted(self.train_pids, rows["pid"].to_numpy())
                self._datasets[name] = TrainingPairs(
                    rows["image_path"].to_numpy(), labels, tokens, self.train_transform, seed=self._seed()
                )
            else:
                _, gallery = self.eval_set(name)
                self._datasets[name] = (
                    QueryCaptions(rows["pid"].to_numpy(), tokens),
                    GalleryImages(
                        gallery["image_path"].to_numpy(), gallery["pid"].to_numpy(), self.eval_transform
                    ),
                )

    @property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        """The Hugging Face tokenizer named by `tokenizer` (loaded once)."""
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(self.tokenizer_name)
        return self._tokenizer

    def train_dataset(self) -> TrainingPairs:
        """The training pairs (built on first use if `setup` has not run)."""
        self._build(["train"])
        return self._datasets["train"]

    def eval_datasets(self, split: str) -> tuple[QueryCaptions, GalleryImages]:
        """(queries, gallery) datasets of `split`, in the order of `eval_set(split)`."""
        check_eval_split(split)
        self._build([split])
        return self._datasets[split]

    def per_process_batch_size(self) -> int:
        """The training batch of one process: `global_batch_size / world_size`, else `batch_size`."""
        world_size, _ = self._distributed()
        if self.global_batch_size is None:
            per_process = self.batch_size
        elif self.global_batch_size % world_size:
            raise ValueError(
                f"global_batch_size={self.global_batch_size} does not divide among {world_size} processes: "
                f"give a multiple of {world_size} (each process loads global_batch_size / {world_size})"
            )
        else:
            per_process = self.global_batch_size // world_size
        if self.sampler == "identity" and per_process % self.instances_per_identity:
            raise ValueError(
                f"sampler='identity': the per-process batch ({per_process} = global batch "
                f"{per_process * world_size} / {world_size} processes) must be a multiple of "
                f"instances_per_identity ({self.instances_per_identity})"
            )
        return per_process

    @property
    def eval_batch_size(self) -> int:
        """Evaluation batch size: `eval_batch_size`, else the per-process training batch."""
        return self._eval_batch_size or self.per_process_batch_size()

    def train_order(self) -> EpochOrder:
        """This process's training sampler: its share of every global batch (see `samplers`)."""
        dataset = self.train_dataset()
        world_size, rank = self._distributed()
        per_process = self.per_process_batch_size()
        if self.sampler == "identity":
            return IdentityOrder(
                dataset.labels.numpy(),
                per_process,
                self.instances_per_identity,
                world_size,
                rank,
                self._seed(),
            )
        return RandomOrder(len(dataset), per_process, world_size, rank, self._seed())

    def train_dataloader(self) -> StatefulDataLoader:
        """Training pairs in full batches, this process's share of each global batch, resumable mid-epoch.

        A torchdata `StatefulDataLoader`: Lightning saves its state (with the sampler's) in
        checkpoints and restores it on resume, so an interrupted epoch continues at its next batch.
        """
        dataset = self.train_dataset()
        order = self.train_order()
        with warnings.catch_warnings():  # torchdata 0.11 calls torch.set_vital, deprecated in torch 2.13
            warnings.filterwarnings("ignore", message="'set_vital' is deprecated", category=UserWarning)
            return StatefulDataLoader(
                dataset, batch_size=order.batch_size, sampler=order, drop_last=True, **self._loader_options()
            )

    def _seed(self) -> int:
        return int(os.environ.get("PL_GLOBAL_SEED", 0)) if self.order_seed is None else self.order_seed

    def state_dict(self) -> dict:
        """What a checkpoint keeps of the data: the settings (compared when a fit resumes)."""
        settings = {name: self.hparams[name] for name in DATA_SETTINGS if name in self.hparams}
        settings["seed"] = self._seed()  # the seed used, also when the run's seed was taken
        return {"settings": settings}

    def load_state_dict(self, state_dict: dict) -> None:
        """Refuse to resume a fit with data settings that change the experiment (see `checkpoint_settings`)."""
        trainer = self.trainer
        if trainer is None or trainer.state.fn != "fit":
            return
        given = {**self.hparams, "seed": self._seed()}
        found = differences(state_dict.get("settings", {}), given, DATA_SETTINGS, "data")
        if bad := refused(found, fitting=True):
            raise CheckpointSettingsError(str(trainer.ckpt_path), bad, fitting=True)

    def on_before_batch_transfer(self, batch: dict, dataloader_idx: int) -> dict:
        """Take the list of images that could not be decoded out of the batch, count and report them."""
        unreadable = batch.pop(UNREADABLE_KEY, None) if isinstance(batch, dict) else None
        for path in unreadable or ():
            if path not in self.unreadable_images:
                warnings.warn(unreadable_image_message(path), UserWarning, stacklevel=2)
            self.unreadable_images[path] = self.unreadable_images.get(path, 0) + 1
        return batch

    def val_dataloader(self) -> list[DataLoader]:
        """``[queries, gallery]`` of `eval_split`, in order."""
        return self._eval_loaders(self.eval_split)

    def test_dataloader(self) -> list[DataLoader]:
        """``[queries, gallery]`` of the test split, in order."""
        return self._eval_loaders("test")

    def predict_dataloader(self) -> list[DataLoader]:
        """``[queries, gallery]`` of `predict_split`, in order (what `promptdecouple predict` encodes)."""
        return self._eval_loaders(self.predict_split)

    def _eval_loaders(self, split: str) -> list[DataLoader]:
        return [
            DataLoader(dataset, batch_size=self.eval_batch_size, shuffle=False, **self._loader_options())
            for dataset in self.eval_datasets(split)
        ]

    def _loader_options(self) -> dict:
        """What every loader of this data module shares: workers, batch assembly, pinned memory."""
        return dict(
            num_workers=self.num_workers,
            collate_fn=collate_items,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
        )

    # ---- helpers ----

    def _distributed(self) -> tuple[int, int]:
        trainer = self.trainer
        if trainer is not None:
            return trainer.world_size, trainer.global_rank
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return torch.distributed.get_world_size(), torch.distributed.get_rank()
        return 1, 0

    def _check_images(self, tables: dict[str, pd.DataFrame]) -> None:
        """Check the image files of `tables` (see `check_images`); report, refuse or leave out."""
        paths = pd.unique(pd.concat([rows["image_path"] for rows in tables.values()]))
        report = check_image_files(paths)
        annotation_file = self.layout.annotation_file(self.root)
        if report.truncated:
            self.truncated_images.update(report.truncated)
            rank_zero_warn(
                f"{len(report.truncated)} of {len(paths)} images listed in {annotation_file} are truncated: "
                "they are used as far as they decode, the missing part grey, as the reference code does "
                "(Pillow's LOAD_TRUNCATED_IMAGES):\n  " + _listing(report.truncated)
            )
        unusable = report.unusable
        if not unusable:
            return
        if self.bad_entries == "skip":
            images = pd.concat(tables.values()).drop_duplicates("image_id")
            images = images[images["image_path"].isin(unusable)]
            problems = [
                AnnotationProblem(
                    annotation_file,
                    f"image {row.image_path}: {unusable[row.image_path]}",
                    int(row.image_id),
                    int(row.pid),
                    "missing image" if unusable[row.image_path] == "missing" else "unreadable image",
                )
                for row in images.itertuples()
            ]
            self._dropped_images.update(int(i) for i in images["image_id"])
            self.skipped.extend(problems)
            rank_zero_warn(describe_skipped(problems, len(paths), f"the images of {annotation_file}"))
            return
        what = " or ".join(
            word for word, found in (("missing", report.missing), ("unreadable", report.unreadable)) if found
        )
        raise ImageFilesError(
            f"{len(unusable)} of {len(paths)} images listed in {annotation_file} ({', '.join(tables)} splits) "
            f"are {what}:\n  {_listing(unusable)}\n"
            f"Expected layout: {self.layout.folders}; `promptdecouple data check --dataset "
            f"{self.layout.name} --root {self.root}` lists them all. To train without them, pass "
            "bad_entries='skip' (`--data.bad_entries skip`): their entries are left out and reported."
        )


def _listing(found: dict[str, str], shown: int = MISSING_SHOWN) -> str:
    lines = [
        path if reason == "missing" else f"{path}: {reason}" for path, reason in list(found.items())[:shown]
    ]
    if len(found) > shown:
        lines.append(f"... and {len(found) - shown} more")
    return "\n  ".join(lines)
