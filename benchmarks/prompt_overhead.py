"""Forward+backward cost of PromptedCLIP against Hugging Face CLIPModel, measured in one run.

A ViT-B/16-shaped CLIP (random init, 12+12 layers, width 512/768) at 384x128 pixels and 77 tokens.
Baseline: `get_text_features` + `get_image_features(..., interpolate_pos_encoding=True)`, which is
what HF needs for non-square images. Candidates: PromptedCLIP with zero prompts, and with 4-token
prompts on all 12 layers of both towers. Rounds alternate the three so drift hits all alike.

    python benchmarks/prompt_overhead.py [--batch 8] [--rounds 7] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from transformers import CLIPModel

from promptdecouple.model.prompted_clip import PromptedCLIP
from promptdecouple.model.random_clip import vit_b16_config

VIT_B16 = vit_b16_config()


def step_time(step, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)

    torch.manual_seed(0)
    hf = CLIPModel(VIT_B16).to(device).train()
    zero = PromptedCLIP(CLIPModel(VIT_B16), 0, 0, image_size=(384, 128)).to(device).train()
    deep = PromptedCLIP(CLIPModel(VIT_B16), 4, 4, image_size=(384, 128)).to(device).train()
    pixels = torch.randn(args.batch, 3, 384, 128, device=device)
    input_ids = torch.randint(0, 49406, (args.batch, 77), device=device)
    input_ids[:, 0], input_ids[:, 40] = 49406, 49407
    mask = torch.ones_like(input_ids)

    def hf_step() -> None:
        text = hf.get_text_features(input_ids=input_ids, attention_mask=mask).pooler_output
        image = hf.get_image_features(pixel_values=pixels, interpolate_pos_encoding=True).pooler_output
        (text.sum() + image.sum()).backward()

    def prompted_step(model: PromptedCLIP):
        def step() -> None:
            (model.encode_text(input_ids, mask).sum() + model.encode_image(pixels).sum()).backward()

        return step

    steps = {"HF CLIPModel": hf_step, "PromptedCLIP, no prompts": prompted_step(zero)}
    steps["PromptedCLIP, 4x12 deep prompts"] = prompted_step(deep)
    for step in steps.values():  # warm-up
        step_time(step, device)
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(args.rounds):
        for name, step in steps.items():
            times[name].append(step_time(step, device))
            for model in (hf, zero, deep):
                model.zero_grad(set_to_none=True)

    base = statistics.median(times["HF CLIPModel"])
    print(f"device={device} batch={args.batch} rounds={args.rounds} image=384x128 text=77 (ViT-B/16 shape)")
    print(f"{'model':34s} {'median s/step':>14s} {'ratio vs HF':>12s}")
    for name, samples in times.items():
        median = statistics.median(samples)
        print(f"{name:34s} {median:14.4f} {median / base:12.3f}")


if __name__ == "__main__":
    main()
