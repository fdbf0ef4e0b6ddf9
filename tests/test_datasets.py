"""Tokenisation, the three dataset kinds and batch collation (also inside DataLoader workers)."""

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader
from transformers import AutoTokenizer

from promptdecouple.data.datasets import (
    BatchCollator,
    GalleryImages,
    QueryCaptions,
    TrainingPairs,
    tokenize_captions,
)
from promptdecouple.data.transforms import ImageTransform


@pytest.fixture(scope="module")
def tokenizer(tiny_clip_dir):
    return AutoTokenizer.from_pretrained(tiny_clip_dir)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    paths = []
    for i in range(6):
        array = np.random.default_rng(i).integers(0, 256, (40 + i, 20, 3), dtype=np.uint8)
        path = folder / f"{i}.jpg"
        Image.fromarray(array).save(path)
        paths.append(str(path))
    return paths


def test_tokens_are_padded_and_truncated_with_eos_kept_last(tokenizer):
    long_caption = " ".join(["a man in a red coat with a black bag"] * 20)
    tokens = tokenize_captions(tokenizer, ["a man", long_caption], text_length=16)
    ids, mask = tokens["input_ids"], tokens["attention_mask"]
    assert ids.shape == mask.shape == (2, 16) and ids.dtype == mask.dtype == torch.long
    assert (ids[:, 0] == tokenizer.bos_token_id).all()
    # short caption: BOS, tokens, EOS, then padding the mask hides
    length = int(mask[0].sum())
    assert ids[0, length - 1] == tokenizer.eos_token_id
    assert mask[0, :length].all() and not mask[0, length:].any()
    # long caption: cut to 16 tokens, the last one still EOS
    assert mask[1].all()
    assert ids[1, -1] == tokenizer.eos_token_id
    assert (ids[1, 1:-1] != tokenizer.eos_token_id).all()
    assert ids[1, 1:-1].tolist() == tokenizer(long_caption)["input_ids"][1:15]


def test_training_pairs_items_and_batches(tokenizer, images):
    tokens = tokenize_captions(tokenizer, [f"caption {i}" for i in range(6)], 12)
    dataset = TrainingPairs(images, [0, 0, 1, 1, 2, 2], tokens, ImageTransform((32, 16), train=True))
    item = dataset[3]
    assert item["pixels"].dtype == torch.uint8 and item["pixels"].shape == (3, 32, 16)
    assert item["pids"] == 1 and item["index"] == 3
    assert torch.equal(item["input_ids"], tokens["input_ids"][3])
    batch = BatchCollator(dataset.transform)([dataset[i] for i in (0, 5)])
    assert set(batch) == {"pixel_values", "input_ids", "attention_mask", "pids", "index"}
    assert batch["pixel_values"].shape == (2, 3, 32, 16) and batch["pixel_values"].dtype == torch.float32
    assert batch["pids"].tolist() == [0, 2] and batch["index"].tolist() == [0, 5]
    assert batch["input_ids"].dtype == torch.long


def test_query_and_gallery_items(tokenizer, images):
    queries = QueryCaptions([7, 7, 9], tokenize_captions(tokenizer, ["a", "b", "c"], 8))
    assert len(queries) == 3 and queries[2]["pids"] == 9 and queries[2]["index"] == 2
    assert "pixels" not in queries[0]
    gallery = GalleryImages(images[:2], [7, 9], ImageTransform((32, 16)))
    batch = BatchCollator(gallery.transform)([gallery[0], gallery[1]])
    assert set(batch) == {"pixel_values", "pids", "index"}
    assert torch.equal(batch["pixel_values"][1], ImageTransform((32, 16))(images[1]))


def test_worker_batches_equal_main_process_batches(images):
    """Inside a worker the batch is built in shared memory; it must hold the same values."""
    gallery = GalleryImages(images, list(range(6)), ImageTransform((32, 16)))
    kwargs = dict(batch_size=4, collate_fn=BatchCollator(gallery.transform))
    main = list(DataLoader(gallery, num_workers=0, **kwargs))
    worker = list(DataLoader(gallery, num_workers=1, **kwargs))
    assert len(main) == len(worker) == 2
    for a, b in zip(main, worker, strict=True):
        assert torch.equal(a["pixel_values"], b["pixel_values"])
        assert torch.equal(a["index"], b["index"])


def test_mismatched_lengths_are_refused(tokenizer, images):
    tokens = tokenize_captions(tokenizer, ["a", "b"], 8)
    with pytest.raises(ValueError, match="one entry per pair"):
        TrainingPairs(images[:3], [0, 1, 2], tokens, ImageTransform((32, 16)))
    with pytest.raises(ValueError, match="one entry per caption"):
        QueryCaptions([1, 2, 3], tokens)
    with pytest.raises(ValueError, match="one entry per image"):
        GalleryImages(images[:2], [1], ImageTransform((32, 16)))
