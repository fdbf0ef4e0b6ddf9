"""The image pipeline: decode, resize, augment and normalise pedestrian crops with Pillow and torch.

The reference recipe (IRRA) is: bicubic resize to 384x128, horizontal flip (p=0.5), pad 10 px with
black and crop back at a random offset, CLIP normalisation, random erasing (p=0.5, area 2-40%).
`ImageTransform` does the same in two halves so that data loaders stay cheap: `pixels` returns the
resized, augmented uint8 image (what worker processes hand over: a quarter of the bytes of float),
`normalize` turns uint8 pixels into CLIP-normalised floats, written straight into the batch.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class ImageDecodeError(OSError):
    """An image file that exists but cannot be decoded (truncated, corrupt, not an image)."""


def load_image(path: str | Path) -> Image.Image:
    """Decode the image at `path` as RGB; errors name the file."""
    try:
        image = Image.open(path)
        image.load()
    except FileNotFoundError:
        raise FileNotFoundError(f"image file not found: {path}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise ImageDecodeError(f"cannot decode image {path}: {error}") from error
    if image.mode != "RGB":
        image = image.convert("RGB")
    return image


class ImageTransform:
    """Resize to `image_size` (height, width), augment when `train`, normalise with CLIP's mean/std.

    `__call__` maps one image (PIL image or path) to a float tensor (3, H, W). The augmentations run
    only with `train=True`, each can be switched off: `flip` (horizontal, p=0.5), `pad_crop`
    (shift by up to `padding` px with black fill, as pad + random crop), `random_erasing`
    (a rectangle of `erasing_scale` of the area and aspect in `erasing_ratio`, filled with the mean
    colour, with probability `erasing_probability`). Random draws use Python's `random`, which
    `lightning.seed_everything` and each DataLoader worker seed.
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
        mean_t = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        std_t = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
        # normalised = pixel * scale + shift, with pixel in 0..255
        self._scale = 1.0 / (255.0 * std_t)
        self._shift = -mean_t / std_t
        self._fill = torch.tensor([round(255 * m) for m in mean], dtype=torch.uint8).view(3, 1, 1)

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
        """A CLIP-normalised float tensor (3, H, W)."""
        return self.normalize(self.pixels(image))

    def pixels(self, image: Image.Image | str | Path) -> torch.Tensor:
        """The resized (and, when training, augmented) image as uint8 (3, H, W)."""
        if not isinstance(image, Image.Image):
            image = load_image(image)
        elif image.mode != "RGB":
            image = image.convert("RGB")
        height, width = self.image_size
        if image.size != (width, height):
            image = image.resize((width, height), Image.Resampling.BICUBIC)
        flip = self.train and self.flip and random.random() < 0.5
        dy = dx = 0
        if self.train and self.pad_crop and self.padding:
            dy = random.randint(-self.padding, self.padding)
            dx = random.randint(-self.padding, self.padding)
        # Each colour plane is copied once, straight into its shifted (and mirrored) place: pad + crop
        # is a shift with black fill, so only the uncovered border needs zeroing.
        pixels = np.empty((3, height, width), dtype=np.uint8)
        rows_to, rows_from = _overlap(dy, height)
        cols_to, cols_from = _overlap(dx, width)
        if flip:  # columns a..b-1 of the mirrored image are columns W-1-a down to W-b of the original
            stop = width - 1 - cols_from.stop
            cols_from = slice(width - 1 - cols_from.start, stop if stop >= 0 else None, -1)
        for channel, band in enumerate("RGB"):
            plane = np.frombuffer(image.tobytes("raw", band), dtype=np.uint8).reshape(height, width)
            pixels[channel, rows_to, cols_to] = plane[rows_from, cols_from]
        if dy or dx:
            pixels[:, : rows_to.start] = 0
            pixels[:, rows_to.stop :] = 0
            pixels[:, :, : cols_to.start] = 0
            pixels[:, :, cols_to.stop :] = 0
        pixels = torch.from_numpy(pixels)
        if self.train and self.random_erasing and random.random() < self.erasing_probability:
            self._erase(pixels)
        return pixels

    def _erase(self, pixels: torch.Tensor) -> None:
        """Fill one random rectangle with the mean colour, in place (up to 10 tries, as torchvision)."""
        _, height, width = pixels.shape
        area = height * width
        for _ in range(10):
            target = area * random.uniform(*self.erasing_scale)
            ratio = math.exp(random.uniform(*self.erasing_log_ratio))
            h = int(round(math.sqrt(target * ratio)))
            w = int(round(math.sqrt(target / ratio)))
            if 0 < h < height and 0 < w < width:
                top = random.randint(0, height - h)
                left = random.randint(0, width - w)
                pixels[:, top : top + h, left : left + w] = self._fill
                return

    def normalize(self, pixels: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """uint8 pixels (..., 3, H, W) -> CLIP-normalised float32, written into `out` if given."""
        if out is None:
            out = torch.empty(pixels.shape, dtype=torch.float32)
        out.copy_(pixels)
        return out.mul_(self._scale).add_(self._shift)

    def normalize_batch(self, images: Sequence[torch.Tensor]) -> torch.Tensor:
        """Stack uint8 images (3, H, W) into one normalised float batch (B, 3, H, W).

        Each image is normalised straight into its slot (while it is in cache). Inside a DataLoader
        worker the batch is allocated in shared memory, as `default_collate` does, so handing it to
        the main process costs no copy.
        """
        shape = (len(images), *images[0].shape)
        if torch.utils.data.get_worker_info() is not None:
            storage = torch.UntypedStorage._new_shared(math.prod(shape) * 4)
            batch = torch.empty(0, dtype=torch.float32).set_(storage).view(shape)
        else:
            batch = torch.empty(shape, dtype=torch.float32)
        for slot, image in zip(batch, images, strict=True):
            self.normalize(image, out=slot)
        return batch


def _overlap(shift: int, size: int) -> tuple[slice, slice]:
    """Destination and source ranges of a shift by `shift` pixels along an axis of `size`."""
    if shift >= 0:
        return slice(shift, size), slice(0, size - shift)
    return slice(0, size + shift), slice(-shift, size)
