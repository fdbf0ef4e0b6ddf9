"""benchmarks/miniworld/pretrain.py: the web domain, reproducible pretraining, the zero-shot gate's evaluation."""

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import CLIPModel

from promptdecouple.data.synthetic import draw_person_attributes, write_synthetic
from promptdecouple.data.synthetic.people import COLOURS
from promptdecouple.model.random_clip import write_random_clip

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "miniworld" / "pretrain.py"


def _load():
    spec = importlib.util.spec_from_file_location("miniworld_pretrain", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


pretrain = _load()


def test_web_captions_name_the_persons_own_colours_in_short_phrases():
    for index in range(200):
        rng = np.random.default_rng([0, index])
        person = draw_person_attributes(rng)
        caption = pretrain.web_caption(person, "photo", rng)
        assert person.upper_colour in caption
        colours = {person.upper_colour, person.lower_colour, person.bag_colour, person.hat_colour}
        named = {word for word in caption.replace(",", " ").replace(".", " ").split() if word in COLOURS}
        assert named <= colours, (caption, person)
        assert all(len(phrase.split()) <= 20 for phrase in caption.split(". ")), caption


def test_web_pictures_are_drawn_from_their_seed_at_the_asked_size():
    person = draw_person_attributes(np.random.default_rng(1))
    first, style = pretrain.render_web_image(person, (128, 64), np.random.default_rng(5))
    again, same_style = pretrain.render_web_image(person, (128, 64), np.random.default_rng(5))
    assert first.size == (64, 128) and style in pretrain.STYLES and style == same_style
    assert np.array_equal(np.asarray(first), np.asarray(again))
    styles = {pretrain.render_web_image(person, (128, 64), np.random.default_rng(s))[1] for s in range(40)}
    assert styles == set(pretrain.STYLES)


@pytest.mark.slow
def test_pretraining_moves_the_clip_reproducibly_and_zero_shot_scores_the_target(tmp_path):
    runs = []
    for name in ("a", "b"):
        clip_dir = write_random_clip(tmp_path / name, hidden_size=32, num_layers=1, num_heads=2, seed=0)
        initial = CLIPModel.from_pretrained(clip_dir).state_dict()
        log = pretrain.pretrain(
            clip_dir, steps=3, batch_size=8, pool_size=16, image_size=(128, 64), lr=1e-3, seed=0, log_every=1
        )
        assert [entry["step"] for entry in log] == [1, 2, 3]
        trained = CLIPModel.from_pretrained(clip_dir).state_dict()
        assert any(not torch.equal(initial[key], trained[key]) for key in initial)
        runs.append(trained)
    assert all(torch.equal(runs[0][key], runs[1][key]) for key in runs[0])  # the same seed, the same model
    write_synthetic(
        tmp_path / "target",
        layout="cuhk-pedes",
        num_identities=40,
        images_per_identity=2,
        image_size=(128, 64),
    )
    result = pretrain.zero_shot(tmp_path / "a", tmp_path / "target", "cuhk-pedes", (128, 64))
    assert result["num_queries"] > 0 and result["num_gallery"] > 0
    assert 0 <= result["metrics"]["R1"] <= 100 and result["chance"]["R1"] > 0


SHIPPED = Path(__file__).resolve().parents[1] / "examples" / "miniworld_clip"


def test_the_shipped_mini_clip_is_pretrained_and_transfers_zero_shot(tmp_path):
    """The demo's CLIP (examples/miniworld_clip): its record says how it was made, and it transfers."""
    record = json.loads((SHIPPED / "pretraining.json").read_text())
    assert record["args"]["steps"] == "1500" and record["args"]["seed"] == "0"
    assert record["zero_shot"]["metrics"]["R1"] >= 5 * record["zero_shot"]["chance"]["R1"]  # the gate
    # and on a target set it never saw (other identities, another seed): far above chance, as recorded
    write_synthetic(
        tmp_path / "target",
        layout="cuhk-pedes",
        num_identities=200,
        images_per_identity=2,
        image_size=(128, 64),
        seed=7,
    )
    result = pretrain.zero_shot(SHIPPED, tmp_path / "target", "cuhk-pedes", (128, 64))
    assert result["num_gallery"] >= 30
    assert result["metrics"]["R1"] >= 5 * result["chance"]["R1"], result
