"""Cost of a stage-1 training step (prompts only) against a stage-2 step (CLIP + head), in one run.

Stage 1 freezes CLIP, so backward computes no weight gradients for the encoders and the optimizer
keeps no state for them; only activation gradients flow back to the prompts of every layer.
Stage 2 trains CLIP and the identity head. Target: stage 1 costs at most 0.7x stage 2.

The measured step is what automatic optimisation does with the module: `training_step` (under
bf16 autocast on CUDA, as `precision="bf16-mixed"`), backward, the Adam step over the stage's
parameter groups (`parameter_groups`, as `configure_optimizers` builds them) and `zero_grad`.
Two modules with identical weights, one per stage, take turns step by step (the order flips every
round), so the drift of a shared machine hits both alike; medians are reported, with the ratio of
the medians and the spread of the per-round ratios. After the first step of each stage the script
counts the weight gradients and the optimizer state, to show what stage 1 does not keep.

    python benchmarks/stage_cost.py                # CPU: random CLIP, width 256, 6+6 layers, 192x64, batch 32
    python benchmarks/stage_cost.py --device cuda  # ViT-B/16 shape, 384x128, batch 64, bf16 autocast

On CPU one torch thread is the default: on a shared machine a multi-thread OpenMP team waits for
whichever thread another job descheduled, which made timings 2-4x slower and the ratio erratic.
On CUDA it also prints the peak memory of each stage, measured in a separate pass with only that
stage's module, optimizer and one batch on the device.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import platform
import random
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
import transformers  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402

from promptdecouple.data import tokenize_captions  # noqa: E402
from promptdecouple.model.random_clip import write_random_clip, write_vit_b16_clip  # noqa: E402
from promptdecouple.module import PromptDecoupleModule  # noqa: E402

TARGET = 0.7
TEXT_LENGTH = 77  # TIReIDDataModule's default: every caption padded to 77 tokens
CUHK_PEDES_TRAIN_IDS = 11_003  # width of the identity head in the CUHK-PEDES recipe
CPU_CLIP = dict(hidden_size=256, num_layers=6, num_heads=4, image_size=64, patch_size=16)

COLOURS = [
    "black",
    "white",
    "red",
    "blue",
    "green",
    "yellow",
    "grey",
    "dark",
    "navy",
    "brown",
    "pink",
    "purple",
    "beige",
    "khaki",
]
TOPS = ["shirt", "t-shirt", "jacket", "coat", "sweater", "hoodie", "vest", "blouse", "top"]
BOTTOMS = ["pants", "trousers", "jeans", "shorts", "skirt", "leggings"]
SHOES = ["shoes", "sneakers", "boots", "sandals"]
BAGS = ["backpack", "handbag", "bag", "purse", "umbrella", "phone"]
PEOPLE = ["man", "woman", "lady", "girl", "boy", "guy", "person", "pedestrian"]


def write_clip(directory: Path, vit_b16: bool) -> Path:
    """A random CLIP saved like a hub checkpoint: mid-sized for CPU, or ViT-B/16-shaped."""
    return write_vit_b16_clip(directory) if vit_b16 else write_random_clip(directory, **CPU_CLIP)


def random_caption(rng: random.Random) -> str:
    """A pedestrian description of typical length (about 20-30 words)."""
    c = rng.choice
    return (
        f"the {c(PEOPLE)} is wearing a {c(COLOURS)} {c(TOPS)} with long sleeves, {c(COLOURS)} {c(BOTTOMS)} "
        f"and {c(COLOURS)} {c(SHOES)}. the {c(PEOPLE)} has {c(COLOURS)} hair and is carrying a "
        f"{c(COLOURS)} {c(BAGS)} on the left shoulder"
    )


def make_batches(
    clip_dir: Path, count: int, batch_size: int, image_size: tuple[int, int], num_classes: int
) -> list[dict[str, torch.Tensor]]:
    """`count` training batches as `TIReIDDataModule` delivers them (float pixels, 77 tokens), on CPU."""
    tokenizer = AutoTokenizer.from_pretrained(clip_dir)
    rng = random.Random(0)
    generator = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(count):
        tokens = tokenize_captions(tokenizer, [random_caption(rng) for _ in range(batch_size)], TEXT_LENGTH)
        batch = {
            "pixel_values": torch.randn(batch_size, 3, *image_size, generator=generator),
            "input_ids": tokens["input_ids"],
            "attention_mask": tokens["attention_mask"],
            "labels": torch.randint(0, num_classes, (batch_size,), generator=generator),
        }
        batches.append(batch)
    first = batches[0]["input_ids"]
    assert (first[:, 0] == tokenizer.bos_token_id).all() and (first == tokenizer.eos_token_id).any(
        dim=1
    ).all()
    return batches


def build(
    clip_dir: Path, stage: int, image_size: tuple[int, int], num_classes: int, device
) -> tuple[PromptDecoupleModule, torch.optim.Optimizer]:
    """The module in `stage` and the optimizer `configure_optimizers` would give it (without the schedule)."""
    torch.manual_seed(0)  # same prompts and head in both modules
    module = PromptDecoupleModule(clip=str(clip_dir), num_classes=num_classes, image_size=image_size)
    module.set_stage(stage)
    module.to(device).train()
    hp = module.hparams
    optimizer_class = torch.optim.Adam if hp.optimizer == "adam" else torch.optim.AdamW
    optimizer = optimizer_class(module.parameter_groups(), eps=hp.adam_eps, betas=tuple(hp.adam_betas))
    return module, optimizer


def train_step(
    module: PromptDecoupleModule,
    optimizer: torch.optim.Optimizer,
    batch: dict[str, torch.Tensor],
    index: int,
    precision: Callable[[], contextlib.AbstractContextManager],
    mark: Callable[[], None] = lambda: None,
    after_backward: Callable[[], None] = lambda: None,
) -> None:
    """One step of automatic optimisation: forward + losses, backward, optimizer step, zero_grad.

    `mark` is called at the start and after each of the three phases (for the phase timings).
    """
    mark()
    with precision():
        loss = module.training_step(batch, index)
    mark()
    loss.backward()
    mark()
    after_backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    mark()


class StepClock:
    """Wall time of a step and of its phases (forward, backward, optimizer).

    On CPU the phases are `perf_counter` marks. On CUDA they are CUDA events, which do not stall
    the host, and the total is wall time between two synchronisations.
    """

    PHASES = ("forward", "backward", "optimizer")

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.device = device
        self.marks: list = []

    def mark(self) -> None:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self.marks.append(event)
        else:
            self.marks.append(time.perf_counter())

    def time(self, step: Callable[[Callable[[], None]], None]) -> tuple[float, list[float]]:
        """Run `step(mark)`; return its wall time and the time of each phase, in seconds."""
        self.marks = []
        if self.cuda:
            torch.cuda.synchronize(self.device)
        started = time.perf_counter()
        step(self.mark)
        if self.cuda:
            torch.cuda.synchronize(self.device)
        total = time.perf_counter() - started
        pairs = zip(self.marks, self.marks[1:], strict=False)
        if self.cuda:
            return total, [a.elapsed_time(b) / 1000 for a, b in pairs]
        return total, [b - a for a, b in pairs]


def tensors_and_bytes(tensors) -> tuple[int, int]:
    tensors = list(tensors)
    return len(tensors), sum(t.numel() * t.element_size() for t in tensors)


def inspect_stage(module, optimizer, batch, precision) -> dict[str, int]:
    """Run one step and count trainable weights, gradients and optimizer state."""
    encoder = {id(p) for p in module.clip.encoder_parameters()}
    counts: dict[str, int] = {}

    def count_gradients() -> None:
        grads = [p.grad for p in module.parameters() if p.grad is not None]
        counts["grad_tensors"], counts["grad_bytes"] = tensors_and_bytes(grads)
        counts["encoder_grads"] = sum(
            1 for p in module.parameters() if p.grad is not None and id(p) in encoder
        )

    train_step(module, optimizer, batch, 0, precision, after_backward=count_gradients)
    trainable = [p for p in module.parameters() if p.requires_grad]
    counts["trainable"] = sum(p.numel() for p in trainable)
    state = [v for s in optimizer.state.values() for v in s.values() if torch.is_tensor(v)]
    counts["state_tensors"], counts["state_bytes"] = tensors_and_bytes(state)
    counts["encoder_states"] = sum(1 for p in optimizer.state if id(p) in encoder)
    return counts


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {name: value.to(device) for name, value in batch.items()}


def peak_memory(clip_dir, stage, image_size, num_classes, batch, precision, device, steps: int = 3) -> int:
    """Peak allocated CUDA bytes of `steps` training steps with only this stage's module on the device.

    Besides the module, its gradients and its optimizer state, only the one batch is on the device.
    """
    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    batch = to_device(batch, device)
    module, optimizer = build(clip_dir, stage, image_size, num_classes, device)
    for index in range(steps):
        train_step(module, optimizer, batch, index, precision)
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device)
    del module, optimizer, batch
    gc.collect()
    torch.cuda.empty_cache()
    return peak


def measure(args: argparse.Namespace, device: torch.device) -> dict:
    """Build both stages, count what they keep, then time them step by step in alternation."""
    cuda = device.type == "cuda"
    image_size = (384, 128) if cuda else (192, 64)
    if cuda:

        def precision() -> contextlib.AbstractContextManager:
            return torch.autocast("cuda", dtype=torch.bfloat16)

    else:
        precision = contextlib.nullcontext
    clock = StepClock(device)
    with tempfile.TemporaryDirectory() as tmp:
        clip_dir = write_clip(Path(tmp) / "clip", vit_b16=cuda)
        batches = make_batches(clip_dir, 4, args.batch_size, image_size, args.num_classes)
        peaks = {}
        if cuda:  # each stage alone on the device, so that its peak is its own
            peaks = {
                s: peak_memory(clip_dir, s, image_size, args.num_classes, batches[0], precision, device)
                for s in (1, 2)
            }
        stages = {s: build(clip_dir, s, image_size, args.num_classes, device) for s in (1, 2)}
    batches = [to_device(batch, device) for batch in batches]
    counts = {s: inspect_stage(*stages[s], batches[0], precision) for s in (1, 2)}
    for index in range(1, args.warmup):
        for module, optimizer in stages.values():
            train_step(module, optimizer, batches[index % len(batches)], index, precision)

    times: dict[int, list[float]] = {1: [], 2: []}
    phases: dict[int, list[list[float]]] = {1: [], 2: []}
    started = time.perf_counter()
    for index in range(args.rounds):
        batch = batches[index % len(batches)]
        for stage in (1, 2) if index % 2 == 0 else (2, 1):
            module, optimizer = stages[stage]
            total, parts = clock.time(
                lambda mark, m=module, o=optimizer, b=batch, i=index: train_step(m, o, b, i, precision, mark)
            )
            times[stage].append(total)
            phases[stage].append(parts)
    return {
        "image_size": image_size,
        "parameters": sum(p.numel() for p in stages[1][0].parameters()),
        "counts": counts,
        "peaks": peaks,
        "times": times,
        "phases": phases,
        "elapsed": time.perf_counter() - started,
    }


def report(args: argparse.Namespace, device: torch.device, result: dict) -> None:
    cuda = device.type == "cuda"
    counts, times = result["counts"], result["times"]
    height, width = result["image_size"]
    if cuda:
        machine = torch.cuda.get_device_name(device)
        shape = "ViT-B/16 shape (text 512 wide, vision 768 wide, 12+12 layers), bf16 autocast"
    else:
        machine = (
            f"{platform.machine()} CPU, {os.cpu_count()} cores, {torch.get_num_threads()} torch thread(s)"
        )
        shape = f"random CLIP, width {CPU_CLIP['hidden_size']}, {CPU_CLIP['num_layers']}+{CPU_CLIP['num_layers']} layers, fp32"
    print(f"device: {machine}; torch {torch.__version__}")
    print(
        f"model: {shape}, {result['parameters'] / 1e6:.1f} M parameters, 4+4 prompt tokens on every "
        f"layer, identity head over {args.num_classes} ids"
    )
    print(
        f"batch {args.batch_size}, images {height}x{width}, captions {TEXT_LENGTH} tokens; {args.rounds} "
        f"timed steps per stage, interleaved, after {args.warmup} warm-up steps ({result['elapsed']:.0f} s)"
    )
    print()
    names = {1: "1: prompts (CLIP frozen)", 2: "2: CLIP + head"}
    header = f"{'stage':<24} {'trains':>8} {'weight grads':>17} {'optimizer state':>17} {'s/step':>8} {'pairs/s':>8}"
    header += f" {'peak GiB':>9}" if cuda else ""
    print(header)
    medians = {}
    for stage in (1, 2):
        c = counts[stage]
        medians[stage] = statistics.median(times[stage])
        row = (
            f"{names[stage]:<24} {c['trainable'] / 1e6:>7.3f}M "
            f"{c['grad_tensors']:>4} / {c['grad_bytes'] / 2**20:>6.1f} MB "
            f"{c['state_tensors']:>4} / {c['state_bytes'] / 2**20:>6.1f} MB "
            f"{medians[stage]:>8.4f} {args.batch_size / medians[stage]:>8.1f}"
        )
        print(row + (f" {result['peaks'][stage] / 2**30:>9.2f}" if cuda else ""))
    print()
    print(f"median seconds per phase  {' '.join(f'{p:>9}' for p in StepClock.PHASES)}")
    for stage in (1, 2):
        parts = [statistics.median(column) for column in zip(*result["phases"][stage], strict=True)]
        print(f"{names[stage]:<25} {' '.join(f'{p:>9.4f}' for p in parts)}")
    print()
    paired = sorted(a / b for a, b in zip(times[1], times[2], strict=True))
    low, _, high = statistics.quantiles(paired, n=4)
    ratio = medians[1] / medians[2]
    print(
        f"stage 1 / stage 2: {ratio:.3f} (ratio of medians); per-round ratios: median "
        f"{statistics.median(paired):.3f}, quartiles {low:.3f}-{high:.3f}, range {paired[0]:.3f}-{paired[-1]:.3f}"
    )
    print(f"target <= {TARGET}: {'met' if ratio <= TARGET else 'NOT met'}")
    print(
        f"encoder tensors with a gradient / in the optimizer state: stage 1 {counts[1]['encoder_grads']} / "
        f"{counts[1]['encoder_states']}, stage 2 {counts[2]['encoder_grads']} / {counts[2]['encoder_states']}"
    )
    if counts[1]["encoder_grads"] or counts[1]["encoder_states"]:
        raise SystemExit("stage 1 keeps gradients or optimizer state for the frozen encoders")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cpu", help="cpu, or cuda for the ViT-B/16 configuration")
    parser.add_argument("--batch-size", type=int, default=None, help="default: 32 on CPU, 64 on CUDA")
    parser.add_argument(
        "--rounds", type=int, default=None, help="timed steps per stage (default 30 CPU, 50 CUDA)"
    )
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per stage before timing")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads (default 1: see docs/benchmarks.md)"
    )
    parser.add_argument("--num-classes", type=int, default=CUHK_PEDES_TRAIN_IDS, help="identity head width")
    args = parser.parse_args()
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    if cuda and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    if args.warmup < 1 or (args.rounds is not None and args.rounds < 2):
        parser.error("--warmup must be >= 1 and --rounds >= 2")
    args.batch_size = args.batch_size or (64 if cuda else 32)
    args.rounds = args.rounds or (50 if cuda else 30)
    if not cuda:
        torch.set_num_threads(args.threads)
    transformers.utils.logging.disable_progress_bar()
    # training_step logs through self.log; without a Trainer Lightning warns once and skips logging.
    warnings.filterwarnings("ignore", message=".*self.log\\(\\)` but the `self.trainer` reference")
    report(args, device, measure(args, device))


if __name__ == "__main__":
    main()
