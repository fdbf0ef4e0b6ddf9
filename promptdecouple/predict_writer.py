"""What `promptdecouple predict` writes: the features of a split's queries and gallery, in one file.

    promptdecouple predict --config C --ckpt_path best.ckpt --data.predict_split test \\
        --predict_writer.output features/cuhk-test.pt

The file (`torch.save`, readable with `read_features` or `torch.load(..., weights_only=True)`)
holds, in the order of `TIReIDDataModule.eval_set(split)` (row i = query / gallery item i):

    {"format": 1, "dataset": "cuhk-pedes", "split": "test", "checkpoint": {"path", "size", "mtime_ns"} | None,
     "queries": {"features": (Q, D) float32, L2-normalised, "pids": (Q,), "captions": [...], "image_paths": [...]},
     "gallery": {"features": (G, D) float32, L2-normalised, "pids": (G,), "image_paths": [...]}}

so that re-ranking or analysis needs neither the model nor a GPU, and `promptdecouple search
--features FILE` ranks with the stored gallery instead of encoding it again. Under DDP every process
predicts its share; the shares are gathered and rank 0 writes the file once.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.distributed as dist
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.utilities import rank_zero_info

FEATURES_FORMAT = 1
ROLES = ("queries", "gallery")


class FeatureWriter(BasePredictionWriter):
    """Write the predicted query and gallery features of a split to one file (see the module docstring).

    Args:
        output: file to write; None: `features-<dataset>-<split>.pt` in the trainer's
            `default_root_dir`.
        overwrite: replace an existing file (refused otherwise, before anything is predicted).
    """

    def __init__(self, output: str | None = None, overwrite: bool = False) -> None:
        super().__init__(write_interval="epoch")
        self.output = output
        self.overwrite = overwrite
        self.written: Path | None = None
        """The file of the last `predict`."""

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "predict" and not self.overwrite and self._path(trainer).exists():
            raise FileExistsError(
                f"{self._path(trainer)} exists; give another --predict_writer.output or "
                "--predict_writer.overwrite true"
            )

    def write_on_epoch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, predictions: Any, batch_indices: Any
    ) -> None:
        if len(predictions) != 2:
            raise ValueError(
                f"FeatureWriter expects two prediction loaders (queries, gallery), got {len(predictions)}"
            )
        parts = {role: _concatenate(outputs) for role, outputs in zip(ROLES, predictions, strict=True)}
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            gathered: list[Any] = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, parts)
            parts = {role: _merge([p[role] for p in gathered]) for role in ROLES}
        if not trainer.is_global_zero:
            return
        content = self._content(trainer, parts)
        path = self._path(trainer)
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f"{path.name}.{os.getpid()}.partial")
        torch.save(content, temporary)
        temporary.replace(path)
        self.written = path
        queries, gallery = content["queries"]["features"], content["gallery"]["features"]
        rank_zero_info(
            f"wrote the features of {len(queries):,} queries and {len(gallery):,} gallery images "
            f"({queries.shape[1]}-d) of the {content['dataset']} {content['split']} split to {path}"
        )

    def _path(self, trainer: L.Trainer) -> Path:
        if self.output is not None:
            return Path(self.output).expanduser()
        data = trainer.datamodule
        name = f"features-{getattr(data, 'dataset', 'data')}-{getattr(data, 'predict_split', 'split')}.pt"
        return Path(trainer.default_root_dir) / name

    def _content(self, trainer: L.Trainer, parts: dict[str, dict[str, torch.Tensor]]) -> dict:
        data = trainer.datamodule
        split = getattr(data, "predict_split", None)
        content: dict[str, Any] = {
            "format": FEATURES_FORMAT,
            "dataset": getattr(data, "dataset", None),
            "split": split,
            "checkpoint": checkpoint_identity(trainer.ckpt_path),
        }
        tables = data.eval_set(split) if hasattr(data, "eval_set") and split else (None, None)
        for role, table in zip(ROLES, tables, strict=True):
            part = parts[role]
            order = torch.argsort(part["index"])
            index = part["index"][order]
            if table is not None and not torch.equal(index, torch.arange(len(table))):
                raise ValueError(
                    f"the predicted {role} cover {len(index)} of the {len(table)} items of the split: "
                    "a partial prediction (limit_predict_batches) is not written"
                )
            content[role] = {"features": part["features"][order].float(), "pids": part["pids"][order]}
            if table is not None:
                content[role]["image_paths"] = table["image_path"].tolist()
                if role == "queries":
                    content[role]["captions"] = table["caption"].tolist()
        return content


def checkpoint_identity(path: str | os.PathLike | None) -> dict | None:
    """What identifies a checkpoint file: its resolved path, size and modification time."""
    if not path or not Path(path).is_file():
        return None
    stat = Path(path).stat()
    return {"path": str(Path(path).resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def read_features(path: str | os.PathLike) -> dict:
    """A file `predict` wrote (the layout in the module docstring), with a clear error for anything else."""
    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise FileNotFoundError(f"features file not found: {path}") from None
    except Exception as error:
        raise ValueError(
            f"{path} is not a features file written by `promptdecouple predict`: {error}"
        ) from None
    if not isinstance(content, dict) or content.get("format") != FEATURES_FORMAT:
        raise ValueError(f"{path} is not a features file written by `promptdecouple predict` (format 1)")
    return content


def _concatenate(outputs: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {key: torch.cat([o[key].detach().cpu() for o in outputs]) for key in ("features", "pids", "index")}


def _merge(parts: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The processes' shares in one, one row per index (samplers may repeat items to even the shares)."""
    merged = {key: torch.cat([p[key] for p in parts]) for key in ("features", "pids", "index")}
    order = torch.argsort(merged["index"], stable=True)
    index = merged["index"][order]
    first = torch.ones_like(index, dtype=torch.bool)
    first[1:] = index[1:] != index[:-1]
    return {key: value[order][first] for key, value in merged.items()}
