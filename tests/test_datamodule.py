"""TIReIDDataModule: batches, evaluation coverage, splits, early errors, resumable order, Lightning, DDP."""

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
from PIL import Image
from transformers import AutoTokenizer

from promptdecouple.data.annotations import AnnotationError, read_annotations
from promptdecouple.data.datamodule import ImageFilesError, TIReIDDataModule
from promptdecouple.data.samplers import IdentityOrder, RandomOrder
from promptdecouple.data.synthetic import write_synthetic
from promptdecouple.data.transforms import CLIP_MEAN, CLIP_STD, normalize_pixels

SIZE = (64, 32)


@pytest.fixture(scope="module")
def rstp_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("rstp")
    write_synthetic(
        root,
        "rstpreid",
        num_identities=16,
        images_per_identity=3,
        image_size=SIZE,
        split_fractions=(0.5, 0.25, 0.25),
    )
    return root


@pytest.fixture(scope="module")
def icfg_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("icfg")
    write_synthetic(
        root, "icfg-pedes", num_identities=12, images_per_identity=2, captions_per_image=1, image_size=SIZE
    )
    return root


def make(root, tokenizer, dataset="rstpreid", **kwargs):
    options = dict(image_size=SIZE, batch_size=8, num_workers=0, text_length=24)
    options.update(kwargs)
    return TIReIDDataModule(dataset, root, str(tokenizer), **options)


def test_num_classes_is_known_right_after_construction(rstp_root, tiny_clip_dir):
    data = make(rstp_root, tiny_clip_dir)
    assert data.num_classes == 8
    assert data._tokenizer is None and not data._datasets  # nothing heavy happened
    table = read_annotations("rstpreid", rstp_root)
    assert list(data.train_pids) == sorted(table.loc[table["split"] == "train", "pid"].unique())


def test_training_batches_have_the_documented_shapes_dtypes_and_ranges(rstp_root, tiny_clip_dir):
    data = make(rstp_root, tiny_clip_dir)
    data.setup("fit")
    loader = data.train_dataloader()
    assert len(loader) == (8 * 3 * 2) // 8
    vocabulary = len(AutoTokenizer.from_pretrained(tiny_clip_dir))
    low = min((0 - m) / s for m, s in zip(CLIP_MEAN, CLIP_STD, strict=True))
    high = max((1 - m) / s for m, s in zip(CLIP_MEAN, CLIP_STD, strict=True))
    seen = []
    for batch in loader:
        assert set(batch) == {"pixel_values", "input_ids", "attention_mask", "labels", "index"}
        pixels = batch["pixel_values"]
        assert pixels.shape == (8, 3, *SIZE) and pixels.dtype == torch.uint8  # 0..255 by type
        assert pixels.amax(dim=(1, 2, 3)).gt(pixels.amin(dim=(1, 2, 3))).all()  # no blank image
        normalised = normalize_pixels(pixels)
        assert normalised.dtype == torch.float32
        assert low - 1e-5 <= normalised.min() and normalised.max() <= high + 1e-5
        assert batch["input_ids"].shape == batch["attention_mask"].shape == (8, 24)
        assert batch["input_ids"].dtype == batch["attention_mask"].dtype == torch.long
        assert batch["input_ids"].min() >= 0 and batch["input_ids"].max() < vocabulary
        assert set(batch["attention_mask"].unique().tolist()) <= {0, 1}
        assert (
            batch["labels"].dtype == torch.long and batch["labels"].min() >= 0 and batch["labels"].max() < 8
        )
        seen += batch["index"].tolist()
    assert sorted(seen) == list(range(48))  # shuffled, every pair once


