"""RetrievalPanel: at every validation, pictures of a few fixed queries and their top images, in W&B.

Metrics say how often the right person comes first; the panel shows what the model retrieves instead,
epoch after epoch, for the same captions. It reuses the features the validation loop already computed
(held by the module's `val_metrics`), so it encodes nothing again.
"""

from __future__ import annotations

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import WandbLogger
from PIL import Image

from promptdecouple.data.images import load_for_display
from promptdecouple.metrics import match_ranks
from promptdecouple.visualization import draw_retrieval


class RetrievalPanel(Callback):
    """Log `val/retrieval`: the top-`k` gallery images of `num_queries` fixed validation captions.

    Active when one of the trainer's loggers is a `WandbLogger` (the pictures go to every such
    logger) and `num_queries > 0`; `num_queries=0` turns it off. The captions are picked once,
    deterministically: the first caption of identities evenly spaced over the validation split, so
    each picture shows a different person and the same picture is drawn every epoch. Each picture
    frames the retrieved images green (right identity) or red (wrong) and shows the true images below
    with their ranks. Nothing is logged during the sanity check.

    It reads the validation features from the module's `val_metrics` (a `RetrievalMetrics`) in
    `on_validation_epoch_end`, which Lightning calls before the module's own hook resets them, and
    the captions and image paths from `trainer.datamodule.eval_set(eval_split)` (a `TIReIDDataModule`).
    Under DDP every rank takes part in gathering the features; only rank 0 draws and logs.

    Args:
        num_queries: captions to show (fewer if the split has fewer identities); 0 turns the panel off.
        k: retrieved images per caption.
        thumbnail_height: height of each image in the pictures, in pixels.
    """

    def __init__(self, num_queries: int = 4, k: int = 5, thumbnail_height: int = 192) -> None:
        if num_queries < 0:
            raise ValueError(f"num_queries must be >= 0 (0 turns the panel off), got {num_queries}")
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        if thumbnail_height < 16:
            raise ValueError(f"thumbnail_height must be at least 16 pixels, got {thumbnail_height}")
        self.num_queries = num_queries
        self.k = k
        self.thumbnail_height = thumbnail_height

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        # Fail before training rather than at the end of the first epoch.
        if stage not in ("fit", "validate") or not self._loggers(trainer):
            return
        data = trainer.datamodule
        if data is None or not hasattr(data, "eval_set") or not hasattr(data, "eval_split"):
            raise ValueError(
                "RetrievalPanel needs the captions and image paths of the validation set: pass a "
                "TIReIDDataModule to the trainer (datamodule=...), or turn the panel off (num_queries=0, "
                "--retrieval_panel.num_queries 0 on the command line)"
            )
        if not hasattr(pl_module, "val_metrics"):
            raise ValueError(
                f"RetrievalPanel reads the validation features from `val_metrics`, which "
                f"{type(pl_module).__name__} does not have"
            )

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        loggers = self._loggers(trainer)
        if not loggers or trainer.sanity_checking:
            return
        # Collectives: every rank gathers, whatever its rank.
        query_features, query_pids = pl_module.val_metrics.items("query")
        gallery_features, gallery_pids = pl_module.val_metrics.items("gallery")
        if not trainer.is_global_zero:
            return
        data = trainer.datamodule
        queries, gallery = data.eval_set(data.eval_split)
        _check_prefix(query_pids, queries["pid"].to_numpy(), "queries", data.eval_split)
        _check_prefix(gallery_pids, gallery["pid"].to_numpy(), "gallery images", data.eval_split)

        captions = queries["caption"].tolist()
        paths = gallery["image_path"].tolist()
        query_pids, gallery_pids = query_pids.cpu(), gallery_pids.cpu()
        chosen = panel_queries(query_pids.numpy(), self.num_queries)
        k = min(self.k, len(gallery_pids))
        similarities = query_features[chosen].float() @ gallery_features.float().T
        similarities = similarities.cpu()
        pictures, titles = [], []
        for row, index in enumerate(chosen):
            scores = similarities[row]
            top_scores, top = scores.topk(k)
            pid = int(query_pids[index])
            true, true_ranks = match_ranks(scores, gallery_pids, pid)
            true, true_ranks = true[: self.k], true_ranks[: self.k]
            pictures.append(
                draw_retrieval(
                    captions[index],
                    [load_for_display(paths[i]) for i in top.tolist()],
                    top_scores.tolist(),
                    matches=(gallery_pids[top] == pid).tolist(),
                    true_images=[load_for_display(paths[i]) for i in true.tolist()],
                    true_ranks=true_ranks.tolist(),
                    note=f"{data.eval_split} caption {index}, identity {pid}; epoch {trainer.current_epoch}, "
                    f"step {trainer.global_step}",
                    thumbnail_height=self.thumbnail_height,
                    max_true_images=self.k,
                )
            )
            titles.append(f"{data.eval_split} caption {index} (identity {pid})")
        pictures = _same_size(pictures)  # W&B shows a list of images of different sizes distorted
        for logger in loggers:
            logger.log_image(key="val/retrieval", images=pictures, step=trainer.global_step, caption=titles)

    def _loggers(self, trainer: L.Trainer) -> list[WandbLogger]:
        if not self.num_queries:
            return []
        return [logger for logger in trainer.loggers if isinstance(logger, WandbLogger)]


def _same_size(pictures: list[Image.Image]) -> list[Image.Image]:
    """Each picture on a white canvas of the largest width and height, top-left aligned."""
    size = (max(p.width for p in pictures), max(p.height for p in pictures))
    canvases = []
    for picture in pictures:
        canvas = Image.new("RGB", size, "white")
        canvas.paste(picture, (0, 0))
        canvases.append(canvas)
    return canvases


def panel_queries(query_pids: np.ndarray, num_queries: int) -> list[int]:
    """Indices of the first captions of `num_queries` identities evenly spaced in order of appearance."""
    _, first = np.unique(query_pids, return_index=True)
    first = np.sort(first)  # identities in order of their first caption
    count = min(num_queries, len(first))
    return [int(first[i * len(first) // count]) for i in range(count)]


def _check_prefix(pids: torch.Tensor, expected: np.ndarray, what: str, split: str) -> None:
    """The gathered items must be the first items of the split (all of them, or fewer with
    `limit_val_batches`); otherwise their positions would not match the data module's rows."""
    pids = pids.cpu().numpy()
    if len(pids) > len(expected) or not np.array_equal(pids, expected[: len(pids)]):
        raise RuntimeError(
            f"RetrievalPanel: the {len(pids)} validation {what} in the module's val_metrics do not match the "
            f"first {what} of trainer.datamodule.eval_set({split!r}); was the model validated on another "
            "data set?"
        )
