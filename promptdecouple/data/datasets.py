"""Torch datasets of the three kinds TIReID uses: training pairs, query captions, gallery images.

Items carry images as uint8 `pixel_values` (3, H, W); batches carry them as uint8 (B, 3, H, W),
which the model normalises on its device with `normalize_pixels` (a quarter of the bytes of
float32 to hand over, pin and copy). For batched loading the image datasets implement
`__getitems__`, which writes every image straight into its row of one batch tensor (in shared
memory inside a DataLoader worker) and gathers the other fields with one index each;
`collate_items` hands that batch on as it is. With PyTorch's `default_collate` the same items give
the same batch, one copy later.

Images are decoded as the public readers of these datasets decode them: a truncated file loads with
its missing rows grey (`load_image(..., allow_truncated=True)`; the data module reports such files
at setup). An image that cannot be decoded at all while loading (damage that only a full decode
finds, or a file removed after setup) does not stop the run: the mean colour takes its place (a
fully erased picture, as random erasing fills), a warning names the file, and batches built in one
go list it under ``"unreadable_images"`` so that the data module can count and report it.

Captions are tokenised once, up front (`tokenize_captions`), so items only index into tensors.
Paths are kept in a numpy string array, not a Python list, so that forked DataLoader workers do not
copy them page by page through reference counting.
"""

from __future__ import annotations

import math
import random
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, default_collate, get_worker_info

from promptdecouple.data.images import ImageDecodeError, load_image
from promptdecouple.data.transforms import ImageTransform

UNREADABLE_KEY = "unreadable_images"


def tokenize_captions(tokenizer: Any, captions: Sequence[str], text_length: int) -> dict[str, torch.Tensor]:
    """Token ids and attention masks (N, text_length), long: padded, truncated with EOS kept last."""
    if not captions:
        empty = torch.zeros((0, text_length), dtype=torch.long)
        return {"input_ids": empty, "attention_mask": empty.clone()}
    encoded = tokenizer(
        list(captions), padding="max_length", max_length=text_length, truncation=True, return_tensors="pt"
    )
    return {"input_ids": encoded["input_ids"].long(), "attention_mask": encoded["attention_mask"].long()}


class TrainingPairs(Dataset):
    """One item per (image, caption) of the training split, with its identity label 0..C-1.

    Item: `pixel_values` uint8 (3, H, W), `input_ids`, `attention_mask` (L,), `labels` (the identity's
    training label, 0..C-1, not the dataset's id), `index`.

    Keys are item indices, or `(index, epoch)` pairs as the training samplers yield them
    (`promptdecouple.data.samplers`): the augmentation of such a key is drawn from its own
    generator, seeded from (`seed`, epoch, index), so it is the same whichever process or loader
    worker builds the item, and the same again when a run resumes. Plain indices draw from
    Python's global `random`.
    """

    def __init__(
        self,
        image_paths: Sequence[str],
        labels: Sequence[int],
        tokens: dict[str, torch.Tensor],
        transform: ImageTransform,
        seed: int = 0,
    ):
        if not len(image_paths) == len(labels) == len(tokens["input_ids"]):
            raise ValueError("image_paths, labels and tokens must have one entry per pair")
        self.image_paths = np.asarray(image_paths, dtype=str)
        self.labels = torch.tensor(np.asarray(labels), dtype=torch.long)
        self.input_ids = tokens["input_ids"]
        self.attention_mask = tokens["attention_mask"]
        self.transform = transform
        self.seed = int(seed)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        index, rng = self._resolve(key)
        return {
            "pixel_values": _load_pixels(self.image_paths[index], self.transform, rng),
            "input_ids": self.input_ids[index],
            "attention_mask": self.attention_mask[index],
            "labels": self.labels[index],
            "index": index,
        }

    def __getitems__(self, keys: Sequence[int | tuple[int, int]]) -> PrecollatedItems:
        """The items of `keys`, built as one batch (see `PrecollatedItems`)."""
        resolved = [self._resolve(key) for key in keys]
        indices = [index for index, _ in resolved]
        index = torch.as_tensor(indices, dtype=torch.long)
        pixels, unreadable = _load_pixel_batch(
            self.image_paths, indices, self.transform, [r for _, r in resolved]
        )
        batch = {
            "pixel_values": pixels,
            "input_ids": self.input_ids[index],
            "attention_mask": self.attention_mask[index],
            "labels": self.labels[index],
            "index": index,
        }
        return PrecollatedItems(batch, unreadable)

    def _resolve(self, key: int | tuple[int, int]) -> tuple[int, random.Random | None]:
        if isinstance(key, tuple):
            index, epoch = int(key[0]), int(key[1])
            return index, random.Random(augmentation_seed(self.seed, epoch, index))
        return int(key), None


def augmentation_seed(seed: int, epoch: int, index: int) -> int:
    """The seed of one item's augmentation draws in one epoch: distinct for every (seed, epoch, index)."""
    return (seed << 64) + (epoch << 32) + index


class QueryCaptions(Dataset):
    """The evaluation queries: one item per caption, with the raw identity.

    Item: `input_ids`, `attention_mask` (L,), `pids`, `index` (position in the query set).
    """

    def __init__(self, pids: Sequence[int], tokens: dict[str, torch.Tensor]):
        if len(pids) != len(tokens["input_ids"]):
            raise ValueError("pids and tokens must have one entry per caption")
        self.pids = torch.tensor(np.asarray(pids), dtype=torch.long)
        self.input_ids = tokens["input_ids"]
        self.attention_mask = tokens["attention_mask"]

    def __len__(self) -> int:
        return len(self.pids)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {
            "input_ids": self.input_ids[index],
            "attention_mask": self.attention_mask[index],
            "pids": self.pids[index],
            "index": index,
        }


