"""Training-order samplers whose order is a function of (seed, epoch), so that resumed runs repeat it.

`SeededRandomSampler` shuffles like `RandomSampler`, but draws each epoch's order from its own
generator seeded with `seed + epoch` instead of the global RNG: a run resumed from a checkpoint at
epoch e sees the order the uninterrupted run saw. Under DDP Lightning swaps it (as any
`RandomSampler`) for a `DistributedSampler(shuffle=True, seed=<seed_everything seed>)`, which follows
the same rule and gives each rank its own share.

`IdentityBatchSampler` makes identity-balanced batches (P identities x K samples), split across DDP
ranks. Losses that compare samples within a batch (SDM's same-identity targets, triplets) need
several samples of each identity in a batch; plain shuffling rarely gives them. It plans one epoch
at a time, from `(seed, epoch)` alone, so every rank computes the same plan and takes its own share
of the batches: ranks never see the same batch, and all ranks get the same number of steps.

Under a Lightning `Trainer` with DDP, Lightning replaces a batch sampler's `sampler` argument with a
`DistributedSampler` (`use_distributed_sampler=True`, the default) and calls `set_epoch` on it
every epoch. `IdentityBatchSampler` takes the rank, world size and epoch from that sampler, so it
works with Lightning's re-wrapping rather than against it; with `use_distributed_sampler=False` (or
outside Lightning) pass `num_replicas`/`rank` and call `set_epoch` yourself.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Iterator, Sequence, Sized

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import BatchSampler, RandomSampler, Sampler
from torch.utils.data.distributed import DistributedSampler


class SeededRandomSampler(RandomSampler):
    """A random permutation of `data_source` per epoch, drawn from `seed + epoch` alone.

    `set_epoch(epoch)` picks the epoch (Lightning's fit loop calls it on the train loader's sampler
    at the start of every epoch, resumed runs included); iterating twice in one epoch repeats the
    order. `seed=None` takes `seed_everything`'s seed (the ``PL_GLOBAL_SEED`` environment variable,
    else 0) when the sampler is made: the seed Lightning gives its `DistributedSampler` under DDP, so
    a single process sees the order a one-process `DistributedSampler(shuffle=True)` would.

    Being a `RandomSampler`, it is replaced by that `DistributedSampler` when Lightning runs DDP
    (with the default `use_distributed_sampler=True`); each rank then gets its own share.
    """

    def __init__(self, data_source: Sized, seed: int | None = None):
        super().__init__(data_source)
        self.seed = int(os.environ.get("PL_GLOBAL_SEED", 0)) if seed is None else int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Use the order of `epoch` from the next iteration on."""
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator()
        generator.manual_seed(self.seed + self.epoch)
        yield from torch.randperm(len(self.data_source), generator=generator).tolist()

    def __len__(self) -> int:
        return len(self.data_source)


