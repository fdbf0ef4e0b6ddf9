"""The image pipeline: resize, each augmentation, uint8 pixels, normalize_pixels, decoding errors."""

import random

import numpy as np
import pytest
import torch
from PIL import Image

from promptdecouple.data.transforms import (
    CLIP_MEAN,
    CLIP_STD,
    ImageDecodeError,
    ImageTransform,
    load_image,
    normalize_pixels,
)

MEAN = np.array(CLIP_MEAN, dtype=np.float32)[:, None, None]
STD = np.array(CLIP_STD, dtype=np.float32)[:, None, None]


def random_image(height=40, width=16, seed=0):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


def normalised(array_hwc):
    return (array_hwc.transpose(2, 0, 1).astype(np.float32) / 255.0 - MEAN) / STD


def test_eval_transform_is_bicubic_resize_then_clip_normalisation():
    image = random_image(100, 37)
    out = ImageTransform((48, 16))(image)
    assert out.shape == (3, 48, 16) and out.dtype == torch.float32
    expected = normalised(np.asarray(image.resize((16, 48), Image.Resampling.BICUBIC)))
    np.testing.assert_allclose(out.numpy(), expected, atol=1e-5)
    assert torch.equal(out, ImageTransform((48, 16))(image))  # no randomness at evaluation


def test_mean_colour_normalises_to_about_zero():
    grey = Image.new("RGB", (8, 24), tuple(round(255 * m) for m in CLIP_MEAN))
    assert ImageTransform((24, 8))(grey).abs().max() < 0.01


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "CMYK"])
def test_any_pil_mode_and_paths_are_accepted(tmp_path, mode):
    image = random_image().convert(mode)
    assert ImageTransform((40, 16))(image).shape == (3, 40, 16)
    path = tmp_path / "x.png" if mode != "CMYK" else tmp_path / "x.jpg"
    image.save(path)
    assert ImageTransform((40, 16))(path).shape == (3, 40, 16)


def test_flip_mirrors_about_half_of_the_time():
    image = random_image()
    plain = ImageTransform((40, 16))(image)
    mirrored = plain.flip(-1)
    transform = ImageTransform((40, 16), train=True, pad_crop=False, random_erasing=False)
    random.seed(0)
    outcomes = []
    for _ in range(40):
        out = transform(image)
        assert torch.equal(out, plain) or torch.equal(out, mirrored)
        outcomes.append(torch.equal(out, mirrored))
    assert 8 < sum(outcomes) < 32


def test_pad_crop_shifts_by_at_most_the_padding_with_black_fill():
    image = random_image(30, 20)
    array = np.asarray(image)
    transform = ImageTransform((30, 20), train=True, flip=False, random_erasing=False, padding=3)
    random.seed(1)
    shifts = set()
    for _ in range(30):
        out = transform.pixels(image).numpy().transpose(1, 2, 0)
        match = None
        for dy in range(-3, 4):
            for dx in range(-3, 4):
                padded = np.zeros((36, 26, 3), np.uint8)
                padded[3:33, 3:23] = array
                if np.array_equal(out, padded[3 - dy : 33 - dy, 3 - dx : 23 - dx]):
                    match = (dy, dx)
        assert match is not None, "output is not a shifted copy of the input"
        shifts.add(match)
    assert len(shifts) > 5


def test_flip_and_pad_crop_compose_as_mirror_then_shift():
    image = random_image(24, 14, seed=3)
    array = np.asarray(image)
    transform = ImageTransform((24, 14), train=True, random_erasing=False, padding=2)
    random.seed(4)
    kinds = set()
    for _ in range(40):
        out = transform.pixels(image).numpy().transpose(1, 2, 0)
        found = None
        for mirrored, source in ((False, array), (True, array[:, ::-1])):
            padded = np.zeros((28, 18, 3), np.uint8)
            padded[2:26, 2:16] = source
            for dy in range(-2, 3):
                for dx in range(-2, 3):
                    if np.array_equal(out, padded[2 - dy : 26 - dy, 2 - dx : 16 - dx]):
                        found = (mirrored, dy, dx)
        assert found is not None
        kinds.add(found)
    assert {mirrored for mirrored, _, _ in kinds} == {False, True}
    assert any(dx < 0 for _, _, dx in kinds) and any(dx > 0 for _, _, dx in kinds)


