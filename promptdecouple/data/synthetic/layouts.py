"""Writing a synthetic dataset in the download layout of CUHK-PEDES, ICFG-PEDES or RSTPReid."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np

from promptdecouple.data.annotations import IMAGE_DIR, dataset_layout
from promptdecouple.data.synthetic.captions import write_caption
from promptdecouple.data.synthetic.drawing import render_person
from promptdecouple.data.synthetic.people import Person, draw_person_attributes

SPLIT_FRACTIONS = {
    "cuhk-pedes": (0.8, 0.1, 0.1),
    "icfg-pedes": (0.75, 0.0, 0.25),
    "rstpreid": (0.8, 0.1, 0.1),
}
CUHK_FOLDERS = ("CUHK01", "CUHK03", "Market", "cam_a", "cam_b", "test_query", "train_query")
# ICFG-PEDES keeps MSMT17's image folders, which are MSMT17's split, not ICFG's: about two thirds of
# the ICFG training entries point under imgs/test/. The twin draws each identity's folder likewise.
ICFG_MSMT17_TEST_SHARE = 0.7


def write_synthetic(
    root: str | Path,
    layout: str,
    num_identities: int = 100,
    images_per_identity: int | tuple[int, int] = 4,
    captions_per_image: int = 2,
    seed: int = 0,
    image_size: tuple[int, int] = (384, 128),
    split_fractions: tuple[float, float, float] | None = None,
    overwrite: bool = False,
    progress: bool | Callable[[int, int], None] = False,
) -> Path:
    """Write a synthetic dataset in the download layout of `layout`; returns the annotation file.

    Args:
        root: folder to create (annotation JSON and `imgs/` go inside).
        layout: ``"cuhk-pedes"``, ``"icfg-pedes"`` or ``"rstpreid"``: file names, keys, id numbering
            (CUHK-PEDES 1-based) and image folders follow that dataset.
        num_identities: persons to draw; split by identity into train / val / test.
        images_per_identity: photos per person, or a (min, max) range drawn per person.
        captions_per_image: descriptions per photo.
        seed: everything (attributes, photos, captions, splits) is a function of it.
        image_size: (height, width) of the photos; the real datasets' model input is 384x128.
        split_fractions: (train, val, test) shares of identities; default like the real dataset
            (ICFG-PEDES has no val split).
        overwrite: replace an existing annotation file in `root` (refused otherwise).
        progress: show a progress bar, or a callable receiving (images written, total).
    """
    spec = dataset_layout(layout)
    root = Path(root).expanduser()
    fractions = split_fractions or SPLIT_FRACTIONS[spec.name]
    if len(fractions) != 3 or min(fractions) < 0 or not math.isclose(sum(fractions), 1.0, abs_tol=1e-6):
        raise ValueError(f"split_fractions must be three non-negative shares summing to 1, got {fractions}")
    if "val" not in spec.splits and fractions[1] > 0:
        raise ValueError(f"{spec.title} has no val split; split_fractions[1] must be 0")
    if num_identities < 2:
        raise ValueError(f"num_identities must be >= 2, got {num_identities}")
    low, high = (
        (images_per_identity, images_per_identity)
        if isinstance(images_per_identity, int)
        else images_per_identity
    )
    if not 1 <= low <= high:
        raise ValueError(
            f"images_per_identity must be >= 1 (or a range low <= high), got {images_per_identity}"
        )
    if captions_per_image < 1:
        raise ValueError(f"captions_per_image must be >= 1, got {captions_per_image}")
    annotation_file = root / spec.annotation_files[0]
    if annotation_file.exists() and not overwrite:
        raise FileExistsError(
            f"{annotation_file} exists; pass overwrite=True (`--overwrite` on the command line) to replace it"
        )

    people = _draw_people(num_identities, seed)
    splits = _assign_splits(num_identities, fractions, seed)
    if spec.name == "icfg-pedes":  # image folders by MSMT17's split, unrelated to the ICFG split
        folders = [
            "test" if np.random.default_rng([seed, i, 5]).random() < ICFG_MSMT17_TEST_SHARE else "train"
            for i in range(num_identities)
        ]
    else:
        folders = splits
    counts = [int(np.random.default_rng([seed, i, 3]).integers(low, high + 1)) for i in range(num_identities)]
    total = sum(counts)
    report = _progress_reporter(progress, total, f"writing {spec.title} twin")
    entries = []
    written = 0
    try:
        for person_index, person in enumerate(people):
            pid = person_index + 1 if spec.name == "cuhk-pedes" else person_index
            for number in range(counts[person_index]):
                rng = np.random.default_rng([seed, person_index, number, 1])
                image, view = render_person(person, image_size, rng)
                relative = _image_name(spec.name, folders[person_index], pid, number, rng)
                path = root / IMAGE_DIR / relative
                path.parent.mkdir(parents=True, exist_ok=True)
                if path.suffix == ".png":
                    image.save(path, compress_level=1)
                else:
                    image.save(path, quality=int(rng.integers(75, 96)))
                captions = [
                    write_caption(person, view, np.random.default_rng([seed, person_index, number, 2, c]))
                    for c in range(captions_per_image)
                ]
                entries.append(_entry(spec.name, pid, relative, captions, splits[person_index]))
                written += 1
                report(written)
    finally:
        report(None)
    annotation_file.write_text(json.dumps(entries, indent=1))
    return annotation_file


def _draw_people(count: int, seed: int) -> list[Person]:
    rng = np.random.default_rng([seed, 0])
    people: list[Person] = []
    seen: set[tuple] = set()
    for _ in range(count):
        for _attempt in range(30):  # beyond that the attribute space is crowded: allow a repeat
            person = draw_person_attributes(rng)
            if person.signature not in seen:
                break
        seen.add(person.signature)
        people.append(person)
    return people


def _assign_splits(count: int, fractions: tuple[float, float, float], seed: int) -> list[str]:
    n_val = round(count * fractions[1]) if fractions[1] > 0 else 0
    n_test = round(count * fractions[2]) if fractions[2] > 0 else 0
    n_val = max(n_val, 1) if fractions[1] > 0 else 0
    n_test = max(n_test, 1) if fractions[2] > 0 else 0
    if n_val + n_test >= count:
        raise ValueError(f"{count} identities are too few for the split fractions {fractions}")
    labels = ["train"] * (count - n_val - n_test) + ["val"] * n_val + ["test"] * n_test
    order = np.random.default_rng([seed, 4]).permutation(count)
    return [labels[int(position)] for position in np.argsort(order)]


def _image_name(dataset: str, folder: str, pid: int, number: int, rng: np.random.Generator) -> str:
    camera = int(rng.integers(1, 16))
    frame = int(rng.integers(0, 10000))
    if dataset == "icfg-pedes":
        return f"{folder}/{pid:04d}/{pid:04d}_{camera:03d}_{number + 1:02d}_0303morning_{frame:04d}_0.jpg"
    if dataset == "rstpreid":
        return f"{pid:04d}_c{camera}_{number:04d}.jpg"
    folder = CUHK_FOLDERS[pid % len(CUHK_FOLDERS)]
    name = {
        "CUHK01": f"{pid:04d}{number + 1:03d}.png",
        "CUHK03": f"{camera}_{pid}_{number + 1}.jpg",
        "Market": f"{pid:04d}_c{camera}s1_{frame:06d}_{number:02d}.jpg",
        "cam_a": f"{pid:04d}_{number}_{frame}.jpg",
        "cam_b": f"{pid:04d}_{number}_{frame}.jpg",
        "test_query": f"p{pid}_s{number}{frame:05d}.jpg",
        "train_query": f"p{pid}_s{number}{frame:05d}.jpg",
    }[folder]
    return f"{folder}/{name}"


def _entry(dataset: str, pid: int, relative: str, captions: list[str], split: str) -> dict:
    if dataset == "rstpreid":
        return {"id": pid, "img_path": relative, "captions": captions, "split": split}
    tokens = [[word.strip(".,").lower() for word in caption.split()] for caption in captions]
    return {
        "split": split,
        "captions": captions,
        "file_path": relative,
        "processed_tokens": tokens,
        "id": pid,
    }


def _progress_reporter(progress: bool | Callable[[int, int], None], total: int, description: str):
    """A function taking the count done (None: finished) that drives a bar or a callback."""
    if callable(progress):
        return lambda done: None if done is None else progress(done, total)
    if not progress:
        return lambda done: None
    from rich.progress import Progress

    bar = Progress(transient=False)
    bar.start()
    task = bar.add_task(description, total=total)

    def report(done: int | None) -> None:
        if done is None:
            bar.stop()
        else:
            bar.update(task, completed=done)

    return report
