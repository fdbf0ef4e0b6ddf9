"""Config sections shared by the tests that run the command line end to end (not a test module)."""

from pathlib import Path


def tiny_demo(clip_dir: Path, data_root: Path) -> dict:
    """A `demo:` config section for a tiny synthetic RSTPReid and a tiny random CLIP."""
    return {
        "clip_dir": str(clip_dir),
        "data_root": str(data_root),
        "dataset": "rstpreid",
        "num_identities": 24,
        "images_per_identity": 2,
        "image_size": [64, 32],
        "clip_width": 32,
        "clip_layers": 2,
        "clip_heads": 2,
    }
