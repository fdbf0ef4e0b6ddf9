"""Tokenisation, the three dataset kinds and their uint8 batches (also from DataLoader workers)."""

import random

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, default_collate
from transformers import AutoTokenizer

from promptdecouple.data.datasets import (
    GalleryImages,
    PrecollatedItems,
    QueryCaptions,
    TrainingPairs,
    collate_items,
    tokenize_captions,
)
from promptdecouple.data.transforms import ImageTransform, normalize_pixels


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
    assert item["pixel_values"].dtype == torch.uint8 and item["pixel_values"].shape == (3, 32, 16)
    assert item["labels"] == 1 and item["index"] == 3
    assert torch.equal(item["input_ids"], tokens["input_ids"][3])
    batch = default_collate([dataset[i] for i in (0, 5)])
    assert set(batch) == {"pixel_values", "input_ids", "attention_mask", "labels", "index"}
    assert batch["pixel_values"].shape == (2, 3, 32, 16) and batch["pixel_values"].dtype == torch.uint8
    assert batch["labels"].tolist() == [0, 2] and batch["index"].tolist() == [0, 5]
    assert batch["input_ids"].dtype == torch.long


def test_training_pixels_without_augmentation_are_the_resized_image(tokenizer, images):
    tokens = tokenize_captions(tokenizer, ["a"] * 6, 8)
    dataset = TrainingPairs(images, [0] * 6, tokens, ImageTransform((32, 16), train=False))
    for index in (0, 4):
        resized = Image.open(images[index]).convert("RGB").resize((16, 32), Image.Resampling.BICUBIC)
        expected = torch.from_numpy(np.asarray(resized).transpose(2, 0, 1).copy())
        assert torch.equal(dataset[index]["pixel_values"], expected)


def test_query_and_gallery_items(tokenizer, images):
    queries = QueryCaptions([7, 7, 9], tokenize_captions(tokenizer, ["a", "b", "c"], 8))
    assert len(queries) == 3 and queries[2]["pids"] == 9 and queries[2]["index"] == 2
    assert "pixel_values" not in queries[0]
    gallery = GalleryImages(images[:2], [7, 9], ImageTransform((32, 16)))
    batch = default_collate([gallery[0], gallery[1]])
    assert set(batch) == {"pixel_values", "pids", "index"}
    assert batch["pixel_values"].dtype == torch.uint8
    assert torch.equal(batch["pixel_values"][1], ImageTransform((32, 16)).pixels(images[1]))
    # normalised on the model's side, the batch equals the single-image transform
    assert torch.equal(normalize_pixels(batch["pixel_values"])[1], ImageTransform((32, 16))(images[1]))


@pytest.mark.parametrize("kind", ["pairs", "gallery"])
def test_batched_loading_gives_the_items_and_the_batch_of_one_by_one_loading(tokenizer, images, kind):
    if kind == "pairs":
        tokens = tokenize_captions(tokenizer, [f"caption {i}" for i in range(6)], 12)
        dataset = TrainingPairs(images, [0, 1, 1, 2, 2, 3], tokens, ImageTransform((32, 16)))
    else:
        dataset = GalleryImages(images, [5, 5, 6, 6, 7, 7], ImageTransform((32, 16)))
    indices = [4, 0, 3]
    items = dataset.__getitems__(indices)
    assert isinstance(items, PrecollatedItems) and len(items) == 3
    one_by_one = [dataset[i] for i in indices]
    for item, single in zip(items, one_by_one, strict=True):
        assert set(item) == set(single)
        for key in single:
            assert torch.equal(torch.as_tensor(item[key]), torch.as_tensor(single[key])), key
    batch = collate_items(items)
    assert batch is items.batch  # handed on, not rebuilt
    assert batch["pixel_values"].dtype == torch.uint8 and batch["pixel_values"].shape == (3, 3, 32, 16)
    reference = default_collate(one_by_one)
    assert set(batch) == set(reference)
    for key in reference:
        assert batch[key].dtype == reference[key].dtype, key
        assert torch.equal(batch[key], reference[key]), key
    for key, value in default_collate(items).items():  # still a plain list of items for default_collate
        assert torch.equal(value, reference[key]), key


