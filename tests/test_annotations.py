"""Readers of the three annotation layouts, from hand-written files, and their validation."""

import json

import pytest

from promptdecouple.data.annotations import (
    AnnotationError,
    SkippedEntriesWarning,
    dataset_layout,
    load_annotations,
    read_annotations,
)

CUHK_ENTRIES = [
    {
        "split": "train",
        "captions": ["A man in a black coat.", "  The man wears a black coat and blue jeans.\n"],
        "file_path": "CUHK01/0363004.png",
        "processed_tokens": [["a", "man"], ["the", "man"]],
        "id": 1,
    },
    {
        "split": "train",
        "captions": ["A man in a black coat walking."],
        "file_path": "Market/0001_c1s1_001051_00.jpg",
        "processed_tokens": [["a", "man"]],
        "id": 1,
    },
    {
        "split": "val",
        "captions": ["A woman with a red bag.", "She carries a red bag."],
        "file_path": "train_query/p8848_s17661.jpg",
        "processed_tokens": [[], []],
        "id": 12,
    },
    {
        "split": "test",
        "captions": ["A girl in a pink dress."],
        "file_path": "test_query/p10376_s14337.jpg",
        "processed_tokens": [[]],
        "id": 13003,
    },
]
ICFG_ENTRIES = [
    {
        "split": "train",
        "captions": ["A young man wearing a white shirt."],
        "file_path": "train/0001/0001_002_01_0303morning_0015_0.jpg",
        "processed_tokens": [[]],
        "id": 1,
    },
    {
        "split": "test",
        "captions": ["A woman in a green jacket."],
        "file_path": "test/3103/3103_005_02_0303afternoon_0100_1.jpg",
        "processed_tokens": [[]],
        "id": 3103,
    },
]
RSTP_ENTRIES = [
    {
        "id": 0,
        "img_path": "0000_c14_0031.jpg",
        "captions": ["A man in gray.", "Gray shirt."],
        "split": "train",
    },
    {"id": 3901, "img_path": "3901_c3_0002.jpg", "captions": ["A lady with a bag."], "split": "val"},
    {"id": 4000, "img_path": "4000_c5_0025.jpg", "captions": ["A boy on a road."], "split": "test"},
]


def write_json(path, entries):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(entries))
    return path


def test_cuhk_pedes_reads_one_row_per_caption(tmp_path):
    write_json(tmp_path / "reid_raw.json", CUHK_ENTRIES)
    table = read_annotations("cuhk-pedes", tmp_path)
    assert list(table.columns) == ["split", "pid", "image_id", "image_path", "caption"]
    assert len(table) == 6
    assert table["split"].tolist() == ["train"] * 3 + ["val"] * 2 + ["test"]
    assert table["pid"].tolist() == [1, 1, 1, 12, 12, 13003]  # raw ids as stored
    assert table["image_id"].tolist() == [0, 0, 1, 2, 2, 3]  # entry index in the file
    imgs = (tmp_path / "imgs").resolve()
    assert table["image_path"].iloc[0] == str(imgs / "CUHK01" / "0363004.png")
    assert table["image_path"].iloc[-1] == str(imgs / "test_query" / "p10376_s14337.jpg")
    assert (
        table["caption"].iloc[1] == "The man wears a black coat and blue jeans."
    )  # surrounding space stripped
    assert str(table["pid"].dtype) == "int64"


@pytest.mark.parametrize("name", ["ICFG-PEDES.json", "ICFG_PEDES.json"])
def test_icfg_pedes_accepts_both_file_names(tmp_path, name):
    write_json(tmp_path / name, ICFG_ENTRIES)
    table = read_annotations("icfg-pedes", tmp_path)
    assert table["split"].tolist() == ["train", "test"]
    assert table["pid"].tolist() == [1, 3103]
    assert table["image_path"].iloc[1].endswith("imgs/test/3103/3103_005_02_0303afternoon_0100_1.jpg")


