"""benchmarks/gpu.py --smoke: every section of the GPU benchmark runs on CPU with a tiny model."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # multi-process or end-to-end: `-m "not slow"` skips them

SCRIPT = Path(__file__).parents[1] / "benchmarks" / "gpu.py"


def test_the_smoke_mode_runs_every_section_and_writes_the_report(tmp_path):
    out = tmp_path / "smoke.json"
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--smoke", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["mode"] == "smoke"
    for section in ("train", "largest_batch", "sdpa", "compile", "gallery", "metrics", "loader"):
        assert "error" not in report[section], (section, report[section])
    standard = report["train"]["batch_8"]
    for name in ("stage1", "stage2", "hf_clip", "prompted", "prompted_no_prompts"):
        assert standard[name]["pairs_per_s"] > 0, name
    assert standard["stage1_over_stage2"] > 0 and standard["prompted_over_hf"] > 0
    assert report["largest_batch"]["batch"] == 16 and "batch_16" in report["train"]
    assert "pairs_per_s" in report["sdpa"]["math"]  # CPU has no memory-efficient kernel: recorded as an error
    assert report["compile"]["graph_breaks_text"] == 0 and report["compile"]["graph_breaks_image"] == 0
    assert report["metrics"]["ratio"] > 0 and report["loader"]["images_per_s"] > 0
    assert "retrieval_metrics at 512^2" in result.stdout
