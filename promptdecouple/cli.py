"""The `promptdecouple` command tree (also `python -m promptdecouple`).

    promptdecouple fit | validate | test | predict --config C ...   LightningCLI (promptdecouple.lightning_cli)
    promptdecouple data synth | check ...                           datasets (promptdecouple.data.commands)
    promptdecouple search ...                                       one query, ranked and drawn (promptdecouple.search)

`promptdecouple --help` lists them all; `promptdecouple <command> --help` shows a command's options.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from promptdecouple.data.commands import data_parser, run_data_command
from promptdecouple.lightning_cli import SUBCOMMANDS, PromptDecoupleCLI, run_lightning
from promptdecouple.search import run_search, search_parser

__all__ = ["COMMANDS", "PromptDecoupleCLI", "main"]

COMMANDS: dict[str, str] = {
    "fit": "train: stage 1 (prompts, CLIP frozen), then stage 2 (CLIP and the identity head); --ckpt_path resumes",
    "validate": "evaluate on the validation loop's split (data.eval_split)",
    "test": "evaluate on the test split",
    "predict": "write the query and gallery features of a split to one file (data.predict_split)",
    "data synth": "write a synthetic dataset in the layout of CUHK-PEDES, ICFG-PEDES or RSTPReid",
    "data check": "check a dataset folder: annotations, every image file, a summary per split",
    "search": "rank a split's gallery for one description with a trained checkpoint and draw the result",
}
"""Every command, with the line `promptdecouple --help` shows for it."""

ARGPARSE_COMMANDS: dict[
    str, tuple[Callable[[], argparse.ArgumentParser], Callable[[argparse.Namespace], int]]
] = {
    "data": (data_parser, run_data_command),
    "search": (search_parser, run_search),
}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `promptdecouple` console script; returns the exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(top_level_help())
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command in SUBCOMMANDS:
        return run_lightning(argv)
    if command in ARGPARSE_COMMANDS:
        build, run = ARGPARSE_COMMANDS[command]
        try:
            args = build().parse_args(rest)
        except SystemExit as exit_:  # --help, or a usage error argparse has printed
            return int(exit_.code or 0)
        return run(args)
    print(f"promptdecouple: unknown command {command!r}\n\n{top_level_help()}", file=sys.stderr)
    return 2


def top_level_help() -> str:
    width = max(map(len, COMMANDS))
    lines = [
        "usage: promptdecouple <command> [options]",
        "",
        "Text-to-image person re-identification with two-stage prompt decoupling on Hugging Face CLIP.",
        "",
        "commands:",
        *(f"  {name:<{width}}  {text}" for name, text in COMMANDS.items()),
        "",
        "`promptdecouple <command> --help` shows the options of a command",
        "(`promptdecouple data synth --help`, `promptdecouple fit --help`, ...).",
    ]
    return "\n".join(lines)