def test_rstpreid_uses_img_path_in_a_flat_folder(tmp_path):
    write_json(tmp_path / "data_captions.json", RSTP_ENTRIES)
    table = read_annotations("rstpreid", tmp_path)
    assert table["split"].tolist() == ["train", "train", "val", "test"]
    assert table["image_path"].iloc[0] == str((tmp_path / "imgs").resolve() / "0000_c14_0031.jpg")
    assert table["caption"].tolist()[:2] == ["A man in gray.", "Gray shirt."]


def test_dataset_names_are_forgiving_and_unknown_names_are_listed():
    assert dataset_layout("CUHK_PEDES").name == "cuhk-pedes"
    assert dataset_layout(" RSTPReid ").name == "rstpreid"
    with pytest.raises(ValueError, match="cuhk-pedes, icfg-pedes, rstpreid"):
        dataset_layout("market1501")


def test_missing_annotation_file_names_what_was_expected(tmp_path):
    (tmp_path / "imgs").mkdir()
    with pytest.raises(FileNotFoundError, match=r"ICFG-PEDES\.json or ICFG_PEDES\.json.*imgs"):
        read_annotations("icfg-pedes", tmp_path)
    with pytest.raises(FileNotFoundError, match="not a directory"):
        read_annotations("rstpreid", tmp_path / "nowhere")


def bad(entry_changes=None, drop=None):
    entry = {"id": 7, "img_path": "0007_c1_0001.jpg", "captions": ["A man."], "split": "train"}
    entry.update(entry_changes or {})
    for key in drop or ():
        entry.pop(key)
    return entry


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        (bad(drop=["captions"]), "missing key(s) 'captions'"),
        (bad(drop=["img_path", "split"]), "missing key(s) 'img_path', 'split'"),
        (bad({"split": "dev"}), "split must be one of train, val, test, found 'dev'"),
        (bad({"captions": []}), "captions is an empty list"),
        (bad({"captions": "A man."}), "captions must be a list of strings"),
        (bad({"captions": ["A man.", "   "]}), "caption 1 is empty"),
        (bad({"captions": [None]}), "caption 0 is not a string"),
        (bad({"id": "7a"}), "id must be an integer, found '7a'"),
        (bad({"id": 7.5}), "id must be an integer, found 7.5"),
        (bad({"id": True}), "id must be an integer, found True"),
        (bad({"img_path": ""}), "img_path must be a non-empty string"),
        (bad({"img_path": "../outside.jpg"}), "must be a path relative to imgs/"),
        (bad({"img_path": "/abs/0007.jpg"}), "must be a path relative to imgs/"),
    ],
)
def test_each_kind_of_bad_entry_names_file_entry_and_id(tmp_path, entry, message):
    good = {"id": 1, "img_path": "0001_c1_0001.jpg", "captions": ["A woman."], "split": "train"}
    path = write_json(tmp_path / "data_captions.json", [good, entry])
    with pytest.raises(AnnotationError) as caught:
        read_annotations("rstpreid", tmp_path)
    text = str(caught.value)
    assert str(path.resolve()) in text
    assert f"entry 1 (id {entry.get('id', 'missing')!r})" in text
    assert message in text


def test_duplicate_images_name_both_entries(tmp_path):
    entries = [bad(), bad({"id": 8, "captions": ["Another."]})]
    write_json(tmp_path / "data_captions.json", entries)
    with pytest.raises(
        AnnotationError, match=r"entry 1 \(id 8\): image '0007_c1_0001.jpg' is already listed by entry 0"
    ):
        read_annotations("rstpreid", tmp_path)


def test_every_problem_is_reported_not_only_the_first(tmp_path):
    entries = [
        bad({"split": "dev"}),
        bad({"img_path": "b.jpg"}),
        "not an object",
        bad({"img_path": "c.jpg", "id": None}),
    ]
    write_json(tmp_path / "data_captions.json", entries)
    table, problems = load_annotations("rstpreid", tmp_path)
    assert [p.entry for p in problems] == [0, 2, 3]
    assert "expected a JSON object, found str" in str(problems[1])
    assert table["image_path"].str.endswith("b.jpg").tolist() == [True]  # the valid entry is still read
    with pytest.raises(AnnotationError) as caught:
        read_annotations("rstpreid", tmp_path)
    assert len(caught.value.problems) == 3