class IdentityBatchSampler(BatchSampler):
    """Batches of `batch_size // instances_per_identity` distinct identities, K samples each.

    `pids[i]` is the identity of dataset item `i`. Each epoch, every identity's items are shuffled
    and cut into groups of K (a short last group, or an identity with fewer than K items, is topped
    up with other items of the same identity), and the groups are dealt into batches so that no
    identity appears twice in a batch. Every item is used once per epoch except the fewer than P
    groups left over (a different few each epoch). Epochs have a fixed number of batches,
    `(number of groups // P) // num_replicas` per rank.

    Batches are always full; `drop_last` is kept for the `BatchSampler` interface (Lightning passes
    it on when it re-creates the sampler).

    `sampler` carries the distributed setting: a `DistributedSampler` (rank, world size, and the
    epoch that `set_epoch` sets), as Lightning injects under DDP. Without one, a
    `DistributedSampler` is made from `num_replicas`/`rank` (default: the initialised process group,
    else a single process).
    """

    def __init__(
        self,
        sampler: Sampler[int] | None = None,
        batch_size: int = 64,
        drop_last: bool = True,
        *,
        pids: Sequence[int],
        instances_per_identity: int = 4,
        seed: int = 0,
        num_replicas: int | None = None,
        rank: int | None = None,
    ):
        if instances_per_identity < 1:
            raise ValueError(f"instances_per_identity must be >= 1, got {instances_per_identity}")
        if batch_size < 1 or batch_size % instances_per_identity:
            raise ValueError(
                f"batch_size ({batch_size}) must be a positive multiple of instances_per_identity "
                f"({instances_per_identity})"
            )
        if sampler is None:
            if num_replicas is None:
                num_replicas = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
            if rank is None:
                rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
            sampler = DistributedSampler(
                range(len(pids)), num_replicas=num_replicas, rank=rank, shuffle=False
            )
        elif not all(hasattr(sampler, name) for name in ("num_replicas", "rank", "epoch")):
            raise TypeError(
                "IdentityBatchSampler takes its rank, world size and epoch from a DistributedSampler; "
                f"got a {type(sampler).__name__}"
            )
        self.sampler = sampler
        self.batch_size = batch_size
        self.drop_last = drop_last
        self.instances_per_identity = instances_per_identity
        self.identities_per_batch = batch_size // instances_per_identity
        self.seed = seed

        pids = np.asarray(pids)
        dataset = getattr(sampler, "dataset", None)
        if dataset is not None and len(dataset) != len(pids):
            raise ValueError(f"pids has {len(pids)} entries but the sampler's dataset has {len(dataset)}")
        order = np.argsort(pids, kind="stable")
        boundaries = np.flatnonzero(np.diff(pids[order])) + 1
        self._members = np.split(order, boundaries)
        if len(self._members) < self.identities_per_batch:
            raise ValueError(
                f"an identity-balanced batch of {batch_size} with {instances_per_identity} samples per identity "
                f"needs {self.identities_per_batch} identities; the dataset has {len(self._members)}"
            )
        k = instances_per_identity
        groups = sum(max(1, -(-len(members) // k)) for members in self._members)
        self._batches_per_epoch = groups // self.identities_per_batch
        if self._batches_per_epoch < self.num_replicas:
            raise ValueError(
                f"{self._batches_per_epoch} identity-balanced batches per epoch cannot be shared by "
                f"{self.num_replicas} processes; lower batch_size"
            )

    @property
    def num_replicas(self) -> int:
        return int(self.sampler.num_replicas)

    @property
    def rank(self) -> int:
        return int(self.sampler.rank)

    @property
    def epoch(self) -> int:
        return int(self.sampler.epoch)

    def set_epoch(self, epoch: int) -> None:
        """Reshuffle for `epoch` (Lightning calls this on `sampler` itself)."""
        self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return self._batches_per_epoch // self.num_replicas

    def __iter__(self) -> Iterator[list[int]]:
        batches = self.plan(self.epoch)
        per_rank = len(self)
        yield from batches[self.rank : per_rank * self.num_replicas : self.num_replicas]

    def plan(self, epoch: int) -> list[list[int]]:
        """All batches of `epoch`, for all ranks (rank r gets items r, r + W, ...)."""
        rng = np.random.default_rng([self.seed, epoch])
        k = self.instances_per_identity
        group_identity: list[int] = []
        groups: list[np.ndarray] = []
        for identity, members in enumerate(self._members):
            shuffled = rng.permutation(members)
            if len(shuffled) < k:
                shuffled = np.concatenate([shuffled, rng.choice(members, k - len(shuffled))])
            elif remainder := len(shuffled) % k:
                full = shuffled[: len(shuffled) - remainder]
                shuffled = np.concatenate([shuffled, rng.choice(full, k - remainder, replace=False)])
            for start in range(0, len(shuffled), k):
                groups.append(shuffled[start : start + k])
                group_identity.append(identity)

        deck = deque(rng.permutation(len(groups)).tolist())
        batches: list[list[int]] = []
        p = self.identities_per_batch
        for _ in range(self._batches_per_epoch):
            taken: list[int] = []
            in_batch: set[int] = set()
            deferred: list[int] = []
            while len(taken) < p and deck:
                group = deck.popleft()
                if group_identity[group] in in_batch:
                    deferred.append(group)
                else:
                    taken.append(group)
                    in_batch.add(group_identity[group])
            deck.extendleft(reversed(deferred))
            batch = [groups[g] for g in taken]
            if len(taken) < p:  # only near the end of an epoch: top up with fresh groups of other identities
                others = np.array([i for i in range(len(self._members)) if i not in in_batch])
                for identity in rng.choice(others, p - len(taken), replace=False):
                    members = self._members[identity]
                    batch.append(rng.choice(members, k, replace=len(members) < k))
            batches.append(np.concatenate(batch).tolist())
        return batches
