"""Image files as downloaded: decoding them, and finding the damaged ones before training does.

Real downloads of these datasets contain damaged files: truncated JPEGs, empty files, files that
are not images. The public readers of these datasets (IRRA, RaSa, TBPS-CLIP) open images with
Pillow's ``ImageFile.LOAD_TRUNCATED_IMAGES``, so a truncated JPEG trains there: Pillow decodes what
the file holds and fills the rest grey. This project does the same, and says which files it did it
for, before training starts:

- `inspect_image_file` looks at a file without decoding it (its size, its first bytes, the end
  marker of a JPEG, the IEND chunk of a PNG) and says what looks wrong, if anything.
- `check_image_files` runs that over many files (in threads) and decodes only the files it flagged,
  to tell a *truncated* file (it loads, with missing rows: it trains, and is reported) from an
  *unreadable* one (empty, not an image, or too damaged to decode: it cannot train). With
  ``decode_all=True`` every file is decoded, which also finds damage inside a file whose ends look
  whole (`promptdecouple data check --decode`).
- `load_image(path, allow_truncated=True)` is the decoder of the data loaders.

``LOAD_TRUNCATED_IMAGES`` is a Pillow module global; it is switched on only around one decode at a
time, under a lock, and only after a strict decode of that file failed (`_decode`).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, ImageFile, UnidentifiedImageError

# How the files of the formats found in these datasets begin.
_SIGNATURES = {
    "JPEG": (b"\xff\xd8\xff",),
    "PNG": (b"\x89PNG\r\n\x1a\n",),
    "GIF": (b"GIF87a", b"GIF89a"),
    "BMP": (b"BM",),
    "TIFF": (b"II*\x00", b"MM\x00*"),
}
# Bytes read at the end of a file to find its end marker. Inside a JPEG's compressed data the byte
# pair FF D9 cannot occur (an FF is followed by 00 or a restart marker), so FF D9 near the end is
# the end-of-image marker; a file with more than this many bytes after it is flagged, then decoded.
_TAIL_BYTES = 1024
_TRUNCATED_FLAG_LOCK = threading.Lock()
_DECODE_ERRORS = (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError)


class ImageDecodeError(OSError):
    """An image file that exists but cannot be decoded (truncated, corrupt, not an image)."""


def load_image(path: str | Path, allow_truncated: bool = False) -> Image.Image:
    """Decode the image at `path` as RGB; errors name the file.

    With `allow_truncated`, a file whose data ends early decodes as far as it goes (the rest grey),
    as Pillow's ``LOAD_TRUNCATED_IMAGES`` does in the public readers of these datasets; otherwise it
    raises `ImageDecodeError`. A file that cannot be decoded at all raises `ImageDecodeError` either
    way, a missing one `FileNotFoundError`.
    """
    try:
        image = _decode(path, allow_truncated)
    except FileNotFoundError:
        raise FileNotFoundError(f"image file not found: {path}") from None
    except _DECODE_ERRORS as error:
        raise ImageDecodeError(f"cannot decode image {path}: {error}") from error
    if image.mode != "RGB":
        image = image.convert("RGB")
    return image


def load_for_display(path: str | Path) -> Image.Image:
    """An image for a picture of results: as the loaders decode it; a grey 64x128 tile if it cannot be."""
    try:
        return load_image(path, allow_truncated=True)
    except (ImageDecodeError, FileNotFoundError):
        return Image.new("RGB", (64, 128), (128, 128, 128))


def _decode(path: str | Path, allow_truncated: bool) -> Image.Image:
    try:
        image = Image.open(path)
        image.load()
        return image
    except FileNotFoundError:
        raise
    except _DECODE_ERRORS:
        if not allow_truncated:
            raise
    with _TRUNCATED_FLAG_LOCK:
        before = ImageFile.LOAD_TRUNCATED_IMAGES
        ImageFile.LOAD_TRUNCATED_IMAGES = True
        try:
            image = Image.open(path)
            image.load()
        finally:
            ImageFile.LOAD_TRUNCATED_IMAGES = before
    return image


def inspect_image_file(path: str | Path) -> str | None:
    """What looks wrong with the image file at `path` without decoding it, or None if nothing does.

    Reads its size, its first 16 bytes and its last 1 KB: ``"missing"``, an empty file, a file that
    does not begin like a JPEG, PNG, GIF, BMP or TIFF, a JPEG without its end-of-image marker or a
    PNG without its IEND chunk (both: truncated, usually an interrupted download or copy).
    """
    try:
        descriptor = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return "missing"
    except OSError as error:  # a directory, no permission
        return f"cannot be read ({error.strerror or error})"
    try:  # two positioned reads: 10x faster than file objects over 40,000 files
        size = os.fstat(descriptor).st_size
        if size == 0:
            return "empty file (0 bytes)"
        head = os.pread(descriptor, 16, 0)
        tail = os.pread(descriptor, _TAIL_BYTES, max(0, size - _TAIL_BYTES))
    except OSError as error:  # an I/O error, or a directory on some systems
        return f"cannot be read ({error.strerror or error})"
    finally:
        os.close(descriptor)
    kind = next((name for name, starts in _SIGNATURES.items() if head.startswith(starts)), None)
    if kind is None and not (head.startswith(b"RIFF") and head[8:12] == b"WEBP"):
        return f"not a JPEG, PNG, GIF, BMP, TIFF or WebP file (it starts with {head[:8].hex(' ')})"
    if kind == "JPEG" and b"\xff\xd9" not in tail:
        return f"truncated JPEG: no end-of-image marker ({size:,} bytes)"
    if kind == "PNG" and b"IEND" not in tail:
        return f"truncated PNG: no IEND chunk ({size:,} bytes)"
    return None


@dataclass
class ImageFileReport:
    """What `check_image_files` found, path by path (paths as given).

    - `missing`: no such file.
    - `unreadable`: cannot be decoded, not even as a truncated file (with the reason).
    - `truncated`: damaged, but decodes with missing data as Pillow's ``LOAD_TRUNCATED_IMAGES``
      does; the data loaders use them so (with the reason).
    """

    checked: int = 0
    missing: list[str] = field(default_factory=list)
    unreadable: dict[str, str] = field(default_factory=dict)
    truncated: dict[str, str] = field(default_factory=dict)

    @property
    def unusable(self) -> dict[str, str]:
        """Files training cannot use, missing or unreadable, with the reason."""
        return {**dict.fromkeys(self.missing, "missing"), **self.unreadable}


def check_image_files(
    paths: Iterable[str],
    decode_all: bool = False,
    threads: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> ImageFileReport:
    """Find missing, unreadable and truncated image files among `paths`.

    Every file is inspected cheaply (`inspect_image_file`, about 10 us a file from a local disk); the
    flagged ones, or with `decode_all` all of them (in `threads` threads), are then decoded to
    classify them (see `ImageFileReport`). A flagged file that decodes normally (for instance a JPEG
    with data after its end marker) is not reported. `progress` is called with the number of files
    just finished, as files finish.
    """
    paths = list(dict.fromkeys(str(path) for path in paths))
    report = ImageFileReport(checked=len(paths))
    flagged = []
    for path in paths:  # file reads hold the GIL for too short a time for threads to pay
        reason = inspect_image_file(path)
        if reason is not None:
            flagged.append((path, reason))
        elif not decode_all and progress is not None:
            progress(1)
    if decode_all:  # decoding releases the GIL: threads pay

        def decode(path: str) -> str | None:
            try:
                _decode(path, allow_truncated=False)
            except FileNotFoundError:
                return "missing"
            except _DECODE_ERRORS as error:
                return f"does not decode ({error})"
            finally:
                if progress is not None:
                    progress(1)
            return None

        flagged_paths = {path for path, _ in flagged}
        whole = [path for path in paths if path not in flagged_paths]
        threads = threads or min(8, (os.cpu_count() or 1) + 2)
        with ThreadPoolExecutor(threads) as pool:
            found = pool.map(decode, whole, chunksize=64)
            flagged += [
                (path, reason) for path, reason in zip(whole, found, strict=True) if reason is not None
            ]
    if progress is not None:
        progress(len(flagged) if not decode_all else len(paths) - len(whole))
    # Decodes that may switch Pillow's truncated-image flag run here, one at a time, after the pool.
    for path, reason in flagged:
        if reason == "missing":
            report.missing.append(path)
            continue
        try:
            _decode(path, allow_truncated=False)
            continue  # it looked odd but decodes
        except _DECODE_ERRORS:
            pass
        try:
            _decode(path, allow_truncated=True)
            report.truncated[path] = reason
        except _DECODE_ERRORS as error:
            report.unreadable[path] = f"{reason}; cannot be decoded ({error})"
    return report
