"""The `promptdecouple` command: `data synth` / `data check` here, `search` (promptdecouple.search), LightningCLI.

promptdecouple data synth --layout cuhk-pedes --root data/synthetic-cuhk
promptdecouple data check --dataset cuhk-pedes --root /data/CUHK-PEDES
promptdecouple search --ckpt best.ckpt --dataset cuhk-pedes --root /data/CUHK-PEDES --query "..." --out grid.png
promptdecouple fit --config examples/configs/cuhk_pedes.yaml     (LightningCLI)
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence

import lightning as L
import torch
import yaml
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.loggers import WandbLogger
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from promptdecouple.data.annotations import DATASETS, dataset_layout, load_annotations
from promptdecouple.data.datamodule import TIReIDDataModule
from promptdecouple.data.transforms import load_image
from promptdecouple.demo import DemoAssets
from promptdecouple.metrics import chance_metrics
from promptdecouple.module import METRIC_NAMES, PromptDecoupleModule
from promptdecouple.panels import RetrievalPanel
from promptdecouple.search import search_command
from promptdecouple.stages import StageSwitch


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `promptdecouple` console script; returns the exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] == "data":
        return _data_command(argv[1:])
    if argv and argv[0] == "search":
        return search_command(argv[1:])
    return _lightning_cli(argv)


# ---------------------------------------------------------------- Lightning subcommands


def _lightning_cli(argv: list[str]) -> int:
    """`fit`, `validate`, `test`, `predict` through LightningCLI."""
    PromptDecoupleCLI(args=argv)
    return 0


class PromptDecoupleCLI(LightningCLI):
    """LightningCLI for `PromptDecoupleModule` + `TIReIDDataModule`, with the stage switch built in.

    - `data.num_classes`, `data.image_size` and `data.text_length` are linked into the model, and
      the tokenizer (`model.tokenizer`, else `model.clip`) into the data.
    - `stage_switch.switch_epoch` adds the `StageSwitch` callback (0: one-stage fine-tuning).
    - The module builds its own optimizer per stage (`auto_configure_optimizers=False`).
    - An optional `demo:` section makes the demo's synthetic dataset and random CLIP if absent.
    - After `fit`, `validate` and `test` it prints the retrieval metrics next to chance level.
    """

    def __init__(self, args: list[str] | None = None, **kwargs) -> None:
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        kwargs.setdefault("save_config_callback", SaveConfigToWandb)
        kwargs.setdefault("auto_configure_optimizers", False)
        super().__init__(PromptDecoupleModule, TIReIDDataModule, args=args, **kwargs)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(StageSwitch, "stage_switch")
        parser.add_lightning_class_args(RetrievalPanel, "retrieval_panel")
        parser.add_argument(
            "--demo",
            type=DemoAssets | None,
            default=None,
            help="make the demo's synthetic dataset and random CLIP first, where they are missing",
        )
        parser.link_arguments("data.image_size", "model.image_size")
        parser.link_arguments("data.text_length", "model.text_length")
        parser.link_arguments(("model.clip", "model.tokenizer"), "data.tokenizer", compute_fn=_tokenizer_of)
        parser.link_arguments("data.num_classes", "model.num_classes", apply_on="instantiate")

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        if config.get("demo"):
            DemoAssets(**config.demo.as_dict()).ensure()

    def after_fit(self) -> None:
        self._report("val")

    def after_validate(self) -> None:
        self._report("val")

    def after_test(self) -> None:
        self._report("test")

    def _report(self, prefix: str) -> None:
        trainer, data = self.trainer, self.datamodule
        metrics = {
            name: float(trainer.callback_metrics[f"{prefix}/{name}"])
            for name in METRIC_NAMES
            if f"{prefix}/{name}" in trainer.callback_metrics
        }
        if not metrics or not trainer.is_global_zero:
            return
        split = data.eval_split if prefix == "val" else "test"
        queries, gallery = data.eval_set(split)
        chance = chance_metrics(
            torch.tensor(queries["pid"].to_numpy()), torch.tensor(gallery["pid"].to_numpy())
        )
        table = Table()
        table.add_column("metric")
        table.add_column("model", justify="right")
        table.add_column("chance", justify="right")
        table.add_column("x chance", justify="right")
        for name, value in metrics.items():
            table.add_row(name, f"{value:.2f}", f"{chance[name]:.2f}", f"{value / chance[name]:.1f}")
        console = Console()
        console.print(
            f"Text-to-image retrieval on the {data.layout.title} {split} split: {len(queries)} queries, "
            f"{len(gallery)} gallery images (chance: a random ranking)",
            soft_wrap=True,
        )
        console.print(table)


class SaveConfigToWandb(SaveConfigCallback):
    """Write `config.yaml` to the log directory and log the full resolved config to W&B, once per run.

    The config (every argument, defaults included) goes to the run config of each `WandbLogger` under
    the key `config`, so runs can be filtered and compared by any argument (`config.model.prompt_lr`).
    """

    def save_config(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        loggers = [logger for logger in trainer.loggers if isinstance(logger, WandbLogger)]
        if loggers:
            config = yaml.safe_load(self.parser.dump(self.config, skip_none=False))
            for logger in loggers:
                logger.log_hyperparams({"config": config})


def _tokenizer_of(clip: str, tokenizer: str | None) -> str:
    return tokenizer or clip


# ---------------------------------------------------------------- data subcommands


def _data_parser() -> argparse.ArgumentParser:
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
        description="Read the annotations, check that every image exists (and, with --decode, decodes), "
        "print a per-split summary and every problem found. Exits with 1 if there are problems.",
    )
    check.add_argument("--dataset", required=True, choices=DATASETS)
    check.add_argument("--root", required=True, help="the dataset folder as downloaded")
    check.add_argument("--decode", action="store_true", help="also decode every image (slower)")
    check.add_argument(
        "--tokenizer", help="tokenizer (hub name or directory) to count captions longer than --text-length"
    )
    check.add_argument("--text-length", type=int, default=77, help="default: 77")
    return parser


def _data_command(argv: Sequence[str]) -> int:
    try:
        args = _data_parser().parse_args(list(argv))
    except SystemExit as exit_:  # --help or a usage error: argparse has printed the message
        return int(exit_.code or 0)
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
    missing: list[str] = []
    undecodable: list[str] = []
    show_bar = len(images) > 2000 or args.decode
    with Progress(console=console, transient=True, disable=not show_bar) as bar:
        task = bar.add_task("decoding images" if args.decode else "looking for images", total=len(images))
        for path in images:
            if not os.path.isfile(path):
                missing.append(path)
            elif args.decode:
                try:
                    load_image(path)
                except OSError as error:
                    undecodable.append(str(error))
            bar.advance(task)

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
    found += [f"missing image: {path}" for path in missing]
    found += [f"cannot decode: {message}" for message in undecodable]
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
