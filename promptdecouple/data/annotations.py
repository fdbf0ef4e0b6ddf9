"""Readers for the annotation files of CUHK-PEDES, ICFG-PEDES and RSTPReid, as they are downloaded.

All three ship one JSON list; each entry is one image with its identity (`id`), its path under `imgs/`
(key `file_path`, or `img_path` for RSTPReid), its `captions` and its `split`. `read_annotations`
turns that into one table row per caption and refuses a file with problems, listing each of them
with the file, the entry index (0-based, in file order) and the entry's id; asked to
(`bad_entries="skip"`), it drops the entries with problems instead and says what it dropped.
Files saved with a UTF-8 byte-order mark read like any other.
"""

from __future__ import annotations

import json
import math
import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Literal

import pandas as pd

SPLITS = ("train", "val", "test")
COLUMNS = ("split", "pid", "image_id", "image_path", "caption")
IMAGE_DIR = "imgs"
BAD_ENTRIES = ("error", "skip")
BadEntries = Literal["error", "skip"]


@dataclass(frozen=True)
class DatasetLayout:
    """Where a dataset keeps its annotation file and images, and which key names the image."""

    name: str
    title: str
    annotation_files: tuple[str, ...]
    image_key: str
    splits: tuple[str, ...]
    folders: str

    def annotation_file(self, root: str | Path) -> Path:
        """The annotation file under `root` (the first of the accepted names that exists)."""
        root = Path(root).expanduser()
        if not root.is_dir():
            raise FileNotFoundError(f"{self.title} root {root} is not a directory")
        for name in self.annotation_files:
            if (root / name).is_file():
                return (root / name).resolve()
        present = sorted(p.name for p in root.iterdir())[:20]
        wanted = " or ".join(self.annotation_files)
        raise FileNotFoundError(
            f"{self.title} annotation file {wanted} not found in {root} (it contains: "
            f"{', '.join(present) or 'nothing'}). See docs/datasets.md for the expected layout."
        )


LAYOUTS: dict[str, DatasetLayout] = {
    "cuhk-pedes": DatasetLayout(
        name="cuhk-pedes",
        title="CUHK-PEDES",
        annotation_files=("reid_raw.json",),
        image_key="file_path",
        splits=("train", "val", "test"),
        folders="imgs/<CUHK01|CUHK03|Market|cam_a|cam_b|test_query|train_query>/...",
    ),
    "icfg-pedes": DatasetLayout(
        name="icfg-pedes",
        title="ICFG-PEDES",
        annotation_files=("ICFG-PEDES.json", "ICFG_PEDES.json"),
        image_key="file_path",
        splits=("train", "test"),
        folders="imgs/train/<id>/..., imgs/test/<id>/...",
    ),
    "rstpreid": DatasetLayout(
        name="rstpreid",
        title="RSTPReid",
        annotation_files=("data_captions.json",),
        image_key="img_path",
        splits=("train", "val", "test"),
        folders="imgs/<id>_c<camera>_<frame>.jpg",
    ),
}
DATASETS = tuple(LAYOUTS)


def dataset_layout(dataset: str) -> DatasetLayout:
    """The layout of `dataset`; accepts any case and `_` for `-` (``"CUHK_PEDES"``)."""
    key = dataset.strip().lower().replace("_", "-")
    if key not in LAYOUTS:
        raise ValueError(f"unknown dataset {dataset!r}; expected one of {', '.join(DATASETS)}")
    return LAYOUTS[key]


@dataclass(frozen=True)
class AnnotationProblem:
    """One thing wrong with an annotation file (or with the image an entry names): where and what.

    `entry` is None for a problem of the whole file. `kind` names the sort of problem, for
    counting ("empty caption", "missing image", ...).
    """

    file: Path
    message: str
    entry: int | None = None
    entry_id: Any = None
    kind: str = "other"

    def __str__(self) -> str:
        if self.entry is None:
            return f"{self.file}: {self.message}"
        return f"{self.file}: entry {self.entry} (id {self.entry_id!r}): {self.message}"


