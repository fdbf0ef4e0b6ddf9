"""The image pipeline: decode, resize, augment and normalise pedestrian crops with Pillow and torch.

The reference recipe (IRRA) is: bicubic resize to 384x128, horizontal flip (p=0.5), pad 10 px with
black and crop back at a random offset, CLIP normalisation, random erasing (p=0.5, area 2-40%).
Data loaders do everything but the normalisation: `ImageTransform.pixels` gives the resized,
augmented image as uint8 (erased areas filled with the mean colour, so they normalise to ~0), and
batches carry uint8 pixels, a quarter of the bytes of float32 to write, share between processes,
pin and copy to the GPU. `normalize_pixels` turns them into CLIP-normalised floats on whatever
device they are on, after the transfer. `ImageTransform.__call__` does both, for single images.
"""

from __future__ import annotations

import functools
import math
import random
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from promptdecouple.data.images import ImageDecodeError, load_image

__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "ImageDecodeError",  # defined in promptdecouple.data.images; importable from here as before
    "ImageTransform",
    "load_image",
    "normalize_pixels",
]

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def normalize_pixels(
    pixels: torch.Tensor,
    dtype: torch.dtype = torch.float32,
    mean: Sequence[float] = CLIP_MEAN,
    std: Sequence[float] = CLIP_STD,
) -> torch.Tensor:
    """uint8 pixels (B, 3, H, W) or (3, H, W) -> `(pixels / 255 - mean) / std` as `dtype`, same device.

    Floating-point input is returned unchanged (taken as already normalised), so a model step can
    call this on any batch. The arithmetic is one multiply and one add, each rounded to float32
    (float64 for a float64 `dtype`): `pixels * (1 / (255 std)) + (-mean / std)`, bit for bit what
    the loaders computed when batches were float, then cast to `dtype` (bfloat16, float16).
    """
    if pixels.is_floating_point():
        return pixels
    if pixels.dtype != torch.uint8:
        raise TypeError(
            f"normalize_pixels expects uint8 pixels (or floats, passed through), got {pixels.dtype}"
        )
    if pixels.dim() not in (3, 4) or pixels.shape[-3] != 3:
        raise ValueError(
            f"normalize_pixels expects pixels shaped (B, 3, H, W) or (3, H, W), got {tuple(pixels.shape)}"
        )
    if not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating-point dtype, got {dtype}")
    compute = torch.float64 if dtype == torch.float64 else torch.float32
    scale, shift = _normalization(pixels.device, compute, tuple(mean), tuple(std))
    return pixels.to(compute).mul_(scale).add_(shift).to(dtype)


