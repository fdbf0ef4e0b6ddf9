"""The synthetic twin: layouts, determinism, identity-carrying images and captions."""

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from promptdecouple.data.annotations import read_annotations
from promptdecouple.data.synthetic import (
    Person,
    draw_person_attributes,
    render_person,
    write_caption,
    write_synthetic,
)
from promptdecouple.model.random_clip import DESCRIPTION_WORDS

SIZE = (48, 16)


@pytest.mark.parametrize(
    ("layout", "annotation_file", "splits", "first_id"),
    [
        ("cuhk-pedes", "reid_raw.json", {"train", "val", "test"}, 1),
        ("icfg-pedes", "ICFG-PEDES.json", {"train", "test"}, 0),
        ("rstpreid", "data_captions.json", {"train", "val", "test"}, 0),
    ],
)
def test_round_trip_in_each_layout(tmp_path, layout, annotation_file, splits, first_id):
    path = write_synthetic(tmp_path, layout, num_identities=20, images_per_identity=(2, 4), image_size=SIZE)
    assert path == tmp_path / annotation_file
    table = read_annotations(layout, tmp_path)
    assert set(table["split"]) == splits
    assert table["pid"].min() == first_id and table["pid"].nunique() == 20
    assert table.groupby("pid")["split"].nunique().max() == 1  # split by identity
    images_per_id = table.groupby("pid")["image_id"].nunique()
    assert images_per_id.between(2, 4).all() and images_per_id.nunique() > 1
    assert (table.groupby("image_id").size() == 2).all()  # captions_per_image
    assert (table.groupby("split")["pid"].nunique()["train"]) > 10
    for image_path in table["image_path"].unique():
        with Image.open(image_path) as image:
            assert image.size == (SIZE[1], SIZE[0]) and image.mode == "RGB"
    relative = [Path(p).relative_to(tmp_path / "imgs").as_posix() for p in table["image_path"]]
    if layout == "icfg-pedes":
        assert all(
            re.fullmatch(r"(train|test)/\d{4}/\d{4}_\d{3}_\d{2}_\w+_\d{4}_0\.jpg", r) for r in relative
        )
        # MSMT17's folders, not the ICFG split (as in the real download): training images under test/ too
        train_folders = {
            r.split("/")[0] for r, s in zip(relative, table["split"], strict=True) if s == "train"
        }
        assert train_folders == {"train", "test"}
    elif layout == "rstpreid":
        assert all(re.fullmatch(r"\d{4}_c\d+_\d{4}\.jpg", r) for r in relative)
    else:
        folders = {r.split("/")[0] for r in relative}
        assert folders <= {"CUHK01", "CUHK03", "Market", "cam_a", "cam_b", "test_query", "train_query"}
        assert any(r.endswith(".png") for r in relative) and any(r.endswith(".jpg") for r in relative)


def tree_digest(root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        if path.is_file():
            digest.update(path.relative_to(root).as_posix().encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


def test_the_same_seed_writes_the_same_bytes(tmp_path):
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        write_synthetic(
            tmp_path / name, "rstpreid", num_identities=6, images_per_identity=2, image_size=SIZE, seed=seed
        )
    assert tree_digest(tmp_path / "a") == tree_digest(tmp_path / "b")
    assert tree_digest(tmp_path / "a") != tree_digest(tmp_path / "c")


def test_existing_annotations_are_not_overwritten_by_accident(tmp_path):
    write_synthetic(tmp_path, "rstpreid", num_identities=4, images_per_identity=1, image_size=SIZE)
    with pytest.raises(FileExistsError, match="overwrite"):
        write_synthetic(tmp_path, "rstpreid", num_identities=4, images_per_identity=1, image_size=SIZE)
    write_synthetic(
        tmp_path, "rstpreid", num_identities=5, images_per_identity=1, image_size=SIZE, overwrite=True
    )
    assert read_annotations("rstpreid", tmp_path)["pid"].nunique() == 5


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"layout": "icfg-pedes", "split_fractions": (0.6, 0.2, 0.2)}, "no val split"),
        ({"split_fractions": (0.5, 0.5, 0.5)}, "summing to 1"),
        ({"num_identities": 1}, "num_identities must be >= 2"),
        ({"images_per_identity": (3, 2)}, "images_per_identity"),
        ({"captions_per_image": 0}, "captions_per_image"),
        ({"layout": "market"}, "unknown dataset"),
    ],
)
def test_bad_arguments_are_refused(tmp_path, kwargs, message):
    options = {"layout": "rstpreid", "num_identities": 10}
    options.update(kwargs)
    with pytest.raises(ValueError, match=message):
        write_synthetic(tmp_path, **options)


