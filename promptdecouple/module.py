"""PromptDecoupleModule: the LightningModule that trains, evaluates and serves PromptedCLIP."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, NamedTuple

import lightning as L
import torch
from lightning.pytorch.trainer.states import TrainerFn
from PIL import Image
from torch import nn
from transformers import AutoTokenizer

from promptdecouple.checkpoint_settings import (
    MODEL_SETTINGS,
    CheckpointMismatchError,
    CheckpointSettingsError,
    differences,
    refused,
)
from promptdecouple.data.transforms import ImageTransform, normalize_pixels
from promptdecouple.metrics import RetrievalMetrics
from promptdecouple.model.prompted_clip import PromptedCLIP
from promptdecouple.objectives import LOSS_NAMES, id_loss, itc_loss, sdm_loss, validate_loss_names
from promptdecouple.stages import STAGES, StageSwitch

METRIC_NAMES = ("R1", "R5", "R10", "mAP", "mINP")


@dataclass(frozen=True)
class EvaluationSummary:
    """One evaluation as it was computed: the metrics, what they were computed on, chance on exactly that.

    `num_queries` and `num_gallery` count the distinct captions and images that were ranked; they
    are fewer than `total_queries` / `total_gallery` (the evaluation set) when only part of it was
    evaluated (`Trainer(limit_val_batches=...)`): the evaluation is then `partial`. Queries whose
    identity had no image among the ranked ones cannot be ranked (`num_unmatched_queries`).
    `chance` is the expected value of each metric for a random ranking of exactly these items.
    """

    split: str
    metrics: dict[str, float]
    chance: dict[str, float]
    num_queries: int
    num_gallery: int
    num_unmatched_queries: int
    total_queries: int | None
    total_gallery: int | None

    @property
    def partial(self) -> bool | None:
        """True if fewer items than the evaluation set were scored; None if the set's size is unknown."""
        if self.total_queries is None or self.total_gallery is None:
            return None
        given = self.num_queries + self.num_unmatched_queries
        return given < self.total_queries or self.num_gallery < self.total_gallery


class SearchResult(NamedTuple):
    """Top-k gallery positions and their cosine scores, one row per query."""

    indices: torch.Tensor
    scores: torch.Tensor