def test_batched_loading_applies_the_augmentation_per_image(tokenizer, images):
    tokens = tokenize_captions(tokenizer, ["a"] * 6, 8)
    transform = ImageTransform((32, 16), train=True, pad_crop=False, random_erasing=False)
    dataset = TrainingPairs([images[0]] * 6, [0] * 6, tokens, transform)
    plain = ImageTransform((32, 16)).pixels(images[0])
    random.seed(0)
    pixels = collate_items(dataset.__getitems__(list(range(6))))["pixel_values"]
    mirrored = [torch.equal(row, plain.flip(-1)) for row in pixels]
    assert all(m or torch.equal(row, plain) for m, row in zip(mirrored, pixels, strict=True))
    assert 0 < sum(mirrored) < 6  # each row drew its own flip


def test_collate_items_falls_back_to_default_collate(tokenizer):
    queries = QueryCaptions([7, 8], tokenize_captions(tokenizer, ["a", "b"], 8))
    batch = collate_items([queries[1], queries[0]])
    assert batch["pids"].tolist() == [8, 7] and batch["index"].tolist() == [1, 0]


@pytest.mark.parametrize("workers", [0, 1])
def test_loader_batches_equal_default_collate_batches(images, workers):
    """Inside a worker the batch is written into shared memory; it must hold the same values."""
    gallery = GalleryImages(images, list(range(6)), ImageTransform((32, 16)))
    reference = [default_collate([gallery[i] for i in batch]) for batch in ([0, 1, 2, 3], [4, 5])]
    fast = list(DataLoader(gallery, batch_size=4, num_workers=workers, collate_fn=collate_items))
    assert len(reference) == len(fast) == 2
    for a, b in zip(reference, fast, strict=True):
        assert b["pixel_values"].dtype == torch.uint8
        assert torch.equal(a["pixel_values"], b["pixel_values"])
        assert torch.equal(a["index"], b["index"]) and torch.equal(a["pids"], b["pids"])


def test_mismatched_lengths_are_refused(tokenizer, images):
    tokens = tokenize_captions(tokenizer, ["a", "b"], 8)
    with pytest.raises(ValueError, match="one entry per pair"):
        TrainingPairs(images[:3], [0, 1, 2], tokens, ImageTransform((32, 16)))
    with pytest.raises(ValueError, match="one entry per caption"):
        QueryCaptions([1, 2, 3], tokens)
    with pytest.raises(ValueError, match="one entry per image"):
        GalleryImages(images[:2], [1], ImageTransform((32, 16)))


def test_an_image_that_cannot_be_decoded_mid_epoch_becomes_the_mean_colour_and_is_listed(
    tokenizer, images, tmp_path
):
    hollow = tmp_path / "hollow.jpg"  # passes the cheap check at setup, fails to decode
    hollow.write_bytes(b"\xff\xd8\xff" + b"\x00" * 2000 + b"\xff\xd9")
    paths = [*images[:3], str(hollow)]
    tokens = tokenize_captions(tokenizer, ["a", "b", "c", "d"], 8)
    transform = ImageTransform((32, 16), train=True)
    pairs = TrainingPairs(paths, [0, 0, 1, 1], tokens, transform)
    batch = collate_items(pairs.__getitems__([0, 3, 1]))
    assert batch["unreadable_images"] == [str(hollow)]
    mean = torch.tensor([round(255 * m) for m in transform.mean], dtype=torch.uint8).view(3, 1, 1)
    assert torch.equal(batch["pixel_values"][1], mean.expand(3, 32, 16))
    assert batch["pixel_values"][0].float().std() > 10  # the others are pictures
    assert "unreadable_images" not in collate_items(pairs.__getitems__([0, 1]))  # only when there are any

    gallery = GalleryImages(paths, [0, 0, 1, 1], ImageTransform((32, 16)))
    assert collate_items(gallery.__getitems__([3]))["unreadable_images"] == [str(hollow)]
    with pytest.warns(UserWarning, match="hollow.jpg could not be decoded"):
        item = gallery[3]
    assert torch.equal(item["pixel_values"], mean.expand(3, 32, 16))


def test_shared_memory_allocation_is_still_there():
    """`_new_pixel_batch` allocates worker batches with torch's private `UntypedStorage._new_shared`."""
    assert callable(getattr(torch.UntypedStorage, "_new_shared", None)), (
        "torch removed UntypedStorage._new_shared: update promptdecouple.data.datasets._new_pixel_batch"
    )
    storage = torch.UntypedStorage._new_shared(12)
    assert storage.is_shared() and storage.nbytes() == 12