def test_batch_pixels_are_the_images_of_their_items(rstp_root, tiny_clip_dir):
    """Without augmentation a training row is its pair's resized image; a gallery row its image's."""
    data = make(rstp_root, tiny_clip_dir, augment=False)
    data.setup("fit")
    paths = data.split("train")["image_path"]
    batch = next(iter(data.train_dataloader()))
    for row, index in zip(batch["pixel_values"], batch["index"].tolist(), strict=True):
        assert torch.equal(row, data.eval_transform.pixels(paths[index]))
    _, gallery = data.eval_set("val")
    batch = next(iter(data.val_dataloader()[1]))
    assert batch["pixel_values"].dtype == torch.uint8
    for row, index in zip(batch["pixel_values"], batch["index"].tolist(), strict=True):
        assert torch.equal(row, data.eval_transform.pixels(gallery["image_path"][index]))


def test_training_labels_match_the_captions_identities(rstp_root, tiny_clip_dir):
    data = make(rstp_root, tiny_clip_dir, augment=False)
    pairs = data.train_dataset()
    table = data.split("train")
    for index in (0, 17, 47):
        item = pairs[index]
        assert data.train_pids[item["labels"]] == table["pid"][index]
        assert torch.equal(
            item["input_ids"],
            data.tokenizer(
                table["caption"][index],
                padding="max_length",
                max_length=24,
                truncation=True,
                return_tensors="pt",
            )["input_ids"][0],
        )


@pytest.mark.parametrize("split", ["val", "test"])
def test_evaluation_loaders_cover_every_caption_and_image_exactly_once(rstp_root, tiny_clip_dir, split):
    data = make(rstp_root, tiny_clip_dir, eval_batch_size=5, eval_split=split)
    data.setup("validate")
    loaders = data.val_dataloader() if split == "val" else data.test_dataloader()
    assert len(loaders) == 2
    queries, gallery = data.eval_set(split)
    table = read_annotations("rstpreid", rstp_root)
    rows = table[table["split"] == split]
    assert len(queries) == len(rows) and queries["caption"].tolist() == rows["caption"].tolist()
    assert len(gallery) == rows["image_path"].nunique()

    query_batches = list(loaders[0])
    assert all(set(b) == {"input_ids", "attention_mask", "pids", "index"} for b in query_batches)
    index = torch.cat([b["index"] for b in query_batches])
    assert index.tolist() == list(range(len(queries)))
    assert torch.cat([b["pids"] for b in query_batches]).tolist() == queries["pid"].tolist()  # raw ids

    gallery_batches = list(loaders[1])
    assert all(set(b) == {"pixel_values", "pids", "index"} for b in gallery_batches)
    assert torch.cat([b["index"] for b in gallery_batches]).tolist() == list(range(len(gallery)))
    assert torch.cat([b["pids"] for b in gallery_batches]).tolist() == gallery["pid"].tolist()
    assert gallery["image_path"].is_unique


def test_identity_sampler_gives_p_by_k_batches(rstp_root, tiny_clip_dir):
    data = make(rstp_root, tiny_clip_dir, sampler="identity", instances_per_identity=2)
    for batch in data.train_dataloader():
        counts = torch.bincount(batch["labels"])
        assert sorted(counts[counts > 0].tolist()) == [2, 2, 2, 2]


def test_icfg_pedes_has_no_val_split_and_says_what_to_do(icfg_root, tiny_clip_dir):
    with pytest.raises(
        ValueError, match=r"ICFG-PEDES has no val split.*eval_split='test'.*holdout_identities"
    ):
        make(icfg_root, tiny_clip_dir, dataset="icfg-pedes")
    data = make(icfg_root, tiny_clip_dir, dataset="icfg-pedes", eval_split="test")
    data.setup("fit")
    assert len(data.val_dataloader()[1].dataset) == len(data.eval_set("test")[1])


def test_holding_out_training_identities_makes_a_val_split(icfg_root, tiny_clip_dir):
    data = make(icfg_root, tiny_clip_dir, dataset="icfg-pedes", holdout_identities=2, batch_size=4)
    full = read_annotations("icfg-pedes", icfg_root)
    train_ids = set(full.loc[full["split"] == "train", "pid"])
    assert data.num_classes == len(train_ids) - 2
    val_ids = set(data.eval_set("val")[0]["pid"])
    assert len(val_ids) == 2 and val_ids <= train_ids
    assert not val_ids & set(data.train_pids)
    data.setup("fit")
    assert len(data.train_dataset()) == (full["split"] == "train").sum() - len(data.eval_set("val")[0])
    again = make(icfg_root, tiny_clip_dir, dataset="icfg-pedes", holdout_identities=2)
    assert set(again.eval_set("val")[0]["pid"]) == val_ids  # a function of the seed


