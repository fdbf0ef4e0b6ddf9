"""The demo's assets: a synthetic dataset made on first use, and a CLIP (shipped, or random made on first use).

The shipped `examples/configs/demo.yaml` names them in its `demo:` section; the CLI calls
`DemoAssets.ensure()` before it builds the data module and the model, so the first
`promptdecouple fit --config examples/configs/demo.yaml` needs no download. Its CLIP is the mini-CLIP
that comes with the repository (`examples/miniworld_clip`, made by `benchmarks/miniworld/pretrain.py`);
`pretrained_clip: false` makes a small random one instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from promptdecouple.data.annotations import dataset_layout
from promptdecouple.data.synthetic import write_synthetic
from promptdecouple.model.random_clip import write_random_clip


class DemoAssetsError(FileNotFoundError):
    """The demo's pretrained CLIP is not where the config says."""


@dataclass
class DemoAssets:
    """Where the demo's dataset and CLIP live, and how to make them when they are missing.

    Args:
        clip_dir: directory of the CLIP and its tokenizer.
        pretrained_clip: True: `clip_dir` holds a pretrained CLIP that comes with the project (never
            written here; missing is an error saying how to get it back). False: a random CLIP of the
            `clip_*` shape is written there if absent.
        data_root: dataset folder, written in the layout of `dataset`.
        dataset: "cuhk-pedes", "icfg-pedes" or "rstpreid" (the layout of the synthetic twin).
        num_identities: persons in the synthetic dataset.
        images_per_identity: photos per person.
        image_size: (height, width) of the photos.
        seed: seed of the synthetic dataset and of the random CLIP's weights.
        clip_width: width of both towers of the random CLIP.
        clip_layers: layers per tower of the random CLIP.
        clip_heads: attention heads per layer of the random CLIP.
        clip_image_size: side of the random CLIP's square input (like a real CLIP's pretraining size;
            PromptedCLIP resizes its position table to the image size).
    """

    clip_dir: str = "artifacts/demo/clip"
    pretrained_clip: bool = False
    data_root: str = "artifacts/demo/data"
    dataset: str = "cuhk-pedes"
    num_identities: int = 300
    images_per_identity: int = 4
    image_size: tuple[int, int] = (128, 64)
    seed: int = 0
    clip_width: int = 128
    clip_layers: int = 4
    clip_heads: int = 4
    clip_image_size: int = 64

    def ensure(self) -> None:
        """Write whichever of the two is missing; leave existing ones untouched."""
        clip_dir = Path(self.clip_dir)
        if self.pretrained_clip and not (clip_dir / "config.json").is_file():
            raise DemoAssetsError(
                f"demo.clip_dir: {clip_dir} holds no CLIP (no config.json), and demo.pretrained_clip is true, so none "
                "is made. The demo's mini-CLIP comes with the repository: restore it with "
                "`git checkout -- examples/miniworld_clip`, or remake it (about 35 minutes on 2 cores; equal up to float rounding) with "
                "`python benchmarks/miniworld/pretrain.py --out examples/miniworld_clip`. Or set "
                "demo.pretrained_clip false to train a small random CLIP."
            )
        if not (clip_dir / "config.json").is_file():
            print(f"demo: writing a random CLIP to {clip_dir}")
            write_random_clip(
                clip_dir,
                hidden_size=self.clip_width,
                num_layers=self.clip_layers,
                num_heads=self.clip_heads,
                image_size=self.clip_image_size,
                seed=self.seed,
            )
        data_root = Path(self.data_root)
        if not _has_annotations(self.dataset, data_root):
            print(f"demo: writing a synthetic {self.dataset} dataset to {data_root}")
            write_synthetic(
                data_root,
                layout=self.dataset,
                num_identities=self.num_identities,
                images_per_identity=self.images_per_identity,
                image_size=tuple(self.image_size),
                seed=self.seed,
            )


def _has_annotations(dataset: str, root: Path) -> bool:
    try:
        dataset_layout(dataset).annotation_file(root)
    except FileNotFoundError:
        return False
    return True
