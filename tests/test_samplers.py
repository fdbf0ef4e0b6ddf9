"""SeededRandomSampler: order from (seed, epoch); IdentityBatchSampler: P x K batches, epochs, DDP ranks."""

from collections import Counter

import lightning as L
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset, RandomSampler
from torch.utils.data.distributed import DistributedSampler

from promptdecouple.data.samplers import IdentityBatchSampler, SeededRandomSampler

# 30 identities with 1 to 7 items each, shuffled in the dataset order
SIZES = [1 + i % 7 for i in range(30)]
PIDS = np.random.default_rng(0).permutation(np.repeat(np.arange(30) * 10 + 3, SIZES))


def order(seed, epoch, size=50):
    sampler = SeededRandomSampler(range(size), seed=seed)
    sampler.set_epoch(epoch)
    return list(sampler)


def test_seeded_order_is_a_function_of_seed_and_epoch():
    sampler = SeededRandomSampler(range(50), seed=3)
    first = list(sampler)
    assert sorted(first) == list(range(50)) and first != list(range(50))
    assert list(sampler) == first == order(3, 0)  # iterating again, or anew, repeats it
    sampler.set_epoch(1)
    assert list(sampler) == order(3, 1) != first
    sampler.set_epoch(0)
    assert list(sampler) == first
    assert order(4, 0) != first
    assert len({tuple(order(3, epoch)) for epoch in range(10)}) == 10
    assert len(sampler) == 50


def test_seeded_order_ignores_and_leaves_alone_the_global_rng():
    torch.manual_seed(0)
    first = order(3, 2)
    state = torch.get_rng_state()
    torch.manual_seed(1)
    assert order(3, 2) == first
    torch.set_rng_state(state)
    order(3, 2)
    assert torch.equal(torch.get_rng_state(), state)


def test_default_seed_is_seed_everythings(monkeypatch):
    monkeypatch.setenv("PL_GLOBAL_SEED", "11")
    assert SeededRandomSampler(range(50)).seed == 11
    assert list(SeededRandomSampler(range(50))) == order(11, 0)
    monkeypatch.delenv("PL_GLOBAL_SEED")
    assert SeededRandomSampler(range(50)).seed == 0


def test_one_process_sees_the_order_of_a_one_replica_distributed_sampler():
    """Lightning's DDP sampler follows the same (seed, epoch) rule; one process is its one-rank case."""
    for epoch in range(3):
        reference = DistributedSampler(range(50), num_replicas=1, rank=0, shuffle=True, seed=9)
        reference.set_epoch(epoch)
        assert order(9, epoch) == list(reference)


class Indices(Dataset):
    def __len__(self):
        return 40

    def __getitem__(self, index):
        return index