def test_holdout_is_refused_where_a_val_split_exists(rstp_root, tiny_clip_dir):
    with pytest.raises(ValueError, match="has its own val split"):
        make(rstp_root, tiny_clip_dir, holdout_identities=2)


def test_missing_images_are_found_at_setup_and_listed(rstp_root, tiny_clip_dir, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(rstp_root, root)
    table = read_annotations("rstpreid", root)
    victims = table[table["split"] == "test"]["image_path"].unique()[:2]
    for path in victims:
        os.remove(path)
    data = make(root, tiny_clip_dir)
    data.setup("fit")  # the test split is not needed to fit
    with pytest.raises(ImageFilesError) as caught:
        data.setup("test")
    message = str(caught.value)
    assert "2 of 12 images" in message and "data_captions.json" in message
    assert all(path in message for path in victims)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"eval_split": "train"}, "eval_split must be one of val, test"),
        (
            {"sampler": "identity", "batch_size": 6, "instances_per_identity": 4},
            "multiple of instances_per_identity",
        ),
        ({"sampler": "balanced"}, "sampler must be 'random' or 'identity'"),
        ({"dataset": "market"}, "unknown dataset"),
        ({"image_size": (64,)}, "image_size must be"),
    ],
)
def test_bad_arguments_fail_at_construction(rstp_root, tiny_clip_dir, kwargs, message):
    with pytest.raises(ValueError, match=message):
        make(rstp_root, tiny_clip_dir, **kwargs)


def test_a_batch_larger_than_the_training_set_is_refused(rstp_root, tiny_clip_dir):
    with pytest.raises(
        ValueError, match=r"has 48 items, fewer than one global batch of 64 \(1 process\(es\) x 64\)"
    ):
        make(rstp_root, tiny_clip_dir, batch_size=64).train_dataloader()


def test_lightning_cli_can_build_it_from_a_config(rstp_root, tiny_clip_dir):
    from jsonargparse import ArgumentParser

    parser = ArgumentParser()
    parser.add_class_arguments(TIReIDDataModule, "data")
    config = parser.parse_object(
        {
            "data": {
                "dataset": "rstpreid",
                "root": str(rstp_root),
                "tokenizer": str(tiny_clip_dir),
                "image_size": [64, 32],
                "sampler": "identity",
                "eval_split": "test",
            }
        }
    )
    data = parser.instantiate(config).data
    assert isinstance(data, TIReIDDataModule)
    assert data.image_size == (64, 32) and data.num_classes == 8


