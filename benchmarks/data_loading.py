"""Training-loader throughput against plain Pillow decode + resize, measured in one run.

The training loader decodes, resizes and augments (flip, pad-crop, random erasing) each image
straight into its row of a uint8 batch and gathers the pre-tokenised captions and labels of the
batch; CLIP normalisation runs later, on the model's device (`normalize_pixels`), and is timed here
on the CPU only for reference. The baseline only decodes and resizes the same images with Pillow.
Both read the same synthetic 384x128 JPEGs (warm page cache). On a shared machine the speed drifts
from second to second, so the two are interleaved batch by batch: each loader batch is timed, then
the baseline on exactly that batch's images; the ratio of the sums is reported, with the per-batch
median. Target: at most 1.3x the baseline's cost per image.

    python benchmarks/data_loading.py [--identities 150] [--epochs 3] [--workers 0] [--threads 1]

With --workers 0 (default) everything runs in the main process, like for like with the
single-process baseline; --threads 1 keeps torch to one core, as Pillow is.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image, ImageOps  # noqa: E402

from promptdecouple.data import (  # noqa: E402
    CLIP_MEAN,
    CLIP_STD,
    TIReIDDataModule,
    load_image,
    normalize_pixels,
    write_synthetic,
)
from promptdecouple.model.random_clip import write_random_clip  # noqa: E402


def timed(step) -> float:
    started = time.perf_counter()
    step()
    return time.perf_counter() - started


def baseline(paths, size: tuple[int, int]) -> None:
    """Decode and resize every path with Pillow (bicubic), nothing else."""
    height, width = size
    for path in paths:
        with Image.open(path) as image:
            image.convert("RGB").resize((width, height), Image.Resampling.BICUBIC)


def textbook(paths, captions, size, tokenizer, mean, std) -> None:
    """The same work done the common way (torchvision's steps, per item, then `torch.stack`).

    Resize, flip, pad 10 + crop on PIL; to float tensor; normalise; erase on a copy; tokenise each
    caption when its item is loaded; stack. Written with Pillow/torch because torchvision is absent.
    """
    height, width = size
    items = []
    for path, caption in zip(paths, captions, strict=True):
        with Image.open(path) as image:
            image = image.convert("RGB").resize((width, height), Image.Resampling.BICUBIC)
        if random.random() < 0.5:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        image = ImageOps.expand(image, border=10, fill=0)
        top, left = random.randint(0, 20), random.randint(0, 20)
        image = image.crop((left, top, left + width, top + height))
        tensor = torch.from_numpy(np.array(image)).permute(2, 0, 1).contiguous().float().div(255)
        tensor = (tensor - mean) / std
        if random.random() < 0.5:
            tensor = tensor.clone()
            h, w = random.randint(20, height // 2), random.randint(10, width // 2)
            i, j = random.randint(0, height - h), random.randint(0, width - w)
            tensor[:, i : i + h, j : j + w] = 0.0
        tokens = tokenizer(caption, padding="max_length", max_length=77, truncation=True, return_tensors="pt")
        items.append((tensor, tokens["input_ids"][0], tokens["attention_mask"][0]))
    torch.stack([t for t, _, _ in items])
    torch.stack([i for _, i, _ in items])
    torch.stack([m for _, _, m in items])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--identities", type=int, default=150, help="synthetic persons, 4 images each")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (Pillow uses one)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    size = (384, 128)

    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder) / "rstpreid"
        written = timed(
            lambda: write_synthetic(
                root, "rstpreid", num_identities=args.identities, images_per_identity=4, image_size=size
            )
        )
        tokenizer = write_random_clip(Path(folder) / "clip", hidden_size=32, num_layers=1, num_heads=2)
        data = TIReIDDataModule(
            "rstpreid",
            root,
            str(tokenizer),
            image_size=size,
            batch_size=args.batch_size,
            num_workers=args.workers,
        )
        setup = timed(lambda: data.setup("fit"))
        loader = data.train_dataloader()
        pairs = data.train_dataset()
        transform = pairs.transform
        captions = data.split("train")["caption"].to_numpy()
        mean, std = torch.tensor(CLIP_MEAN).view(3, 1, 1), torch.tensor(CLIP_STD).view(3, 1, 1)
        for _ in loader:  # warm the page cache and the code paths
            pass

        stages = {
            "decode (load_image)": [],
            "resize + augment into the uint8 batch": [],
            "gather the other fields": [],
        }
        normalise_cpu = []  # not part of the loader: runs on the model's device in training
        pipe, base, common, ratios, images = 0.0, 0.0, 0.0, [], 0
        for _ in range(args.epochs):
            batches = iter(loader)
            while True:
                started = time.perf_counter()
                batch = next(batches, None)
                seconds = time.perf_counter() - started
                if batch is None:
                    break
                assert batch["pixel_values"].dtype == torch.uint8
                paths = pairs.image_paths[batch["index"].numpy()]
                reference = timed(lambda paths=paths: baseline(paths, size))
                index = batch["index"].numpy()
                common += timed(
                    lambda paths=paths, index=index: textbook(
                        paths, captions[index], size, data.tokenizer, mean, std
                    )
                )
                pipe, base, images = pipe + seconds, base + reference, images + len(paths)
                ratios.append(seconds / reference)
                # the same batch once more, stage by stage
                decoded = []
                stages["decode (load_image)"].append(
                    timed(lambda p=paths, d=decoded: d.extend(map(load_image, p)))
                )
                rows = torch.empty((len(paths), 3, *size), dtype=torch.uint8)
                planes = rows.numpy()
                stages["resize + augment into the uint8 batch"].append(
                    timed(
                        lambda d=decoded, r=planes: [
                            transform.write_pixels(i, o) for i, o in zip(d, r, strict=True)
                        ]
                    )
                )
                positions = torch.as_tensor(index)
                stages["gather the other fields"].append(
                    timed(
                        lambda p=positions: (
                            pairs.input_ids[p],
                            pairs.attention_mask[p],
                            pairs.labels[p],
                        )
                    )
                )
                normalise_cpu.append(timed(lambda x=rows: normalize_pixels(x)))

    per_image = {name: sum(times) / images for name, times in stages.items()}
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores; torch threads {torch.get_num_threads()}, "
        f"loader workers {args.workers}, batch {args.batch_size}"
    )
    print(
        f"data: {images // args.epochs} training images per epoch, 384x128 JPEG ({args.identities} synthetic "
        f"identities, written in {written:.1f} s); setup(fit) {setup:.2f} s (tokenises every caption once)"
    )
    print(f"{args.epochs} epochs, loader and baseline interleaved batch by batch")
    print(f"{'':<40}{'us/image':>10}{'images/s':>10}")
    print(f"{'Pillow decode + resize (baseline)':<40}{base / images * 1e6:>10.0f}{images / base:>10.0f}")
    print(f"{'training loader (full pipeline)':<40}{pipe / images * 1e6:>10.0f}{images / pipe:>10.0f}")
    print(f"{'textbook pipeline (for reference)':<40}{common / images * 1e6:>10.0f}{images / common:>10.0f}")
    print(
        f"cost ratio pipeline / baseline: {pipe / base:.2f}x (median over batches "
        f"{statistics.median(ratios):.2f}x; target <= 1.30x); textbook / baseline: {common / base:.2f}x"
    )
    print("the pipeline stage by stage, on the same batches (us/image):")
    for name, seconds in per_image.items():
        print(f"  {name:<38}{seconds * 1e6:>10.0f}")
    print(
        f"not in the loader: normalize_pixels of the uint8 batch on this CPU (on the GPU in training): "
        f"{sum(normalise_cpu) / images * 1e6:.0f} us/image"
    )


if __name__ == "__main__":
    main()
