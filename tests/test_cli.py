"""The `promptdecouple` command, run in-process through `main`: `data synth|check` and LightningCLI."""

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
import wandb
import yaml
from PIL import Image
from tiny_configs import tiny_demo

from promptdecouple.cli import PromptDecoupleCLI, main
from promptdecouple.data import TIReIDDataModule
from promptdecouple.demo import DemoAssets
from promptdecouple.lightning_cli import write_final_metrics
from promptdecouple.module import PromptDecoupleModule

SYNTH = [
    "data",
    "synth",
    "--layout",
    "rstpreid",
    "--num-identities",
    "10",
    "--images-per-identity",
    "2",
    "--image-size",
    "48",
    "16",
]


@pytest.fixture
def dataset(tmp_path):
    root = tmp_path / "rstp"
    assert main([*SYNTH, "--root", str(root)]) == 0
    return root


def test_synth_writes_the_layout_and_reports_it(tmp_path, capsys):
    assert main([*SYNTH, "--root", str(tmp_path)]) == 0
    assert (tmp_path / "data_captions.json").is_file()
    assert len(list((tmp_path / "imgs").iterdir())) == 20
    out = capsys.readouterr().out
    assert "wrote 20 images, 40 captions of 10 identities" in out
    assert "train" in out and "test" in out


def test_synth_refuses_to_overwrite_without_the_flag(dataset, capsys):
    assert main([*SYNTH, "--root", str(dataset)]) == 1
    assert "overwrite" in capsys.readouterr().out
    assert main([*SYNTH, "--root", str(dataset), "--overwrite", "--seed", "1"]) == 0


