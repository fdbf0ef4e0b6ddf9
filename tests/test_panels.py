"""RetrievalPanel: pictures of fixed validation queries in an offline W&B run, across processes too."""

import datetime
import io
import socket
from types import SimpleNamespace

import lightning as L
import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import wandb
from lightning.pytorch.loggers import CSVLogger, WandbLogger
from PIL import Image

from promptdecouple.data import TIReIDDataModule, load_image, write_synthetic
from promptdecouple.metrics import RetrievalMetrics
from promptdecouple.module import PromptDecoupleModule
from promptdecouple.panels import RetrievalPanel, panel_queries
from promptdecouple.visualization import MATCH_COLOUR, draw_retrieval


class RecordingLogger(WandbLogger):
    """A WandbLogger that keeps the pictures instead of sending them."""

    def __init__(self) -> None:
        self.logged = []

    def log_image(self, key, images, step=None, **kwargs):
        self.logged.append((key, step, images, kwargs["caption"]))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("panel") / "rstp"
    write_synthetic(root, "rstpreid", num_identities=30, images_per_identity=2, image_size=(64, 32))
    return root


def data_module(root, tokenizer="unused", **kwargs):
    kwargs = {"image_size": (64, 32), "text_length": 32, "batch_size": 8, "num_workers": 0, **kwargs}
    return TIReIDDataModule("rstpreid", root, tokenizer=str(tokenizer), **kwargs)


def fit(tiny_clip_dir, dataset, save_dir, panel, epochs=2, loggers=None):
    data = data_module(dataset, tiny_clip_dir)
    module = PromptDecoupleModule(
        str(tiny_clip_dir),
        tokenizer=str(tiny_clip_dir),  # as the data's: Lightning refuses to log differing hparams
        num_classes=data.num_classes,
        image_size=(64, 32),
        text_length=32,
    )
    logger = WandbLogger(save_dir=str(save_dir), offline=True, project="panel-test")
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=epochs,
        logger=[logger, *(loggers or [])],
        callbacks=[panel],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=1,
        limit_train_batches=2,
    )
    try:
        trainer.fit(module, datamodule=data)
    finally:
        wandb.finish()
    (run,) = (save_dir / "wandb").glob("offline-run-*")
    return run


def test_panel_logs_pictures_every_validation_but_not_in_the_sanity_check(tiny_clip_dir, dataset, tmp_path):
    panel = RetrievalPanel(num_queries=2, k=3, thumbnail_height=96)
    # also when the W&B logger is one of several
    run = fit(tiny_clip_dir, dataset, tmp_path, panel, loggers=[CSVLogger(tmp_path / "csv")])
    pictures = sorted((run / "files" / "media" / "images" / "val").glob("retrieval_*.png"))
    assert len(pictures) == 2 * 2  # two epochs x two queries; nothing from the sanity check
    assert len({Image.open(path).size for path in pictures}) == 1  # W&B distorts mixed sizes
    for path in pictures:
        picture = Image.open(path)
        assert picture.height > 2 * 96  # the top-k row and the true images below
        pixels = np.asarray(picture.convert("RGB"))
        assert (pixels == MATCH_COLOUR).all(-1).sum() > 100  # the true images' frames at least


def test_zero_queries_turn_the_panel_off():
    class Untouchable:
        def items(self, role):
            raise AssertionError("the panel is off and must not gather features")

    logger = RecordingLogger()
    trainer = SimpleNamespace(loggers=[logger], datamodule=None, sanity_checking=False, is_global_zero=True)
    panel = RetrievalPanel(num_queries=0)
    panel.setup(trainer, torch.nn.Module(), "fit")  # needs no data module when off
    panel.on_validation_epoch_end(trainer, SimpleNamespace(val_metrics=Untouchable()))
    assert logger.logged == []


def test_queries_are_first_captions_of_evenly_spaced_identities():
    pids = np.array([7, 7, 3, 3, 3, 9, 1, 1, 4, 4, 4, 4])  # identities in order: 7, 3, 9, 1, 4
    assert panel_queries(pids, 2) == [0, 5]  # identities 7 and 9
    assert panel_queries(pids, 3) == [0, 2, 6]
    assert panel_queries(pids, 5) == [0, 2, 5, 6, 8]
    assert panel_queries(pids, 50) == [0, 2, 5, 6, 8]  # at most one per identity
    assert panel_queries(pids, 2) == panel_queries(pids.copy(), 2)