def test_random_erasing_fills_one_rectangle_with_the_mean_colour():
    image = Image.new("RGB", (32, 96), (255, 255, 255))
    transform = ImageTransform((96, 32), train=True, flip=False, pad_crop=False, erasing_probability=1.0)
    mean_colour = torch.tensor([round(255 * m) for m in CLIP_MEAN], dtype=torch.uint8).view(3, 1, 1)
    random.seed(2)
    for _ in range(20):
        pixels = transform.pixels(image)
        assert pixels.dtype == torch.uint8
        erased = (pixels == mean_colour).all(0)
        assert ((pixels == 255).all(0) | erased).all()  # white or mean colour, nothing else
        rows, cols = erased.any(1).nonzero(), erased.any(0).nonzero()
        height, width = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
        assert erased.sum() == height * width  # one filled rectangle
        assert 0.02 * 96 * 32 * 0.8 <= erased.sum() <= 0.4 * 96 * 32 * 1.2
        assert normalize_pixels(pixels)[:, erased].abs().max() < 0.01  # the mean colour normalises to ~0
    off = ImageTransform((96, 32), train=True, flip=False, pad_crop=False, random_erasing=False)
    assert torch.equal(off(image), ImageTransform((96, 32))(image))


def test_augmentations_never_change_shape_range_or_dtype():
    transform = ImageTransform((64, 24), train=True, erasing_probability=1.0)
    low = torch.tensor([(0 - m) / s for m, s in zip(CLIP_MEAN, CLIP_STD, strict=True)]).view(3, 1, 1)
    high = torch.tensor([(1 - m) / s for m, s in zip(CLIP_MEAN, CLIP_STD, strict=True)]).view(3, 1, 1)
    for seed in range(10):
        out = transform(random_image(50, 30, seed))
        assert out.shape == (3, 64, 24) and out.dtype == torch.float32
        assert (out >= low - 1e-5).all() and (out <= high + 1e-5).all()


def float_path_before_uint8_batches(pixels):
    """How loaders normalised uint8 pixels into float32 batches before batches became uint8."""
    mean = torch.tensor(CLIP_MEAN, dtype=torch.float32).view(3, 1, 1)
    std = torch.tensor(CLIP_STD, dtype=torch.float32).view(3, 1, 1)
    out = torch.empty(pixels.shape, dtype=torch.float32).copy_(pixels)
    return out.mul_(1.0 / (255.0 * std)).add_(-mean / std)


def random_pixels(*shape, seed=0):
    pixels = torch.randint(0, 256, shape, dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))
    pixels.view(-1)[:2] = torch.tensor([0, 255], dtype=torch.uint8)  # both extremes present
    return pixels


@pytest.mark.parametrize("shape", [(5, 3, 24, 8), (3, 24, 8)])
def test_normalize_pixels_equals_the_float_path_bit_for_bit(shape):
    pixels = random_pixels(*shape)
    out = normalize_pixels(pixels)
    assert out.shape == pixels.shape and out.dtype == torch.float32 and out.device == pixels.device
    assert torch.equal(out, float_path_before_uint8_batches(pixels))
    np.testing.assert_allclose(out.numpy(), (pixels.numpy() / 255.0 - MEAN) / STD, rtol=0, atol=2e-6)
    assert torch.equal(pixels, random_pixels(*shape))  # the input is left alone


def test_normalize_pixels_per_image_equals_per_batch_and_the_single_image_transform():
    transform = ImageTransform((20, 10))
    images = [random_image(seed=s) for s in range(3)]
    batch = torch.stack([transform.pixels(image) for image in images])
    normalised = normalize_pixels(batch)
    for row, image in zip(normalised, images, strict=True):
        assert torch.equal(row, transform(image))
    channels_last = batch.contiguous(memory_format=torch.channels_last)
    assert torch.equal(normalize_pixels(channels_last), normalised)


def test_normalize_pixels_output_dtypes():
    pixels = random_pixels(2, 3, 16, 8)
    reference = float_path_before_uint8_batches(pixels)
    assert torch.equal(normalize_pixels(pixels, torch.bfloat16), reference.to(torch.bfloat16))
    assert torch.equal(normalize_pixels(pixels, torch.float16), reference.to(torch.float16))
    double = normalize_pixels(pixels, torch.float64)
    assert double.dtype == torch.float64
    mean, std = np.array(CLIP_MEAN)[:, None, None], np.array(CLIP_STD)[:, None, None]  # float64
    expected = (pixels.numpy() / 255.0 - mean) / std
    np.testing.assert_allclose(double.numpy(), expected, rtol=0, atol=1e-12)


def test_normalize_pixels_passes_floats_through_unchanged():
    already = torch.randn(2, 3, 8, 4)
    assert normalize_pixels(already) is already
    assert normalize_pixels(already, torch.bfloat16) is already