def test_check_prints_a_table_per_split_and_exits_zero_on_a_clean_dataset(dataset, capsys, tiny_clip_dir):
    code = main(
        [
            "data",
            "check",
            "--dataset",
            "rstpreid",
            "--root",
            str(dataset),
            "--decode",
            "--tokenizer",
            str(tiny_clip_dir),
            "--text-length",
            "20",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "no problems found" in out
    for header in ("identities", "images", "captions", "words min", "mean", "max", "> 20 tokens"):
        assert header in out
    entries = json.loads((dataset / "data_captions.json").read_text())
    rows = {
        cells[0]: cells[1:]
        for line in out.splitlines()
        if len(cells := [c.strip() for c in line.split("│")[1:-1]]) > 4
    }
    for split in ("train", "val", "test"):
        mine = [e for e in entries if e["split"] == split]
        identities, images, captions = (int(n.replace(",", "")) for n in rows[split][:3])
        assert (identities, images, captions) == (len({e["id"] for e in mine}), len(mine), 2 * len(mine))


def test_check_lists_every_problem_and_exits_non_zero(dataset, capsys):
    entries = json.loads((dataset / "data_captions.json").read_text())
    entries[3]["split"] = "dev"
    entries[5]["captions"] = []
    (dataset / "data_captions.json").write_text(json.dumps(entries))
    os.remove(dataset / "imgs" / entries[0]["img_path"])
    (dataset / "imgs" / entries[1]["img_path"]).write_bytes(b"not a jpeg")

    assert main(["data", "check", "--dataset", "rstpreid", "--root", str(dataset)]) == 1
    out = capsys.readouterr().out
    assert f"entry 3 (id {entries[3]['id']}): split must be one of train, val, test, found 'dev'" in out
    assert f"entry 5 (id {entries[5]['id']}): captions is an empty list" in out
    assert f"missing image: {dataset.resolve() / 'imgs' / entries[0]['img_path']}" in out
    # found without decoding: the file does not begin like an image
    assert "unreadable image:" in out and entries[1]["img_path"] in out and "not a JPEG" in out
    assert "4 problem(s)" in out

    assert main(["data", "check", "--dataset", "rstpreid", "--root", str(dataset), "--decode"]) == 1
    out = capsys.readouterr().out
    assert "cannot be decoded" in out and entries[1]["img_path"] in out
    assert "4 problem(s)" in out


def test_check_finds_empty_and_truncated_images_without_decoding(dataset, capsys):
    entries = json.loads((dataset / "data_captions.json").read_text())
    empty, truncated = (dataset / "imgs" / entries[i]["img_path"] for i in (2, 4))
    empty.write_bytes(b"")
    write_truncated_jpeg(truncated)

    assert main(["data", "check", "--dataset", "rstpreid", "--root", str(dataset)]) == 1
    out = capsys.readouterr().out
    assert "no problems" not in out
    assert f"unreadable image: {empty.resolve()}: empty file (0 bytes)" in out
    assert f"truncated image: {truncated.resolve()}: truncated JPEG: no end-of-image marker" in out
    assert "fit uses what decodes" in out
    assert "2 problem(s)" in out


def write_truncated_jpeg(path: Path, keep: float = 0.6) -> None:
    """A 128x64 JPEG cut after `keep` of its bytes: headers whole, the end of the picture missing."""
    noise = np.random.default_rng(0).integers(0, 256, (128, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(path, quality=90)
    path.write_bytes(path.read_bytes()[: int(path.stat().st_size * keep)])


def test_check_on_the_wrong_folder_names_the_missing_file(tmp_path, capsys):
    assert main(["data", "check", "--dataset", "cuhk-pedes", "--root", str(tmp_path)]) == 1
    assert "reid_raw.json not found" in capsys.readouterr().out


def test_usage_errors_exit_with_two(capsys):
    assert main(["data", "check", "--dataset", "cuhk-pedes"]) == 2
    assert main(["data", "synth", "--layout", "market", "--root", "x"]) == 2
    assert main(["data"]) == 2
    assert main(["data", "--help"]) == 0
    assert "synth" in capsys.readouterr().out


# ---------------------------------------------------------------- LightningCLI subcommands

CONFIGS = sorted((Path(__file__).parents[1] / "examples" / "configs").glob("*.yaml"))


def test_every_shipped_config_is_there():
    assert {c.name for c in CONFIGS} >= {"cuhk_pedes.yaml", "icfg_pedes.yaml", "rstpreid.yaml", "demo.yaml"}


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: c.name)
def test_shipped_configs_parse(config, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["fit", "--config", str(config), "--print_config"])
    assert exit_.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["clip"]
    assert "num_classes" not in printed["model"]  # linked from the data at instantiation
    assert printed["trainer"]["max_epochs"] > printed["stage_switch"]["switch_epoch"]


def test_the_demo_refuses_a_missing_pretrained_clip_and_says_how_to_get_it(tmp_path, capsys):
    config = yaml.safe_load((Path(__file__).parents[1] / "examples" / "configs" / "demo.yaml").read_text())
    assert config["demo"]["pretrained_clip"] and config["model"]["clip"] == config["demo"]["clip_dir"]
    missing = tmp_path / "no-clip"
    args = ["fit", "--config", str(CONFIGS[[c.name for c in CONFIGS].index("demo.yaml")])]
    args += [
        "--demo.clip_dir",
        str(missing),
        "--model.clip",
        str(missing),
        "--demo.data_root",
        str(tmp_path / "data"),
    ]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert str(missing) in err and "benchmarks/miniworld/pretrain.py" in err and "git checkout" in err
    assert not missing.exists() and not (tmp_path / "data").exists()  # refused before anything was made


@pytest.mark.slow
def test_fit_validate_and_test_from_a_config(tmp_path, tiny_clip_dir, capsys):
    clip_dir, data_root = tmp_path / "clip", tmp_path / "data"
    config = {
        "seed_everything": 0,
        "demo": tiny_demo(clip_dir, data_root),
        "trainer": {
            "accelerator": "cpu",
            "max_epochs": 2,
            "enable_progress_bar": False,
            "num_sanity_val_steps": 0,
            "default_root_dir": str(tmp_path / "runs"),
            "logger": {
                "class_path": "lightning.pytorch.loggers.WandbLogger",
                "init_args": {"save_dir": str(tmp_path / "runs"), "offline": True, "project": "test"},
            },
            "callbacks": [
                {
                    "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                    "init_args": {
                        "dirpath": str(tmp_path / "ckpt"),
                        "monitor": "val/R1",
                        "mode": "max",
                        "filename": "best",
                    },
                }
            ],
        },
        "stage_switch": {"switch_epoch": 1},
        "model": {"clip": str(clip_dir), "text_prompt_length": 2, "vision_prompt_length": 2},
        "data": {
            "dataset": "rstpreid",
            "root": str(data_root),
            "image_size": [64, 32],
            "text_length": 32,
            "batch_size": 8,
            "num_workers": 0,
        },
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    try:
        assert main(["fit", "--config", str(path)]) == 0
    finally:
        wandb.finish()
    out = capsys.readouterr().out
    assert (clip_dir / "config.json").is_file() and (data_root / "data_captions.json").is_file()
    assert "chance" in out and "mINP" in out
    assert list((tmp_path / "runs" / "wandb").glob("offline-run-*"))
    checkpoint = torch.load(tmp_path / "ckpt" / "best.ckpt", weights_only=False)
    assert checkpoint["promptdecouple"]["stage"] in (1, 2)
    data = TIReIDDataModule("rstpreid", data_root, tokenizer=str(clip_dir))
    assert checkpoint["hyper_parameters"]["num_classes"] == data.num_classes  # linked from the data
    (record_path,) = (tmp_path / "runs").rglob("metrics-fit.json")  # beside the run's config
    assert (record_path.parent / "config.yaml").is_file()
    record = json.loads(record_path.read_text())
    assert record["split"] == "val" and record["epochs_trained"] == 2 and record["seed"] == 0
    assert record["best_checkpoints"][0]["monitor"] == "val/R1"
    assert record["best_checkpoints"][0]["path"] == str(tmp_path / "ckpt" / "best.ckpt")
    config["trainer"].pop("logger")
    config["trainer"]["logger"] = False
    path.write_text(yaml.safe_dump(config))
    assert main(["test", "--config", str(path), "--ckpt_path", str(tmp_path / "ckpt" / "best.ckpt")]) == 0
    out = capsys.readouterr().out
    assert "test split" in out and "R1" in out


def test_python_dash_m_runs_the_same_command():
    result = subprocess.run(
        [sys.executable, "-m", "promptdecouple", "fit", "--help"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "--stage_switch.switch_epoch" in result.stdout and "--model.prompt_lr" in result.stdout


@pytest.mark.slow
def test_fit_logs_the_config_and_the_retrieval_panel_to_wandb(tmp_path):
    runs = tmp_path / "runs"
    config = {
        "seed_everything": 0,
        "demo": tiny_demo(tmp_path / "clip", tmp_path / "data"),
        "trainer": {
            "accelerator": "cpu",
            "max_epochs": 1,
            "limit_train_batches": 2,
            "enable_progress_bar": False,
            "enable_checkpointing": False,
            "num_sanity_val_steps": 0,
            "logger": {
                "class_path": "lightning.pytorch.loggers.WandbLogger",
                "init_args": {"save_dir": str(runs), "offline": True, "project": "test"},
            },
        },
        "stage_switch": {"switch_epoch": 1},
        "retrieval_panel": {"num_queries": 2, "k": 3},
        "model": {
            "clip": str(tmp_path / "clip"),
            "tokenizer": str(tmp_path / "clip"),  # as the data's (Lightning refuses differing hparams)
            "text_prompt_length": 2,
            "vision_prompt_length": 2,
        },
        "data": {
            "dataset": "rstpreid",
            "root": str(tmp_path / "data"),
            "image_size": [64, 32],
            "text_length": 32,
            "batch_size": 8,
            "num_workers": 0,
        },
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    try:
        assert main(["fit", "--config", str(path), "--model.prompt_lr", "0.005"]) == 0
        logged = wandb.run.config.as_dict()["config"]
        evaluation = wandb.run.config.as_dict()["evaluation"]
        run_id = wandb.run.id
    finally:
        wandb.finish()
    (run,) = (runs / "wandb").glob("offline-run-*")
    assert logged["model"]["prompt_lr"] == 0.005  # the resolved value, command line included
    assert logged["model"]["clip"] == str(tmp_path / "clip")
    assert logged["retrieval_panel"] == {"num_queries": 2, "k": 3, "thumbnail_height": 192}
    assert logged["trainer"]["max_epochs"] == 1 and "num_sanity_val_steps" in logged["trainer"]
    assert (runs / "test" / run_id / "config.yaml").is_file()  # the run's own folder: save_dir/project/id
    assert not (runs / "config.yaml").exists()
    assert evaluation == {
        "val_split": "val",
        "checkpoints_selected_by": [],
    }  # which split the val loop scores
    assert len(list((run / "files" / "media" / "images" / "val").glob("retrieval_*.png"))) == 2


def test_the_retrieval_panel_is_on_by_default_and_off_with_one_argument(capsys):
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(CONFIGS[0]), "--retrieval_panel.num_queries", "0", "--print_config"])
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["retrieval_panel"]["num_queries"] == 0
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(CONFIGS[0]), "--print_config"])
    assert yaml.safe_load(capsys.readouterr().out)["retrieval_panel"]["num_queries"] > 0


# ---------------------------------------------------------------- resuming, evaluating, interrupting


def run_config(root: Path) -> dict:
    """A tiny, deterministic fit (no augmentation, no logger) with a checkpoint per epoch."""
    return {
        "seed_everything": 0,
        "trainer": {
            "accelerator": "cpu",
            "max_epochs": 2,
            "limit_train_batches": 3,
            "enable_progress_bar": False,
            "num_sanity_val_steps": 0,
            "logger": False,
            "default_root_dir": str(root / "runs"),
            "callbacks": [checkpoint_callback(root / "ckpt")],
        },
        "stage_switch": {"switch_epoch": 1},
        "retrieval_panel": {"num_queries": 0},
        "model": {
            "clip": str(root / "clip"),
            "text_prompt_length": 2,
            "vision_prompt_length": 2,
            "encoder_lr": 3e-4,
        },
        "data": {
            "dataset": "rstpreid",
            "root": str(root / "data"),
            "image_size": [64, 32],
            "text_length": 32,
            "batch_size": 8,
            "num_workers": 0,
            "augment": False,
        },
    }


def checkpoint_callback(folder: Path) -> dict:
    return {
        "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
        "init_args": {"dirpath": str(folder), "filename": "{epoch}", "save_top_k": -1, "save_last": True},
    }


def write_config(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A finished 2-epoch run (switch at 1): its folder and config."""
    root = tmp_path_factory.mktemp("trained")
    DemoAssets(**tiny_demo(root / "clip", root / "data")).ensure()
    config = write_config(root / "fit.yaml", run_config(root))
    assert main(["fit", "--config", str(config)]) == 0
    return root, config


def test_a_resume_refuses_changed_settings_listing_each_before_any_work(trained, capsys):
    root, config = trained
    before = {p.name: p.stat().st_mtime_ns for p in (root / "ckpt").iterdir()}
    capsys.readouterr()
    args = ["fit", "--config", str(config), "--ckpt_path", str(root / "ckpt" / "epoch=0.ckpt")]
    changed = ["--model.text_prompt_length", "8", "--model.encoder_lr", "0.5", "--data.batch_size", "4"]
    assert main([*args, *changed]) == 2
    err = capsys.readouterr().err
    assert "model.text_prompt_length: checkpoint 2, given 8" in err
    assert "model.encoder_lr: checkpoint 0.0003, given 0.5" in err
    assert "data.batch_size: checkpoint 8, given 4" in err
    assert {p.name: p.stat().st_mtime_ns for p in (root / "ckpt").iterdir()} == before  # nothing ran
    # `--ckpt_path last` (what requeued cluster jobs use) is checked against the checkpoint it means
    assert main(["fit", "--config", str(config), "--ckpt_path", "last", "--model.encoder_lr", "0.5"]) == 2
    err = capsys.readouterr().err
    assert f"checkpoint {root / 'ckpt' / 'last.ckpt'} was trained" in err and "model.encoder_lr" in err


@pytest.mark.slow
def test_a_resume_uses_a_moved_clip_folder_and_continues_exactly(trained, tmp_path, capsys):
    root, config = trained
    moved = tmp_path / "clip_moved"
    elsewhere = write_config(
        tmp_path / "elsewhere.yaml", {"trainer": {"callbacks": [checkpoint_callback(tmp_path)]}}
    )
    shutil.move(root / "clip", moved)
    try:
        code = main(
            [
                *("fit", "--config", str(config), "--config", str(elsewhere)),
                *("--ckpt_path", str(root / "ckpt" / "epoch=0.ckpt"), "--model.clip", str(moved)),
            ]
        )
    finally:
        shutil.move(moved, root / "clip")
    assert code == 0
    out = capsys.readouterr().out
    assert f"model.clip: '{moved}', not the checkpoint's '{root / 'clip'}' (a path setting" in out
    resumed = torch.load(tmp_path / "last.ckpt", weights_only=False)
    uninterrupted = torch.load(root / "ckpt" / "last.ckpt", weights_only=False)
    assert resumed["hyper_parameters"]["clip"] == str(moved)
    for name, value in uninterrupted["state_dict"].items():
        assert torch.equal(resumed["state_dict"][name], value), name


def test_evaluations_keep_the_checkpoints_training_settings_and_refuse_model_ones(trained, capsys):
    root, config = trained
    ckpt = str(root / "ckpt" / "epoch=1.ckpt")
    capsys.readouterr()
    assert main(["test", "--config", str(config), "--ckpt_path", ckpt, "--model.encoder_lr", "0.5"]) == 0
    out = capsys.readouterr().out
    assert (
        "model.encoder_lr: the checkpoint's 0.0003 is kept, the given 0.5 does not change an evaluation"
        in out
    )
    assert "test split" in out
    assert (
        main(["validate", "--config", str(config), "--ckpt_path", ckpt, "--model.vision_prompt_length", "3"])
        == 2
    )
    assert "model.vision_prompt_length: checkpoint 2, given 3" in capsys.readouterr().err


def test_a_checkpoint_carries_the_settings_to_test_it(trained, tmp_path, monkeypatch, capsys):
    root, _ = trained
    monkeypatch.chdir(tmp_path)
    args = ["--trainer.logger", "false", "--trainer.enable_progress_bar", "false"]
    assert main(["test", "--ckpt_path", str(root / "ckpt" / "epoch=1.ckpt"), *args]) == 0
    out = capsys.readouterr().out
    assert "RSTPReid test split" in out
    assert f"config: {tmp_path / 'lightning_logs' / 'version_0' / 'config.yaml'}" in out
    saved = yaml.safe_load((tmp_path / "lightning_logs" / "version_0" / "config.yaml").read_text())
    assert saved["model"]["text_prompt_length"] == 2 and saved["data"]["root"] == str(root / "data")
    # the closing metrics, beside the config, say what they were computed on
    record = json.loads((tmp_path / "lightning_logs" / "version_0" / "metrics-test.json").read_text())
    queries, gallery = TIReIDDataModule("rstpreid", root / "data", tokenizer=str(root / "clip")).eval_set(
        "test"
    )
    assert record["subcommand"] == "test" and record["split"] == "test" and record["dataset"] == "RSTPReid"
    assert record["partial"] is False
    assert (record["num_queries"], record["num_gallery"]) == (len(queries), len(gallery))
    r1_row = next(line for line in out.splitlines() if line.replace("│", " ").split()[:1] == ["R1"])
    assert f"{record['metrics']['R1']:.2f}" in r1_row
    assert record["checkpoint"] == str(root / "ckpt" / "epoch=1.ckpt") and record["stage"] == 2
    assert f"final metrics: {tmp_path / 'lightning_logs' / 'version_0' / 'metrics-test.json'}" in out


def test_final_metrics_never_replace_a_file(tmp_path):
    first = write_final_metrics(tmp_path, "test", {"metrics": {"R1": 1.0}})
    second = write_final_metrics(tmp_path, "test", {"metrics": {"R1": 2.0}})
    assert (first.name, second.name) == ("metrics-test.json", "metrics-test-1.json")
    assert json.loads(first.read_text())["metrics"]["R1"] == 1.0


@pytest.mark.parametrize(("command", "split"), [("validate", "val"), ("test", "test")])
def test_a_partial_evaluation_is_labelled_with_what_it_scored(trained, capsys, command, split):
    root, config = trained
    data = TIReIDDataModule("rstpreid", root / "data", tokenizer=str(root / "clip"))
    queries, gallery = data.eval_set(split)
    capsys.readouterr()
    limit = f"limit_{split}_batches"
    args = [f"--trainer.{limit}", "1", "--data.eval_batch_size", "3"]
    assert (
        main([command, "--config", str(config), "--ckpt_path", str(root / "ckpt" / "epoch=1.ckpt"), *args])
        == 0
    )
    out = capsys.readouterr().out
    assert (
        f"PARTIAL evaluation of the RSTPReid {split} split: 3 of {len(queries)} queries and 3 of {len(gallery)}"
        in out
    )
    assert f"trainer.{limit}" in out and "not those of the split" in out
    # the metrics file says partial, with what was scored
    path = Path(out.split("final metrics: ")[1].split()[0])
    record = json.loads(path.read_text())
    assert record["partial"] is True and (record["num_queries"], record["num_gallery"]) == (3, 3)
    assert (record["total_queries"], record["total_gallery"]) == (len(queries), len(gallery))


def test_zero_shot_is_scored_with_the_prompts_off_before_training_and_shown_beside_each_stage(
    trained, tmp_path, capsys
):
    root, _ = trained
    config = run_config(root)
    config["trainer"]["default_root_dir"] = str(tmp_path / "runs")
    config["trainer"]["callbacks"] = [checkpoint_callback(tmp_path / "ckpt")]
    path = write_config(tmp_path / "fit.yaml", config)
    capsys.readouterr()
    assert main(["fit", "--config", str(path), "--zero_shot", "true"]) == 0
    out = capsys.readouterr().out
    assert "What each stage did (val split" in out and "zero-shot" in out
    (record_path,) = (tmp_path / "runs").rglob("metrics-fit.json")
    stages = json.loads(record_path.read_text())["stages"]
    assert [(row["label"], row["epochs_trained"]) for row in stages] == [
        ("zero-shot", 0),
        ("after stage 1", 1),
        ("after stage 2", 2),
    ]
    assert stages[-1]["metrics"] == json.loads(record_path.read_text())["metrics"]  # the last evaluation
    # zero-shot is the CLIP as given: the same as a model without prompts, evaluated untrained
    plain = PromptDecoupleModule(
        clip=str(root / "clip"),
        text_prompt_length=0,
        vision_prompt_length=0,
        image_size=(64, 32),
        text_length=32,
        stage1_losses=["itc"],
        stage2_losses=["itc"],
    )
    data = TIReIDDataModule(
        "rstpreid",
        root / "data",
        tokenizer=str(root / "clip"),
        image_size=(64, 32),
        text_length=32,
        batch_size=8,
        num_workers=0,
    )
    L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False).validate(plain, datamodule=data)
    assert stages[0]["metrics"] == pytest.approx(plain.last_evaluation["val"].metrics, abs=1e-4)
    # scoring first changes nothing in training: the same weights as the run without it
    trained_with = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=False)["state_dict"]
    trained_without = torch.load(root / "ckpt" / "last.ckpt", weights_only=False)["state_dict"]
    assert trained_with.keys() == trained_without.keys()
    for name, value in trained_without.items():
        assert torch.equal(trained_with[name], value), name
    # a resumed fit is not the CLIP as given: said, and not scored
    resume = ["--ckpt_path", str(root / "ckpt" / "epoch=0.ckpt"), "--zero_shot", "true"]
    config["trainer"]["callbacks"] = [checkpoint_callback(tmp_path / "ckpt-resumed")]
    assert main(["fit", "--config", str(write_config(tmp_path / "resume.yaml", config)), *resume]) == 0
    out = capsys.readouterr().out
    assert "zero_shot: not scored, this fit resumes from a checkpoint" in out
    assert "zero-shot" not in out


@pytest.mark.slow
def test_zero_shot_under_ddp_is_the_single_process_score(trained, tmp_path):
    root, _ = trained
    config = run_config(root)
    config["trainer"]["default_root_dir"] = str(tmp_path / "runs")
    config["trainer"]["callbacks"] = []
    config["data"]["global_batch_size"] = config["data"].pop("batch_size")
    path = write_config(tmp_path / "fit.yaml", config)
    extra = ["--zero_shot", "true", "--trainer.devices", "2", "--trainer.strategy", "ddp"]
    result = subprocess.run(
        [sys.executable, "-m", "promptdecouple", "fit", "--config", str(path), *extra],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (record_path,) = (tmp_path / "runs").rglob("metrics-fit.json")
    stages = json.loads(record_path.read_text())["stages"]
    assert [row["label"] for row in stages] == ["zero-shot", "after stage 1", "after stage 2"]
    assert stages[0]["partial"] is False
    # the CLIP as given, scored in one process
    model = PromptDecoupleModule(
        clip=str(root / "clip"),
        text_prompt_length=0,
        vision_prompt_length=0,
        image_size=(64, 32),
        text_length=32,
        stage1_losses=["itc"],
        stage2_losses=["itc"],
    )
    data = TIReIDDataModule(
        "rstpreid",
        root / "data",
        tokenizer=str(root / "clip"),
        image_size=(64, 32),
        text_length=32,
        num_workers=0,
    )
    L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False).validate(model, datamodule=data)
    assert stages[0]["metrics"] == pytest.approx(model.last_evaluation["val"].metrics, abs=1e-4)


@pytest.mark.slow
def test_the_resolved_config_never_replaces_a_file_of_the_user(trained, tmp_path, monkeypatch, capsys):
    root, _ = trained
    monkeypatch.chdir(tmp_path)
    config = run_config(root)
    config["trainer"].pop("default_root_dir")
    config["trainer"].update(
        max_epochs=1, limit_train_batches=1, limit_val_batches=1, enable_checkpointing=False
    )
    config["trainer"]["callbacks"] = []
    mine = "# my notes: keep these\n" + yaml.safe_dump(config)
    (tmp_path / "config.yaml").write_text(mine)
    for run in range(2):
        assert main(["fit", "--config", "config.yaml"]) == 0
        assert (tmp_path / "lightning_logs" / f"version_{run}" / "config.yaml").is_file()
    assert (tmp_path / "config.yaml").read_text() == mine


@pytest.mark.slow
def test_sigterm_exits_with_143_and_a_checkpoint_of_where_it_stopped(trained, tmp_path):
    root, config = trained
    (tmp_path / "send_sigterm.py").write_text(
        textwrap.dedent(
            """
            import os, signal
            from lightning.pytorch.callbacks import Callback

            class SendSigterm(Callback):
                def on_train_batch_end(self, trainer, *args):
                    if trainer.global_step == 4:
                        os.kill(os.getpid(), signal.SIGTERM)
            """
        )
    )
    extra = {
        "trainer": {
            "callbacks": [checkpoint_callback(tmp_path / "ckpt"), {"class_path": "send_sigterm.SendSigterm"}],
        }
    }
    write_config(tmp_path / "extra.yaml", extra)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "promptdecouple",
            "fit",
            "--config",
            str(config),
            "--config",
            str(tmp_path / "extra.yaml"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(tmp_path), "WANDB_MODE": "disabled"},
    )
    assert result.returncode == 143, result.stderr[-3000:]
    saved = tmp_path / "ckpt" / "last-interrupted.ckpt"
    assert (
        f"fit interrupted by SIGTERM at epoch 1, after 4 optimizer steps: checkpoint saved to {saved}"
        in result.stderr
    )
    assert torch.load(saved, weights_only=False)["global_step"] == 4


@pytest.mark.slow
def test_fit_trains_over_a_truncated_image_and_refuses_an_empty_one_unless_told(trained, tmp_path, capsys):
    root, config = trained
    shutil.copytree(root / "data", tmp_path / "data")
    entries = json.loads((tmp_path / "data" / "data_captions.json").read_text())
    train = [e["img_path"] for e in entries if e["split"] == "train"]
    empty, truncated = (tmp_path / "data" / "imgs" / train[i] for i in (0, 3))
    empty.write_bytes(b"")
    write_truncated_jpeg(truncated)
    args = [
        "fit",
        "--config",
        str(config),
        "--data.root",
        str(tmp_path / "data"),
        "--trainer.max_epochs",
        "1",
    ]
    args += ["--trainer.callbacks", "[]", "--trainer.enable_checkpointing", "false"]
    capsys.readouterr()
    assert main(args) == 2  # found at setup, before training
    err = capsys.readouterr().err
    assert f"{empty.resolve()}: empty file (0 bytes)" in err and "bad_entries='skip'" in err

    with pytest.warns(UserWarning) as caught:
        assert main([*args, "--data.bad_entries", "skip"]) == 0
    warned = "\n".join(str(w.message) for w in caught)
    assert "left out 1 of" in warned and "1 x unreadable image" in warned
    assert "are truncated" in warned and str(truncated.resolve()) in warned
    out = capsys.readouterr().out
    assert "1 entries were left out" in out and "1 truncated image(s) were used" in out


def lightning_parser(subcommand: str = "fit"):
    """The parser of a LightningCLI subcommand, as `promptdecouple` builds it."""
    import argparse

    class Captured(Exception):
        pass

    class Probe(PromptDecoupleCLI):
        def parse_arguments(self, parser, args):
            raise Captured(parser)

    with pytest.raises(Captured) as caught:
        Probe(args=[subcommand])
    parser = caught.value.args[0]
    subcommands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return subcommands.choices[subcommand]


SECTIONS = ("model", "data", "stage_switch", "retrieval_panel", "preemption")


def test_every_argument_of_fit_has_its_own_help():
    from jsonargparse import ArgumentParser

    parser = lightning_parser("fit")
    options = {
        action.dest: action.help
        for action in parser._actions
        if action.dest.split(".")[0] in SECTIONS and "." in action.dest and not action.dest.endswith(".help")
    }
    assert len(options) > 50 and "model.text_prompt_length" in options and "data.flip" in options
    missing = sorted(dest for dest, text in options.items() if not text or not text.strip())
    assert missing == [], f"arguments without help: {missing}"
    assert options["model.text_prompt_length"] != options["model.vision_prompt_length"]
    demo = ArgumentParser()
    demo.add_class_arguments(DemoAssets, "demo")
    fields = {
        a.dest: a.help for a in demo._actions if a.dest.startswith("demo.") and not a.dest.endswith(".help")
    }
    assert len(fields) == 12 and all(text and text.strip() for text in fields.values()), fields


@pytest.mark.slow
@pytest.mark.parametrize("devices", [1, 2])
def test_predict_writes_the_features_of_a_split_as_the_module_encodes_them(trained, tmp_path, devices):
    root, config = trained
    ckpt = root / "ckpt" / "epoch=1.ckpt"
    out = tmp_path / "features.pt"
    args = ["predict", "--config", str(config), "--ckpt_path", str(ckpt), "--predict_writer.output", str(out)]
    if devices == 1:
        assert main(args) == 0
    else:  # 2 DDP processes, each predicting its share; one file
        extra = ["--trainer.devices", "2", "--trainer.strategy", "ddp"]
        result = subprocess.run(
            [sys.executable, "-m", "promptdecouple", *args, *extra],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert result.returncode == 0, result.stderr[-3000:]
    stored = torch.load(out, weights_only=True)
    data = TIReIDDataModule("rstpreid", root / "data", tokenizer=str(root / "clip"))
    queries, gallery = data.eval_set("test")
    assert (stored["dataset"], stored["split"]) == ("rstpreid", "test")
    assert stored["checkpoint"]["path"] == str(ckpt.resolve())
    assert stored["queries"]["captions"] == queries["caption"].tolist()
    assert stored["gallery"]["image_paths"] == gallery["image_path"].tolist()
    assert stored["queries"]["pids"].tolist() == queries["pid"].tolist()
    module = PromptDecoupleModule.load_from_checkpoint(ckpt)
    torch.testing.assert_close(
        stored["queries"]["features"], module.encode_texts(queries["caption"].tolist())
    )
    torch.testing.assert_close(
        stored["gallery"]["features"], module.encode_images(gallery["image_path"].tolist())
    )
    if devices == 1:  # never over a file, unless asked
        assert main(args) == 2
        assert main([*args, "--predict_writer.overwrite", "true"]) == 0


def test_a_normal_fit_emits_no_warning_of_its_own(tmp_path):
    import warnings

    import promptdecouple

    config = {
        "seed_everything": 0,
        "demo": tiny_demo(tmp_path / "clip", tmp_path / "data"),
        "trainer": {
            "accelerator": "cpu",
            "max_epochs": 2,
            "log_every_n_steps": 1,
            "enable_progress_bar": False,
            "num_sanity_val_steps": 0,
            "logger": False,
            "default_root_dir": str(tmp_path / "runs"),
        },
        "stage_switch": {"switch_epoch": 1},
        "model": {"clip": str(tmp_path / "clip"), "text_prompt_length": 2, "vision_prompt_length": 2},
        "data": {
            "dataset": "rstpreid",
            "root": str(tmp_path / "data"),
            "image_size": [64, 32],
            "text_length": 32,
            "global_batch_size": 8,
            "num_workers": 0,
        },
    }
    path = write_config(tmp_path / "config.yaml", config)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main(["fit", "--config", str(path)]) == 0
    package = str(Path(promptdecouple.__file__).parent)
    ours = [f"{w.filename}:{w.lineno}: {w.message}" for w in caught if w.filename.startswith(package)]
    assert ours == []
    spurious = ("args parameter is intended", "set_vital")  # raised inside Lightning and torch by our calls
    assert not [str(w.message) for w in caught if any(text in str(w.message) for text in spurious)]


def test_the_top_level_help_lists_every_command_and_each_has_its_own_help(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for command in ("fit", "validate", "test", "predict", "data synth", "data check", "search"):
        assert f"  {command} " in out, command
    for command in (["data", "synth"], ["data", "check"], ["search"]):
        assert main([*command, "--help"]) == 0
        assert "usage: promptdecouple " + " ".join(command) in capsys.readouterr().out
    for command in ("validate", "test", "predict"):
        with pytest.raises(SystemExit) as exit_:
            main([command, "--help"])
        assert exit_.value.code == 0 and "--ckpt_path" in capsys.readouterr().out
    assert main(["evaluate"]) == 2
    assert "unknown command 'evaluate'" in capsys.readouterr().err
    result = subprocess.run(
        [sys.executable, "-m", "promptdecouple", "--help"], capture_output=True, text=True
    )
    assert result.returncode == 0 and "data check" in result.stdout
