"""RandomOrder / IdentityOrder: global batches of (seed, epoch), each process's slice, resumable at any step."""

from collections import Counter

import lightning as L
import numpy as np
import pytest
import torch
from torch.utils.data import Dataset
from torch.utils.data.distributed import DistributedSampler
from torchdata.stateful_dataloader import StatefulDataLoader

from promptdecouple.data.samplers import IdentityOrder, RandomOrder

# 30 identities with 1 to 7 items each, shuffled in the dataset order
SIZES = [1 + i % 7 for i in range(30)]
PIDS = np.random.default_rng(0).permutation(np.repeat(np.arange(30) * 10 + 3, SIZES))


def epoch_keys(sampler, epoch):
    sampler.set_epoch(epoch)
    return list(sampler)


def test_random_order_is_the_distributed_samplers_permutation_cut_into_global_batches():
    for epoch in range(3):
        reference = DistributedSampler(range(50), num_replicas=1, rank=0, shuffle=True, seed=9)
        reference.set_epoch(epoch)
        permutation = list(reference)
        batches = RandomOrder(50, batch_size=8, seed=9).global_batches(epoch)
        assert [b.tolist() for b in batches] == [
            permutation[i * 8 : (i + 1) * 8] for i in range(6)
        ]  # 2 dropped
    keys = epoch_keys(RandomOrder(50, batch_size=8, seed=9), 2)
    assert keys == [(i, 2) for b in RandomOrder(50, batch_size=8, seed=9).global_batches(2) for i in b]
    assert len(RandomOrder(50, batch_size=8, seed=9)) == 48


def test_each_process_gets_its_slice_of_every_global_batch():
    for epoch in range(2):
        global_batches = RandomOrder(50, batch_size=12, seed=1).global_batches(epoch)
        shares = [
            epoch_keys(RandomOrder(50, batch_size=4, num_replicas=3, rank=r, seed=1), epoch) for r in range(3)
        ]
        assert [len(s) for s in shares] == [16, 16, 16]  # 4 global batches of 12, 4 per process
        for step, batch in enumerate(global_batches):
            rebuilt = [i for r in range(3) for i, _ in shares[r][4 * step : 4 * step + 4]]
            assert rebuilt == batch.tolist()  # rank order rebuilds the one-process batch


def test_the_order_leaves_the_global_random_state_alone():
    torch.manual_seed(0)
    state = torch.get_rng_state()
    first = epoch_keys(RandomOrder(50, batch_size=8, seed=3), 1)
    assert torch.equal(torch.get_rng_state(), state)
    torch.manual_seed(123)
    assert epoch_keys(RandomOrder(50, batch_size=8, seed=3), 1) == first
    assert epoch_keys(RandomOrder(50, batch_size=8, seed=4), 1) != first


def check_batch(batch, pids, p, k):
    counts = Counter(pids[i] for i in batch)
    assert len(batch) == p * k
    assert len(counts) == p, "an identity appears in two groups of one batch"
    assert set(counts.values()) == {k}


def test_identity_batches_hold_p_distinct_identities_with_k_items_each():
    order = IdentityOrder(PIDS, batch_size=16, instances_per_identity=4)
    batches = order.global_batches(0)
    assert len(batches) == order.num_batches() > 0 and len(order) == 16 * len(batches)
    for batch in batches:
        check_batch(batch, PIDS, 4, 4)


def test_every_item_is_used_each_epoch():
    order = IdentityOrder(PIDS, batch_size=8, instances_per_identity=2)
    for epoch in range(3):
        used = {int(i) for batch in order.global_batches(epoch) for i in batch}
        assert len(used) >= len(PIDS) - 3 * 2  # fewer than P groups are left over


def test_small_identities_are_topped_up_with_their_own_items():
    pids = np.array([0] + [1] * 5 + [2] * 2 + [3] * 3)
    order = IdentityOrder(pids, batch_size=8, instances_per_identity=4, seed=3)
    for batch in order.global_batches(0):
        check_batch(batch, pids, 2, 4)
        assert [int(i) for i in batch if pids[i] == 0] in ([], [0, 0, 0, 0])


def test_identity_epochs_reshuffle_and_depend_on_the_seed():
    order = IdentityOrder(PIDS, batch_size=16, instances_per_identity=4, seed=5)
    first = epoch_keys(order, 0)
    assert epoch_keys(order, 0) == first
    assert [i for i, _ in epoch_keys(order, 1)] != [i for i, _ in first]
    other = IdentityOrder(PIDS, batch_size=16, instances_per_identity=4, seed=6)
    assert epoch_keys(other, 0) != first