class Recorder(L.LightningModule):
    """Records the batches Lightning hands over."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.train_index, self.val_index = [], {0: [], 1: []}
        self.epochs = {}  # epoch -> index batches

    def training_step(self, batch, batch_idx):
        self.train_index.append(batch["index"].tolist())
        self.epochs.setdefault(self.current_epoch, []).append(batch["index"].tolist())
        return (self.weight * normalize_pixels(batch["pixel_values"]).mean()).sum()

    def validation_step(self, batch, batch_idx, dataloader_idx=0):
        self.val_index[dataloader_idx] += batch["index"].tolist()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def quiet_trainer(**kwargs):
    options = dict(
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    return L.Trainer(**{**options, **kwargs})


def test_fits_with_a_lightning_trainer(rstp_root, tiny_clip_dir):
    data = make(rstp_root, tiny_clip_dir, sampler="identity", instances_per_identity=2)
    model = Recorder()
    quiet_trainer(max_epochs=1).fit(model, datamodule=data)
    assert len(model.train_index) == len(data.train_dataloader())
    queries, gallery = data.eval_set("val")
    assert sorted(model.val_index[0]) == list(range(len(queries)))
    assert sorted(model.val_index[1]) == list(range(len(gallery)))


def test_a_resumed_run_sees_the_training_order_of_the_uninterrupted_run(
    rstp_root, tiny_clip_dir, tmp_path, monkeypatch
):
    from lightning.pytorch.callbacks import ModelCheckpoint

    monkeypatch.setenv("PL_GLOBAL_SEED", "0")  # restored afterwards; seed_everything overwrites it

    def fit(ckpt_path=None):
        L.seed_everything(7)
        model = Recorder()
        folder = tmp_path / ("resumed" if ckpt_path else "uninterrupted")
        checkpoints = ModelCheckpoint(dirpath=folder, filename="{epoch}", save_top_k=-1)
        trainer = quiet_trainer(
            max_epochs=3, limit_val_batches=0, enable_checkpointing=True, callbacks=[checkpoints]
        )
        trainer.fit(model, datamodule=make(rstp_root, tiny_clip_dir, augment=False), ckpt_path=ckpt_path)
        return model.epochs

    uninterrupted = fit()
    resumed = fit(ckpt_path=tmp_path / "uninterrupted" / "epoch=0.ckpt")
    assert sorted(uninterrupted) == [0, 1, 2] and sorted(resumed) == [1, 2]
    assert resumed[1] == uninterrupted[1] and resumed[2] == uninterrupted[2]
    assert uninterrupted[0] != uninterrupted[1] != uninterrupted[2]
    for epoch, batches in uninterrupted.items():  # the order of (seed_everything's seed, epoch)
        order = RandomOrder(48, batch_size=8, seed=7)
        assert batches == [batch.tolist() for batch in order.global_batches(epoch)]


DDP_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import lightning as L
    import torch
    from promptdecouple.data.datamodule import TIReIDDataModule
    from promptdecouple.data.transforms import normalize_pixels

    root, tokenizer, out, sampler = sys.argv[1:5]

    class Recorder(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.zeros(1))
            self.record = {"train": {}, "val": {"0": [], "1": []}, "dtype": []}

        def on_train_epoch_start(self):
            self.record["sampler"] = type(self.trainer.train_dataloader.batch_sampler.sampler).__name__

        def training_step(self, batch, batch_idx):
            epoch = str(self.current_epoch)
            self.record["train"].setdefault(epoch, []).append([batch["index"].tolist(), batch["labels"].tolist()])
            self.record["dtype"].append(str(batch["pixel_values"].dtype))
            return (self.weight * normalize_pixels(batch["pixel_values"]).mean()).sum()

        def validation_step(self, batch, batch_idx, dataloader_idx=0):
            self.record["val"][str(dataloader_idx)] += batch["index"].tolist()

        def on_fit_end(self):
            with open(f"{out}/rank{self.global_rank}.json", "w") as f:
                json.dump(self.record, f)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    L.seed_everything(3)
    data = TIReIDDataModule("rstpreid", root, tokenizer, image_size=(64, 32), batch_size=4, text_length=16,
                            num_workers=0, sampler=sampler, instances_per_identity=2, eval_batch_size=4)
    trainer = L.Trainer(max_epochs=2, accelerator="cpu", devices=2, strategy="ddp", logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        num_sanity_val_steps=0)
    trainer.fit(Recorder(), datamodule=data)
    """
)


def fit_with_two_process_ddp(root, tokenizer, out, sampler):
    """A real 2-process DDP fit (gloo); returns what each rank saw."""
    script = out / "ddp_fit.py"
    script.write_text(DDP_SCRIPT)
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    result = subprocess.run(
        [sys.executable, str(script), str(root), str(tokenizer), str(out), sampler],
        capture_output=True,
        text=True,
        timeout=400,
        env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]