def test_many_problems_are_summarised_in_the_message_but_all_kept(tmp_path):
    entries = [bad({"img_path": f"{i}.jpg", "split": "dev"}) for i in range(30)]
    write_json(tmp_path / "data_captions.json", entries)
    with pytest.raises(AnnotationError) as caught:
        read_annotations("rstpreid", tmp_path)
    assert len(caught.value.problems) == 30
    assert "... and 10 more" in str(caught.value)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[{"id": 1,', "not valid JSON (line 1, column"),
        ('{"images": []}', "expected a JSON list of image entries, found a JSON dict"),
    ],
)
def test_unreadable_files_are_named(tmp_path, text, message):
    (tmp_path / "reid_raw.json").write_text(text)
    with pytest.raises(AnnotationError) as caught:
        read_annotations("cuhk-pedes", tmp_path)
    assert "reid_raw.json: " + message in str(caught.value)


def test_a_file_saved_with_a_byte_order_mark_reads(tmp_path):
    text = json.dumps([bad()])
    (tmp_path / "data_captions.json").write_bytes(b"\xef\xbb\xbf" + text.encode())
    table = read_annotations("rstpreid", tmp_path)
    assert table["pid"].tolist() == [7]


def test_skip_leaves_out_bad_entries_and_reports_them(tmp_path):
    entries = [
        bad(),
        bad({"img_path": "b.jpg", "captions": ["fine", ""]}),
        bad({"img_path": "c.jpg", "split": "dev"}),
        bad({"img_path": "d.jpg", "captions": []}),
        bad({"img_path": "e.jpg", "captions": [" "]}),
        bad({"img_path": "f.jpg", "id": 9}),
    ]
    path = write_json(tmp_path / "data_captions.json", entries)
    with pytest.raises(AnnotationError, match="pass bad_entries='skip'"):
        read_annotations("rstpreid", tmp_path)
    with pytest.warns(SkippedEntriesWarning) as caught:
        table = read_annotations("rstpreid", tmp_path, bad_entries="skip")
    assert sorted(table["image_id"].unique()) == [0, 5]
    report = str(caught[0].message)
    assert report.splitlines()[0] == (
        f"left out 4 of 6 entries of {path.resolve()} (bad_entries='skip'): "
        "2 x empty caption, 1 x bad split, 1 x no captions"
    )
    assert f"{path.resolve()}: entry 1 (id 7): caption 1 is empty" in report


@pytest.mark.parametrize(
    ("text", "message"),
    [('[{"id": 1,', "not valid JSON"), ('{"images": []}', "expected a JSON list"), ("[]", None)],
)
def test_skip_still_refuses_a_file_that_is_bad_as_a_whole(tmp_path, text, message):
    (tmp_path / "data_captions.json").write_text(text)
    if message is None:  # no entry at all: nothing to train on
        table = read_annotations("rstpreid", tmp_path, bad_entries="skip")
        assert table.empty
        return
    with pytest.raises(AnnotationError, match=message):
        read_annotations("rstpreid", tmp_path, bad_entries="skip")


def test_skip_refuses_a_file_whose_every_entry_is_bad(tmp_path):
    write_json(
        tmp_path / "data_captions.json", [bad({"split": "dev"}), bad({"img_path": "b.jpg", "captions": []})]
    )
    with pytest.raises(AnnotationError, match="2 problem"):
        read_annotations("rstpreid", tmp_path, bad_entries="skip")
    with pytest.raises(ValueError, match="bad_entries must be 'error' or 'skip', got 'ignore'"):
        read_annotations("rstpreid", tmp_path, bad_entries="ignore")