def test_identity_shares_are_whole_groups_of_the_same_global_batches():
    one = IdentityOrder(PIDS, batch_size=8, instances_per_identity=2, seed=1)
    shares = [
        epoch_keys(
            IdentityOrder(PIDS, batch_size=4, instances_per_identity=2, num_replicas=2, rank=r, seed=1), 3
        )
        for r in range(2)
    ]
    assert len(shares[0]) == len(shares[1]) == len(epoch_keys(one, 3)) // 2
    for step, batch in enumerate(one.global_batches(3)):
        halves = [[i for i, _ in share[4 * step : 4 * step + 4]] for share in shares]
        assert halves[0] + halves[1] == batch.tolist()
        for half in halves:
            check_batch(half, PIDS, 2, 2)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"batch_size": 10, "instances_per_identity": 4}, "multiple of instances_per_identity"),
        ({"batch_size": 8, "instances_per_identity": 0}, "instances_per_identity must be >= 1"),
        ({"batch_size": 31 * 4, "instances_per_identity": 4}, "needs 31 identities; the dataset has 30"),
        ({"batch_size": 4, "instances_per_identity": 2, "num_replicas": 2, "rank": 2}, "rank must be in"),
    ],
)
def test_impossible_identity_settings_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        IdentityOrder(PIDS, **kwargs)


def test_a_batch_larger_than_the_data_is_refused():
    with pytest.raises(
        ValueError, match=r"10 items, fewer than one global batch of 16 \(2 process\(es\) x 8\)"
    ):
        RandomOrder(10, batch_size=8, num_replicas=2)


def test_a_saved_position_resumes_that_epoch_only():
    order = RandomOrder(50, batch_size=8, seed=2)
    order.set_epoch(1)
    keys = iter(order)
    done = [next(keys) for _ in range(16)]  # two batches
    state = order.state_dict()
    assert state == {"epoch": 1, "batches": 2, "yielded": 16}
    resumed = RandomOrder(50, batch_size=8, seed=2)
    resumed.load_state_dict(state)
    assert epoch_keys(resumed, 1) == epoch_keys(RandomOrder(50, batch_size=8, seed=2), 1)[16:]
    assert done == epoch_keys(RandomOrder(50, batch_size=8, seed=2), 1)[:16]
    assert len(epoch_keys(resumed, 1)) == 48  # applied once
    # a checkpoint on the last batch of epoch 1: the loop then starts epoch 2, from its first batch
    ended = RandomOrder(50, batch_size=8, seed=2)
    ended.load_state_dict({"epoch": 1, "batches": 6, "yielded": 48})
    assert epoch_keys(ended, 2) == epoch_keys(RandomOrder(50, batch_size=8, seed=2), 2)


def test_a_position_resumes_on_another_number_of_processes():
    """Saved by one process after 2 global batches of 8, resumed by two processes of 4."""
    state = {"epoch": 0, "batches": 2, "yielded": 16}
    for rank in range(2):
        resumed = RandomOrder(50, batch_size=4, num_replicas=2, rank=rank, seed=2)
        resumed.load_state_dict(state)
        full = epoch_keys(RandomOrder(50, batch_size=4, num_replicas=2, rank=rank, seed=2), 0)
        assert epoch_keys(resumed, 0) == full[8:]


class Keys(Dataset):
    def __len__(self):
        return 50

    def __getitem__(self, key):
        return torch.tensor(key)


@pytest.mark.parametrize("workers", [0, 2])
def test_a_stateful_dataloader_resumes_at_the_next_batch(workers):
    def loader():
        order = RandomOrder(50, batch_size=4, seed=7)
        return StatefulDataLoader(Keys(), batch_size=4, sampler=order, drop_last=True, num_workers=workers)

    reference = loader()
    reference.sampler.set_epoch(3)
    expected = [batch.tolist() for batch in reference]
    first = loader()
    first.sampler.set_epoch(3)
    iterator = iter(first)
    seen = [next(iterator).tolist() for _ in range(5)]
    state = first.state_dict()
    second = loader()
    second.load_state_dict(state)
    second.sampler.set_epoch(3)
    assert seen + [batch.tolist() for batch in second] == expected


class Recorder(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.seen = {}

    def training_step(self, batch, batch_idx):
        self.seen.setdefault(self.current_epoch, []).extend(tuple(k) for k in batch.tolist())
        return self.weight.sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_a_lightning_trainer_sets_the_epoch_each_epoch():
    order = RandomOrder(50, batch_size=8, seed=5)
    loader = StatefulDataLoader(Keys(), batch_size=8, sampler=order, drop_last=True)
    model = Recorder()
    trainer = L.Trainer(
        max_epochs=3,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, train_dataloaders=loader)
    for epoch in range(3):
        assert model.seen[epoch] == epoch_keys(RandomOrder(50, batch_size=8, seed=5), epoch)
