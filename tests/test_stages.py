"""StageSwitch: what trains in each stage, DDP synchronisation through the switch, resuming."""

import json
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch

from promptdecouple.data import write_synthetic
from promptdecouple.module import PromptDecoupleModule
from promptdecouple.stages import StageSwitch, stage_for_epoch

pytestmark = pytest.mark.slow  # multi-process or end-to-end: `-m "not slow"` skips them

SCRIPT = Path(__file__).parent / "scripts" / "stage_run.py"
PROMPTS = {"clip.text_prompts.tokens", "clip.vision_prompts.tokens"}
HEAD = {"classifier.weight", "classifier.bias"}
FROZEN_ALWAYS = {"clip.clip_model.logit_scale"}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("rstpreid")
    write_synthetic(
        root, layout="rstpreid", num_identities=30, images_per_identity=2, image_size=(64, 32), seed=3
    )
    return root


def run(tiny_clip_dir, dataset, out, *extra):
    command = [
        sys.executable,
        str(SCRIPT),
        "--clip",
        str(tiny_clip_dir),
        "--data",
        str(dataset),
        "--out",
        str(out),
    ]
    result = subprocess.run([*command, *map(str, extra)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    return out


def record(out, epoch):
    return json.loads((out / f"epoch{epoch}.json").read_text())


def params(out, name):
    return torch.load(out / f"{name}.pt")


def changed(before, after):
    return {name for name in before if not torch.equal(before[name], after[name])}


@pytest.fixture(scope="module")
def ddp_run(tiny_clip_dir, dataset, tmp_path_factory):
    return run(
        tiny_clip_dir, dataset, tmp_path_factory.mktemp("ddp"), "--devices", 2, "--epochs", 3, "--switch", 1
    )


@pytest.fixture(scope="module")
def single_run(tiny_clip_dir, dataset, tmp_path_factory):
    return run(tiny_clip_dir, dataset, tmp_path_factory.mktemp("single"), "--epochs", 3, "--switch", 1)


def test_stage_for_epoch():
    assert [stage_for_epoch(e, 2) for e in range(4)] == [1, 1, 2, 2]
    assert [stage_for_epoch(e, 0) for e in range(2)] == [2, 2]
    with pytest.raises(ValueError, match="switch_epoch must be >= 0"):
        StageSwitch(-1)


@pytest.mark.parametrize("which", ["ddp_run", "single_run"])
def test_only_the_stage_parameters_move(which, request):
    out = request.getfixturevalue(which)
    init, first, last = params(out, "init"), params(out, "epoch0"), params(out, "epoch2")
    everything = set(init)
    assert changed(init, first) == PROMPTS
    stage2 = everything - PROMPTS - FROZEN_ALWAYS
    assert changed(first, last) == stage2
    assert [record(out, e)["stage"] for e in range(3)] == [1, 2, 2]
    assert set(record(out, 0)["trainable"]) == PROMPTS
    assert set(record(out, 2)["trainable"]) == stage2
    # stage 1 keeps no optimizer state for the frozen encoders
    assert record(out, 0)["optimizer_params"] == 2
    assert record(out, 2)["optimizer_params"] == len(stage2)


def test_ddp_ranks_stay_identical_through_the_switch(ddp_run):
    assert [record(ddp_run, e)["rank_gap"] for e in range(3)] == [0.0, 0.0, 0.0]
    assert all(record(ddp_run, e)["metrics"]["val/R1"] >= 0 for e in range(3))


@pytest.mark.parametrize("which", ["ddp_run", "single_run"])
@pytest.mark.parametrize("from_epoch", [0, 1])
def test_resume_continues_in_the_saved_stage(which, from_epoch, request, tiny_clip_dir, dataset, tmp_path):
    reference = request.getfixturevalue(which)
    devices = 2 if which == "ddp_run" else 1
    ckpt = reference / "ckpt" / f"epoch={from_epoch}.ckpt"
    out = run(
        tiny_clip_dir, dataset, tmp_path, "--devices", devices, "--epochs", 3, "--switch", 1, "--resume", ckpt
    )
    assert [record(out, e)["stage"] for e in range(from_epoch + 1, 3)] == [2] * (2 - from_epoch)
    assert record(out, 2)["lr"] == record(reference, 2)["lr"]
    resumed, uninterrupted = params(out, "epoch2"), params(reference, "epoch2")
    for name in uninterrupted:
        torch.testing.assert_close(resumed[name], uninterrupted[name], atol=0, rtol=0, msg=name)


def test_ddp_validation_equals_single_process(ddp_run, tiny_clip_dir, dataset, tmp_path):
    ckpt = ddp_run / "ckpt" / "epoch=2.ckpt"
    single = run(tiny_clip_dir, dataset, tmp_path / "one", "--validate", ckpt)
    ddp = run(tiny_clip_dir, dataset, tmp_path / "two", "--devices", 2, "--validate", ckpt)
    one = json.loads((single / "validate.json").read_text())
    two = json.loads((ddp / "validate.json").read_text())
    names = {"val/R1", "val/R5", "val/R10", "val/mAP", "val/mINP"}
    assert set(one) == names | {"val/queries", "val/gallery", "val/partial", "summary"}
    for name in names:
        assert two[name] == pytest.approx(one[name], abs=1e-4), name
    # the whole split was scored, once per item, in both
    assert one["summary"] == two["summary"]
    assert one["summary"]["partial"] is False and one["val/partial"] == 0.0
    assert one["summary"]["num_queries"] == one["summary"]["total_queries"] == one["val/queries"]


def test_a_partial_evaluation_says_so_and_counts_what_it_scored(ddp_run, tiny_clip_dir, dataset, tmp_path):
    """limit_val_batches=1 with evaluation batches of 2: 2 captions and 2 images per process."""
    ckpt = ddp_run / "ckpt" / "epoch=2.ckpt"
    full = json.loads(
        (run(tiny_clip_dir, dataset, tmp_path / "full", "--validate", ckpt) / "validate.json").read_text()
    )
    for devices in (1, 2):
        out = run(
            tiny_clip_dir, dataset, tmp_path / str(devices), "--devices", devices, "--validate", ckpt,
            "--eval-batch-size", 2, "--limit-val-batches", 1,
        )  # fmt: skip
        result = json.loads((out / "validate.json").read_text())
        summary = result["summary"]
        assert summary["partial"] is True and result["val/partial"] == 1.0
        assert summary["num_gallery"] == 2 * devices == result["val/gallery"]
        assert summary["num_queries"] + summary["unmatched"] == 2 * devices
        assert summary["num_queries"] == result["val/queries"]
        assert (summary["total_queries"], summary["total_gallery"]) == (12, 6)
        # chance of a random ranking of the scored gallery, not of the whole split's
        assert summary["chance"]["R1"] >= 100 / summary["num_gallery"]
        assert summary["chance"]["R1"] > full["summary"]["chance"]["R1"]


def test_switch_after_the_last_epoch_warns(tiny_clip_dir):
    module = PromptDecoupleModule(str(tiny_clip_dir), num_classes=3, image_size=(64, 32))
    trainer = L.Trainer(max_epochs=2, accelerator="cpu", logger=False, enable_progress_bar=False)
    with pytest.warns(UserWarning, match="stage 2 will never run"):
        StageSwitch(2).on_fit_start(trainer, module)


def test_sharded_strategies_are_refused(tiny_clip_dir):
    from types import SimpleNamespace

    from lightning.pytorch.strategies import FSDPStrategy

    module = PromptDecoupleModule(str(tiny_clip_dir), num_classes=3, image_size=(64, 32))
    trainer = SimpleNamespace(strategy=FSDPStrategy())  # a real FSDP Trainer needs a GPU
    with pytest.raises(ValueError, match="supports single-device and DDP"):
        StageSwitch(1).setup(trainer, module, "fit")


def test_bf16_mixed_trains_through_the_switch_as_float32_does(tiny_clip_dir, dataset, tmp_path):
    """Lightning's bf16-mixed on CPU: the same parameters move, by about as much, to about the same metrics."""
    common = ("--epochs", 3, "--switch", 1, "--global-batch-size", 8, "--augment", "--adam-eps", 1e-3)
    fp32 = run(tiny_clip_dir, dataset, tmp_path / "fp32", *common)
    bf16 = run(tiny_clip_dir, dataset, tmp_path / "bf16", *common, "--precision", "bf16-mixed")
    losses = [json.loads((out / "losses.json").read_text()) for out in (fp32, bf16)]
    assert losses[0].keys() == losses[1].keys() and len(losses[0]) == 36
    gaps = [abs(losses[1][step] - value) / value for step, value in losses[0].items()]
    assert all(torch.isfinite(torch.tensor(list(losses[1].values()))))
    assert max(gaps[:12]) < 0.01  # stage 1, on the same batches: rounding only
    assert max(gaps) < 0.15 and sum(gaps) / len(gaps) < 0.02  # then the trajectories drift apart a little
    init = params(fp32, "init")
    assert torch.equal(
        torch.cat([p.flatten() for p in init.values()]),
        torch.cat([p.flatten() for p in params(bf16, "init").values()]),
    )
    for first, last, moved in ((None, 0, PROMPTS), (0, 2, set(init) - PROMPTS - FROZEN_ALWAYS)):
        for out in (fp32, bf16):
            before = init if first is None else params(out, f"epoch{first}")
            assert changed(before, params(out, f"epoch{last}")) == moved
    for name in (
        "clip.text_prompts.tokens",
        "clip.vision_prompts.tokens",
        "clip.clip_model.visual_projection.weight",
    ):
        update = [params(out, "epoch2")[name] - init[name] for out in (fp32, bf16)]
        assert update[1].norm() == pytest.approx(float(update[0].norm()), rel=0.1), name
        assert torch.nn.functional.cosine_similarity(update[0].flatten(), update[1].flatten(), dim=0) > 0.9, (
            name
        )
    metrics = [record(out, 2)["metrics"] for out in (fp32, bf16)]
    assert metrics[1]["val/mAP"] == pytest.approx(metrics[0]["val/mAP"], abs=5)
