"""benchmarks/miniworld/compare.py: the arms of the study, its statistics, one run end to end, the plot."""

import importlib.util
import json
import math
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from promptdecouple.data.synthetic import write_synthetic

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "miniworld" / "compare.py"


def _load():
    spec = importlib.util.spec_from_file_location("miniworld_compare", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


compare = _load()


def test_the_arms_compare_at_equal_epochs_but_the_one_with_stage_1_in_front():
    arms = {arm.name: arm for arm in compare.study_arms(6, (1, 3))}
    assert set(arms) == {
        "zero_shot",
        "prompts_only",
        "one_stage",
        "two_stage_s1",
        "two_stage_s3",
        "two_stage_s1_plus",
        "two_stage_s1_len2",
        "two_stage_s1_len8",
    }
    assert arms["zero_shot"].epochs == 0
    assert (arms["one_stage"].prompt_length, arms["one_stage"].switch_epoch) == (0, 0)
    assert arms["prompts_only"].switch_epoch == arms["prompts_only"].epochs == 6  # never switches
    for name in ("one_stage", "two_stage_s1", "two_stage_s3", "two_stage_s1_len2", "two_stage_s1_len8"):
        assert arms[name].epochs == 6
    plus = arms["two_stage_s1_plus"]
    assert plus.epochs - plus.switch_epoch == arms["one_stage"].epochs  # as many fine-tuning epochs
    assert [arms[n].prompt_length for n in ("two_stage_s1_len2", "two_stage_s1", "two_stage_s1_len8")] == [
        2,
        4,
        8,
    ]
    for bad in ((0, 3), (3, 3), (1, 6)):
        with pytest.raises(ValueError, match="0 < A < B < epochs"):
            compare.study_arms(6, bad)


def test_paired_difference_and_its_interval_by_hand():
    found = compare.paired_difference({0: 10.0, 1: 12.0, 2: 11.0}, {0: 9.0, 1: 10.0, 2: 11.0, 3: 5.0})
    # differences 1, 2, 0 over the 3 shared seeds: mean 1, sample std 1, t(0.975, 2) = 4.303
    half = 4.303 / math.sqrt(3)
    assert found["seeds"] == [0, 1, 2] and found["mean"] == pytest.approx(1.0)
    assert found["ci95"] == pytest.approx([1 - half, 1 + half])
    assert (
        compare.paired_difference({0: 1.0, 1: 2.0}, {1: 0.0, 2: 0.0}) is None
    )  # one shared seed: no interval


def test_the_t_quantiles_are_students():
    stats = pytest.importorskip("scipy.stats")
    for dof in range(1, 31):
        assert compare.t_quantile_975(dof) == pytest.approx(stats.t.ppf(0.975, dof), abs=1.5e-3)
    with pytest.raises(ValueError):
        compare.t_quantile_975(0)


def _record(arm, seed, r1, mAP):
    metrics = {"R1": r1, "R5": r1, "R10": r1, "mAP": mAP, "mINP": mAP}
    return {"arm": {"name": arm.name}, "seed": seed, "scores": {"test": {"metrics": metrics}}}


def test_summary_and_plot_from_records():
    arms = compare.study_arms(4, (1, 2))
    by_name = {arm.name: arm for arm in arms}
    records = [_record(by_name["zero_shot"], 0, 50.0, 40.0)]
    for seed, (one, two) in enumerate([(60.0, 63.0), (62.0, 63.0), (64.0, 68.0)]):
        records.append(_record(by_name["one_stage"], seed, one, one - 5))
        records.append(_record(by_name["two_stage_s1"], seed, two, two - 5))
    summary = compare.summarize(records, arms, "test")
    assert list(summary["arms"]) == [
        "zero_shot",
        "one_stage",
        "two_stage_s1",
    ]  # the study's order, only arms run
    assert summary["arms"]["one_stage"]["R1"] == pytest.approx({"mean": 62.0, "std": 2.0, "n": 3})
    assert summary["arms"]["zero_shot"]["R1"]["std"] == 0.0
    assert summary["arms"]["two_stage_s1"]["per_seed"]["R1"] == [63.0, 63.0, 68.0]
    difference = summary["paired_differences"]["two_stage_s1 - one_stage"]["R1"]  # 3, 1, 4
    assert difference["mean"] == pytest.approx(8 / 3) and difference["n"] == 3
    assert set(summary["paired_differences"]) == {"two_stage_s1 - one_stage"}
    svg = ET.fromstring(compare.draw_svg(summary))
    circles = svg.findall("{http://www.w3.org/2000/svg}circle")
    assert len(circles) == 1 + 3 + 3 + 1  # a dot per run, one per paired difference
    labels = [t.text for t in svg.iter("{http://www.w3.org/2000/svg}text")]
    assert "two_stage_s1" in labels and "+2.67" in labels  # as the tables print it
    table = compare.markdown_tables(summary)
    assert "| `one_stage` | 0 | 0 | 4 | 3 | 62.00 ± 2.00 | 57.00 ± 2.00 | 57.00 ± 2.00 |" in table
    assert "| `zero_shot` | 0 | 0 | 0 | 1 | 50.00 | 40.00 | 40.00 |" in table  # one seed: no spread
    assert "| `two_stage_s1 - one_stage` | +2.67 [" in table


@pytest.mark.slow
def test_one_arm_trains_through_the_switch_and_is_scored_on_both_splits(tmp_path, tiny_clip_dir):
    data = tmp_path / "data"
    write_synthetic(data, layout="cuhk-pedes", num_identities=40, images_per_identity=2, image_size=(128, 64))
    arm = compare.Arm("tiny", prompt_length=2, switch_epoch=1, epochs=2, description="test")
    record = compare.run_arm(arm, 3, str(tiny_clip_dir), str(data), str(tmp_path / "out"))
    # 32 train identities x 2 images x 2 captions = 128 pairs: 2 batches of 64 per epoch, 2 epochs
    assert record["stage_at_end"] == 2 and record["seed"] == 3 and record["global_step"] == 4
    for split in ("val", "test"):
        assert record["scores"][split]["queries"] > 0 and 0 <= record["scores"][split]["metrics"]["R1"] <= 100
    assert record["scores"]["val"]["metrics"] != record["scores"]["test"]["metrics"]
    saved = json.loads((tmp_path / "out" / "runs" / "tiny-seed3.json").read_text())
    assert saved == record