def test_identities_differ_in_their_most_visible_attributes(tmp_path):
    write_synthetic(tmp_path, "cuhk-pedes", num_identities=60, images_per_identity=1, image_size=SIZE)
    entries = json.loads((tmp_path / "reid_raw.json").read_text())
    assert len({e["id"] for e in entries}) == 60
    rng = np.random.default_rng(0)
    signatures = {draw_person_attributes(rng).signature for _ in range(300)}
    assert len(signatures) > 250  # attributes are drawn from a large space


PERSON = Person(
    gender="woman",
    build="slim",
    skin=(214, 170, 132),
    hair_colour="black",
    hair_style="ponytail",
    upper_type="jacket",
    upper_colour="red",
    pattern="striped",
    pattern_colour="white",
    lower_type="skirt",
    lower_colour="blue",
    shoes_type="boots",
    shoes_colour="brown",
    bag="backpack",
    bag_colour="yellow",
    bag_side=1,
    hat="cap",
    hat_colour="green",
    glasses=True,
)


def test_photos_of_one_person_vary_but_keep_her_clothes(tmp_path):
    photos = [render_person(PERSON, (192, 64), np.random.default_rng(seed)) for seed in range(8)]
    images = [np.asarray(image, dtype=np.float32) for image, _ in photos]
    assert len({view for _, view in photos}) >= 3
    assert min(np.abs(a - b).mean() for i, a in enumerate(images) for b in images[i + 1 :]) > 5
    # Same seed, other colour: only the garment's pixels change, and they are in sight in every view.
    for seed in range(8):
        for attribute, other in (("upper_colour", "green"), ("lower_colour", "orange")):
            changed = Person(**{**PERSON.__dict__, attribute: other})
            image, view = render_person(PERSON, (192, 64), np.random.default_rng(seed))
            recoloured, same_view = render_person(changed, (192, 64), np.random.default_rng(seed))
            assert view == same_view
            differs = np.abs(np.asarray(image, np.int16) - np.asarray(recoloured, np.int16)).max(-1) > 40
            assert differs.mean() > 0.03, (attribute, view)


def test_captions_name_the_attributes_in_varied_words_and_lengths():
    captions = [
        write_caption(PERSON, view, np.random.default_rng(seed))
        for seed, view in enumerate(["front", "back", "left", "right"] * 25)
    ]
    assert len(set(captions)) == 100
    for caption in captions:
        text = caption.lower()
        assert "red" in text and "blue" in text  # upper and lower colours every time
        assert "she" in text or "woman" in text or "lady" in text or "female" in text or "girl" in text
    assert sum("yellow" in c for c in captions) > 60  # the backpack, most of the time
    assert any("away from the camera" in c for c in captions)
    lengths = [len(c.split()) for c in captions]
    assert min(lengths) < 20 and max(lengths) > 40
    openings = {" ".join(c.split()[:3]) for c in captions}
    assert len(openings) > 20


def test_caption_words_come_from_the_description_vocabulary(tmp_path):
    write_synthetic(tmp_path, "rstpreid", num_identities=40, images_per_identity=3, image_size=SIZE)
    table = read_annotations("rstpreid", tmp_path)
    words = {w for caption in table["caption"] for w in re.findall(r"[a-z]+(?:-[a-z]+)?", caption.lower())}
    assert words - set(DESCRIPTION_WORDS.split()) == set()
