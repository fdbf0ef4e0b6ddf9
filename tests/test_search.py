"""`promptdecouple search` on a tiny trained checkpoint: ranking, picture, table, cache and errors."""

import json
import os
import re
import shutil

import lightning as L
import numpy as np
import pytest
import torch
from PIL import Image

import promptdecouple.search as search_module
from promptdecouple.cli import main
from promptdecouple.data import TIReIDDataModule, load_image, write_synthetic
from promptdecouple.module import PromptDecoupleModule
from promptdecouple.search import GalleryCache, encode_gallery
from promptdecouple.visualization import MATCH_COLOUR, MISS_COLOUR, draw_retrieval

K = 4


@pytest.fixture(scope="module")
def trained(tiny_clip_dir, tmp_path_factory):
    """A synthetic RSTPReid twin and a checkpoint of one epoch on it."""
    base = tmp_path_factory.mktemp("search")
    root = base / "rstp"
    write_synthetic(root, "rstpreid", num_identities=40, images_per_identity=2, image_size=(64, 32))
    data = TIReIDDataModule(
        "rstpreid", root, tokenizer=str(tiny_clip_dir), image_size=(64, 32), text_length=32, batch_size=8,
        num_workers=0,
    )  # fmt: skip
    L.seed_everything(0)
    module = PromptDecoupleModule(
        str(tiny_clip_dir), num_classes=data.num_classes, image_size=(64, 32), text_length=32
    )
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
    )
    trainer.fit(module, datamodule=data)
    checkpoint = base / "ckpt" / "model.ckpt"
    trainer.save_checkpoint(checkpoint)
    return {"root": root, "checkpoint": checkpoint, "data": data}


def command(trained, *extra, ckpt=None, root=None):
    return [
        "search",
        "--ckpt",
        str(ckpt or trained["checkpoint"]),
        "--dataset",
        "rstpreid",
        "--root",
        str(root or trained["root"]),
        "--device",
        "cpu",
        "--num-workers",
        "0",
        *map(str, extra),
    ]


def table_paths(out: str) -> list[str]:
    """The image column of the printed top-k table, in rank order."""
    return re.findall(r"(imgs/\S+\.jpg)", out)


def test_a_caption_query_ranks_the_gallery_draws_it_and_caches_the_gallery(trained, tmp_path, capsys):
    queries, gallery = trained["data"].eval_set("test")
    index = 3
    out = tmp_path / "grid.png"
    assert main(command(trained, "--query-index", index, "--k", K, "--out", out)) == 0
    printed = capsys.readouterr().out

    # The same ranking as the module's own inference API on the same images.
    module = PromptDecoupleModule.load_from_checkpoint(trained["checkpoint"], map_location="cpu")
    caption, pid = queries.loc[index, "caption"], int(queries.loc[index, "pid"])
    paths = gallery["image_path"].tolist()
    expected = module.search([caption], paths, k=K)
    ranked = expected.indices[0].tolist()
    assert table_paths(printed) == [os.path.relpath(paths[i], trained["root"]) for i in ranked]
    for score in expected.scores[0].tolist():
        assert f"{score:.4f}" in printed

    # The picture: K thumbnails and the true images below, at the size draw_retrieval gives them.
    matches = [int(gallery.loc[i, "pid"]) == pid for i in ranked]
    true_rows = [i for i in range(len(gallery)) if int(gallery.loc[i, "pid"]) == pid]
    reference = draw_retrieval(
        caption,
        [load_image(paths[i]) for i in ranked],
        expected.scores[0].tolist(),
        matches=matches,
        true_images=[load_image(paths[i]) for i in true_rows],
        true_ranks=[1] * len(true_rows),
        note=f"caption {index} of the rstpreid test split, identity {pid}; gallery of {len(gallery)} images",
    )
    picture = Image.open(out)
    assert picture.format == "PNG"
    assert picture.size == reference.size
    pixels = np.asarray(picture.convert("RGB"))
    assert (pixels == MATCH_COLOUR).all(-1).sum() > 100  # frames of the true images at least
    assert ((pixels == MISS_COLOUR).all(-1).sum() > 100) == (not all(matches))

    # The gallery cache sits next to the checkpoint and holds the encode_images features.
    cache = GalleryCache(trained["checkpoint"], "rstpreid", trained["root"], "test")
    assert cache.path.parent == trained["checkpoint"].parent and cache.path.is_file()
    cached = cache.load(paths)
    torch.testing.assert_close(cached, module.encode_images(paths), atol=1e-5, rtol=1e-4)