class PromptDecoupleModule(L.LightningModule):
    """Two-stage prompt decoupling for text-to-image person re-identification.

    Stage 1 trains the deep prompts with CLIP frozen (`stage1_losses`, `prompt_lr`); stage 2
    freezes the prompts and fine-tunes CLIP and the identity head (`stage2_losses`, `encoder_lr`,
    `head_lr`). `StageSwitch` decides when the stage changes; the stage is saved in checkpoints.
    CLIP's own `logit_scale` is never trained: similarities are divided by the fixed `temperature`.

    Args:
        clip: hub name or local directory of a Hugging Face CLIP checkpoint.
        tokenizer: hub name or directory of the tokenizer used by `encode_texts`; None: `clip`.
        num_classes: training identities, for the identity head; needed when a stage uses "id".
        image_size: (height, width) of the input images.
        text_length: tokens per caption for `encode_texts` (the data module's, when linked by the CLI).
        text_prompt_length: prompt tokens per layer of the text tower (0: no text prompts).
        vision_prompt_length: prompt tokens per layer of the vision tower (0: no vision prompts).
        text_prompt_depth: prompted layers of the text tower, from the first (None: every layer).
        vision_prompt_depth: prompted layers of the vision tower, from the first (None: every layer).
        stage1_losses: losses of stage 1, from "sdm", "itc" and "id".
        stage2_losses: losses of stage 2, from "sdm", "itc" and "id".
        temperature: softmax temperature of the contrastive losses (0.02: logit scale 50).
        contrastive_scope: ``"global"``: under DDP, SDM and ITC compare each pair with the whole
            global batch (features gathered from every process, gradients flowing back to their
            owners), so the loss and its gradient are those of one process on the global batch,
            whatever the number of processes; ``"local"``: with the process's own batch only. The
            same in a single process.
        id_loss_weight: weight of the identity loss.
        prompt_lr: learning rate of the prompts (stage 1).
        encoder_lr: learning rate of CLIP's weights (stage 2).
        head_lr: learning rate of the identity head (5x `encoder_lr` in IRRA's recipe).
        bias_lr_factor: biases and norm parameters take `encoder_lr * bias_lr_factor`, no decay.
        weight_decay: decay of the weight matrices (coupled L2 for Adam, decoupled for AdamW).
        optimizer: "adam" (IRRA's recipe) or "adamw".
        adam_eps: Adam's epsilon (IRRA: 1e-3).
        adam_betas: Adam's betas.
        stage1_warmup_epochs: linear warm-up of stage 1's learning rate, in epochs.
        stage2_warmup_epochs: linear warm-up of stage 2's learning rate, in epochs.
        warmup_start_factor: learning-rate factor at the first warm-up step.
        min_lr_factor: factor the cosine decay ends at, at the end of each stage.
        gradient_checkpointing: recompute CLIP's activations in backward to save memory.
        attn_implementation: "sdpa" (default) or "eager"; other HF backends if installed.
        eval_chunk_size: queries per chunk when computing retrieval metrics.
    """

    def __init__(
        self,
        clip: str = "openai/clip-vit-base-patch16",
        tokenizer: str | None = None,
        num_classes: int | None = None,
        image_size: tuple[int, int] = (384, 128),
        text_length: int = 77,
        text_prompt_length: int = 4,
        vision_prompt_length: int = 4,
        text_prompt_depth: int | None = None,
        vision_prompt_depth: int | None = None,
        stage1_losses: Sequence[str] = ("sdm",),
        stage2_losses: Sequence[str] = ("sdm", "id"),
        temperature: float = 0.02,
        contrastive_scope: Literal["global", "local"] = "global",
        id_loss_weight: float = 1.0,
        prompt_lr: float = 2e-3,
        encoder_lr: float = 1e-5,
        head_lr: float = 5e-5,
        bias_lr_factor: float = 2.0,
        weight_decay: float = 4e-5,
        optimizer: Literal["adam", "adamw"] = "adam",
        adam_eps: float = 1e-3,
        adam_betas: tuple[float, float] = (0.9, 0.999),
        stage1_warmup_epochs: float = 1.0,
        stage2_warmup_epochs: float = 5.0,
        warmup_start_factor: float = 0.1,
        min_lr_factor: float = 0.0,
        gradient_checkpointing: bool = False,
        attn_implementation: str | None = None,
        eval_chunk_size: int = 1024,
    ) -> None:
        super().__init__()
        self.stage1_losses = validate_loss_names(stage1_losses, "stage1_losses")
        self.stage2_losses = validate_loss_names(stage2_losses, "stage2_losses")
        uses_id = "id" in self.stage1_losses + self.stage2_losses
        if uses_id and (num_classes is None or num_classes < 1):
            raise ValueError(
                f"the 'id' loss needs num_classes (the number of training identities), got {num_classes}; "
                "set model.num_classes, link it from the data module, or drop 'id' from the losses "
                f"(valid losses: {', '.join(LOSS_NAMES)})"
            )
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if contrastive_scope not in ("global", "local"):
            raise ValueError(f"contrastive_scope must be 'global' or 'local', got {contrastive_scope!r}")
        for name, value in (("prompt_lr", prompt_lr), ("encoder_lr", encoder_lr), ("head_lr", head_lr)):
            if value < 0:
                raise ValueError(f"{name} must be >= 0, got {value}")
        if optimizer not in ("adam", "adamw"):
            raise ValueError(f"optimizer must be 'adam' or 'adamw', got {optimizer!r}")
        # Paths as str (checkpoint-safe), and the tokenizer resolved, so that the hparams agree with a
        # data module given the same one (Lightning refuses to log the two when a shared key differs).
        # save_hyperparameters reads these locals; the CLI resolves the tokenizer in its config.
        clip = str(clip)
        tokenizer = str(tokenizer) if tokenizer is not None else clip
        self.save_hyperparameters()

        self.clip = PromptedCLIP(
            clip,
            text_prompt_length=text_prompt_length,
            vision_prompt_length=vision_prompt_length,
            text_prompt_depth=text_prompt_depth,
            vision_prompt_depth=vision_prompt_depth,
            image_size=tuple(image_size),
            attn_implementation=attn_implementation,
        )
        if gradient_checkpointing:
            self.clip.set_gradient_checkpointing(True)
        self.classifier: nn.Linear | None = None
        if uses_id:
            self.classifier = nn.Linear(self.clip.embed_dim, num_classes)
            nn.init.normal_(self.classifier.weight, std=0.001)
            nn.init.zeros_(self.classifier.bias)
        self.val_metrics = RetrievalMetrics(chunk_size=eval_chunk_size)
        self.test_metrics = RetrievalMetrics(chunk_size=eval_chunk_size)
        self.last_evaluation: dict[str, EvaluationSummary] = {}
        """The latest evaluation per loop ("val", "test"): metrics, what was scored, chance."""
        self.evaluation_history: list[dict] = []
        """Every validation this process ran (not the sanity check), in order: ``epoch`` (the trainer's
        current epoch: during `fit`, the epoch just trained), ``stage``, ``prompts`` (False inside
        `PromptedCLIP.without_prompts`), ``fitting`` (run by `fit`) and the `EvaluationSummary` as
        ``summary``. Not saved in checkpoints."""
        self._tokenizer = None
        self._stage = 1
        self._restored_schedule: dict | None = None
        self.set_stage(1)

    # ---------------------------------------------------------------------------------- forward
    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """L2-normalised features of whichever inputs are given: {"image": ..., "text": ...}.

        `pixel_values` are uint8 images as the data loaders yield them (normalised here, on the
        model's device) or already CLIP-normalised floats.
        """
        features = {}
        if pixel_values is not None:
            image = self.clip.encode_image(normalize_pixels(pixel_values))
            features["image"] = nn.functional.normalize(image, dim=-1)
        if input_ids is not None:
            features["text"] = nn.functional.normalize(
                self.clip.encode_text(input_ids, attention_mask), dim=-1
            )
        return features

    # --------------------------------------------------------------------------------- training
    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        image_features = self.clip.encode_image(normalize_pixels(batch["pixel_values"]))
        text_features = self.clip.encode_text(batch["input_ids"], batch["attention_mask"])
        labels = batch["labels"]  # identities as training labels 0..C-1
        image, text, batch_labels, rows = self._contrastive_batch(image_features, text_features, labels)
        temperature = self.hparams.temperature
        terms = {}
        for name in self._losses(self.stage):
            if name == "sdm":
                terms[name] = sdm_loss(image, text, batch_labels, temperature, rows=rows)
            elif name == "itc":
                terms[name] = itc_loss(image, text, temperature, rows=rows)
            else:
                logits = self.classifier(image_features), self.classifier(text_features)
                terms[name] = self.hparams.id_loss_weight * id_loss(*logits, labels)
        loss = torch.stack(list(terms.values())).sum()
        self._log_training(loss, terms, labels.shape[0])
        return loss

    def _contrastive_batch(
        self, image_features: torch.Tensor, text_features: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, slice | None]:
        """(images, texts, labels, own rows) for SDM / ITC: the global batch under DDP with global scope.

        `all_gather(..., sync_grads=True)` stacks the processes' batches in rank order (the samplers
        give process r the r-th slice of every global batch, so this is the global batch in the order
        one process would have it) and sends the gradients of every process's loss back to the
        features' owner. Each process averages over its own rows; DDP's averaging of gradients over
        processes then gives the gradient of the global batch's loss, with no extra scaling.
        """
        world_size = self._world_size()
        if self.hparams.contrastive_scope == "local" or world_size == 1:
            return image_features, text_features, labels, None
        size = labels.shape[0]
        gathered = [
            self.all_gather(tensor, sync_grads=True).flatten(0, 1)
            for tensor in (image_features, text_features)
        ]
        all_labels = self.all_gather(labels).flatten(0, 1)
        rank = self.global_rank
        return gathered[0], gathered[1], all_labels, slice(rank * size, (rank + 1) * size)

    def _log_training(self, loss: torch.Tensor, terms: dict[str, torch.Tensor], batch_size: int) -> None:
        """Log the loss and its terms averaged over processes: the global batch's (one all-reduce)."""
        values = torch.stack([loss, *terms.values()]).detach()
        if self._world_size() > 1:
            values = self.trainer.strategy.reduce(values, reduce_op="mean")
        self.log("train/loss", values[0], prog_bar=True, batch_size=batch_size)
        for name, value in zip(terms, values[1:], strict=True):
            self.log(f"train/loss_{name}", value, batch_size=batch_size)
        self.log("train/stage", float(self.stage), batch_size=batch_size)

    def _world_size(self) -> int:
        try:
            return self.trainer.world_size
        except RuntimeError:  # not attached to a Trainer
            return 1

    def on_train_start(self) -> None:
        if self._restored_schedule is not None:  # resumed: the train loader and its state are set up now
            self._check_restored_schedule()

    # ------------------------------------------------------------------------------- evaluation
    def validation_step(
        self, batch: dict[str, torch.Tensor], batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        self._evaluation_step(self.val_metrics, batch)

    def on_validation_epoch_end(self) -> None:
        self._log_metrics(self.val_metrics, "val")

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        self._evaluation_step(self.test_metrics, batch)

    def on_test_epoch_end(self) -> None:
        self._log_metrics(self.test_metrics, "test")

    def predict_step(self, batch: dict[str, torch.Tensor], batch_idx: int, dataloader_idx: int = 0) -> dict:
        """Normalised features with their pids and set indices, for query or gallery batches."""
        features = self._features(batch)
        return {"features": features, "pids": batch["pids"], "index": batch["index"]}

    def _features(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        if "pixel_values" in batch:
            return self(pixel_values=batch["pixel_values"])["image"]
        return self(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask"))["text"]

    def _evaluation_step(self, metrics: RetrievalMetrics, batch: dict[str, torch.Tensor]) -> None:
        role = "gallery" if "pixel_values" in batch else "query"
        metrics.update(self._features(batch).float(), batch["pids"], batch["index"], role=role)

    def _log_metrics(self, metrics: RetrievalMetrics, prefix: str) -> None:
        """Log the metrics with what they were computed on: `<prefix>/queries`, `/gallery`, `/partial`."""
        if self.trainer.sanity_checking:
            metrics.reset()
            return
        values = metrics.compute()
        scored = metrics.scored
        metrics.reset()
        loaders = self.trainer.val_dataloaders if prefix == "val" else self.trainer.test_dataloaders
        totals = (None, None)
        if (
            isinstance(loaders, (list, tuple)) and len(loaders) == 2
        ):  # [queries, gallery], as TIReIDDataModule
            totals = tuple(len(loader.dataset) for loader in loaders)
        ranked = scored.num_scored_queries
        summary = EvaluationSummary(
            split=prefix,
            metrics={name: float(value) for name, value in values.items()},
            chance=scored.chance(),
            num_queries=ranked,
            num_gallery=scored.num_gallery,
            num_unmatched_queries=scored.num_queries - ranked,
            total_queries=totals[0],
            total_gallery=totals[1],
        )
        self.last_evaluation[prefix] = summary
        if prefix == "val":
            self.evaluation_history.append(
                {
                    "epoch": self.current_epoch,
                    "stage": self.stage,
                    "prompts": self.clip.prompts_on,
                    "fitting": self.trainer.state.fn == TrainerFn.FITTING,
                    "summary": summary,
                }
            )
        logged = {f"{prefix}/{name}": value for name, value in summary.metrics.items()}
        logged[f"{prefix}/queries"] = float(summary.num_queries)
        logged[f"{prefix}/gallery"] = float(summary.num_gallery)
        if summary.partial is not None:
            logged[f"{prefix}/partial"] = float(summary.partial)
        # Every rank computed the same values from the gathered state; the all-reduce only agrees on them.
        self.log_dict(logged, sync_dist=True)

    # ------------------------------------------------------------------------------- optimizers
    def configure_optimizers(self) -> dict:
        """One optimizer over the current stage's trainable parameters, warm-up + cosine per step."""
        hp = self.hparams
        groups = self.parameter_groups()
        if not groups:
            raise ValueError(
                f"stage {self.stage} has nothing to train: both prompt lengths are 0 and stage1_losses has "
                "no 'id'; train stage 2 only (StageSwitch(switch_epoch=0)) or give the prompts a length"
            )
        # One fused kernel per step on CUDA (PyTorch's fused Adam); the default multi-tensor path elsewhere.
        fused = all(p.is_cuda for group in groups for p in group["params"]) or None
        optimizer_class = torch.optim.Adam if hp.optimizer == "adam" else torch.optim.AdamW
        optimizer = optimizer_class(groups, eps=hp.adam_eps, betas=tuple(hp.adam_betas), fused=fused)
        if self._restored_schedule is not None:
            # Resuming: the checkpoint's schedule, checked against this run's plan in `on_train_start`.
            # Planning it here would need `trainer.estimated_stepping_batches`, which sets up the train
            # loader before Lightning restores the loops, and the fit loop then never loads the saved
            # loader state: a mid-epoch resume would restart its epoch (Lightning 2.6).
            warmup, total = self._restored_schedule["warmup_steps"], self._restored_schedule["total_steps"]
        else:
            warmup, total = self._schedule_steps()
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, WarmupCosine(warmup, total, hp.warmup_start_factor, hp.min_lr_factor)
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    def _check_restored_schedule(self) -> None:
        """Refuse to resume when this run plans the stage's schedule differently from the checkpoint's run.

        The optimizer and scheduler states restored from a checkpoint carry its schedule; a run with
        another length (max_epochs, batch size, processes, ...) would silently follow the old one.
        """
        saved, self._restored_schedule = self._restored_schedule, None
        planned = (saved.get("warmup_steps"), saved.get("total_steps"))
        warmup, total = self._schedule_steps()
        if planned != (warmup, total):
            raise CheckpointMismatchError(
                f"the checkpoint's learning-rate schedule for stage {self.stage} spans {planned[1]:,} optimizer "
                f"steps ({planned[0]:,} of warm-up); this run plans {total:,} ({warmup:,}). trainer.max_epochs, "
                "trainer.max_steps, the global batch size, the training set, limit_train_batches or "
                "accumulate_grad_batches differ from the run that wrote it. Resume with the same values, or "
                "start a new run without ckpt_path."
            )

    def parameter_groups(self) -> list[dict]:
        """The current stage's optimizer groups (`name`, `params`, `lr`, `weight_decay`), as IRRA sets them."""
        hp = self.hparams
        trainable = {id(p) for p in self.trainable_parameters(self.stage)}
        head = {id(p) for p in self.classifier.parameters()} if self.classifier is not None else set()
        prompts = {id(p) for p in self.clip.prompt_parameters()}
        groups: dict[str, dict] = {
            "prompts": {"params": [], "lr": hp.prompt_lr, "weight_decay": 0.0},
            "head": {"params": [], "lr": hp.head_lr, "weight_decay": hp.weight_decay},
            "weights": {"params": [], "lr": hp.encoder_lr, "weight_decay": hp.weight_decay},
            "biases": {"params": [], "lr": hp.encoder_lr * hp.bias_lr_factor, "weight_decay": 0.0},
        }
        for parameter in self.parameters():
            key = id(parameter)
            if key not in trainable:
                continue
            if key in prompts:
                name = "prompts"
            elif key in head:
                name = "head"
            else:
                name = "weights" if parameter.ndim >= 2 else "biases"
            groups[name]["params"].append(parameter)
        return [dict(group, name=name) for name, group in groups.items() if group["params"]]

    def _schedule_steps(self) -> tuple[int, int]:
        """Warm-up and total optimizer steps of the current stage in this fit."""
        trainer = self.trainer
        total_steps = trainer.estimated_stepping_batches
        warmup_epochs = (
            self.hparams.stage1_warmup_epochs if self.stage == 1 else self.hparams.stage2_warmup_epochs
        )
        if trainer.max_epochs in (None, -1):  # bounded by max_steps: one schedule for the whole fit
            steps_per_epoch = trainer.num_training_batches / max(1, trainer.accumulate_grad_batches)
            return min(total_steps, round(warmup_epochs * steps_per_epoch)), max(1, total_steps)
        steps_per_epoch = total_steps / trainer.max_epochs
        start, end = 0, trainer.max_epochs
        switch = next((c for c in trainer.callbacks if isinstance(c, StageSwitch)), None)
        if switch is not None:
            boundary = min(switch.switch_epoch, trainer.max_epochs)
            start, end = (0, boundary) if self.stage == 1 else (boundary, end)
        stage_steps = max(1, round((end - start) * steps_per_epoch))
        return min(stage_steps, round(warmup_epochs * steps_per_epoch)), stage_steps

    # ------------------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["promptdecouple"] = {"stage": self.stage}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Check the checkpoint's settings against this module's, then restore its stage.

        Settings that define the model (prompt shapes, image size, ...) must match, and so must the
        training settings when resuming `fit` (see `promptdecouple.checkpoint_settings`); paths and
        runtime settings may differ.
        """
        fitting = self._fitting()
        found = differences(checkpoint.get("hyper_parameters", {}), self.hparams, MODEL_SETTINGS, "model")
        if bad := refused(found, fitting):
            raise CheckpointSettingsError(
                str(self.trainer.ckpt_path if fitting else "being loaded"), bad, fitting
            )
        # Lightning calls this before it wraps the model in DDP and builds the optimizers, so both
        # are built over the restored stage's trainable set and the optimizer state fits.
        self.set_stage(checkpoint.get("promptdecouple", {}).get("stage", 1))
        schedules = checkpoint.get("lr_schedulers") or [{}]
        lambdas = schedules[0].get("lr_lambdas") or [None]
        self._restored_schedule = lambdas[0] if fitting and isinstance(lambdas[0], dict) else None

    def _fitting(self) -> bool:
        try:
            return self.trainer.state.fn == TrainerFn.FITTING
        except RuntimeError:  # not attached to a Trainer (load_from_checkpoint)
            return False

    # ------------------------------------------------------------------------- stages (public API)
    @property
    def stage(self) -> int:
        """The current training stage: 1 (prompts train) or 2 (CLIP and the head train)."""
        return self._stage

    def set_stage(self, stage: int) -> None:
        """Make exactly the parameters of `stage` trainable (see `trainable_parameters`)."""
        if stage not in STAGES:
            raise ValueError(f"stage must be 1 or 2, got {stage!r}")
        self._stage = stage
        trainable = {id(p) for p in self.trainable_parameters(stage)}
        for parameter in self.parameters():
            keep = id(parameter) in trainable
            if not keep:
                parameter.grad = None
            parameter.requires_grad_(keep)

    def trainable_parameters(self, stage: int) -> Iterator[nn.Parameter]:
        """Stage 1: the prompts (+ the head if stage 1 uses "id"). Stage 2: CLIP and the head."""
        if stage == 1:
            yield from self.clip.prompt_parameters()
        else:
            yield from self.clip.encoder_parameters()
        if self.classifier is not None and "id" in self._losses(stage):
            yield from self.classifier.parameters()

    def _losses(self, stage: int) -> tuple[str, ...]:
        return self.stage1_losses if stage == 1 else self.stage2_losses

    # ---------------------------------------------------------------------- inference (public API)
    @torch.no_grad()
    def encode_texts(self, texts: Sequence[str], batch_size: int = 256) -> torch.Tensor:
        """L2-normalised features `(N, D)` of `texts`, tokenised with the module's tokenizer."""
        texts = _as_list(texts, str, "texts")
        tokenizer = self.tokenizer
        features = []
        with evaluation_mode(self):
            for start in range(0, len(texts), batch_size):
                tokens = tokenizer(
                    texts[start : start + batch_size],
                    padding="max_length",
                    max_length=self.hparams.text_length,
                    truncation=True,
                    return_tensors="pt",
                ).to(self.device)
                features.append(
                    self(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"])["text"]
                )
        return torch.cat(features) if features else torch.empty(0, self.clip.embed_dim, device=self.device)

    @torch.no_grad()
    def encode_images(self, images: Sequence[str | Path | Image.Image], batch_size: int = 64) -> torch.Tensor:
        """L2-normalised features `(N, D)` of image files or PIL images, with the evaluation transform."""
        images = _as_list(images, (str, Path, Image.Image), "images")
        transform = ImageTransform(self.clip.image_size)
        features = []
        with evaluation_mode(self):
            for start in range(0, len(images), batch_size):
                pixels = torch.stack([transform(image) for image in images[start : start + batch_size]])
                features.append(self(pixel_values=pixels.to(self.device))["image"])
        return torch.cat(features) if features else torch.empty(0, self.clip.embed_dim, device=self.device)

    @torch.no_grad()
    def search(
        self,
        queries: Sequence[str] | torch.Tensor,
        gallery: Sequence[str | Path | Image.Image] | torch.Tensor,
        k: int = 10,
    ) -> SearchResult:
        """Rank `gallery` for each query: `indices` and cosine `scores`, both `(num_queries, k)`.

        `queries` are texts or precomputed text features; `gallery` images (paths or PIL) or
        precomputed image features (encode a large gallery once with `encode_images`).
        """
        query_features = queries if isinstance(queries, torch.Tensor) else self.encode_texts(queries)
        gallery_features = gallery if isinstance(gallery, torch.Tensor) else self.encode_images(gallery)
        if not 1 <= k <= len(gallery_features):
            raise ValueError(f"k must be between 1 and the gallery size ({len(gallery_features)}), got {k}")
        query_features = nn.functional.normalize(query_features.float(), dim=-1)
        gallery_features = nn.functional.normalize(gallery_features.float(), dim=-1).to(query_features.device)
        scores, indices = (query_features @ gallery_features.T).topk(k, dim=1)
        return SearchResult(indices=indices, scores=scores)

    @property
    def tokenizer(self):
        """The tokenizer `encode_texts` uses: `tokenizer`, or the one saved with `clip`."""
        if self._tokenizer is None:
            self._tokenizer = AutoTokenizer.from_pretrained(self.hparams.tokenizer)
        return self._tokenizer


class WarmupCosine:
    """LR factor per step: linear warm-up from `start_factor` to 1, then cosine to `min_factor`."""

    def __init__(self, warmup_steps: int, total_steps: int, start_factor: float, min_factor: float) -> None:
        self.warmup_steps, self.total_steps = warmup_steps, total_steps
        self.start_factor, self.min_factor = start_factor, min_factor

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.start_factor + (1 - self.start_factor) * step / self.warmup_steps
        progress = min(1.0, (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps))
        return self.min_factor + (1 - self.min_factor) * 0.5 * (1 + math.cos(math.pi * progress))


@contextlib.contextmanager
def evaluation_mode(module: nn.Module) -> Iterator[None]:
    """Eval mode for the duration, then back to the mode the module was in."""
    was_training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was_training)


def _as_list(items, kinds, name: str) -> list:
    if isinstance(items, (str, Path, Image.Image)):
        raise TypeError(f"{name} must be a list, got a single {type(items).__name__}; wrap it in a list")
    items = list(items)
    for index, item in enumerate(items):
        if not isinstance(item, kinds):
            raise TypeError(f"{name}[{index}] has type {type(item).__name__}, which is not supported")
    return items
