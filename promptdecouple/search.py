"""`promptdecouple search`: rank a dataset split's gallery for one description and draw the result.

    promptdecouple search --ckpt runs/best.ckpt --dataset rstpreid --root /data/RSTPReid \\
        --query "a woman in a red coat carrying a black backpack" --out grid.png
    promptdecouple search --ckpt runs/best.ckpt --dataset rstpreid --root /data/RSTPReid \\
        --query-index 17 --k 10 --out grid.png

The gallery is encoded once per checkpoint and split: the features are cached in a file next to the
checkpoint (`GalleryCache`), so later queries only encode their text. With `--query-index` the query is
one of the split's captions, whose identity is known: the picture frames right and wrong identities
and shows the true images below.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import torch
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from torch.utils.data import DataLoader

from promptdecouple.data.annotations import DATASETS, dataset_layout
from promptdecouple.data.datamodule import EVAL_SPLITS, TIReIDDataModule
from promptdecouple.data.datasets import GalleryImages
from promptdecouple.data.images import load_for_display
from promptdecouple.data.transforms import ImageTransform
from promptdecouple.metrics import match_ranks
from promptdecouple.module import PromptDecoupleModule, evaluation_mode
from promptdecouple.predict_writer import checkpoint_identity, read_features
from promptdecouple.visualization import draw_retrieval

CACHE_FORMAT = 1
DEFAULT_K = 10


class SearchError(Exception):
    """A problem with the command's input, reported to the user as one line."""


class GalleryCache:
    """Gallery features of one (checkpoint, dataset folder, split), in a file next to the checkpoint.

    The file is named after the checkpoint, the dataset, the split and the dataset folder; inside, a key
    records the checkpoint's size and modification time and the gallery's image paths. A checkpoint
    overwritten by a later epoch, or a changed annotation file, no longer matches the key, and the
    features are encoded again and the file replaced.
    """

    def __init__(self, checkpoint: str | Path, dataset: str, root: str | Path, split: str) -> None:
        self.checkpoint = Path(checkpoint).resolve()
        self.dataset, self.split = dataset, split
        self.root = Path(root).expanduser().resolve()
        folder = hashlib.sha1(str(self.root).encode()).hexdigest()[:10]
        self.path = self.checkpoint.with_name(f"{self.checkpoint.name}.{dataset}-{split}-{folder}.gallery.pt")

    def key(self, image_paths: Sequence[str]) -> dict:
        """What the cached features depend on."""
        stat = self.checkpoint.stat()
        return {
            "format": CACHE_FORMAT,
            "checkpoint": str(self.checkpoint),
            "checkpoint_size": stat.st_size,
            "checkpoint_mtime_ns": stat.st_mtime_ns,
            "dataset": self.dataset,
            "root": str(self.root),
            "split": self.split,
            "images": hashlib.sha1("\n".join(map(str, image_paths)).encode()).hexdigest(),
        }

    def load(self, image_paths: Sequence[str]) -> torch.Tensor | None:
        """The cached features `(N, D)`, or None when there is no cache or it is out of date."""
        if not self.path.is_file():
            return None
        try:
            stored = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception:  # a truncated or foreign file: encode again and replace it
            return None
        if not isinstance(stored, dict) or stored.get("key") != self.key(image_paths):
            return None
        features = stored.get("features")
        if not isinstance(features, torch.Tensor) or len(features) != len(image_paths):
            return None
        return features

    def save(self, image_paths: Sequence[str], features: torch.Tensor) -> None:
        """Write the features atomically (a half-written file never replaces a good one)."""
        partial = self.path.with_name(f"{self.path.name}.{os.getpid()}.partial")
        torch.save({"key": self.key(image_paths), "features": features.detach().cpu()}, partial)
        os.replace(partial, self.path)