def test_the_second_query_reads_the_cache_and_a_new_checkpoint_does_not(
    trained, tmp_path, capsys, monkeypatch
):
    ckpt = tmp_path / "copy.ckpt"
    shutil.copy(trained["checkpoint"], ckpt)
    calls = []
    real = search_module.encode_gallery

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(search_module, "encode_gallery", counting)
    first, second = tmp_path / "first.png", tmp_path / "second.png"
    assert main(command(trained, "--query-index", 0, "--k", K, "--out", first, ckpt=ckpt)) == 0
    assert main(command(trained, "--query-index", 0, "--k", K, "--out", second, ckpt=ckpt)) == 0
    assert len(calls) == 1
    assert "gallery features from the cache" in capsys.readouterr().err
    assert first.read_bytes() == second.read_bytes()
    assert main(command(trained, "--query", "a man in a red coat", "--out", second, ckpt=ckpt)) == 0
    assert len(calls) == 1

    # A checkpoint overwritten in place (a later epoch) no longer matches the cached features.
    stat = ckpt.stat()
    os.utime(ckpt, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert main(command(trained, "--query-index", 0, "--k", K, "--out", second, ckpt=ckpt)) == 0
    assert len(calls) == 2
    assert main(command(trained, "--query-index", 0, "--k", K, "--out", second, "--no-cache", ckpt=ckpt)) == 0
    assert len(calls) == 3


def test_a_free_text_query_has_no_identity_to_mark(trained, tmp_path, capsys):
    out = tmp_path / "free.png"
    assert main(command(trained, "--query", "a woman in a red coat", "--k", 2, "--out", out)) == 0
    printed = capsys.readouterr().out
    assert "match" not in printed and "true image" not in printed
    assert len(table_paths(printed)) == 2
    pixels = np.asarray(Image.open(out).convert("RGB"))
    assert (pixels == MATCH_COLOUR).all(-1).sum() < 10 and (pixels == MISS_COLOUR).all(-1).sum() < 10


def test_encode_gallery_matches_encode_images(trained):
    module = PromptDecoupleModule.load_from_checkpoint(trained["checkpoint"], map_location="cpu")
    paths = trained["data"].eval_set("val")[1]["image_path"].tolist()
    module.train()
    features = encode_gallery(module, paths, batch_size=3, progress=False)
    torch.testing.assert_close(features, module.encode_images(paths), atol=1e-5, rtol=1e-4)
    assert module.training  # back in the mode it was in


def test_errors_name_what_is_wrong(trained, tmp_path, capsys):
    out = tmp_path / "x.png"
    size = len(trained["data"].eval_set("test")[1])
    missing = tmp_path / "nothing.ckpt"
    assert main(command(trained, "--query", "a man", "--out", out, ckpt=missing)) == 1
    assert f"checkpoint not found: {missing}" in capsys.readouterr().out

    assert main(command(trained, "--query-index", 9999, "--out", out)) == 1
    assert "--query-index 9999 is out of range: the test split of rstpreid" in capsys.readouterr().out

    assert main(command(trained, "--query", "a man", "--k", size + 1, "--out", out)) == 1
    printed = capsys.readouterr().out
    assert f"--k {size + 1} is larger than the gallery of the test split of rstpreid" in printed
    assert f"({size} images)" in printed

    not_a_checkpoint = tmp_path / "bad.ckpt"
    not_a_checkpoint.write_bytes(b"not a checkpoint")
    assert main(command(trained, "--query", "a man", "--out", out, ckpt=not_a_checkpoint)) == 1
    assert f"cannot load {not_a_checkpoint} as a PromptDecoupleModule checkpoint" in capsys.readouterr().out

    # a split whose entries are gone, and a gallery image that is missing
    root = tmp_path / "copy"
    shutil.copytree(trained["root"], root)
    entries = json.loads((root / "data_captions.json").read_text())
    (root / "data_captions.json").write_text(json.dumps([e for e in entries if e["split"] != "val"]))
    assert main(command(trained, "--split", "val", "--query", "a man", "--out", out, root=root)) == 1
    assert "no 'val' entries" in capsys.readouterr().out
    test_image = next(e["img_path"] for e in entries if e["split"] == "test")
    os.remove(root / "imgs" / test_image)
    assert main(command(trained, "--query", "a man", "--out", out, root=root)) == 1
    printed = capsys.readouterr().out
    assert f"1 of {size} gallery images of the test split of rstpreid" in printed and test_image in printed
    assert not out.exists()


def test_usage_errors_exit_with_two(trained, tmp_path, capsys):
    out = tmp_path / "x.png"
    assert main(command(trained, "--query", "a", "--query-index", 0, "--out", out)) == 2
    assert main(command(trained, "--out", out)) == 2
    assert main(["search", "--help"]) == 0
    assert "--query-index" in capsys.readouterr().out


def test_the_gallery_can_come_from_a_predict_file_of_the_same_checkpoint(
    trained, tmp_path, capsys, monkeypatch
):
    from promptdecouple.predict_writer import checkpoint_identity

    queries, gallery = trained["data"].eval_set("test")
    module = PromptDecoupleModule.load_from_checkpoint(trained["checkpoint"])
    features = module.encode_images(gallery["image_path"].tolist())
    stored = {
        "format": 1,
        "dataset": "rstpreid",
        "split": "test",
        "checkpoint": checkpoint_identity(trained["checkpoint"]),
        "gallery": {"features": features, "pids": torch.tensor(gallery["pid"].to_numpy()),
                    "image_paths": gallery["image_path"].tolist()},
    }  # fmt: skip
    path = tmp_path / "features.pt"
    torch.save(stored, path)
    monkeypatch.setattr(
        search_module, "encode_gallery", lambda *a, **k: pytest.fail("the gallery was encoded")
    )
    args = command(
        trained,
        "--query-index",
        2,
        "--k",
        K,
        "--out",
        tmp_path / "grid.png",
        "--no-cache",
        "--features",
        path,
    )
    assert main(args) == 0
    assert (tmp_path / "grid.png").is_file()
    stored["split"] = "val"
    torch.save(stored, path)
    capsys.readouterr()
    assert main(args) == 1
    assert "holds the rstpreid val split, not rstpreid test" in capsys.readouterr().out
    stored["split"], stored["checkpoint"] = "test", {"path": "/elsewhere.ckpt", "size": 1, "mtime_ns": 1}
    torch.save(stored, path)
    assert main(args) == 1
    assert "written with another checkpoint (/elsewhere.ckpt)" in capsys.readouterr().out
