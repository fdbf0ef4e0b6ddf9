"""Step time with global contrastive negatives against local ones, 2 DDP processes, in one run.

With `contrastive_scope="global"` every process all-gathers the image and text features and the
identities of the global batch (features with gradients flowing back to their owners) and
computes SDM for its rows against all columns; with `"local"` it uses its own batch only. Both train
the same global batch per step (`data.global_batch_size`). Target: global <= 1.05x local.

    python benchmarks/contrastive_scope.py                  # 2 CPU processes (gloo), global batch 32
    python benchmarks/contrastive_scope.py --accelerator gpu --devices 2 --global-batch-size 128

The script is its own DDP launcher target (Lightning re-runs it for rank 1): every process runs the
same fits in the same order. Fits alternate local, global, local, global, ... so that the drift of a
shared machine hits both alike. A step is timed from `on_train_batch_start` to `on_train_batch_end`
(forward, the gathers, backward with DDP's all-reduce, the optimizer), on rank 0, skipping the
first steps of each fit; medians over all timed steps of a scope are reported, with their ratio.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import lightning as L  # noqa: E402
import torch  # noqa: E402
from lightning.pytorch.callbacks import Callback  # noqa: E402

from promptdecouple import PromptDecoupleModule, StageSwitch, TIReIDDataModule  # noqa: E402
from promptdecouple.data import write_synthetic  # noqa: E402
from promptdecouple.model.random_clip import write_random_clip  # noqa: E402

TARGET = 1.05
SKIPPED_STEPS = 3


class StepTimer(Callback):
    def __init__(self) -> None:
        self.times: list[float] = []
        self._start = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if batch_idx >= SKIPPED_STEPS:
            self.times.append(time.perf_counter() - self._start)


def assets(folder: Path) -> tuple[Path, Path]:
    clip, data = folder / "clip", folder / "data"
    if not (clip / "config.json").is_file():
        write_random_clip(clip, hidden_size=128, num_layers=4, num_heads=4, image_size=64)
    if not (data / "data_captions.json").is_file():
        write_synthetic(data, "rstpreid", num_identities=120, images_per_identity=4, image_size=(128, 64))
    return clip, data


def fit(scope: str, clip: Path, data: Path, args: argparse.Namespace) -> list[float]:
    L.seed_everything(0, verbose=False)
    datamodule = TIReIDDataModule(
        "rstpreid",
        data,
        str(clip),
        image_size=(128, 64),
        global_batch_size=args.global_batch_size,
        num_workers=0,
        check_images=False,
    )
    model = PromptDecoupleModule(
        str(clip),
        num_classes=datamodule.num_classes,
        image_size=(128, 64),
        contrastive_scope=scope,
        stage2_losses=["sdm", "id"],
        encoder_lr=1e-4,
    )
    timer = StepTimer()
    trainer = L.Trainer(
        accelerator=args.accelerator,
        devices=args.devices,
        strategy="ddp",
        max_epochs=1,
        limit_train_batches=args.steps + SKIPPED_STEPS,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[StageSwitch(0), timer],  # stage 2: the whole model trains
    )
    trainer.fit(model, datamodule=datamodule)
    return timer.times if trainer.is_global_zero else []


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--accelerator", default="cpu")
    parser.add_argument("--devices", type=int, default=2)
    parser.add_argument("--global-batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=12, help="timed steps per fit")
    parser.add_argument("--rounds", type=int, default=3, help="fits per scope, alternating")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process on CPU")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    if args.accelerator == "cpu":
        torch.set_num_threads(args.threads)
    # The first process makes the assets; the processes Lightning starts find them through the environment.
    folder = Path(os.environ.setdefault("PROMPTDECOUPLE_BENCH_DIR", tempfile.mkdtemp(prefix="scope-bench-")))
    clip, data = assets(folder)

    times: dict[str, list[float]] = {"local": [], "global": []}
    for _ in range(args.rounds):
        for scope in ("local", "global"):
            times[scope] += fit(scope, clip, data, args)
    if not times["local"]:  # not rank 0
        return
    local, global_ = (statistics.median(times[s]) for s in ("local", "global"))
    print(
        f"\n{args.devices} processes ({args.accelerator}), global batch {args.global_batch_size} "
        f"({args.global_batch_size // args.devices} per process), random CLIP width 128 x 4 layers, 128x64, "
        f"77 tokens; {len(times['local'])} timed steps per scope; {platform.processor() or platform.machine()}, "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    print(f"{'scope':>8} {'median step':>12} {'min':>8} {'max':>8}")
    for scope in ("local", "global"):
        values = times[scope]
        print(
            f"{scope:>8} {statistics.median(values) * 1e3:10.1f} ms {min(values) * 1e3:6.1f} {max(values) * 1e3:6.1f}"
        )
    ratio = global_ / local
    print(f"global / local = {ratio:.3f} (target <= {TARGET}): {'met' if ratio <= TARGET else 'NOT met'}")


if __name__ == "__main__":
    main()