class OrderRecorder(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.seen = {}

    def training_step(self, batch, batch_idx):
        self.seen.setdefault(self.current_epoch, []).extend(batch.tolist())
        return self.weight.sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_a_lightning_trainer_sets_the_epoch_each_epoch():
    loader = DataLoader(Indices(), batch_size=8, sampler=SeededRandomSampler(Indices(), seed=5))
    model = OrderRecorder()
    trainer = L.Trainer(
        max_epochs=3,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, train_dataloaders=loader)
    assert sorted(model.seen) == [0, 1, 2]
    for epoch, seen in model.seen.items():
        assert seen == order(5, epoch, size=40)
    assert len({tuple(seen) for seen in model.seen.values()}) == 3


def test_lightning_swaps_it_for_its_distributed_sampler_under_ddp(monkeypatch):
    """Lightning's code path for a training loader under DDP (use_distributed_sampler=True), both ranks."""
    from lightning.fabric.utilities.data import _replace_dunder_methods, _set_sampler_epoch
    from lightning.pytorch.trainer.connectors.data_connector import _get_distributed_sampler
    from lightning.pytorch.trainer.states import RunningStage
    from lightning.pytorch.utilities.data import _update_dataloader

    monkeypatch.setenv("PL_GLOBAL_SEED", "5")
    with _replace_dunder_methods(DataLoader, "dataset"):  # what Lightning wraps around `train_dataloader()`
        loader = DataLoader(Indices(), batch_size=4, sampler=SeededRandomSampler(Indices()), drop_last=True)
    assert isinstance(loader.sampler, RandomSampler)
    seen = []
    for rank in range(2):
        injected = _get_distributed_sampler(
            loader, shuffle=True, overfit_batches=0, mode=RunningStage.TRAINING, num_replicas=2, rank=rank
        )
        assert type(injected) is DistributedSampler and injected.shuffle and injected.seed == 5
        rewrapped = _update_dataloader(loader, injected, mode=RunningStage.TRAINING)
        epochs = []
        for epoch in range(2):
            _set_sampler_epoch(rewrapped, epoch)
            epochs.append([i for batch in rewrapped for i in batch.tolist()])
        assert epochs[0] != epochs[1]
        seen.append(epochs)
    for epoch in range(2):
        assert len(seen[0][epoch]) == len(seen[1][epoch]) == 20
        assert sorted(seen[0][epoch] + seen[1][epoch]) == list(range(40))


def check_batch(batch, pids, p, k):
    counts = Counter(pids[i] for i in batch)
    assert len(batch) == p * k
    assert len(counts) == p, "an identity appears in two groups of one batch"
    assert set(counts.values()) == {k}


def test_batches_hold_p_distinct_identities_with_k_items_each():
    sampler = IdentityBatchSampler(batch_size=16, pids=PIDS, instances_per_identity=4)
    batches = list(sampler)
    assert len(batches) == len(sampler) > 0
    for batch in batches:
        check_batch(batch, PIDS, 4, 4)


def test_every_item_is_used_each_epoch():
    sampler = IdentityBatchSampler(batch_size=8, pids=PIDS, instances_per_identity=2)
    for epoch in range(3):
        used = {i for batch in sampler.plan(epoch) for i in batch}
        # the grouping leaves fewer than P groups over; with P=4 nearly everything is used
        assert len(used) >= len(PIDS) - 3 * 2


def test_small_identities_are_topped_up_with_their_own_items():
    pids = np.array([0] + [1] * 5 + [2] * 2 + [3] * 3)
    sampler = IdentityBatchSampler(batch_size=8, pids=pids, instances_per_identity=4, seed=3)
    for batch in sampler.plan(0):
        check_batch(batch, pids, 2, 4)
        group_of_0 = [i for i in batch if pids[i] == 0]
        assert group_of_0 in ([], [0, 0, 0, 0])


def test_epochs_reshuffle_and_repeat_for_the_same_epoch():
    sampler = IdentityBatchSampler(batch_size=16, pids=PIDS, instances_per_identity=4, seed=5)
    first = list(sampler)
    assert list(sampler) == first
    sampler.set_epoch(1)
    second = list(sampler)
    assert second != first
    sampler.set_epoch(0)
    assert list(sampler) == first
    other_seed = IdentityBatchSampler(batch_size=16, pids=PIDS, instances_per_identity=4, seed=6)
    assert list(other_seed) != first


def test_two_ranks_get_distinct_batches_of_equal_count():
    for epoch in range(3):
        per_rank = []
        for rank in range(2):
            sampler = IdentityBatchSampler(
                batch_size=8, pids=PIDS, instances_per_identity=2, num_replicas=2, rank=rank, seed=1
            )
            sampler.set_epoch(epoch)
            per_rank.append([tuple(b) for b in sampler])
            for batch in per_rank[-1]:
                check_batch(batch, PIDS, 4, 2)
        assert len(per_rank[0]) == len(per_rank[1]) > 0
        assert not set(per_rank[0]) & set(per_rank[1])
        single = IdentityBatchSampler(batch_size=8, pids=PIDS, instances_per_identity=2, seed=1)
        plan = [tuple(b) for b in single.plan(epoch)]
        assert per_rank[0] + per_rank[1] != plan  # interleaved, not halves
        assert set(per_rank[0]) | set(per_rank[1]) <= set(plan)


def test_rank_world_size_and_epoch_come_from_an_injected_distributed_sampler():
    """What Lightning does under DDP: it passes its own DistributedSampler and calls set_epoch on it."""
    dataset = list(range(len(PIDS)))
    batches = []
    for rank in range(2):
        injected = DistributedSampler(dataset, num_replicas=2, rank=rank, shuffle=True, seed=0)
        injected.set_epoch(4)
        sampler = IdentityBatchSampler(injected, 8, pids=PIDS, instances_per_identity=2, seed=1)
        assert (sampler.rank, sampler.num_replicas, sampler.epoch) == (rank, 2, 4)
        batches.append([tuple(b) for b in sampler])
    reference = IdentityBatchSampler(batch_size=8, pids=PIDS, instances_per_identity=2, seed=1)
    plan = [tuple(b) for b in reference.plan(4)]
    assert batches[0] == plan[0::2][: len(batches[0])]
    assert batches[1] == plan[1::2][: len(batches[1])]


class Items(Dataset):
    def __len__(self):
        return len(PIDS)

    def __getitem__(self, index):
        return index


def test_lightning_reinstantiates_it_with_a_distributed_sampler():
    """Lightning's own re-wrapping code path (use_distributed_sampler=True under DDP), run for rank 1 of 2."""
    from lightning.fabric.utilities.data import _replace_dunder_methods, _set_sampler_epoch
    from lightning.pytorch.trainer.states import RunningStage
    from lightning.pytorch.utilities.data import _update_dataloader
    from torch.utils.data import BatchSampler

    with _replace_dunder_methods(BatchSampler):  # what Lightning wraps around `train_dataloader()`
        loader = DataLoader(
            Items(),
            batch_sampler=IdentityBatchSampler(batch_size=8, pids=PIDS, instances_per_identity=2, seed=1),
        )
    injected = DistributedSampler(loader.dataset, num_replicas=2, rank=1, shuffle=True)
    rewrapped = _update_dataloader(loader, injected, mode=RunningStage.TRAINING)
    assert isinstance(rewrapped.batch_sampler, IdentityBatchSampler)
    assert rewrapped.batch_sampler.sampler is injected
    _set_sampler_epoch(rewrapped, 2)  # what the fit loop calls each epoch
    reference = IdentityBatchSampler(batch_size=8, pids=PIDS, instances_per_identity=2, seed=1)
    plan = reference.plan(2)
    got = [batch.tolist() for batch in rewrapped]
    assert got == plan[1::2][: len(got)]
    assert len(rewrapped) == len(plan) // 2


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"batch_size": 10, "instances_per_identity": 4}, "multiple of instances_per_identity"),
        ({"batch_size": 8, "instances_per_identity": 0}, "instances_per_identity must be >= 1"),
        ({"batch_size": 31 * 4, "instances_per_identity": 4}, "needs 31 identities; the dataset has 30"),
        (
            {"batch_size": 120, "instances_per_identity": 4, "num_replicas": 4, "rank": 0},
            "cannot be shared by 4",
        ),
    ],
)
def test_impossible_settings_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        IdentityBatchSampler(pids=PIDS, **kwargs)


def test_a_sampler_without_rank_information_is_refused():
    with pytest.raises(TypeError, match="DistributedSampler"):
        IdentityBatchSampler(list(range(len(PIDS))), 8, pids=PIDS, instances_per_identity=2)