class AnnotationError(ValueError):
    """An annotation file with problems; `problems` lists every one of them."""

    shown = 20

    def __init__(self, problems: list[AnnotationProblem]):
        self.problems = problems
        lines = [str(p) for p in problems[: self.shown]]
        if len(problems) > self.shown:
            lines.append(
                f"... and {len(problems) - self.shown} more (`promptdecouple data check` prints them all)"
            )
        message = f"{len(problems)} problem(s) in the annotations:\n  " + "\n  ".join(lines)
        if all(p.entry is not None for p in problems):
            message += (
                "\nTo train on the other entries, pass bad_entries='skip' (`--data.bad_entries skip`): the "
                "entries with problems are then left out, and what was left out is reported."
            )
        super().__init__(message)


class SkippedEntriesWarning(UserWarning):
    """Entries with problems were left out, as asked with ``bad_entries="skip"``."""


def describe_skipped(problems: Sequence[AnnotationProblem], total: int, what: str, shown: int = 5) -> str:
    """A report of skipped entries: how many of `total`, a count per kind, and the first few."""
    entries = {(str(p.file), p.entry) for p in problems}
    kinds = Counter(p.kind for p in problems)
    lines = [
        f"left out {len(entries):,} of {total:,} entries of {what} (bad_entries='skip'): "
        + ", ".join(f"{count:,} x {kind}" for kind, count in kinds.most_common())
    ]
    lines += [f"  {p}" for p in problems[:shown]]
    if len(problems) > shown:
        lines.append(f"  ... and {len(problems) - shown:,} more (`promptdecouple data check` lists them all)")
    return "\n".join(lines)


def load_annotations(dataset: str, root: str | Path) -> tuple[pd.DataFrame, list[AnnotationProblem]]:
    """Read what is readable and collect every problem, without raising for bad entries.

    Returns the table of the valid entries (columns as `read_annotations`) and the problems.
    Raises only when `root` or the annotation file is missing.
    """
    layout = dataset_layout(dataset)
    path = layout.annotation_file(root)
    image_root = path.parent / IMAGE_DIR
    problems: list[AnnotationProblem] = []
    try:
        with open(path, encoding="utf-8-sig") as file:  # a byte-order mark, if any, is skipped
            entries = json.load(file)
    except json.JSONDecodeError as error:
        message = f"not valid JSON (line {error.lineno}, column {error.colno}: {error.msg})"
        return _empty_table(), [AnnotationProblem(path, message, kind="not JSON")]
    except UnicodeDecodeError as error:
        return _empty_table(), [AnnotationProblem(path, f"not UTF-8 text ({error})", kind="not UTF-8")]
    if not isinstance(entries, list):
        message = f"expected a JSON list of image entries, found a JSON {type(entries).__name__}"
        return _empty_table(), [AnnotationProblem(path, message, kind="not a list")]

    columns: dict[str, list] = {name: [] for name in COLUMNS}
    first_entry_of_image: dict[str, int] = {}
    required = ("id", layout.image_key, "captions", "split")
    for index, entry in enumerate(entries):

        def problem(kind: str, message: str, index=index, entry=entry) -> None:
            entry_id = entry.get("id", "missing") if isinstance(entry, dict) else "missing"
            problems.append(AnnotationProblem(path, message, index, entry_id, kind))

        if not isinstance(entry, dict):
            problem("not an object", f"expected a JSON object, found {type(entry).__name__}")
            continue
        missing = [key for key in required if key not in entry]
        if missing:
            problem("missing key", f"missing key(s) {', '.join(map(repr, missing))}")
        before = len(problems)

        pid = entry.get("id")
        if "id" in entry and not _is_integer(pid):
            problem("bad id", f"id must be an integer, found {pid!r}")
        split = entry.get("split")
        if "split" in entry and split not in SPLITS:
            problem("bad split", f"split must be one of {', '.join(SPLITS)}, found {split!r}")
        captions = entry.get("captions")
        if "captions" in entry:
            if not isinstance(captions, list):
                problem(
                    "bad captions", f"captions must be a list of strings, found {type(captions).__name__}"
                )
            elif not captions:
                problem("no captions", "captions is an empty list")
            else:
                for number, caption in enumerate(captions):
                    if not isinstance(caption, str):
                        problem("bad captions", f"caption {number} is not a string: {caption!r}")
                    elif not caption.strip():
                        problem("empty caption", f"caption {number} is empty")
        image = entry.get(layout.image_key)
        key = None
        if layout.image_key in entry:
            if not isinstance(image, str) or not image.strip():
                problem("bad image path", f"{layout.image_key} must be a non-empty string, found {image!r}")
            else:
                relative = PurePosixPath(image.strip().replace("\\", "/"))
                if relative.is_absolute() or ".." in relative.parts:
                    problem(
                        "bad image path",
                        f"{layout.image_key} {image!r} must be a path relative to {IMAGE_DIR}/",
                    )
                else:
                    key = relative.as_posix()
                    if key in first_entry_of_image:
                        problem(
                            "duplicate image",
                            f"image {image!r} is already listed by entry {first_entry_of_image[key]}",
                        )
                    else:
                        first_entry_of_image[key] = index

        if missing or len(problems) > before:
            continue
        image_path = str(image_root / key)
        for caption in captions:
            columns["split"].append(split)
            columns["pid"].append(int(pid))
            columns["image_id"].append(index)
            columns["image_path"].append(image_path)
            columns["caption"].append(caption.strip())
    table = _table(columns)
    table.attrs["entries"] = len(entries)
    return table, problems