def test_arguments_and_missing_data_module_are_refused(tmp_path):
    with pytest.raises(ValueError, match="num_queries must be >= 0"):
        RetrievalPanel(num_queries=-1)
    with pytest.raises(ValueError, match="k must be >= 1"):
        RetrievalPanel(k=0)
    trainer = SimpleNamespace(loggers=[WandbLogger(save_dir=str(tmp_path), offline=True)], datamodule=None)
    with pytest.raises(ValueError, match="needs the captions and image paths.*TIReIDDataModule"):
        RetrievalPanel().setup(trainer, torch.nn.Module(), "fit")


# -- two processes -------------------------------------------------------------------------------------------


def features(num_items, seed):
    return torch.nn.functional.normalize(
        torch.randn(num_items, 16, generator=torch.Generator().manual_seed(seed))
    )


def panel_pictures(dataset, rank=0, world_size=1):
    """Run the panel's epoch end on `rank` with the items DistributedSampler would give it."""
    data = data_module(dataset)
    queries, gallery = data.eval_set(data.eval_split)
    metrics = RetrievalMetrics()
    for role, table, seed in (("query", queries, 1), ("gallery", gallery, 2)):
        everything = features(len(table), seed)
        # DistributedSampler: rank r takes items r, r + W, ... and pads by repeating the first ones
        padded = -(-len(table) // world_size) * world_size
        index = torch.arange(padded)[rank::world_size] % len(table)
        pids = torch.tensor(table["pid"].to_numpy())[index]
        metrics.update(everything[index], pids, index, role=role)
    logger = RecordingLogger()
    trainer = SimpleNamespace(
        loggers=[logger],
        datamodule=data,
        sanity_checking=False,
        is_global_zero=rank == 0,
        current_epoch=3,
        global_step=42,
    )
    RetrievalPanel(num_queries=3, k=4, thumbnail_height=64).on_validation_epoch_end(
        trainer, SimpleNamespace(val_metrics=metrics)
    )
    metrics.compute()  # the module's own hook still works afterwards
    result = []
    for key, step, images, captions in logger.logged:
        encoded = []
        for image in images:
            buffer = io.BytesIO()
            image.save(buffer, format="PNG")
            encoded.append(buffer.getvalue())
        result.append((key, step, encoded, captions))
    return result


def test_pictures_show_the_top_k_of_the_validation_features(dataset):
    ((_, _, pictures, captions),) = panel_pictures(dataset)
    queries, gallery = data_module(dataset).eval_set("val")
    chosen = panel_queries(queries["pid"].to_numpy(), 3)
    assert captions == [f"val caption {i} (identity {queries.loc[i, 'pid']})" for i in chosen]
    index = chosen[1]
    pid = int(queries.loc[index, "pid"])
    scores = features(len(queries), 1)[index] @ features(len(gallery), 2).T
    top = scores.argsort(descending=True)[:4].tolist()
    paths, pids = gallery["image_path"].tolist(), gallery["pid"].to_numpy()
    true = [i for i in range(len(gallery)) if pids[i] == pid]
    true_ranks = [int((scores >= scores[i]).sum()) for i in true]
    true = [i for _, i in sorted(zip(true_ranks, true, strict=True))]
    expected = draw_retrieval(
        queries.loc[index, "caption"],
        [load_image(paths[i]) for i in top],
        scores[top].tolist(),
        matches=[bool(pids[i] == pid) for i in top],
        true_images=[load_image(paths[i]) for i in true],
        true_ranks=sorted(true_ranks),
        note=f"val caption {index}, identity {pid}; epoch 3, step 42",
        thumbnail_height=64,
        max_true_images=4,
    )
    logged = np.asarray(Image.open(io.BytesIO(pictures[1])).convert("RGB"))
    width, height = expected.size
    # the panel pads every picture to one size: the drawing top-left, white around it
    assert (logged[:height, :width] == np.asarray(expected.convert("RGB"))).all()
    assert (logged[height:] == 255).all() and (logged[:, width:] == 255).all()


def _panel_worker(rank, port, dataset, out):
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=2,
        timeout=datetime.timedelta(seconds=60),
    )
    try:
        torch.save(panel_pictures(dataset, rank, world_size=2), out / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_processes_draw_what_one_process_draws(dataset, tmp_path):
    single = panel_pictures(dataset)
    ((key, step, pictures, captions),) = single
    assert (key, step, len(pictures)) == ("val/retrieval", 42, 3)
    assert len(set(captions)) == 3  # three different identities

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    mp.spawn(_panel_worker, args=(port, dataset, tmp_path), nprocs=2, join=True)
    results = [torch.load(tmp_path / f"rank{rank}.pt", weights_only=False) for rank in (0, 1)]
    assert results[0] == single  # rank 0 gathered every item and drew the same pictures
    assert results[1] == []  # only rank 0 logs