@functools.lru_cache(maxsize=32)
def _normalization(
    device: torch.device, dtype: torch.dtype, mean: tuple[float, ...], std: tuple[float, ...]
) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift) of `normalized = pixel * scale + shift` for pixels in 0..255, shaped (3, 1, 1)."""
    if len(mean) != 3 or len(std) != 3:
        raise ValueError(f"mean and std need one value per colour channel, got {mean} and {std}")
    mean_t = torch.tensor(mean, dtype=dtype).view(3, 1, 1)
    std_t = torch.tensor(std, dtype=dtype).view(3, 1, 1)
    return (1.0 / (255.0 * std_t)).to(device), (-mean_t / std_t).to(device)


class ImageTransform:
    """Resize to `image_size` (height, width), augment when `train`, normalise with CLIP's mean/std.

    `pixels` maps one image (PIL image or path) to the resized, augmented uint8 tensor (3, H, W):
    what the data loaders batch (`write_pixels` writes it into a given array instead). `__call__`
    also normalises it (`normalize_pixels` with this transform's `mean`/`std`) into a float32
    tensor (3, H, W), for single images at inference.

    The augmentations run only with `train=True`, each can be switched off: `flip` (horizontal,
    p=0.5), `pad_crop` (shift by up to `padding` px with black fill, as pad + random crop),
    `random_erasing` (a rectangle of `erasing_scale` of the area and aspect in `erasing_ratio`,
    filled with the mean colour, with probability `erasing_probability`). Random draws come from
    the `rng` given to `pixels` / `write_pixels` (a `random.Random`; the training datasets give one
    seeded from the data seed, the epoch and the item, so draws do not depend on which process or
    worker loads the item), else from Python's global `random`.
    """

    def __init__(
        self,
        image_size: Sequence[int] = (384, 128),
        train: bool = False,
        flip: bool = True,
        pad_crop: bool = True,
        random_erasing: bool = True,
        padding: int = 10,
        erasing_probability: float = 0.5,
        erasing_scale: tuple[float, float] = (0.02, 0.4),
        erasing_ratio: tuple[float, float] = (0.3, 3.3),
        mean: Sequence[float] = CLIP_MEAN,
        std: Sequence[float] = CLIP_STD,
    ):
        if len(image_size) != 2 or min(image_size) < 1:
            raise ValueError(f"image_size must be (height, width) with positive sides, got {image_size!r}")
        if padding < 0:
            raise ValueError(f"padding must be >= 0, got {padding}")
        if train and pad_crop and padding >= min(image_size):
            raise ValueError(
                f"padding ({padding}) must be smaller than both sides of image_size {tuple(image_size)}"
            )
        if not 0.0 <= erasing_probability <= 1.0:
            raise ValueError(f"erasing_probability must be in [0, 1], got {erasing_probability}")
        if not 0.0 < erasing_scale[0] <= erasing_scale[1] < 1.0:
            raise ValueError(f"erasing_scale must satisfy 0 < low <= high < 1, got {erasing_scale}")
        if not 0.0 < erasing_ratio[0] <= erasing_ratio[1]:
            raise ValueError(f"erasing_ratio must satisfy 0 < low <= high, got {erasing_ratio}")
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.train = train
        self.flip = flip
        self.pad_crop = pad_crop
        self.random_erasing = random_erasing
        self.padding = padding
        self.erasing_probability = erasing_probability
        self.erasing_scale = erasing_scale
        self.erasing_log_ratio = (math.log(erasing_ratio[0]), math.log(erasing_ratio[1]))
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise ValueError(f"mean and std need 3 values each, std positive; got {mean} and {std}")
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self._fill = np.array([round(255 * m) for m in mean], dtype=np.uint8).reshape(3, 1, 1)

    def __repr__(self) -> str:
        augment = [
            name
            for name, on in (
                ("flip", self.flip),
                ("pad_crop", self.pad_crop),
                ("erasing", self.random_erasing),
            )
            if on and self.train
        ]
        return f"ImageTransform(image_size={self.image_size}, augment={augment or None})"

    def __call__(self, image: Image.Image | str | Path) -> torch.Tensor:
        """A normalised float32 tensor (3, H, W): `normalize_pixels(self.pixels(image))`."""
        return normalize_pixels(self.pixels(image), mean=self.mean, std=self.std)

    def pixels(self, image: Image.Image | str | Path, rng: random.Random | None = None) -> torch.Tensor:
        """The resized (and, when training, augmented) image as uint8 (3, H, W)."""
        pixels = np.empty((3, *self.image_size), dtype=np.uint8)
        self.write_pixels(image, pixels, rng)
        return torch.from_numpy(pixels)

    def write_pixels(
        self, image: Image.Image | str | Path, out: np.ndarray, rng: random.Random | None = None
    ) -> None:
        """Write what `pixels` returns into `out`, a uint8 array (3, H, W) such as one row of a batch.

        Datasets fill whole batches this way (`batch.numpy()[i]`), without a stacking copy.
        """
        height, width = self.image_size
        if out.shape != (3, height, width) or out.dtype != np.uint8:
            raise ValueError(f"out must be a uint8 array (3, {height}, {width}), got {out.dtype} {out.shape}")
        if not isinstance(image, Image.Image):
            image = load_image(image)
        elif image.mode != "RGB":
            image = image.convert("RGB")
        if image.size != (width, height):
            image = image.resize((width, height), Image.Resampling.BICUBIC)
        rng = rng or random  # Python's global random state unless the caller draws from its own
        flip = self.train and self.flip and rng.random() < 0.5
        dy = dx = 0
        if self.train and self.pad_crop and self.padding:
            dy = rng.randint(-self.padding, self.padding)
            dx = rng.randint(-self.padding, self.padding)
        # Each colour plane is copied once, straight into its shifted (and mirrored) place: pad + crop
        # is a shift with black fill, so only the uncovered border needs zeroing. All in numpy and with
        # few calls: in a loader, between JPEG decodes, each numpy or torch call costs microseconds.
        rows_to, rows_from = _overlap(dy, height)
        cols_to, cols_from = _overlap(dx, width)
        if flip:  # columns a..b-1 of the mirrored image are columns W-1-a down to W-b of the original
            stop = width - 1 - cols_from.stop
            cols_from = slice(width - 1 - cols_from.start, stop if stop >= 0 else None, -1)
        for channel, band in enumerate("RGB"):
            plane = np.frombuffer(image.tobytes("raw", band), dtype=np.uint8).reshape(height, width)
            out[channel, rows_to, cols_to] = plane[rows_from, cols_from]
        if dy > 0:
            out[:, :dy] = 0
        elif dy < 0:
            out[:, dy:] = 0
        if dx > 0:
            out[:, :, :dx] = 0
        elif dx < 0:
            out[:, :, dx:] = 0
        if self.train and self.random_erasing and rng.random() < self.erasing_probability:
            self._erase(out, rng)

    def write_blank(self, out: np.ndarray) -> None:
        """Fill `out` (uint8, 3 x H x W) with the mean colour: a fully erased picture.

        What the data loaders put in place of an image that cannot be decoded mid-epoch (it
        normalises to about 0, like random erasing's fill).
        """
        out[...] = self._fill

    def _erase(self, pixels: np.ndarray, rng) -> None:
        """Fill one random rectangle with the mean colour, in place (up to 10 tries, as torchvision)."""
        _, height, width = pixels.shape
        area = height * width
        for _ in range(10):
            target = area * rng.uniform(*self.erasing_scale)
            ratio = math.exp(rng.uniform(*self.erasing_log_ratio))
            h = int(round(math.sqrt(target * ratio)))
            w = int(round(math.sqrt(target / ratio)))
            if 0 < h < height and 0 < w < width:
                top = rng.randint(0, height - h)
                left = rng.randint(0, width - w)
                pixels[:, top : top + h, left : left + w] = self._fill
                return


def _overlap(shift: int, size: int) -> tuple[slice, slice]:
    """Destination and source ranges of a shift by `shift` pixels along an axis of `size`."""
    if shift >= 0:
        return slice(shift, size), slice(0, size - shift)
    return slice(0, size + shift), slice(-shift, size)
