"""Forward+backward cost of PromptedCLIP against Hugging Face CLIPModel, measured in one run.

A ViT-B/16-shaped CLIP (random init, 12+12 layers, width 512/768) at 384x128 pixels and 77 tokens.

- Floor: HF `CLIPModel` (`get_text_features` + `get_image_features`) with its position table resized
  once to the 24x8 patch grid, as PromptedCLIP does at construction: the same model with no prompts
  and nothing recomputed per step. (HF refuses non-square images unless the table is interpolated, so
  the floor's embedding layer skips that check and adds the resized table; everything else is HF's.)
- PromptedCLIP with zero prompts, and with 4-token prompts on all 12 layers of both towers.
- Extra row: HF `CLIPModel` with `interpolate_pos_encoding=True`, which resamples the table on every
  forward (what the first version of this script compared with).

Rounds alternate the four so drift hits all alike; the load average is printed before and after.

    python benchmarks/prompt_overhead.py [--batch 8] [--rounds 7] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import types

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


def _load() -> str:
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


def _add_resized_table(embeddings: torch.nn.Module, pixel_values: torch.Tensor, **_: object) -> torch.Tensor:
    """HF CLIPVisionEmbeddings.forward without the square-image check: patches, class token, resized table."""
    patches = embeddings.patch_embedding(pixel_values.to(embeddings.patch_embedding.weight.dtype))
    patches = patches.flatten(2).transpose(1, 2)
    class_token = embeddings.class_embedding.expand(len(pixel_values), 1, -1)
    return torch.cat([class_token, patches], dim=1) + embeddings.position_embedding(embeddings.position_ids)


def resized_once(image_size: tuple[int, int]) -> CLIPModel:
    """A HF CLIPModel whose position table is resized once (by PromptedCLIP's own resize) and used as is."""
    model = PromptedCLIP(CLIPModel(VIT_B16), 0, 0, image_size=image_size).clip_model
    embeddings = model.vision_model.embeddings
    embeddings.forward = types.MethodType(_add_resized_table, embeddings)
    return model


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
    floor = resized_once((384, 128)).to(device).train()
    hf = CLIPModel(VIT_B16).to(device).train()
    zero = PromptedCLIP(CLIPModel(VIT_B16), 0, 0, image_size=(384, 128)).to(device).train()
    deep = PromptedCLIP(CLIPModel(VIT_B16), 4, 4, image_size=(384, 128)).to(device).train()
    pixels = torch.randn(args.batch, 3, 384, 128, device=device)
    input_ids = torch.randint(0, 49406, (args.batch, 77), device=device)
    input_ids[:, 0], input_ids[:, 40] = 49406, 49407
    mask = torch.ones_like(input_ids)

    # The floor is the same model as PromptedCLIP without prompts: same weights, same features.
    with torch.no_grad():
        zero.clip_model.load_state_dict(floor.state_dict())
        gap = max(
            (zero.encode_image(pixels) - floor.get_image_features(pixel_values=pixels).pooler_output)
            .abs()
            .max(),
            (
                zero.encode_text(input_ids, mask)
                - floor.get_text_features(input_ids=input_ids, attention_mask=mask).pooler_output
            )
            .abs()
            .max(),
        )
    print(f"floor vs PromptedCLIP without prompts, same weights: max |feature difference| {gap:.1e}")

    def floor_step() -> None:
        text = floor.get_text_features(input_ids=input_ids, attention_mask=mask).pooler_output
        image = floor.get_image_features(pixel_values=pixels).pooler_output
        (text.sum() + image.sum()).backward()

    def hf_step() -> None:
        text = hf.get_text_features(input_ids=input_ids, attention_mask=mask).pooler_output
        image = hf.get_image_features(pixel_values=pixels, interpolate_pos_encoding=True).pooler_output
        (text.sum() + image.sum()).backward()

    def prompted_step(model: PromptedCLIP):
        def step() -> None:
            (model.encode_text(input_ids, mask).sum() + model.encode_image(pixels).sum()).backward()

        return step

    steps = {
        "HF CLIPModel, table resized once": floor_step,
        "PromptedCLIP, no prompts": prompted_step(zero),
        "PromptedCLIP, 4x12 deep prompts": prompted_step(deep),
        "HF CLIPModel, interpolated per step": hf_step,
    }
    for step in steps.values():  # warm-up
        step_time(step, device)
    times: dict[str, list[float]] = {name: [] for name in steps}
    ratios: dict[str, list[float]] = {name: [] for name in steps}
    print(f"load average before timing: {_load()}")
    for _ in range(args.rounds):
        for name, step in steps.items():
            times[name].append(step_time(step, device))
            ratios[name].append(times[name][-1] / times["HF CLIPModel, table resized once"][-1])
            for model in (floor, hf, zero, deep):
                model.zero_grad(set_to_none=True)
    print(f"load average after timing: {_load()}")

    print(f"device={device} batch={args.batch} rounds={args.rounds} image=384x128 text=77 (ViT-B/16 shape)")
    print("| model | median s/step | x floor (median of per-round ratios) |\n|---|---|---|")
    for name, samples in times.items():
        print(f"| {name} | {statistics.median(samples):.4f} | {statistics.median(ratios[name]):.3f} |")


if __name__ == "__main__":
    main()
