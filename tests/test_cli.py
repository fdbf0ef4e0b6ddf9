"""`promptdecouple data synth` and `promptdecouple data check`, run in-process through `main`."""

import json
import os

import pytest

from promptdecouple.cli import main

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
