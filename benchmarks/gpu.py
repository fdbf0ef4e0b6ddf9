"""The GPU path in one prepared run: training throughput and memory, attention backends, compile,
gallery encoding, retrieval metrics at ICFG scale, the loader, and the MFU they imply.

    python benchmarks/gpu.py --out gpu.json          # one CUDA GPU, about 5 minutes
    python benchmarks/gpu.py --smoke --out smoke.json   # the same code paths on CPU, tiny model, < 1 minute

Real mode: a random ViT-B/16-shaped CLIP (`write_vit_b16_clip`, no hub), 384x128 images, 77
tokens, `bf16` autocast as `precision="bf16-mixed"` runs it (weights float32), Adam over the stage's
parameter groups (fused on CUDA, as `configure_optimizers` builds it). Sections, each recorded
in the JSON (an error is recorded as such and the run goes on):

- `train`: pairs/s and peak memory of a training step (forward, losses, backward, optimizer) for
  stage 1, stage 2, and forward + backward (with SDM, no optimizer) of Hugging Face's `CLIPModel`
  at the same shapes (`interpolate_pos_encoding=True`, as HF needs for 384x128), of `PromptedCLIP`
  with 4-token prompts in every layer, and of `PromptedCLIP` without prompts (the position table
  resized once: the floor of prompt injection), at batch 64 and at the largest batch that fits.
- `sdpa`: the stage-2 step under each of PyTorch's SDPA backends (flash, efficient, math).
- `compile`: the stage-2 step with `torch.compile` of the model, its compile time and the graph
  breaks `torch._dynamo.explain` finds in one forward (smoke: the `eager` backend, which traces
  but does not generate code).
- `gallery`: images/s of `encode_images`-style evaluation (no grad, bf16).
- `metrics`: `retrieval_metrics` at ICFG-PEDES test size (19,848 x 19,848, 512-d) against a warm,
  preallocated similarity matmul on the device (`torch.mm(q, g.T, out=buffer)`).
- `loader`: images/s of the training loader (decode, resize, augment, uint8 batch) with the
  shipped `num_workers` (8), on a synthetic 384x128 dataset, feeding nothing.
- MFU: stage-2 pairs/s x 3 x 41 GFLOP (forward ~41 GFLOP per pair at these shapes) against
  `--peak-tflops` (H100 SXM bf16 dense: 989).

Targets (issue 11): stage 2 >= 3,000 pairs/s at batch 64 on one H100; stage 1 <= 0.7x stage 2's
step time; prompted model within 5% of the bare HF forward + backward; `retrieval_metrics` <= 2x the
matmul.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).parent))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import transformers  # noqa: E402
from stage_cost import make_batches, to_device  # noqa: E402
from torch.nn.attention import SDPBackend, sdpa_kernel  # noqa: E402
from transformers import CLIPModel  # noqa: E402

from promptdecouple.data import write_synthetic  # noqa: E402
from promptdecouple.data.datamodule import TIReIDDataModule  # noqa: E402
from promptdecouple.metrics import retrieval_metrics  # noqa: E402
from promptdecouple.model.prompted_clip import PromptedCLIP  # noqa: E402
from promptdecouple.model.random_clip import write_random_clip, write_vit_b16_clip  # noqa: E402
from promptdecouple.module import PromptDecoupleModule  # noqa: E402
from promptdecouple.objectives import sdm_loss  # noqa: E402

FORWARD_GFLOP_PER_PAIR = 41.0
NUM_CLASSES = 11_003


class Setting:
    """Shapes and sizes of one mode."""

    def __init__(self, smoke: bool) -> None:
        self.smoke = smoke
        self.device = torch.device("cpu" if smoke else "cuda")
        self.image_size = (64, 32) if smoke else (384, 128)
        self.batch = 8 if smoke else 64
        self.largest_tried = 16 if smoke else 1024
        self.steps = 3 if smoke else 20
        self.warmup = 1 if smoke else 5
        self.gallery = 64 if smoke else 4096
        self.icfg = 512 if smoke else 19_848
        self.loader_images = 64 if smoke else 2048
        self.loader_workers = 0 if smoke else 8
        self.compile_backend = "eager" if smoke else "inductor"

    def autocast(self) -> contextlib.AbstractContextManager:
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()


def timed_steps(step: Callable[[int], None], setting: Setting) -> float:
    """Median seconds of `setting.steps` calls of `step(i)`, after `setting.warmup` untimed ones."""
    for index in range(setting.warmup):
        step(index)
    times = []
    for index in range(setting.steps):
        setting.sync()
        started = time.perf_counter()
        step(index)
        setting.sync()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def peak_bytes(setting: Setting) -> int | None:
    if setting.device.type != "cuda":
        return None
    return torch.cuda.max_memory_allocated()


def reset_memory(setting: Setting) -> None:
    gc.collect()
    if setting.device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def stage_module(clip_dir: Path, stage: int, setting: Setting, prompts: int = 4):
    torch.manual_seed(0)
    module = PromptDecoupleModule(
        str(clip_dir),
        num_classes=NUM_CLASSES,
        image_size=setting.image_size,
        text_prompt_length=prompts,
        vision_prompt_length=prompts,
    ).to(setting.device)
    module.set_stage(stage)
    module.train()
    hp = module.hparams
    fused = setting.device.type == "cuda"
    optimizer = torch.optim.Adam(module.parameter_groups(), eps=hp.adam_eps, fused=fused)
    return module, optimizer


def module_step(module, optimizer, batches, setting: Setting) -> Callable[[int], None]:
    def step(index: int) -> None:
        with setting.autocast():
            loss = module.training_step(batches[index % len(batches)], index)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def floor_step(model, batches, setting: Setting, hf: bool) -> Callable[[int], None]:
    """Forward + backward of both towers and SDM, no optimizer: what any training step must do at least."""

    def step(index: int) -> None:
        batch = batches[index % len(batches)]
        with setting.autocast():
            if hf:
                image = model.get_image_features(
                    pixel_values=batch["pixel_values"], interpolate_pos_encoding=True
                ).pooler_output
                text = model.get_text_features(
                    input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
                ).pooler_output
            else:
                image = model.encode_image(batch["pixel_values"])
                text = model.encode_text(batch["input_ids"], batch["attention_mask"])
        sdm_loss(image, text, batch["labels"]).backward()
        model.zero_grad(set_to_none=True)

    return step


def device_batches(clip_dir: Path, count: int, batch: int, setting: Setting) -> list[dict[str, torch.Tensor]]:
    """`count` training batches of `batch` pairs, as the loaders give them, on the device."""
    made = make_batches(clip_dir, count, batch, setting.image_size, NUM_CLASSES)
    return [to_device(b, setting.device) for b in made]


def measure_training(clip_dir: Path, setting: Setting, batch: int) -> dict:
    batches = device_batches(clip_dir, 2, batch, setting)
    result = {}
    for name in ("stage1", "stage2", "hf_clip", "prompted", "prompted_no_prompts"):
        reset_memory(setting)
        if name.startswith("stage"):
            module, optimizer = stage_module(clip_dir, int(name[-1]), setting)
            step = module_step(module, optimizer, batches, setting)
        elif name == "hf_clip":
            module = CLIPModel.from_pretrained(clip_dir).to(setting.device).train()
            step = floor_step(module, batches, setting, hf=True)
        else:
            prompts = 0 if name.endswith("no_prompts") else 4
            module = PromptedCLIP(str(clip_dir), prompts, prompts, image_size=setting.image_size)
            module = module.to(setting.device).train()
            step = floor_step(module, batches, setting, hf=False)
        seconds = timed_steps(step, setting)
        result[name] = {
            "seconds_per_step": seconds,
            "pairs_per_s": batch / seconds,
            "peak_bytes": peak_bytes(setting),
        }
        del module, step
    result["stage1_over_stage2"] = result["stage1"]["seconds_per_step"] / result["stage2"]["seconds_per_step"]
    hf = result["hf_clip"]["seconds_per_step"]
    result["prompted_over_hf"] = result["prompted"]["seconds_per_step"] / hf
    result["no_prompts_over_hf"] = result["prompted_no_prompts"]["seconds_per_step"] / hf
    result["stage2_over_hf"] = result["stage2"]["seconds_per_step"] / hf
    return result


def largest_batch(clip_dir: Path, setting: Setting) -> int:
    """The largest batch (doubling from the standard one) whose stage-2 step runs."""
    batch, fits = setting.batch, setting.batch
    while batch * 2 <= setting.largest_tried:
        batch *= 2
        reset_memory(setting)
        try:
            batches = device_batches(clip_dir, 1, batch, setting)
            module, optimizer = stage_module(clip_dir, 2, setting)
            module_step(module, optimizer, batches, setting)(0)
            setting.sync()
            fits = batch
        except torch.OutOfMemoryError:
            break
        finally:
            module = optimizer = batches = None
    reset_memory(setting)
    return fits


def measure_sdpa(clip_dir: Path, setting: Setting) -> dict:
    batches = device_batches(clip_dir, 2, setting.batch, setting)
    module, optimizer = stage_module(clip_dir, 2, setting)
    result = {}
    for backend in (SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH):
        try:
            with sdpa_kernel(backend):
                seconds = timed_steps(module_step(module, optimizer, batches, setting), setting)
            result[backend.name.lower()] = {
                "seconds_per_step": seconds,
                "pairs_per_s": setting.batch / seconds,
            }
        except Exception as error:  # a backend the device or the inputs (a padding mask) do not allow
            result[backend.name.lower()] = {
                "error": f"{type(error).__name__}: {str(error).splitlines()[0][:300]}"
            }
    return result


def measure_compile(clip_dir: Path, setting: Setting) -> dict:
    batches = device_batches(clip_dir, 2, setting.batch, setting)
    module, optimizer = stage_module(clip_dir, 2, setting)
    batch = batches[0]
    explanation = torch._dynamo.explain(module.clip.encode_text)(batch["input_ids"], batch["attention_mask"])
    image_explanation = torch._dynamo.explain(module.clip.encode_image)(batch["pixel_values"].float())
    torch._dynamo.reset()
    module.clip = torch.compile(module.clip, backend=setting.compile_backend)
    step = module_step(module, optimizer, batches, setting)
    started = time.perf_counter()
    step(0)
    setting.sync()
    compile_seconds = time.perf_counter() - started
    seconds = timed_steps(step, setting)
    return {
        "backend": setting.compile_backend,
        "compile_seconds": compile_seconds,
        "seconds_per_step": seconds,
        "pairs_per_s": setting.batch / seconds,
        "graph_breaks_text": explanation.graph_break_count,
        "graph_breaks_image": image_explanation.graph_break_count,
        "break_reasons": sorted(
            {str(b.reason)[:200] for b in explanation.break_reasons + image_explanation.break_reasons}
        ),
    }


def measure_gallery(clip_dir: Path, setting: Setting) -> dict:
    module, _ = stage_module(clip_dir, 2, setting)
    module.eval()
    size = 256 if not setting.smoke else 16
    pixels = torch.randint(0, 256, (size, 3, *setting.image_size), dtype=torch.uint8, device=setting.device)

    def step(index: int) -> None:
        with torch.no_grad(), setting.autocast():
            module(pixel_values=pixels)

    seconds = timed_steps(step, setting)
    return {"batch": size, "images_per_s": size / seconds}


def measure_metrics(setting: Setting) -> dict:
    generator = torch.Generator(device="cpu").manual_seed(0)
    size = setting.icfg
    pids = torch.randint(0, size // 20, (size,), generator=generator)
    centres = torch.randn(size // 20, 512, generator=generator)
    queries = F.normalize(centres[pids] + torch.randn(size, 512, generator=generator), dim=1).to(
        setting.device
    )
    gallery = F.normalize(centres[pids] + 0.5 * torch.randn(size, 512, generator=generator), dim=1).to(
        setting.device
    )
    pids = pids.to(setting.device)
    buffer = torch.empty(size, size, device=setting.device)

    def matmul(index: int) -> None:
        torch.mm(queries, gallery.T, out=buffer)

    def metrics(index: int) -> None:
        retrieval_metrics(queries, pids, gallery, pids)

    floor = timed_steps(matmul, setting)
    seconds = timed_steps(metrics, setting)
    return {"size": size, "matmul_seconds": floor, "metrics_seconds": seconds, "ratio": seconds / floor}


def measure_loader(setting: Setting, folder: Path) -> dict:
    data_root = folder / "loader-data"
    count = setting.loader_images // 4
    write_synthetic(
        data_root,
        "rstpreid",
        num_identities=count,
        images_per_identity=4,
        image_size=setting.image_size,
        split_fractions=(0.9, 0.05, 0.05),
    )
    data = TIReIDDataModule(
        "rstpreid", data_root, str(folder / "clip"), image_size=setting.image_size, global_batch_size=64 if not setting.smoke else 8,
        num_workers=setting.loader_workers, check_images=False,
    )  # fmt: skip
    data.setup("fit")
    loader = data.train_dataloader()
    started = time.perf_counter()
    images = sum(len(batch["pixel_values"]) for batch in loader)
    seconds = time.perf_counter() - started
    return {"num_workers": setting.loader_workers, "images": images, "images_per_s": images / seconds}


def run(setting: Setting, args: argparse.Namespace) -> dict:
    report: dict = {
        "mode": "smoke" if setting.smoke else "gpu",
        "device": torch.cuda.get_device_name()
        if setting.device.type == "cuda"
        else platform.processor() or "cpu",
        "torch": torch.__version__,
        "image_size": setting.image_size,
    }
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        clip_dir = folder / "clip"
        if setting.smoke:
            write_random_clip(clip_dir, hidden_size=32, num_layers=2, num_heads=2, image_size=64)
        else:
            write_vit_b16_clip(clip_dir)
        sections: dict[str, Callable[[], dict]] = {
            "train": lambda: {
                "batch_" + str(setting.batch): measure_training(clip_dir, setting, setting.batch)
            },
            "largest_batch": lambda: {"batch": largest_batch(clip_dir, setting)},
            "sdpa": lambda: measure_sdpa(clip_dir, setting),
            "compile": lambda: measure_compile(clip_dir, setting),
            "gallery": lambda: measure_gallery(clip_dir, setting),
            "metrics": lambda: measure_metrics(setting),
            "loader": lambda: measure_loader(setting, folder),
        }
        for name, section in sections.items():
            started = time.perf_counter()
            try:
                report[name] = section()
            except Exception as error:
                report[name] = {
                    "error": f"{type(error).__name__}: {error}",
                    "traceback": traceback.format_exc()[-2000:],
                }
            report[name]["wall_seconds"] = time.perf_counter() - started
            print(f"{name}: {json.dumps(report[name], default=str)[:400]}", flush=True)
        largest = report["largest_batch"].get("batch")
        if largest and largest != setting.batch and "error" not in report["train"]:
            try:
                report["train"][f"batch_{largest}"] = measure_training(clip_dir, setting, largest)
            except Exception as error:
                report["train"][f"batch_{largest}"] = {"error": f"{type(error).__name__}: {error}"}
    standard = report["train"].get(f"batch_{setting.batch}", {})
    if "stage2" in standard and not setting.smoke:
        achieved = standard["stage2"]["pairs_per_s"] * 3 * FORWARD_GFLOP_PER_PAIR * 1e9
        report["mfu_stage2"] = achieved / (args.peak_tflops * 1e12)
    return report


def print_table(report: dict) -> None:
    print(
        f"\n{report['mode']} run on {report['device']}, torch {report['torch']}, images {report['image_size']}"
    )
    for batch, result in report["train"].items():
        if not isinstance(result, dict) or "stage2" not in result:
            continue
        print(
            f"  {batch}: "
            + ", ".join(
                f"{n} {result[n]['pairs_per_s']:.0f} pairs/s"
                for n in ("stage1", "stage2", "hf_clip", "prompted", "prompted_no_prompts")
            )
        )
        print(
            f"    stage1 / stage2 step {result['stage1_over_stage2']:.3f} (target <= 0.7); prompted fwd+bwd / HF "
            f"{result['prompted_over_hf']:.3f} (target <= 1.05); without prompts / HF {result['no_prompts_over_hf']:.3f}"
        )
    if "ratio" in report.get("metrics", {}):
        print(
            f"  retrieval_metrics at {report['metrics']['size']:,}^2: {report['metrics']['ratio']:.2f}x the warm matmul (target <= 2)"
        )
    if "mfu_stage2" in report:
        print(f"  stage 2 MFU {100 * report['mfu_stage2']:.1f}%")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--smoke", action="store_true", help="CPU, tiny model: the same code paths in under a minute"
    )
    parser.add_argument("--out", type=Path, default=Path("gpu-benchmark.json"), help="JSON report")
    parser.add_argument(
        "--peak-tflops", type=float, default=989.0, help="bf16 dense peak of the GPU (H100 SXM: 989)"
    )
    args = parser.parse_args()
    warnings.filterwarnings("ignore", message=".*self.log\\(\\)` but the `self.trainer` reference")
    transformers.utils.logging.disable_progress_bar()
    if not args.smoke and not torch.cuda.is_available():
        parser.error("no CUDA device: run with --smoke to exercise the code paths on CPU")
    report = run(Setting(args.smoke), args)
    args.out.write_text(json.dumps(report, indent=1, default=str))
    print_table(report)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
