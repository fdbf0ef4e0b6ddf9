"""Shared fixtures: offline hub, offline W&B, and a tiny random CLIP saved like a hub checkpoint."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402

from promptdecouple.model.random_clip import write_random_clip  # noqa: E402


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory):
    """A 2-layer, width-32 random CLIP (square 64x64 vision input, patch 16) and its tokenizer."""
    return write_random_clip(
        tmp_path_factory.mktemp("tiny_clip"), hidden_size=32, num_layers=2, num_heads=4, image_size=64
    )