def read_annotations(dataset: str, root: str | Path, bad_entries: BadEntries = "error") -> pd.DataFrame:
    """One row per caption: `split, pid, image_id, image_path, caption`.

    `dataset` is ``"cuhk-pedes"``, ``"icfg-pedes"`` or ``"rstpreid"``; `root` the folder as downloaded
    (annotation file and `imgs/`). `pid` is the id as stored, `image_id` the index of the image's
    entry in the file and `image_path` an absolute path under `root/imgs`.

    `bad_entries`: ``"error"`` (default) raises `AnnotationError` listing every problem (file, entry
    index, id) if the file has any; ``"skip"`` leaves the entries with problems out and warns
    (`SkippedEntriesWarning`) how many it left out, of which kinds, and which first. A problem of the
    whole file (not JSON, not a list) or a file with no valid entry is an error either way.
    """
    check_bad_entries(bad_entries)
    table, skipped = apply_bad_entries(*load_annotations(dataset, root), bad_entries)
    if skipped:
        report = describe_skipped(skipped, table.attrs["entries"], str(skipped[0].file))
        warnings.warn(report, SkippedEntriesWarning, stacklevel=2)
    return table


def apply_bad_entries(
    table: pd.DataFrame, problems: list[AnnotationProblem], bad_entries: BadEntries
) -> tuple[pd.DataFrame, list[AnnotationProblem]]:
    """What `load_annotations` found, under a `bad_entries` policy: (the table, the problems skipped).

    Raises `AnnotationError` for any problem with ``"error"``, and with ``"skip"`` for a problem of
    the whole file or when no entry is valid; otherwise the entries with problems are already out
    of `table` and are returned as skipped.
    """
    check_bad_entries(bad_entries)
    if not problems:
        return table, []
    if bad_entries == "error" or any(p.entry is None for p in problems) or table.empty:
        raise AnnotationError(problems)
    return table, problems


def check_bad_entries(bad_entries: str) -> str:
    """`bad_entries` if it is ``"error"`` or ``"skip"``; a clear error otherwise."""
    if bad_entries not in BAD_ENTRIES:
        raise ValueError(f"bad_entries must be 'error' or 'skip', got {bad_entries!r}")
    return bad_entries


def _is_integer(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return True
    return isinstance(value, float) and math.isfinite(value) and value.is_integer()


def _table(columns: dict[str, list]) -> pd.DataFrame:
    table = pd.DataFrame(columns)
    return table.astype({"pid": "int64", "image_id": "int64"})


def _empty_table() -> pd.DataFrame:
    return _table({name: [] for name in COLUMNS})