def test_normalize_pixels_takes_the_transforms_mean_and_std():
    pixels = random_pixels(3, 6, 4)
    out = normalize_pixels(pixels, mean=(0.5, 0.5, 0.5), std=(0.5, 0.25, 1.0))
    expected = (pixels.numpy() / 255.0 - 0.5) / np.array([0.5, 0.25, 1.0])[:, None, None]
    np.testing.assert_allclose(out.numpy(), expected, rtol=0, atol=2e-6)
    transform = ImageTransform((6, 4), mean=(0.5, 0.5, 0.5), std=(0.5, 0.25, 1.0))
    image = random_image(6, 4)
    assert torch.equal(
        transform(image), normalize_pixels(transform.pixels(image), mean=transform.mean, std=transform.std)
    )


@pytest.mark.parametrize(
    ("pixels", "kwargs", "error", "message"),
    [
        (torch.zeros(2, 3, 4, 4, dtype=torch.int64), {}, TypeError, "torch.int64"),
        (torch.zeros(2, 1, 4, 4, dtype=torch.uint8), {}, ValueError, r"\(2, 1, 4, 4\)"),
        (torch.zeros(3, 4, dtype=torch.uint8), {}, ValueError, r"\(3, 4\)"),
        (torch.zeros(1, 2, 3, 4, 4, dtype=torch.uint8), {}, ValueError, r"\(1, 2, 3, 4, 4\)"),
        (torch.zeros(3, 4, 4, dtype=torch.uint8), {"dtype": torch.int32}, TypeError, "floating-point"),
        (torch.zeros(3, 4, 4, dtype=torch.uint8), {"std": (1.0, 1.0)}, ValueError, "one value per colour"),
    ],
)
def test_normalize_pixels_refuses_what_it_cannot_normalise(pixels, kwargs, error, message):
    with pytest.raises(error, match=message):
        normalize_pixels(pixels, **kwargs)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_normalize_pixels_on_cuda_equals_cpu_bit_for_bit():
    pixels = random_pixels(4, 3, 384, 128)
    out = normalize_pixels(pixels.cuda())
    assert out.device.type == "cuda" and out.dtype == torch.float32
    assert torch.equal(out.cpu(), normalize_pixels(pixels))
    assert torch.equal(
        normalize_pixels(pixels.cuda(), torch.bfloat16).cpu(), normalize_pixels(pixels, torch.bfloat16)
    )


def test_write_pixels_fills_a_row_of_a_batch_and_checks_it():
    transform = ImageTransform((20, 10))
    image = random_image(seed=4)
    batch = torch.zeros((2, 3, 20, 10), dtype=torch.uint8)
    transform.write_pixels(image, batch.numpy()[1])
    assert torch.equal(batch[1], transform.pixels(image)) and not batch[0].any()
    with pytest.raises(ValueError, match=r"uint8 array \(3, 20, 10\)"):
        transform.write_pixels(image, np.zeros((3, 20, 11), np.uint8))
    with pytest.raises(ValueError, match="float32"):
        transform.write_pixels(image, np.zeros((3, 20, 10), np.float32))


def test_load_image_names_the_file_it_cannot_read(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.jpg"):
        load_image(tmp_path / "missing.jpg")
    not_an_image = tmp_path / "notes.jpg"
    not_an_image.write_text("hello")
    with pytest.raises(ImageDecodeError, match="notes.jpg"):
        load_image(not_an_image)
    truncated = tmp_path / "truncated.jpg"
    random_image(200, 100).save(truncated, quality=95)
    truncated.write_bytes(truncated.read_bytes()[:800])
    with pytest.raises(ImageDecodeError, match="truncated.jpg"):
        load_image(truncated)


def test_load_image_returns_rgb(tmp_path):
    random_image().convert("L").save(tmp_path / "grey.png")
    assert load_image(tmp_path / "grey.png").mode == "RGB"


@pytest.mark.parametrize(
    "kwargs",
    [
        {"image_size": (0, 10)},
        {"image_size": (10,)},
        {"padding": -1},
        {"image_size": (40, 10), "train": True, "padding": 10},
        {"erasing_probability": 1.5},
        {"erasing_scale": (0.5, 0.1)},
        {"erasing_ratio": (0.0, 1.0)},
        {"mean": (0.5, 0.5)},
        {"std": (0.5, 0.0, 0.5)},
    ],
)
def test_bad_arguments_are_refused(kwargs):
    with pytest.raises(ValueError):
        ImageTransform(**kwargs)
