"""The `promptdecouple` command, run in-process through `main`: `data synth|check` and LightningCLI."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import wandb
import yaml

from promptdecouple.cli import main
from promptdecouple.data import TIReIDDataModule

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
    assert "cannot decode" not in out  # only with --decode
    assert "3 problem(s)" in out

    assert main(["data", "check", "--dataset", "rstpreid", "--root", str(dataset), "--decode"]) == 1
    out = capsys.readouterr().out
    assert "cannot decode: cannot decode image" in out and entries[1]["img_path"] in out
    assert "4 problem(s)" in out


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
    finally:
        wandb.finish()
    (run,) = (runs / "wandb").glob("offline-run-*")
    assert logged["model"]["prompt_lr"] == 0.005  # the resolved value, command line included
    assert logged["model"]["clip"] == str(tmp_path / "clip")
    assert logged["retrieval_panel"] == {"num_queries": 2, "k": 3, "thumbnail_height": 192}
    assert logged["trainer"]["max_epochs"] == 1 and "num_sanity_val_steps" in logged["trainer"]
    assert (runs / "config.yaml").is_file()  # still written next to the logs
    assert len(list((run / "files" / "media" / "images" / "val").glob("retrieval_*.png"))) == 2


def test_the_retrieval_panel_is_on_by_default_and_off_with_one_argument(capsys):
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(CONFIGS[0]), "--retrieval_panel.num_queries", "0", "--print_config"])
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["retrieval_panel"]["num_queries"] == 0
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(CONFIGS[0]), "--print_config"])
    assert yaml.safe_load(capsys.readouterr().out)["retrieval_panel"]["num_queries"] > 0
