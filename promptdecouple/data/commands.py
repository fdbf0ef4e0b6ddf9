"""`promptdecouple data synth` and `promptdecouple data check`: make and inspect dataset folders."""

from __future__ import annotations

import argparse
import sys
import time

from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from promptdecouple.data.annotations import DATASETS, dataset_layout, load_annotations
from promptdecouple.data.images import check_image_files


def data_parser() -> argparse.ArgumentParser:
    """The parser of `promptdecouple data` and its two subcommands."""
    parser = argparse.ArgumentParser(prog="promptdecouple data", description="Prepare and inspect datasets.")
    commands = parser.add_subparsers(dest="command", required=True)

    synth = commands.add_parser(
        "synth",
        help="write a synthetic dataset in the download layout of a benchmark",
        description="Write drawn pedestrians and their descriptions in the layout of CUHK-PEDES, "
        "ICFG-PEDES or RSTPReid (annotation JSON and imgs/).",
    )
    synth.add_argument("--layout", required=True, choices=DATASETS, help="dataset layout to imitate")
    synth.add_argument("--root", required=True, help="folder to write")
    synth.add_argument("--num-identities", type=int, default=100, help="persons (default: 100)")
    synth.add_argument(
        "--images-per-identity",
        type=int,
        nargs="+",
        default=[4],
        metavar="N",
        help="photos per person, or MIN MAX for a range (default: 4)",
    )
    synth.add_argument(
        "--captions-per-image", type=int, default=2, help="descriptions per photo (default: 2)"
    )
    synth.add_argument(
        "--image-size", type=int, nargs=2, default=[384, 128], metavar=("H", "W"), help="default: 384 128"
    )
    synth.add_argument("--seed", type=int, default=0, help="default: 0")
    synth.add_argument("--overwrite", action="store_true", help="replace an existing annotation file")

    check = commands.add_parser(
        "check",
        help="summarise a dataset folder and list every problem in it",
        description="Read the annotations, check every image file (that it exists, is not empty, begins "
        "like an image and, for JPEG and PNG, ends like one; with --decode, that it decodes), print a "
        "per-split summary and every problem found. Exits with 1 if there are problems.",
    )
    check.add_argument("--dataset", required=True, choices=DATASETS)
    check.add_argument("--root", required=True, help="the dataset folder as downloaded")
    check.add_argument(
        "--decode", action="store_true", help="also decode every image, to find damage inside files (slower)"
    )
    check.add_argument(
        "--tokenizer", help="tokenizer (hub name or directory) to count captions longer than --text-length"
    )
    check.add_argument("--text-length", type=int, default=77, help="default: 77")
    return parser


def run_data_command(args: argparse.Namespace) -> int:
    """Run a parsed `data synth` or `data check`; returns the exit status."""
    console = Console(width=None if sys.stdout.isatty() else 120)  # no wrapping at 80 columns in logs
    if args.command == "synth":
        return _synth(args, console)
    return _check(args, console)


def _synth(args: argparse.Namespace, console: Console) -> int:
    from promptdecouple.data.synthetic import write_synthetic

    images = args.images_per_identity
    if len(images) > 2:
        console.print("[red]error:[/] --images-per-identity takes N or MIN MAX")
        return 2
    started = time.perf_counter()
    try:
        annotation_file = write_synthetic(
            args.root,
            args.layout,
            num_identities=args.num_identities,
            images_per_identity=images[0] if len(images) == 1 else (images[0], images[1]),
            captions_per_image=args.captions_per_image,
            seed=args.seed,
            image_size=tuple(args.image_size),
            overwrite=args.overwrite,
            progress=True,
        )
    except (ValueError, FileExistsError) as error:
        console.print(f"[red]error:[/] {error}", soft_wrap=True)
        return 1
    table, _ = load_annotations(args.layout, args.root)
    seconds = time.perf_counter() - started
    console.print(
        f"wrote {table['image_id'].nunique()} images, {len(table)} captions of {table['pid'].nunique()} "
        f"identities in {seconds:.1f} s: {annotation_file}",
        soft_wrap=True,
    )
    console.print(_summary_table(table, None, 0))
    return 0


def _check(args: argparse.Namespace, console: Console) -> int:
    layout = dataset_layout(args.dataset)
    try:
        table, problems = load_annotations(args.dataset, args.root)
        annotation_file = layout.annotation_file(args.root)
    except FileNotFoundError as error:
        console.print(f"[red]problem:[/] {error}", soft_wrap=True)
        return 1
    console.print(f"{layout.title} at {args.root}: {annotation_file.name}", soft_wrap=True)

    images = table.drop_duplicates("image_id")["image_path"].tolist()
    show_bar = len(images) > 2000 or args.decode
    with Progress(console=console, transient=True, disable=not show_bar) as bar:
        task = bar.add_task("decoding images" if args.decode else "checking images", total=len(images))
        report = check_image_files(images, decode_all=args.decode, progress=lambda n: bar.advance(task, n))

    tokenizer = None
    if args.tokenizer:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    console.print(_summary_table(table, tokenizer, args.text_length))

    notes = []
    splits = set(table["split"])
    for name in layout.splits:
        if name not in splits and not table.empty:
            notes.append(f"no {name!r} entries (the official {layout.title} release has them)")
    for name in sorted(splits - set(layout.splits)):
        notes.append(f"{name!r} entries, which the official {layout.title} release does not have")
    shared = table.groupby("pid")["split"].nunique()
    if (shared > 1).any():
        ids = shared[shared > 1].index.tolist()
        notes.append(f"{len(ids)} identities appear in more than one split (e.g. {ids[:5]})")
    for note in notes:
        console.print(f"[yellow]note:[/] {note}", soft_wrap=True)

    found = [str(p) for p in problems]
    found += [f"missing image: {path}" for path in report.missing]
    found += [f"unreadable image: {path}: {reason}" for path, reason in report.unreadable.items()]
    found += [
        f"truncated image: {path}: {reason} (fit uses what decodes, the rest grey, as the reference code does)"
        for path, reason in report.truncated.items()
    ]
    for line in found:
        console.print(f"[red]problem:[/] {line}", highlight=False, soft_wrap=True)
    if found:
        console.print(f"[red]{len(found)} problem(s)[/] in {args.root}")
        return 1
    console.print("[green]no problems found[/]")
    return 0


def _summary_table(table, tokenizer, text_length: int) -> Table:
    """Per split: identities, images, captions, caption length in words (and captions over the limit)."""
    summary = Table(title="splits")
    for column in ("split", "identities", "images", "captions", "words min", "mean", "max"):
        summary.add_column(column, justify="left" if column == "split" else "right")
    if tokenizer is not None:
        summary.add_column(f"> {text_length} tokens", justify="right")
    order = {name: i for i, name in enumerate(("train", "val", "test"))}
    for split, rows in sorted(table.groupby("split"), key=lambda item: order.get(item[0], 9)):
        words = rows["caption"].str.split().str.len()
        cells = [
            str(split),
            f"{rows['pid'].nunique():,}",
            f"{rows['image_id'].nunique():,}",
            f"{len(rows):,}",
            str(words.min()),
            f"{words.mean():.1f}",
            str(words.max()),
        ]
        if tokenizer is not None:
            lengths = [len(ids) for ids in tokenizer(rows["caption"].tolist(), verbose=False)["input_ids"]]
            cells.append(f"{sum(length > text_length for length in lengths):,}")
        summary.add_row(*cells)
    return summary
