"""Torch datasets of the three kinds TIReID uses: training pairs, query captions, gallery images.

Items carry images as uint8 `pixels` (3, H, W); `BatchCollator` turns them into CLIP-normalised
float `pixel_values` per batch. Captions are tokenised once, up front (`tokenize_captions`), so
items only index into tensors. Paths are kept in a numpy string array, not a Python list, so that
forked DataLoader workers do not copy them page by page through reference counting.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, default_collate

from promptdecouple.data.transforms import ImageTransform, load_image


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

    Item: `pixels` uint8 (3, H, W), `input_ids`, `attention_mask` (L,), `pids` (label), `index`.
    """

    def __init__(
        self,
        image_paths: Sequence[str],
        labels: Sequence[int],
        tokens: dict[str, torch.Tensor],
        transform: ImageTransform,
    ):
        if not len(image_paths) == len(labels) == len(tokens["input_ids"]):
            raise ValueError("image_paths, labels and tokens must have one entry per pair")
        self.image_paths = np.asarray(image_paths, dtype=str)
        self.labels = torch.tensor(np.asarray(labels), dtype=torch.long)
        self.input_ids = tokens["input_ids"]
        self.attention_mask = tokens["attention_mask"]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {
            "pixels": self.transform.pixels(load_image(self.image_paths[index])),
            "input_ids": self.input_ids[index],
            "attention_mask": self.attention_mask[index],
            "pids": self.labels[index],
            "index": index,
        }


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

    Item: `pixels` uint8 (3, H, W), `pids`, `index` (position in the gallery).
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
        return {
            "pixels": self.transform.pixels(load_image(self.image_paths[index])),
            "pids": self.pids[index],
            "index": index,
        }


class BatchCollator:
    """Collates items into a batch; uint8 `pixels` become normalised float `pixel_values` (B, 3, H, W)."""

    def __init__(self, transform: ImageTransform):
        self.transform = transform

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        pixels = [item["pixels"] for item in items] if "pixels" in items[0] else None
        batch = default_collate([{k: v for k, v in item.items() if k != "pixels"} for item in items])
        if pixels is not None:
            batch = {"pixel_values": self.transform.normalize_batch(pixels), **batch}
        return batch
