"""`promptdecouple fit | validate | test | predict`: LightningCLI for the module and the data module.

Beyond Lightning's CLI: the stage switch, the retrieval panel, preemption handling and the
features writer are built in; a checkpoint's settings are the defaults of a run that names it and
are checked against the given ones (`promptdecouple.checkpoint_settings`); the resolved config goes
to the run's own folder; the closing table says what the metrics were computed on, and the same goes
to `metrics-<command>.json` beside the config.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path

import lightning as L
import torch
import yaml
from jsonargparse import Namespace
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities.exceptions import SIGTERMException
from rich.console import Console
from rich.table import Table

from promptdecouple.checkpoint_settings import (
    DATA_SETTINGS,
    MODEL_SETTINGS,
    TRAINING,
    CheckpointMismatchError,
    CheckpointSettingsError,
    SettingDifference,
    differences,
    normalize,
    refused,
)
from promptdecouple.data.annotations import AnnotationError
from promptdecouple.data.datamodule import ImageFilesError, TIReIDDataModule
from promptdecouple.demo import DemoAssets, DemoAssetsError
from promptdecouple.module import METRIC_NAMES, PromptDecoupleModule
from promptdecouple.panels import RetrievalPanel
from promptdecouple.predict_writer import FeatureWriter
from promptdecouple.preemption import EXIT_STATUS, PreemptionCheckpoint
from promptdecouple.stages import StageSwitch

SUBCOMMANDS = ("fit", "validate", "test", "predict")


def run_lightning(argv: list[str]) -> int:
    """`fit`, `validate`, `test`, `predict` through LightningCLI; returns the exit status.

    A run refused for its settings or its data (settings a checkpoint fixes, annotation entries with
    problems, unusable images, an output file that exists, the demo's pretrained CLIP missing) prints the reason and returns 2; a `fit` interrupted by SIGTERM
    returns 143 (see `PreemptionCheckpoint`).
    """
    try:
        PromptDecoupleCLI(args=argv)
    except (
        CheckpointMismatchError,
        AnnotationError,
        ImageFilesError,
        FileExistsError,
        DemoAssetsError,
    ) as error:
        Console(stderr=True).print(f"[red]error:[/] {error}", highlight=False, soft_wrap=True)
        return 2
    except SIGTERMException as interrupted:
        return int(interrupted.code or EXIT_STATUS)
    return 0


class PromptDecoupleCLI(LightningCLI):
    """LightningCLI for `PromptDecoupleModule` + `TIReIDDataModule`, with the stage switch built in.

    - `data.num_classes`, `data.image_size` and `data.text_length` are linked into the model, and
      the tokenizer (`model.tokenizer`, else `model.clip`) into the data.
    - `stage_switch.switch_epoch` adds the `StageSwitch` callback (0: one-stage fine-tuning);
      `preemption` adds `PreemptionCheckpoint` (a checkpoint and exit status 143 on SIGTERM);
      `predict_writer` adds `FeatureWriter` (`predict` writes the features to one file).
    - The module builds its own optimizer per stage (`auto_configure_optimizers=False`).
    - An optional `demo:` section makes the demo's synthetic dataset (and a random CLIP, if asked) if absent;
      `zero_shot` scores the CLIP as given before a fit trains it.
    - With `--ckpt_path`, the checkpoint's settings are the defaults and the given ones are checked
      against them (`promptdecouple.checkpoint_settings`): paths and runtime settings apply with a
      note, the others must match, all differences are listed at once before any work. (LightningCLI
      alone would replace the given model settings by the checkpoint's, silently.)
    - The resolved config is written to the run's own folder (`run_folder`), never over a file.
    - After `fit`, `validate` and `test` it prints the retrieval metrics next to chance level for
      exactly the items scored, says when an evaluation was partial and which split selected the
      checkpoint.
    """

    def __init__(self, args: list[str] | None = None, **kwargs) -> None:
        kwargs.setdefault("save_config_callback", SaveConfigToRunFolder)
        kwargs.setdefault("save_config_kwargs", {"save_to_log_dir": False})
        kwargs.setdefault("auto_configure_optimizers", False)
        self.checkpoint: dict | None = None
        self._reconciled: dict = {}
        self._notes: list[str] = []
        super().__init__(PromptDecoupleModule, TIReIDDataModule, args=args, **kwargs)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(StageSwitch, "stage_switch")
        parser.add_lightning_class_args(RetrievalPanel, "retrieval_panel")
        parser.add_lightning_class_args(PreemptionCheckpoint, "preemption")
        parser.add_lightning_class_args(FeatureWriter, "predict_writer")
        parser.add_argument(
            "--demo",
            type=DemoAssets | None,
            default=None,
            help="make the demo's synthetic dataset (and a random CLIP, unless pretrained_clip) first, where missing",
        )
        parser.add_argument(
            "--zero_shot",
            type=bool,
            default=False,
            help="fit: first score the val split with the prompts switched off (the CLIP as given, before any "
            "training); the closing table then shows it beside the last evaluation of each stage. Not with "
            "--ckpt_path (the model is not yet the checkpoint's then); validate and test do not use it",
        )
        parser.link_arguments("data.image_size", "model.image_size")
        parser.link_arguments("data.text_length", "model.text_length")
        parser.link_arguments(("model.clip", "model.tokenizer"), "data.tokenizer", compute_fn=_tokenizer_of)
        parser.link_arguments("data.num_classes", "model.num_classes", apply_on="instantiate")

    def parse_arguments(self, parser: LightningArgumentParser, args) -> None:
        """Parse, with the checkpoint's settings (`--ckpt_path`) as the defaults: the given ones win."""
        raw = sys.argv[1:] if args is None else args
        subcommand, ckpt_path = _subcommand_and_checkpoint(raw, self.subcommands())
        if ckpt_path:  # on the command line: its settings are defaults from the first parse on
            self._checkpoint_defaults(parser, subcommand, ckpt_path)
        # LightningCLI.parse_arguments would warn that `args` and `sys.argv` were both given: `main`
        # passes the command line as `args`, so that it can also be called from Python.
        self.config = (
            parser.parse_object(args) if isinstance(args, (dict, Namespace)) else parser.parse_args(args)
        )
        subcommand = self.config.get("subcommand")
        ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if not ckpt_path or not Path(ckpt_path).is_file():
            self.checkpoint = None
            return
        if self.checkpoint is None:  # given in a config file: parse again over its settings
            self._checkpoint_defaults(parser, subcommand, ckpt_path)
            self.config = parser.parse_args(args)
        model = self.config[subcommand].model
        model_saved = _known(self.checkpoint.get("hyper_parameters", {}), MODEL_SETTINGS, MODEL_LINK_TARGETS)
        saved_clip = model_saved.get("clip")
        if model.get("tokenizer") == model_saved.get("tokenizer") == saved_clip and model.clip != saved_clip:
            model.tokenizer = None  # it followed the checkpoint's clip; it follows the given one
        if subcommand != "fit":  # training settings do not change an evaluation: keep the checkpoint's
            for name, value in model_saved.items():
                if MODEL_SETTINGS.get(name) == TRAINING and normalize(model.get(name)) != normalize(value):
                    self._notes.append(
                        f"model.{name}: the checkpoint's {value!r} is kept, the given {model.get(name)!r} "
                        f"does not change an evaluation"
                    )
                    model[name] = value
        self._reconciled = {"model": self.config[subcommand].model.clone()}

    def _checkpoint_defaults(self, parser: LightningArgumentParser, subcommand: str, ckpt_path: str) -> None:
        """Make the settings saved in the checkpoint the parser's defaults for `subcommand`."""
        if not Path(ckpt_path).is_file():
            return
        self.checkpoint = torch.load(ckpt_path, map_location="cpu", weights_only=True, mmap=True)
        model_saved = _known(self.checkpoint.get("hyper_parameters", {}), MODEL_SETTINGS, MODEL_LINK_TARGETS)
        data_saved = _known(
            self.checkpoint.get("datamodule_hyper_parameters", {}), DATA_SETTINGS, ("tokenizer",)
        )
        defaults = {f"{subcommand}.model.{name}": value for name, value in model_saved.items()}
        defaults |= {f"{subcommand}.data.{name}": value for name, value in data_saved.items()}
        switch = self.checkpoint.get("callbacks", {}).get("StageSwitch", {}).get("switch_epoch")
        if switch is not None:
            defaults[f"{subcommand}.stage_switch.switch_epoch"] = switch
        parser.set_defaults(defaults)

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        for section, value in self._reconciled.items():
            config[section] = value  # LightningCLI put the checkpoint's values over the given ones
        if config.get("model") is not None:  # the tokenizer as used, also in the model's hparams
            config.model.tokenizer = config.model.tokenizer or config.model.clip
            config.data.tokenizer = config.model.tokenizer  # what the link computed, after any change above
        if config.get("demo"):
            DemoAssets(**config.demo.as_dict()).ensure()

    def after_instantiate_classes(self) -> None:
        """With `--ckpt_path`: list what differs from the checkpoint, refuse or note it (before any work)."""
        ckpt_path = self.config[self.subcommand].get("ckpt_path") if self.subcommand else None
        if self.checkpoint is None and ckpt_path == "last":  # Lightning resolves it at the start of the run
            newest = _newest_last_checkpoint(self.trainer)
            if newest is not None:
                self.checkpoint = torch.load(newest, map_location="cpu", weights_only=True, mmap=True)
                ckpt_path = str(newest)
        if self.checkpoint is None:
            return
        fitting = self.subcommand == "fit"
        found = differences(
            self.checkpoint.get("hyper_parameters", {}), self.model.hparams, MODEL_SETTINGS, "model"
        )
        if fitting:
            data_found = differences(
                self.checkpoint.get("datamodule_hyper_parameters", {}),
                self.datamodule.hparams,
                DATA_SETTINGS,
                "data",
            )
            linked = {d.name for d in data_found}
            found = [
                d for d in found if d.name not in linked or d.name not in MODEL_LINK_TARGETS
            ] + data_found
            saved_switch = self.checkpoint.get("callbacks", {}).get("StageSwitch", {}).get("switch_epoch")
            switch = self.config[self.subcommand].stage_switch.switch_epoch
            if saved_switch is not None and saved_switch != switch:
                found.append(
                    SettingDifference("stage_switch", "switch_epoch", saved_switch, switch, TRAINING)
                )
        if bad := refused(found, fitting):
            raise CheckpointSettingsError(ckpt_path, bad, fitting)
        for difference in found:
            self._notes.append(
                f"{difference.argument}: {difference.given!r}, not the checkpoint's {difference.checkpoint!r} "
                f"(a {difference.kind} setting: this run's value applies)"
            )
        if self.trainer.is_global_zero:
            console = Console()
            for note in self._notes:
                console.print(f"[cyan]resume:[/] {note}", highlight=False, soft_wrap=True)

    def before_fit(self) -> None:
        """With `zero_shot`: score the val split with the prompts off before training (a fresh fit only)."""
        config = self.config.fit
        if not config.get("zero_shot"):
            return
        if config.get("ckpt_path"):
            if self.trainer.is_global_zero:
                Console().print(
                    "[yellow]note:[/] zero_shot: not scored, this fit resumes from a checkpoint",
                    highlight=False,
                    soft_wrap=True,
                )
            return
        with self.model.clip.without_prompts():
            self.trainer.validate(self.model, datamodule=self.datamodule, verbose=False)

    def after_fit(self) -> None:
        self._report("val")

    def after_validate(self) -> None:
        self._report("val")

    def after_test(self) -> None:
        self._report("test")

    def _report(self, prefix: str) -> None:
        """The metrics next to chance on exactly the items scored, what was scored, what chose the checkpoint."""
        summary = self.model.last_evaluation.get(prefix)
        if summary is None or not self.trainer.is_global_zero:
            return
        data = self.datamodule
        split = data.eval_split if prefix == "val" else "test"
        console = Console()
        where = f"the {data.layout.title} {split} split"
        if summary.partial:
            limit = "limit_val_batches" if prefix == "val" else "limit_test_batches"
            console.print(
                f"[bold yellow]PARTIAL evaluation[/] of {where}: {summary.num_queries:,} of "
                f"{summary.total_queries:,} queries and {summary.num_gallery:,} of {summary.total_gallery:,} "
                f"gallery images were scored (trainer.{limit}); chance is that of a random ranking of exactly "
                "these. The figures are not those of the split.",
                soft_wrap=True,
            )
        else:
            console.print(
                f"Text-to-image retrieval on {where}: {summary.num_queries:,} queries, "
                f"{summary.num_gallery:,} gallery images (chance: a random ranking)",
                soft_wrap=True,
            )
        if summary.num_unmatched_queries:
            console.print(
                f"{summary.num_unmatched_queries:,} more queries have no image of their identity among the "
                "scored ones: they cannot be ranked and are not counted",
                soft_wrap=True,
            )
        stages = stage_evaluations(self.model.evaluation_history) if self.subcommand == "fit" else []
        if stages:
            console.print(stage_table(stages, split))
        table = Table()
        table.add_column("metric")
        table.add_column("model", justify="right")
        table.add_column("chance", justify="right")
        table.add_column("x chance", justify="right")
        for name in METRIC_NAMES:
            value, chance = summary.metrics[name], summary.chance[name]
            table.add_row(name, f"{value:.2f}", f"{chance:.2f}", f"{value / chance:.1f}")
        console.print(table)
        selection = self._selection_note(prefix)
        console.print(selection, highlight=False, soft_wrap=True)
        notes = _data_notes(data)
        for line in notes:
            console.print(f"[yellow]note:[/] {line}", highlight=False, soft_wrap=True)
        path = write_final_metrics(
            self._run_folder(),
            self.subcommand,
            {
                "subcommand": self.subcommand,
                "dataset": data.layout.title,
                "split": split,
                "partial": summary.partial,
                "num_queries": summary.num_queries,
                "num_gallery": summary.num_gallery,
                "num_unmatched_queries": summary.num_unmatched_queries,
                "total_queries": summary.total_queries,
                "total_gallery": summary.total_gallery,
                "metrics": summary.metrics,
                "chance": summary.chance,
                # fit: how far this run trained; validate/test: the step of the checkpoint evaluated
                "global_step": self.trainer.global_step
                if self.subcommand == "fit" or self.checkpoint is None
                else self.checkpoint.get("global_step"),
                "epochs_trained": self.trainer.current_epoch if self.subcommand == "fit" else None,
                "stage": self.model.stage,
                "seed": self.config[self.subcommand].get("seed_everything"),
                "checkpoint": str(self.trainer.ckpt_path) if self.trainer.ckpt_path else None,
                "checkpoint_selection": selection,
                "best_checkpoints": [
                    {
                        "monitor": callback.monitor,
                        "path": callback.best_model_path or None,
                        "score": None
                        if callback.best_model_score is None
                        else float(callback.best_model_score),
                    }
                    for callback in self.trainer.checkpoint_callbacks
                    if self.subcommand == "fit" and getattr(callback, "monitor", None)
                ],
                "data_notes": notes,
                "stages": [
                    {
                        "label": row["label"],
                        "epochs_trained": row["epochs_trained"],
                        "partial": row["summary"].partial,
                        "metrics": row["summary"].metrics,
                        "chance": row["summary"].chance,
                    }
                    for row in stages
                ],
            },
        )
        console.print(f"final metrics: {path}", highlight=False, soft_wrap=True)

    def _run_folder(self) -> Path:
        """The folder the resolved config went to (so both files sit together), else `run_folder`."""
        for callback in self.trainer.callbacks:
            saved = getattr(callback, "saved_path", None)
            if isinstance(callback, SaveConfigToRunFolder) and saved is not None:
                return Path(saved).parent
        return run_folder(self.trainer)

    def _selection_note(self, prefix: str) -> str:
        """Which split chose the checkpoints (after fit) or the evaluated checkpoint (validate, test)."""
        return checkpoint_selection(self.trainer, self.datamodule, self.checkpoint, self.subcommand)


class SaveConfigToRunFolder(SaveConfigCallback):
    """Write the resolved config to the run's own folder (never over a file) and to W&B, once per run.

    The folder is `run_folder(trainer)`; the file is `config.yaml`, or `config-1.yaml`, ... if that
    name is taken. With a `WandbLogger` the config (every argument, defaults included) also goes to
    the run config under the key `config` (filter and compare runs by `config.model.prompt_lr`),
    with `evaluation`: which split the validation loop scores (`val_split`: with "test", the test
    split also selects the checkpoints), the metrics that select checkpoints, the checkpoint evaluated.
    """

    def save_config(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                config = yaml.safe_load(self.parser.dump(self.config, skip_unset=False))
                evaluation = {
                    "val_split": getattr(trainer.datamodule, "eval_split", None),
                    "checkpoints_selected_by": [
                        cb.monitor for cb in trainer.checkpoint_callbacks if getattr(cb, "monitor", None)
                    ],
                }
                if self.config.get("ckpt_path"):
                    evaluation["checkpoint"] = str(self.config.ckpt_path)
                logger.log_hyperparams({"config": config, "evaluation": evaluation})
        folder = run_folder(trainer)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / self.config_filename
        number = 0
        while path.exists():
            number += 1
            path = folder / f"{Path(self.config_filename).stem}-{number}{Path(self.config_filename).suffix}"
        self.parser.save(self.config, str(path), skip_unset=False, overwrite=False, multifile=self.multifile)
        self.saved_path = path
        Console().print(f"config: {path}", highlight=False, soft_wrap=True)


def write_final_metrics(folder: Path, subcommand: str, record: dict) -> Path:
    """Write a run's closing metrics to ``<folder>/metrics-<subcommand>.json``, never over a file.

    The record says what was scored (split, counts, partial), the metrics and chance on exactly those
    items, the epoch, step and stage of the model scored, the seed and the checkpoint, so that runs
    can be compared from their folders without W&B. A second evaluation in the same folder gets
    ``metrics-<subcommand>-1.json``, and so on.
    """
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"metrics-{subcommand}.json"
    number = 0
    while path.exists():
        number += 1
        path = folder / f"metrics-{subcommand}-{number}.json"
    with open(path, "x", encoding="utf-8") as file:
        json.dump(record, file, indent=2)
        file.write("\n")
    return path


def stage_evaluations(history: list[dict]) -> list[dict]:
    """The rows of the closing "what each stage did" table, from `PromptDecoupleModule.evaluation_history`.

    The zero-shot score (prompts off, before training) if there is one, then the last evaluation of
    each stage this fit trained; each row has ``label``, ``epochs_trained`` and ``summary``. Empty
    when there is nothing to set side by side (a single evaluation of a single stage).
    """
    rows = []
    zero_shot = [entry for entry in history if not entry["prompts"] and not entry["fitting"]]
    if zero_shot:
        rows.append({"label": "zero-shot", "epochs_trained": 0, "summary": zero_shot[-1]["summary"]})
    fitted = [entry for entry in history if entry["fitting"]]
    for stage, label in ((1, "after stage 1"), (2, "after stage 2")):
        last = [entry for entry in fitted if entry["stage"] == stage]
        if last:
            rows.append(
                {"label": label, "epochs_trained": last[-1]["epoch"] + 1, "summary": last[-1]["summary"]}
            )
    return rows if len(rows) > 1 else []


def stage_table(rows: list[dict], split: str) -> Table:
    """The stage rows as a table: epochs trained, the metrics, R1 as a multiple of chance."""
    table = Table(title=f"What each stage did ({split} split; zero-shot: the CLIP as given, prompts off)")
    table.add_column("model")
    table.add_column("epochs", justify="right")
    for name in METRIC_NAMES:
        table.add_column(name, justify="right")
    table.add_column("R1 x chance", justify="right")
    for row in rows:
        summary = row["summary"]
        label = row["label"] + (" PARTIAL" if summary.partial else "")
        values = [f"{summary.metrics[name]:.2f}" for name in METRIC_NAMES]
        table.add_row(
            label, str(row["epochs_trained"]), *values, f"{summary.metrics['R1'] / summary.chance['R1']:.1f}"
        )
    return table


def run_folder(trainer: L.Trainer) -> Path:
    """The run's own folder: its logger's (`log_dir`, or `save_dir/name/version`), else a new one.

    Without a logger (or one without a folder), a fresh `version_N` under
    `<default_root_dir>/lightning_logs`, as Lightning's own loggers number them.
    """
    logger = trainer.logger
    if logger is not None:
        log_dir = getattr(logger, "log_dir", None)
        if log_dir:
            return Path(log_dir)
        if logger.save_dir and logger.version is not None:
            version = logger.version if isinstance(logger.version, str) else f"version_{logger.version}"
            return Path(logger.save_dir) / str(logger.name or "") / version
    base = Path(trainer.default_root_dir) / "lightning_logs"
    number = 0
    while (base / f"version_{number}").exists():
        number += 1
    return base / f"version_{number}"


def checkpoint_selection(trainer: L.Trainer, data, checkpoint: dict | None, subcommand: str | None) -> str:
    """A line saying which split selected the checkpoint(s): honest protocol reporting."""
    title = data.layout.title
    if subcommand == "fit":
        monitors = [cb.monitor for cb in trainer.checkpoint_callbacks if getattr(cb, "monitor", None)]
        if not monitors:
            return "checkpoints: none selected by a metric"
        line = (
            f"checkpoints selected by {', '.join(monitors)}, computed on the {title} {data.eval_split} split"
        )
        if data.eval_split == "test":
            line += (
                " (as IRRA does): test figures of a checkpoint selected so are not an independent estimate"
            )
        return line
    if checkpoint is None:
        return "evaluated the model as given (no checkpoint)"
    saved_split = checkpoint.get("datamodule_hyper_parameters", {}).get("eval_split")
    ckpt_path = str(trainer.ckpt_path)
    for key, state in checkpoint.get("callbacks", {}).items():
        if not key.startswith("ModelCheckpoint") or not isinstance(state, dict) or not state.get("monitor"):
            continue
        best = state.get("best_model_path")
        if best and Path(best).name == Path(ckpt_path).name:
            line = f"checkpoint {ckpt_path}: selected by {state['monitor']} on the {saved_split} split"
            if saved_split == "test":
                line += " (as IRRA does): its test figures are not an independent estimate"
            return line
    return f"checkpoint {ckpt_path}: not one a metric selected (the last or a periodic one)"


def _data_notes(data: TIReIDDataModule) -> list[str]:
    """What the data module left out, used truncated, or could not decode during the run."""
    notes = []
    if data.skipped:
        notes.append(
            f"{len(data.skipped):,} entries were left out (bad_entries='skip'); see the warnings above"
        )
    if data.truncated_images:
        notes.append(f"{len(data.truncated_images):,} truncated image(s) were used as far as they decode")
    if data.unreadable_images:
        shown = ", ".join(list(data.unreadable_images)[:3])
        notes.append(
            f"{len(data.unreadable_images):,} image(s) could not be decoded while loading and were replaced by "
            f"the mean colour: {shown}{' ...' if len(data.unreadable_images) > 3 else ''}"
        )
    return notes


def _newest_last_checkpoint(trainer: L.Trainer) -> Path | None:
    """The checkpoint `ckpt_path="last"` resumes: the newest `last*.ckpt` in the checkpoint folders.

    The rule of Lightning's own resolution (ModelCheckpoint's "last" names, newest modification
    time), applied early so that the run's settings can be checked against it before any work.
    """
    candidates = [
        path
        for callback in trainer.checkpoint_callbacks
        if getattr(callback, "dirpath", None) and Path(callback.dirpath).is_dir()
        for path in Path(callback.dirpath).glob("last*.ckpt")
    ]
    return max(candidates, key=lambda path: path.stat().st_mtime, default=None)


def _subcommand_and_checkpoint(args: Sequence[str], subcommands) -> tuple[str | None, str | None]:
    """The subcommand and `--ckpt_path` of a command line, where it gives them there."""
    subcommand = args[0] if args and args[0] in subcommands else None
    ckpt_path = None
    for position, arg in enumerate(args):
        if arg == "--ckpt_path" and position + 1 < len(args):
            ckpt_path = args[position + 1]
        elif arg.startswith("--ckpt_path="):
            ckpt_path = arg.split("=", 1)[1]
    return (subcommand, ckpt_path) if subcommand else (None, None)


def _known(saved: dict, kinds: dict[str, str], skip: Sequence[str]) -> dict:
    """The checkpoint's settings that this version's parser knows, less link targets."""
    return {name: value for name, value in saved.items() if name in kinds and name not in skip}


MODEL_LINK_TARGETS = ("image_size", "text_length", "num_classes")
"""Model settings the CLI links from the data module."""


def _tokenizer_of(clip: str, tokenizer: str | None) -> str:
    return tokenizer or clip