@pytest.mark.slow
def test_identity_sampler_under_two_process_ddp(rstp_root, tiny_clip_dir, tmp_path):
    """Each rank loads whole identity groups of the same global batches; Lightning leaves the sampler be."""
    ranks = fit_with_two_process_ddp(rstp_root, tiny_clip_dir, tmp_path, "identity")
    assert [rank["sampler"] for rank in ranks] == ["IdentityOrder"] * 2
    data = TIReIDDataModule(
        "rstpreid", rstp_root, str(tiny_clip_dir), sampler="identity", instances_per_identity=2
    )
    data.setup("fit")
    plan = IdentityOrder(data.train_dataset().labels.numpy(), batch_size=8, instances_per_identity=2, seed=3)
    for epoch in ("0", "1"):
        batches = [[tuple(index) for index, _ in rank["train"][epoch]] for rank in ranks]
        assert len(batches[0]) == len(batches[1]) > 0  # equal step counts: no rank waits forever
        assert not {i for b in batches[0] for i in b} & {i for b in batches[1] for i in b}
        for step, global_batch in enumerate(plan.global_batches(int(epoch))):  # rank r: the r-th half
            assert list(batches[0][step]) + list(batches[1][step]) == global_batch.tolist()
        for rank in ranks:
            for _, pids in rank["train"][epoch]:
                assert sorted(
                    torch.bincount(torch.tensor(pids))[torch.tensor(sorted(set(pids)))].tolist()
                ) == [2, 2]
    assert ranks[0]["train"]["0"] != ranks[0]["train"]["1"]  # set_epoch reached the sampler
    queries, gallery = TIReIDDataModule("rstpreid", rstp_root, str(tiny_clip_dir)).eval_set("val")
    for loader, size in (("0", len(queries)), ("1", len(gallery))):
        assert set(ranks[0]["val"][loader]) | set(ranks[1]["val"][loader]) == set(range(size))


@pytest.mark.slow
def test_random_sampler_under_two_process_ddp(rstp_root, tiny_clip_dir, tmp_path):
    """Each rank its half of every global batch of 8, per epoch; Lightning leaves the sampler be."""
    ranks = fit_with_two_process_ddp(rstp_root, tiny_clip_dir, tmp_path, "random")
    assert [rank["sampler"] for rank in ranks] == ["RandomOrder"] * 2
    assert {dtype for rank in ranks for dtype in rank["dtype"]} == {"torch.uint8"}
    for epoch in ("0", "1"):
        seen = [[i for index, _ in rank["train"][epoch] for i in index] for rank in ranks]
        assert len(seen[0]) == len(seen[1]) == 24  # 48 pairs, 6 batches of 4 per rank
        assert not set(seen[0]) & set(seen[1])
        assert sorted(seen[0] + seen[1]) == list(range(48))
        for step, global_batch in enumerate(RandomOrder(48, batch_size=8, seed=3).global_batches(int(epoch))):
            assert (
                ranks[0]["train"][epoch][step][0] + ranks[1]["train"][epoch][step][0] == global_batch.tolist()
            )
    assert ranks[0]["train"]["0"] != ranks[0]["train"]["1"]  # reshuffled each epoch


