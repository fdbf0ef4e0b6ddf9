"""examples/summarize_runs.py and examples/reproduce_paper.sh: the paper comparison runs and is summarised right."""

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from tiny_configs import tiny_demo

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _load_summarize():
    spec = importlib.util.spec_from_file_location("summarize_runs", EXAMPLES / "summarize_runs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


summarize_runs = _load_summarize()


def _write(root: Path, dataset: str, variant: str, seed: int, r1: float, partial: bool = False) -> None:
    folder = root / dataset / variant / f"seed{seed}" / "test" / "lightning_logs" / "version_0"
    folder.mkdir(parents=True)
    metrics = {"R1": r1, "R5": r1 + 10, "R10": r1 + 20, "mAP": r1 / 2, "mINP": r1 / 4}
    (folder / "metrics-test.json").write_text(json.dumps({"metrics": metrics, "partial": partial}))


def test_the_summary_gives_means_spreads_and_the_paired_difference_with_its_interval(tmp_path, capsys):
    for seed, (two, one) in enumerate([(50.0, 47.0), (52.0, 48.0), (51.0, 49.0)]):
        _write(tmp_path, "rstpreid", "two-stage", seed, two)
        _write(tmp_path, "rstpreid", "one-stage", seed, one)
    _write(tmp_path, "rstpreid", "one-stage", 3, 10.0)  # no partner: not in the paired difference
    assert (
        summarize_runs.main(
            [str(tmp_path), "--pair", "two-stage", "one-stage", "--json", str(tmp_path / "s.json")]
        )
        == 0
    )
    summary = json.loads((tmp_path / "s.json").read_text())["rstpreid"]
    assert summary["variants"]["two-stage"]["R1"]["mean"] == pytest.approx(51.0)
    assert summary["variants"]["two-stage"]["R1"]["std"] == pytest.approx(1.0)
    assert summary["variants"]["one-stage"]["seeds"] == ["seed0", "seed1", "seed2", "seed3"]
    difference = summary["differences"]["two-stage - one-stage"]
    assert difference["seeds"] == ["seed0", "seed1", "seed2"]
    # differences 3, 4, 2: mean 3, sample std 1, t(2) = 4.303: 3 +- 4.303 / sqrt(3)
    assert difference["R1"]["mean"] == pytest.approx(3.0)
    assert difference["R1"]["low"] == pytest.approx(3.0 - 4.303 / 3**0.5)
    assert difference["R1"]["high"] == pytest.approx(3.0 + 4.303 / 3**0.5)
    out = capsys.readouterr().out
    assert "| two-stage | 3 | 51.00 ± 1.00 |" in out
    assert "| two-stage - one-stage (paired, 95% CI) | 3 | +3.00 [+0.52, +5.48] |" in out


def test_the_summary_says_when_a_requested_pair_cannot_be_compared(tmp_path, capsys):
    _write(tmp_path, "rstpreid", "two-stage", 0, 50.0)
    _write(tmp_path, "rstpreid", "one-stage", 0, 47.0)
    _write(tmp_path, "rstpreid", "one-stage", 1, 48.0)
    assert summarize_runs.main([str(tmp_path), "--pair", "two-stage", "one-stage"]) == 0
    captured = capsys.readouterr()
    assert "rstpreid: two-stage - one-stage not reported: 1 seed(s) tested in both" in captured.err
    assert "(paired, 95% CI)" not in captured.out


def test_the_summary_refuses_a_partial_evaluation_naming_its_file(tmp_path, capsys):
    _write(tmp_path, "rstpreid", "two-stage", 0, 50.0, partial=True)
    assert summarize_runs.main([str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "partial evaluation" in err and str(tmp_path / "rstpreid" / "two-stage" / "seed0") in err


def test_the_summary_says_when_there_is_nothing_to_summarise(tmp_path, capsys):
    assert summarize_runs.main([str(tmp_path)]) == 2
    assert "no metrics-test.json" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_reproduce_paper_runs_both_variants_per_seed_and_summarises_their_tests(tmp_path):
    configs = tmp_path / "configs"
    configs.mkdir()
    clip_dir, data_root = tmp_path / "clip", tmp_path / "data"
    config = {
        "demo": tiny_demo(clip_dir, data_root),
        "trainer": {
            "accelerator": "cpu",
            "max_epochs": 3,
            "enable_progress_bar": False,
            "num_sanity_val_steps": 0,
        },
        "stage_switch": {"switch_epoch": 1},
        "model": {"text_prompt_length": 2, "vision_prompt_length": 2, "stage1_losses": ["itc"]},
        "data": {
            "dataset": "rstpreid",
            "root": str(data_root),
            "image_size": [64, 32],
            "text_length": 32,
            "batch_size": 8,
            "num_workers": 0,
        },
    }
    (configs / "tiny.yaml").write_text(yaml.safe_dump(config))
    env = dict(
        os.environ,
        CONFIGS=str(configs),
        DATASETS="tiny",
        SEEDS="0 1",
        ROOT=str(tmp_path / "paper"),
        CLIP=str(clip_dir),
        WANDB_MODE="offline",
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    )
    result = subprocess.run(
        ["bash", str(EXAMPLES / "reproduce_paper.sh")], env=env, cwd=tmp_path, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = json.loads((tmp_path / "paper" / "summary.json").read_text())["tiny"]
    assert set(summary["variants"]) == {"one-stage", "two-stage"}
    assert summary["differences"]["two-stage - one-stage"]["seeds"] == ["seed0", "seed1"]
    for variant, epochs, stage in (("two-stage", 3, 2), ("one-stage", 2, 2)):
        for seed in (0, 1):
            run = tmp_path / "paper" / "tiny" / variant / f"seed{seed}"
            (fit,) = run.rglob("metrics-fit.json")
            record = json.loads(fit.read_text())
            assert record["epochs_trained"] == epochs and record["seed"] == seed and record["stage"] == stage
            (test,) = run.rglob("metrics-test.json")
            tested = json.loads(test.read_text())
            assert tested["split"] == "test" and tested["checkpoint"] == record["best_checkpoints"][0]["path"]
    one_stage = yaml.safe_load((tmp_path / "paper" / "tiny" / "one-stage" / "seed0" / "run.yaml").read_text())
    assert one_stage["stage_switch"]["switch_epoch"] == 0 and one_stage["model"]["text_prompt_length"] == 0
    # a rerun skips what was tested already
    again = subprocess.run(
        ["bash", str(EXAMPLES / "reproduce_paper.sh")], env=env, cwd=tmp_path, capture_output=True, text=True
    )
    assert again.returncode == 0 and again.stdout.count("tested already, skipped") == 4
