"""One training or validation run for the stage tests, single-process or DDP (run as a script).

Lightning's DDP launcher re-executes this script for the other ranks, as it does for the CLI.
Every epoch end it checks, across ranks, that all parameters are bit-identical, and rank 0 saves
the parameters, the stage and the validation metrics to `--out`.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import lightning as L  # noqa: E402
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from lightning.pytorch.callbacks import Callback, ModelCheckpoint  # noqa: E402

from promptdecouple import PromptDecoupleModule, StageSwitch, TIReIDDataModule  # noqa: E402


class Recorder(Callback):
    """Saves, per epoch, the parameters (rank 0) and the largest difference between ranks."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.losses: dict[int, float] = {}
        self.batches: dict[int, list[int]] = {}

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: PromptDecoupleModule, *args) -> None:
        """The logged (global-batch) loss of every optimizer step, by step."""
        self.losses[trainer.global_step] = float(trainer.callback_metrics["train/loss"])
        self.batches[trainer.global_step] = args[1]["index"].tolist()
        if trainer.global_rank == 0:
            (self.out / "losses.json").write_text(json.dumps(self.losses))
            (self.out / "batches.json").write_text(json.dumps(self.batches))

    def on_train_start(self, trainer: L.Trainer, pl_module: PromptDecoupleModule) -> None:
        if trainer.global_rank == 0 and trainer.current_epoch == 0:
            params = {n: p.detach().clone() for n, p in pl_module.named_parameters()}
            torch.save(params, self.out / "init.pt")

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: PromptDecoupleModule) -> None:
        flat = torch.cat([p.detach().flatten() for p in pl_module.parameters()])
        rank_gap = 0.0
        if dist.is_available() and dist.is_initialized():
            gathered = [torch.empty_like(flat) for _ in range(dist.get_world_size())]
            dist.all_gather(gathered, flat)
            rank_gap = max(float((g - gathered[0]).abs().max()) for g in gathered)
        if trainer.global_rank == 0:
            record = {
                "epoch": trainer.current_epoch,
                "stage": pl_module.stage,
                "rank_gap": rank_gap,
                "trainable": sorted(n for n, p in pl_module.named_parameters() if p.requires_grad),
                "optimizer_params": sum(len(g["params"]) for g in trainer.optimizers[0].param_groups),
                "lr": [g["lr"] for g in trainer.optimizers[0].param_groups],
                "metrics": {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")},
            }
            (self.out / f"epoch{trainer.current_epoch}.json").write_text(json.dumps(record))
            params = {n: p.detach().clone() for n, p in pl_module.named_parameters()}
            torch.save(params, self.out / f"epoch{trainer.current_epoch}.pt")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clip", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--devices", type=int, default=1)
    parser.add_argument(
        "--num-nodes", type=int, default=1, help="with NODE_RANK, MASTER_ADDR, MASTER_PORT set"
    )
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--switch", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=8, help="per process")
    parser.add_argument("--global-batch-size", type=int, help="over all processes (instead of --batch-size)")
    parser.add_argument(
        "--scope", choices=("global", "local"), default="global", help="contrastive negatives"
    )
    parser.add_argument("--sampler", choices=("random", "identity"), default="random")
    parser.add_argument("--augment", action="store_true", help="training augmentation on")
    parser.add_argument("--workers", type=int, default=0, help="training loader workers")
    parser.add_argument("--adam-eps", type=float, default=1e-8)
    parser.add_argument("--precision", default="32-true", help="Trainer precision, e.g. bf16-mixed")
    parser.add_argument("--every-n-steps", type=int, help="also checkpoint every n optimizer steps")
    parser.add_argument("--resume")
    parser.add_argument("--validate")
    parser.add_argument("--eval-batch-size", type=int, default=7)
    parser.add_argument("--limit-val-batches", type=int, default=None, help="batches per evaluation loader")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    L.seed_everything(0, verbose=False)
    data = TIReIDDataModule(
        "rstpreid",
        args.data,
        tokenizer=args.clip,
        image_size=(64, 32),
        text_length=32,
        batch_size=args.batch_size,
        global_batch_size=args.global_batch_size,
        eval_batch_size=args.eval_batch_size,
        num_workers=args.workers,
        augment=args.augment,
        sampler=args.sampler,
        instances_per_identity=2,
    )
    module = PromptDecoupleModule(
        args.clip,
        num_classes=data.num_classes,
        image_size=(64, 32),
        text_prompt_length=2,
        vision_prompt_length=2,
        prompt_lr=1e-2,
        encoder_lr=1e-3,
        head_lr=1e-2,
        stage1_warmup_epochs=0,
        stage2_warmup_epochs=0,
        adam_eps=args.adam_eps,
        contrastive_scope=args.scope,
    )
    step_checkpoints = []
    if args.every_n_steps:
        step_checkpoints.append(
            ModelCheckpoint(
                dirpath=args.out / "ckpt",
                filename="{step}",
                every_n_train_steps=args.every_n_steps,
                save_top_k=-1,
            )
        )
    trainer = L.Trainer(
        accelerator="cpu",
        devices=args.devices,
        num_nodes=args.num_nodes,
        precision=args.precision,
        strategy="ddp" if args.devices * args.num_nodes > 1 else "auto",
        max_epochs=args.epochs,
        callbacks=[
            StageSwitch(args.switch),
            Recorder(args.out),
            ModelCheckpoint(dirpath=args.out / "ckpt", filename="{epoch}", save_top_k=-1),
            *step_checkpoints,
        ],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        deterministic=True,
        limit_val_batches=1.0 if args.limit_val_batches is None else args.limit_val_batches,
    )
    if args.validate:
        # one dict per evaluation loader (queries, gallery); the epoch-level metrics are in each
        metrics = trainer.validate(module, datamodule=data, ckpt_path=args.validate, verbose=False)[0]
        if trainer.global_rank == 0:
            summary = module.last_evaluation["val"]
            metrics["summary"] = {
                "num_queries": summary.num_queries,
                "num_gallery": summary.num_gallery,
                "total_queries": summary.total_queries,
                "total_gallery": summary.total_gallery,
                "unmatched": summary.num_unmatched_queries,
                "partial": summary.partial,
                "chance": summary.chance,
            }
            (args.out / "validate.json").write_text(json.dumps(metrics))
        return
    trainer.fit(module, datamodule=data, ckpt_path=args.resume)


if __name__ == "__main__":
    main()