def damaged_copy(source, destination):
    """A copy of the dataset with one empty, one truncated and one hollow train image (their paths)."""
    shutil.copytree(source, destination)
    table = read_annotations("rstpreid", destination)
    empty, truncated, hollow = table[table["split"] == "train"]["image_path"].unique()[[0, 2, 4]]
    Path(empty).write_bytes(b"")
    noise = np.random.default_rng(0).integers(0, 256, (128, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(truncated, format="JPEG", quality=90)
    Path(truncated).write_bytes(Path(truncated).read_bytes()[:2500])
    Path(hollow).write_bytes(b"\xff\xd8\xff" + b"\x00" * 2000 + b"\xff\xd9")
    return empty, truncated, hollow


def test_unusable_images_are_refused_at_setup_and_truncated_ones_reported(rstp_root, tiny_clip_dir, tmp_path):
    empty, truncated, _ = damaged_copy(rstp_root, tmp_path / "copy")
    data = make(tmp_path / "copy", tiny_clip_dir)
    with (
        pytest.warns(UserWarning, match="1 of .* images .* are truncated") as caught,
        pytest.raises(ImageFilesError) as refused,
    ):
        data.setup("fit")
    assert truncated in str(caught[0].message)
    message = str(refused.value)
    assert "1 of" in message and "unreadable" in message and f"{empty}: empty file (0 bytes)" in message
    assert "bad_entries='skip'" in message


def test_skip_leaves_out_entries_with_unusable_images_and_reports_them(rstp_root, tiny_clip_dir, tmp_path):
    empty, truncated, hollow = damaged_copy(rstp_root, tmp_path / "copy")
    data = make(tmp_path / "copy", tiny_clip_dir, bad_entries="skip")
    classes = data.num_classes
    with pytest.warns(UserWarning, match=r"left out 1 of \d+ entries .* 1 x unreadable image"):
        data.setup("fit")
    assert data.num_classes == classes  # labels stay those of the annotations
    assert [p.kind for p in data.skipped] == ["unreadable image"] and empty in data.skipped[0].message
    assert list(data.truncated_images) == [truncated]
    pairs = data.train_dataset()
    assert empty not in set(pairs.image_paths) and truncated in set(pairs.image_paths)
    # the hollow image passed the cheap check; loading it mid-epoch gives the mean colour, counted once
    with pytest.warns(UserWarning, match="could not be decoded while loading"):
        for batch in data.train_dataloader():
            data.on_before_batch_transfer(batch, 0)
            assert "unreadable_images" not in batch
    for batch in data.train_dataloader():
        data.on_before_batch_transfer(batch, 0)
    assert data.unreadable_images == {hollow: 4}  # 2 captions, 2 epochs


def test_skip_leaves_out_bad_annotation_entries_and_reports_them(rstp_root, tiny_clip_dir, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(rstp_root, root)
    entries = json.loads((root / "data_captions.json").read_text())
    entries[1]["captions"] = ["fine", "  "]
    entries[2]["split"] = "dev"
    (root / "data_captions.json").write_text(json.dumps(entries))
    with pytest.raises(AnnotationError, match="bad_entries='skip'"):
        _ = make(root, tiny_clip_dir).num_classes
    data = make(root, tiny_clip_dir, bad_entries="skip")
    with pytest.warns(UserWarning, match=r"left out 2 of 48 entries .*1 x empty caption, 1 x bad split"):
        data.setup("fit")
    assert {p.entry for p in data.skipped} == {1, 2}
    assert not data.annotations["image_id"].isin([1, 2]).any()
    with pytest.raises(ValueError, match="bad_entries must be 'error' or 'skip'"):
        make(root, tiny_clip_dir, bad_entries="drop")


def test_a_global_batch_is_split_among_processes_or_refused(rstp_root, tiny_clip_dir):
    from types import SimpleNamespace

    data = make(rstp_root, tiny_clip_dir, global_batch_size=12, batch_size=64)
    assert data.per_process_batch_size() == 12  # one process: the whole global batch; batch_size unused
    for world_size, expected in ((2, 6), (3, 4)):
        data.trainer = SimpleNamespace(world_size=world_size, global_rank=0)
        assert data.per_process_batch_size() == expected
        assert data.train_order().global_batch_size == 12
    data.trainer = SimpleNamespace(world_size=5, global_rank=0)
    with pytest.raises(ValueError, match="global_batch_size=12 does not divide among 5 processes"):
        data.setup("fit")
    identity = make(
        rstp_root, tiny_clip_dir, global_batch_size=12, sampler="identity", instances_per_identity=2
    )
    identity.trainer = SimpleNamespace(world_size=4, global_rank=0)
    with pytest.raises(
        ValueError, match=r"per-process batch \(3 = global batch 12 / 4 processes\) must be a multiple"
    ):
        identity.per_process_batch_size()
    with pytest.raises(ValueError, match="global_batch_size must be >= 1"):
        make(rstp_root, tiny_clip_dir, global_batch_size=0)
