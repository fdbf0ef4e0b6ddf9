"""Image files as downloaded: the cheap check, the classification of damaged files, decoding."""

import numpy as np
import pytest
from PIL import Image, ImageFile

from promptdecouple.data.images import (
    ImageDecodeError,
    check_image_files,
    inspect_image_file,
    load_for_display,
    load_image,
)


def noise(height=128, width=64, seed=0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


@pytest.fixture
def files(tmp_path):
    """One whole JPEG and PNG, and each kind of damage found in real downloads."""
    paths = {name: tmp_path / name for name in ("whole.jpg", "whole.png", "empty.jpg", "text.jpg")}
    noise().save(paths["whole.jpg"], quality=90)
    noise().save(paths["whole.png"])
    paths["empty.jpg"].write_bytes(b"")
    paths["text.jpg"].write_text("<html>404 not found</html>")
    for name, source, keep in (("truncated.jpg", "whole.jpg", 0.6), ("truncated.png", "whole.png", 0.7)):
        data = paths[source].read_bytes()
        paths[name] = tmp_path / name
        paths[name].write_bytes(data[: int(len(data) * keep)])
    # a JPEG whose ends look whole but whose inside is not a JPEG: only decoding finds it
    paths["hollow.jpg"] = tmp_path / "hollow.jpg"
    paths["hollow.jpg"].write_bytes(b"\xff\xd8\xff" + b"\x00" * 2000 + b"\xff\xd9")
    # data after the end marker: looks odd from the tail, decodes normally
    paths["trailing.jpg"] = tmp_path / "trailing.jpg"
    paths["trailing.jpg"].write_bytes(paths["whole.jpg"].read_bytes() + b"\x00" * 4096)
    paths["missing.jpg"] = tmp_path / "missing.jpg"
    return paths


def test_inspect_finds_damage_from_the_ends_of_the_file(files):
    assert inspect_image_file(files["whole.jpg"]) is None
    assert inspect_image_file(files["whole.png"]) is None
    assert inspect_image_file(files["empty.jpg"]) == "empty file (0 bytes)"
    assert inspect_image_file(files["text.jpg"]).startswith("not a JPEG, PNG")
    assert inspect_image_file(files["truncated.jpg"]).startswith("truncated JPEG: no end-of-image marker")
    assert inspect_image_file(files["truncated.png"]).startswith("truncated PNG: no IEND chunk")
    assert inspect_image_file(files["missing.jpg"]) == "missing"
    assert inspect_image_file(files["hollow.jpg"]) is None  # needs a decode
    assert inspect_image_file(files["trailing.jpg"]) is not None  # flagged, then cleared by decoding


def test_check_classifies_truncated_unreadable_and_missing(files):
    report = check_image_files(str(p) for p in files.values())
    assert report.checked == len(files)
    assert report.missing == [str(files["missing.jpg"])]
    assert set(report.truncated) == {str(files["truncated.jpg"]), str(files["truncated.png"])}
    assert set(report.unreadable) == {str(files["empty.jpg"]), str(files["text.jpg"])}
    assert "cannot be decoded" in report.unreadable[str(files["empty.jpg"])]
    assert set(report.unusable) == {str(files[n]) for n in ("missing.jpg", "empty.jpg", "text.jpg")}


def test_decoding_everything_also_finds_damage_inside(files):
    cheap = check_image_files([str(files["hollow.jpg"]), str(files["whole.jpg"])])
    assert not cheap.unusable and not cheap.truncated
    thorough = check_image_files([str(files["hollow.jpg"]), str(files["whole.jpg"])], decode_all=True)
    assert list(thorough.unreadable) == [str(files["hollow.jpg"])]


def test_truncated_files_decode_only_when_allowed_and_the_flag_is_restored(files):
    with pytest.raises(ImageDecodeError, match="truncated.jpg"):
        load_image(files["truncated.jpg"])
    image = load_image(files["truncated.jpg"], allow_truncated=True)
    assert image.size == (64, 128) and image.mode == "RGB"
    whole = np.asarray(load_image(files["whole.jpg"]), dtype=float)
    top = np.asarray(image, dtype=float)[:40]
    assert np.abs(top - whole[:40]).mean() < 10  # the part that is there is the picture
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    with pytest.raises(ImageDecodeError, match="empty.jpg"):
        load_image(files["empty.jpg"], allow_truncated=True)
    with pytest.raises(FileNotFoundError, match="missing.jpg"):
        load_image(files["missing.jpg"], allow_truncated=True)


def test_pictures_of_results_show_a_grey_tile_for_an_unreadable_file(files):
    assert load_for_display(files["text.jpg"]).getpixel((0, 0)) == (128, 128, 128)
    assert load_for_display(files["truncated.jpg"]).size == (64, 128)


def test_progress_is_reported_per_file(files):
    done = []
    check_image_files([str(p) for p in files.values()], progress=done.append)
    assert sum(done) == len(files)