@torch.no_grad()
def encode_gallery(
    module: PromptDecoupleModule,
    image_paths: Sequence[str],
    batch_size: int = 64,
    num_workers: int = 0,
    progress: bool | Console = True,
) -> torch.Tensor:
    """L2-normalised features `(N, D)` of the gallery images, on the CPU, with a progress bar.

    The images go through the evaluation transform and `module.forward`, exactly as in validation
    (and as `PromptDecoupleModule.encode_images`), decoded by `num_workers` DataLoader workers.
    """
    dataset = GalleryImages(list(image_paths), [0] * len(image_paths), ImageTransform(module.clip.image_size))
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        num_workers=num_workers,
        pin_memory=module.device.type == "cuda",
    )
    console = progress if isinstance(progress, Console) else Console(stderr=True)
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    features = []
    with (
        evaluation_mode(module),
        Progress(*columns, console=console, transient=True, disable=progress is False) as bar,
    ):
        task = bar.add_task("encoding the gallery", total=len(dataset))
        for batch in loader:
            pixels = batch["pixel_values"].to(module.device, non_blocking=True)
            features.append(module(pixel_values=pixels)["image"].float().cpu())
            bar.advance(task, len(pixels))
    return torch.cat(features) if features else torch.empty(0, module.clip.embed_dim)


def gallery_features(
    module: PromptDecoupleModule,
    checkpoint: str | Path,
    dataset: str,
    root: str | Path,
    split: str,
    image_paths: Sequence[str],
    batch_size: int = 64,
    num_workers: int = 0,
    cache: bool = True,
    console: Console | None = None,
) -> torch.Tensor:
    """The split's gallery features: from the cache next to `checkpoint`, else encoded (and cached)."""
    console = console or Console(stderr=True)
    store = GalleryCache(checkpoint, dataset, root, split)
    if cache:
        features = store.load(image_paths)
        if features is not None:
            console.print(f"gallery features from the cache {store.path}", highlight=False, soft_wrap=True)
            return features
    features = encode_gallery(module, image_paths, batch_size, num_workers, progress=console)
    if cache:
        try:
            store.save(image_paths, features)
        except OSError as error:
            console.print(f"[yellow]warning:[/] cannot write the gallery cache: {error}", soft_wrap=True)
    return features


# ---------------------------------------------------------------- the command


def search_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="promptdecouple search",
        description="Rank the gallery of a dataset split for one description and draw the top images. "
        "The gallery features are cached next to the checkpoint, so the next query is quick.",
    )
    parser.add_argument("--ckpt", required=True, help="a PromptDecoupleModule checkpoint (.ckpt)")
    parser.add_argument("--dataset", required=True, choices=DATASETS)
    parser.add_argument("--root", required=True, help="the dataset folder as downloaded")
    parser.add_argument(
        "--split", default="test", choices=EVAL_SPLITS, help="gallery to search (default: test)"
    )
    query = parser.add_mutually_exclusive_group(required=True)
    query.add_argument("--query", help="the description to search for")
    query.add_argument(
        "--query-index",
        type=int,
        metavar="N",
        help="search with the split's N-th caption (0-based); its identity is known, so the picture marks "
        "right and wrong identities and shows the true images",
    )
    parser.add_argument(
        "--k", type=int, help="images to show (default: 10, or the whole gallery when it is smaller)"
    )
    parser.add_argument("--out", required=True, help="picture to write (.png)")
    parser.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda if available, else cpu)")
    parser.add_argument("--batch-size", type=int, default=64, help="gallery images per batch (default: 64)")
    parser.add_argument(
        "--num-workers", type=int, default=min(4, os.cpu_count() or 1), help="image decoding processes"
    )
    parser.add_argument(
        "--thumbnail-height", type=int, default=192, help="height of each image in the picture (default: 192)"
    )
    parser.add_argument("--no-cache", action="store_true", help="encode the gallery again and keep no cache")
    parser.add_argument(
        "--features",
        metavar="FILE",
        help="gallery features from a file `promptdecouple predict` wrote with the same checkpoint and split",
    )
    parser.add_argument(
        "--bad-entries",
        choices=("error", "skip"),
        default="error",
        help="annotation entries with problems: refuse (default) or leave out, as --data.bad_entries",
    )
    return parser