class GalleryImages(Dataset):
    """The evaluation gallery: one item per image, with the raw identity.

    Item: `pixel_values` uint8 (3, H, W), `pids`, `index` (position in the gallery).
    """

    def __init__(self, image_paths: Sequence[str], pids: Sequence[int], transform: ImageTransform):
        if len(image_paths) != len(pids):
            raise ValueError("image_paths and pids must have one entry per image")
        self.image_paths = np.asarray(image_paths, dtype=str)
        self.pids = torch.tensor(np.asarray(pids), dtype=torch.long)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.pids)

    def __getitem__(self, index: int) -> dict[str, Any]:
        pixels = _load_pixels(self.image_paths[index], self.transform)
        return {"pixel_values": pixels, "pids": self.pids[index], "index": index}

    def __getitems__(self, indices: Sequence[int]) -> PrecollatedItems:
        """The items of `indices`, built as one batch (see `PrecollatedItems`)."""
        index = torch.as_tensor(indices, dtype=torch.long)
        pixels, unreadable = _load_pixel_batch(self.image_paths, indices, self.transform)
        return PrecollatedItems(
            {"pixel_values": pixels, "pids": self.pids[index], "index": index}, unreadable
        )


class PrecollatedItems(list):
    """Dataset items that were built as one batch: a list of the items, plus the batch (`batch`).

    The image datasets' `__getitems__` (PyTorch's hook for batched loading) write every image
    straight into its row of one uint8 batch and gather the other fields with one index each;
    `collate_items` then hands `batch` on as it is. As a list it holds the same items as
    `__getitem__` would give (views into the batch), so `default_collate` also works, one copy later.
    Images that could not be decoded (`unreadable`, paths) are listed in `batch` under
    ``"unreadable_images"``, only when there are any.
    """

    def __init__(self, batch: dict[str, torch.Tensor], unreadable: Sequence[str] = ()):
        columns = {key: value.unbind(0) for key, value in batch.items()}
        super().__init__(
            dict(zip(columns, values, strict=True)) for values in zip(*columns.values(), strict=True)
        )
        self.batch = dict(batch, **{UNREADABLE_KEY: list(unreadable)}) if unreadable else batch


def _load_pixels(path: str, transform: ImageTransform, rng: random.Random | None = None) -> torch.Tensor:
    """One image as the loaders give it (uint8, 3 x H x W); the mean colour if it cannot be decoded."""
    pixels = torch.empty((3, *transform.image_size), dtype=torch.uint8)
    if not _write_image(path, transform, pixels.numpy(), rng):
        warnings.warn(unreadable_image_message(path), UserWarning, stacklevel=3)
    return pixels


def _load_pixel_batch(
    paths: np.ndarray,
    indices: Sequence[int],
    transform: ImageTransform,
    rngs: Sequence[random.Random | None] | None = None,
) -> tuple[torch.Tensor, list[str]]:
    """The images at `indices` of `paths` in one uint8 batch, and the paths that could not be decoded."""
    pixels = _new_pixel_batch(len(indices), transform.image_size)
    rows = pixels.numpy()
    rngs = rngs or [None] * len(indices)
    unreadable = [
        str(paths[position])
        for row, (position, rng) in enumerate(zip(indices, rngs, strict=True))
        if not _write_image(paths[position], transform, rows[row], rng)
    ]
    return pixels, unreadable


def _write_image(
    path: str, transform: ImageTransform, out: np.ndarray, rng: random.Random | None = None
) -> bool:
    """Decode, transform and write one image into `out`; False (and the mean colour) if it cannot be decoded."""
    try:
        image = load_image(path, allow_truncated=True)
    except (ImageDecodeError, FileNotFoundError):
        transform.write_blank(out)
        return False
    transform.write_pixels(image, out, rng)
    return True


def unreadable_image_message(path: str) -> str:
    return (
        f"image {path} could not be decoded while loading (it passed the checks at setup): the mean colour "
        "takes its place, as a fully erased picture; `promptdecouple data check --decode` finds such files"
    )


def _new_pixel_batch(size: int, image_size: Sequence[int]) -> torch.Tensor:
    """An uninitialised uint8 batch (size, 3, H, W); in shared memory inside a DataLoader worker.

    Shared memory is where a worker's batch has to go to reach the main process; allocating it
    there directly (as `default_collate` does) saves moving it later. `UntypedStorage._new_shared`
    is the private torch call `default_collate` itself makes for this; it is used here only, and
    tests/test_datasets.py::test_loader_batches_equal_default_collate_batches (with workers) and
    ::test_shared_memory_allocation_is_still_there fail if a release removes it.
    """
    shape = (size, 3, *image_size)
    if get_worker_info() is None:
        return torch.empty(shape, dtype=torch.uint8)
    storage = torch.UntypedStorage._new_shared(math.prod(shape))
    return torch.empty(0, dtype=torch.uint8).set_(storage, 0, shape)


def collate_items(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Collate dataset items into a batch: `default_collate`, except that items built as one batch
    (`PrecollatedItems`, from the datasets' `__getitems__`) give that batch, with no copy."""
    if isinstance(items, PrecollatedItems):
        return items.batch
    return default_collate(items)