def run_search(args: argparse.Namespace) -> int:
    """Run a parsed `promptdecouple search`; returns the exit status (1: bad input)."""
    console = Console(width=None if sys.stdout.isatty() else 120)
    try:
        _search(args, console)
    except SearchError as error:
        console.print(f"[red]error:[/] {error}", highlight=False, soft_wrap=True)
        return 1
    return 0


def _search(args: argparse.Namespace, console: Console) -> None:
    checkpoint = Path(args.ckpt).expanduser()
    if not checkpoint.is_file():
        raise SearchError(f"checkpoint not found: {checkpoint}")
    for name in ("k", "batch_size", "thumbnail_height"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise SearchError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.num_workers < 0:
        raise SearchError(f"--num-workers must be >= 0, got {args.num_workers}")
    device = _device(args.device)
    if args.query is not None and not args.query.strip():
        raise SearchError("--query is empty")

    queries, gallery = _eval_set(args.dataset, args.root, args.split, args.bad_entries)
    where = f"the {args.split} split of {args.dataset} at {args.root}"
    if gallery.empty:
        raise SearchError(f"{where} has no gallery images")
    missing = [path for path in gallery["image_path"] if not os.path.isfile(path)]
    if missing:
        raise SearchError(
            f"{len(missing)} of {len(gallery)} gallery images of {where} are missing, e.g. {missing[0]}; "
            f"`promptdecouple data check --dataset {args.dataset} --root {args.root}` lists them"
        )
    if args.k is None:
        args.k = min(DEFAULT_K, len(gallery))
    elif args.k > len(gallery):
        raise SearchError(f"--k {args.k} is larger than the gallery of {where} ({len(gallery)} images)")
    query_row = None
    if args.query_index is not None:
        if not 0 <= args.query_index < len(queries):
            raise SearchError(
                f"--query-index {args.query_index} is out of range: {where} has {len(queries)} captions "
                f"(0 to {len(queries) - 1})"
            )
        query_row = queries.iloc[args.query_index]
    text = args.query if query_row is None else str(query_row["caption"])
    out = Path(args.out).expanduser()
    if out.suffix.lower() != ".png":
        raise SearchError(f"--out must name a .png file, got {out}")

    module = _load_module(checkpoint, device)
    image_paths = gallery["image_path"].tolist()
    if args.features:
        features = _stored_gallery(args, checkpoint, image_paths)
    else:
        features = gallery_features(
            module,
            checkpoint,
            args.dataset,
            args.root,
            args.split,
            image_paths,
            batch_size=args.batch_size,
            num_workers=args.num_workers,
            cache=not args.no_cache,
            console=Console(stderr=True),
        )
    query_features = module.encode_texts([text]).float().cpu()
    scores = (query_features @ features.T)[0]
    top = module.search(query_features, features, k=args.k)
    indices, top_scores = top.indices[0].tolist(), top.scores[0].tolist()
    pids = gallery["pid"].to_numpy()

    matches = true_rows = true_ranks = None
    note = f"free-text query, {args.dataset} {args.split} gallery of {len(gallery)} images"
    if query_row is not None:
        pid = int(query_row["pid"])
        matches = [bool(pids[i] == pid) for i in indices]
        rows, ranks = match_ranks(scores, torch.as_tensor(pids), pid)
        true_rows, true_ranks = rows.tolist(), ranks.tolist()
        note = (
            f"caption {args.query_index} of the {args.dataset} {args.split} split, identity {pid}; "
            f"gallery of {len(gallery)} images"
        )

    _print_results(console, args, text, gallery, indices, top_scores, matches, true_ranks)
    picture = draw_retrieval(
        text,
        [load_for_display(image_paths[i]) for i in indices],
        top_scores,
        matches=matches,
        true_images=None if true_rows is None else [load_for_display(image_paths[i]) for i in true_rows[:10]],
        true_ranks=None if true_ranks is None else true_ranks[:10],
        note=note,
        thumbnail_height=args.thumbnail_height,
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    picture.save(out)
    console.print(f"wrote {out} ({picture.width}x{picture.height})", highlight=False, soft_wrap=True)


def _stored_gallery(args: argparse.Namespace, checkpoint: Path, image_paths: list[str]) -> torch.Tensor:
    """The gallery features of a `predict` file, refused unless they are of this checkpoint and split."""
    try:
        stored = read_features(args.features)
    except (FileNotFoundError, ValueError) as error:
        raise SearchError(str(error)) from None
    found = (stored.get("dataset"), stored.get("split"))
    if found != (dataset_layout(args.dataset).name, args.split):
        raise SearchError(
            f"{args.features} holds the {found[0]} {found[1]} split, not {args.dataset} {args.split}"
        )
    if stored.get("checkpoint") != checkpoint_identity(checkpoint):
        raise SearchError(
            f"{args.features} was written with another checkpoint ({(stored.get('checkpoint') or {}).get('path')}), "
            f"not {checkpoint.resolve()} as it is now; run `promptdecouple predict` with this one"
        )
    gallery = stored["gallery"]
    if gallery.get("image_paths") != image_paths:
        raise SearchError(f"the gallery of {args.features} is not the {args.split} split's at {args.root}")
    return gallery["features"]


def _device(name: str | None) -> torch.device:
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise SearchError(f"--device {name!r} is not a device: {error}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SearchError(f"--device {name} asked for CUDA, which this machine does not have")
    return device


def _eval_set(
    dataset: str, root: str, split: str, bad_entries: str = "error"
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(queries, gallery) of the split, in the order validation and test use."""
    data = TIReIDDataModule(
        dataset, root, tokenizer="unused", eval_split="test", check_images=False, bad_entries=bad_entries
    )
    try:
        return data.eval_set(split)
    except (FileNotFoundError, ValueError) as error:
        raise SearchError(str(error)) from None


def _load_module(checkpoint: Path, device: torch.device) -> PromptDecoupleModule:
    try:
        module = PromptDecoupleModule.load_from_checkpoint(checkpoint, map_location="cpu")
    except Exception as error:  # Lightning, torch and transformers raise many kinds; name the file
        raise SearchError(f"cannot load {checkpoint} as a PromptDecoupleModule checkpoint: {error}") from None
    return module.to(device).eval()


def _print_results(
    console: Console,
    args: argparse.Namespace,
    text: str,
    gallery: pd.DataFrame,
    indices: list[int],
    scores: list[float],
    matches: list[bool] | None,
    true_ranks: list[int] | None,
) -> None:
    console.print(f"query: {text}", highlight=False, soft_wrap=True)
    table = Table(title=f"top {len(indices)} of {len(gallery)} images, {args.dataset} {args.split} split")
    for column in ("rank", "score", "pid"):
        table.add_column(column, justify="right")
    if matches is not None:
        table.add_column("match", justify="center")
    table.add_column("image")
    root = Path(args.root).expanduser().resolve()
    for rank, (index, score) in enumerate(zip(indices, scores, strict=True), start=1):
        row = gallery.iloc[index]
        path = Path(row["image_path"])
        shown = str(path.relative_to(root)) if path.is_relative_to(root) else str(path)
        cells = [str(rank), f"{score:.4f}", str(row["pid"])]
        if matches is not None:
            cells.append("[green]yes[/]" if matches[rank - 1] else "[red]no[/]")
        table.add_row(*cells, shown)
    console.print(table)
    if true_ranks is not None:
        hits = sum(matches)
        console.print(
            f"{len(true_ranks)} true image(s); the best at rank {true_ranks[0]} of {len(gallery)}; "
            f"{hits} in the top {len(indices)}",
            highlight=False,
        )
