"""The training order: global batches of an epoch, each process's share of them, resumable at any step.

One experiment on any number of processes needs the *global* batch of every step to be the same
whatever the number of processes: with a global batch of 64, one process trains on the 64 items of
step `s`, four processes on 16 of them each. The samplers here plan each epoch as a list of global
batches, a pure function of `(seed, epoch)`, and give process `rank` of `num_replicas` the
contiguous slice `rank * B : (rank + 1) * B` of each (`B = global batch / num_replicas`). Gathering
the processes' features in rank order (`all_gather`) therefore rebuilds the global batch in the
order one process would see it.

- `RandomOrder`: a permutation of the items per epoch, cut into global batches (the last, partial
  batch is dropped, as `drop_last=True` does).
- `IdentityOrder`: identity-balanced global batches of `P` identities x `K` items (`K =
  instances_per_identity`), no identity twice in a batch. Losses that compare samples within a
  batch (SDM's same-identity targets) need several samples of an identity in a batch.

Both are `DistributedSampler`s: Lightning leaves a distributed sampler it finds in a loader as it
is, instead of replacing it with its own (which would split the items by another rule). They yield
`(index, epoch)` keys: the datasets draw each item's augmentation from `(seed, epoch, index)`, so
the draws do not depend on which process or loader worker produced the item.

Resuming mid-epoch: `state_dict()` is `{epoch, batches}` (global batches done); `load_state_dict`
sets that epoch, and its next iteration skips those batches (on any number of processes); iterating
another epoch ignores the saved position. A checkpoint taken on the last batch of an epoch continues
with the first batch of the next epoch. torchdata's
`StatefulDataLoader`, whose state Lightning's fit loop saves in checkpoints, carries this state.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data.distributed import DistributedSampler


class EpochOrder(DistributedSampler):
    """One process's share of every global batch of an epoch, as `(index, epoch)` keys.

    Subclasses define `global_batches(epoch)`. `batch_size` is the per-process batch `B`; the
    global batch is `B * num_replicas`. `len(self)` is the number of keys per epoch (a multiple of
    `B`); load them with `batch_size=B, drop_last=True`.
    """

    def __init__(
        self, size: int, batch_size: int, num_replicas: int = 1, rank: int = 0, seed: int = 0
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(f"rank must be in [0, num_replicas), got rank {rank} of {num_replicas}")
        super().__init__(range(size), num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)
        self.size = size
        self.batch_size = batch_size
        self.yielded = 0
        self._resume: tuple[int, int] | None = None

    @property
    def global_batch_size(self) -> int:
        return self.batch_size * self.num_replicas

    def global_batches(self, epoch: int) -> list[np.ndarray]:
        """Every global batch of `epoch`, in order, each `global_batch_size` item indices."""
        raise NotImplementedError

    def num_batches(self) -> int:
        """Optimizer steps per epoch: the same for every process."""
        raise NotImplementedError

    def __len__(self) -> int:
        return self.num_batches() * self.batch_size

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch = self.epoch
        skip = 0
        if self._resume is not None:
            saved_epoch, batches_done = self._resume
            self._resume = None
            if saved_epoch == epoch:
                skip = batches_done * self.batch_size
        start, stop = self.rank * self.batch_size, (self.rank + 1) * self.batch_size
        keys = [(int(i), epoch) for batch in self.global_batches(epoch) for i in batch[start:stop]]
        self.yielded = skip
        for key in keys[skip:]:
            self.yielded += 1
            yield key

    def state_dict(self) -> dict:
        """Where the current epoch is: `{"epoch": e, "batches": global batches done, "yielded": keys}`.

        The position counts global batches, so a run may resume on another number of processes.
        """
        return {"epoch": self.epoch, "batches": self.yielded // self.batch_size, "yielded": self.yielded}

    def load_state_dict(self, state_dict: dict) -> None:
        """Continue where the state says: the saved epoch after its done batches, or the next epoch.

        The epoch is set here too: with loader workers, the loader draws keys (prefetching) as soon
        as it is restored, before Lightning sets the epoch of the resumed run (to the same value). A
        state at the end of an epoch continues with the first batch of the next one.
        """
        epoch, batches = int(state_dict["epoch"]), int(state_dict["batches"])
        if batches < 0:
            raise ValueError(f"cannot resume from a negative position: {state_dict}")
        if batches >= self.num_batches():
            epoch, batches = epoch + 1, 0
        self.epoch = epoch
        self._resume = (epoch, batches) if batches else None


class RandomOrder(EpochOrder):
    """Each epoch, a permutation of the `size` items drawn from `(seed, epoch)`, cut into global batches.

    The permutation is `torch.randperm(size)` under a generator seeded with `seed + epoch`, as
    `DistributedSampler(shuffle=True)` draws it; the global random state is neither used nor changed.
    """

    def __init__(
        self, size: int, batch_size: int, num_replicas: int = 1, rank: int = 0, seed: int = 0
    ) -> None:
        super().__init__(size, batch_size, num_replicas, rank, seed)
        if self.num_batches() < 1:
            raise ValueError(
                f"the training set has {size} items, fewer than one global batch of {self.global_batch_size} "
                f"({num_replicas} process(es) x {batch_size}): lower the batch size"
            )

    def num_batches(self) -> int:
        return self.size // self.global_batch_size

    def global_batches(self, epoch: int) -> list[np.ndarray]:
        generator = torch.Generator()
        generator.manual_seed(self.seed + epoch)
        order = torch.randperm(self.size, generator=generator).numpy()
        size = self.global_batch_size
        return [order[i * size : (i + 1) * size] for i in range(self.num_batches())]


class IdentityOrder(EpochOrder):
    """Identity-balanced global batches: `P = global batch / K` distinct identities, K items each.

    `pids[i]` is the identity of item `i`. Each epoch, every identity's items are shuffled and cut
    into groups of K (a short last group, or an identity with fewer than K items, is topped up with
    other items of the same identity), and the groups are dealt into batches so that no identity
    appears twice in a batch. Every item is used once per epoch except the fewer than P groups left
    over (a different few each epoch). Each process's share is a whole number of groups: the
    per-process batch must be a multiple of K.
    """

    def __init__(
        self,
        pids: Sequence[int],
        batch_size: int,
        instances_per_identity: int = 4,
        num_replicas: int = 1,
        rank: int = 0,
        seed: int = 0,
    ) -> None:
        if instances_per_identity < 1:
            raise ValueError(f"instances_per_identity must be >= 1, got {instances_per_identity}")
        if batch_size % instances_per_identity:
            raise ValueError(
                f"the per-process batch ({batch_size}) must be a multiple of instances_per_identity "
                f"({instances_per_identity}), so that every process gets whole identity groups"
            )
        super().__init__(len(pids), batch_size, num_replicas, rank, seed)
        self.instances_per_identity = instances_per_identity
        self.identities_per_batch = self.global_batch_size // instances_per_identity
        pids = np.asarray(pids)
        order = np.argsort(pids, kind="stable")
        boundaries = np.flatnonzero(np.diff(pids[order])) + 1
        self._members = np.split(order, boundaries)
        if len(self._members) < self.identities_per_batch:
            raise ValueError(
                f"an identity-balanced global batch of {self.global_batch_size} with {instances_per_identity} "
                f"samples per identity needs {self.identities_per_batch} identities; the dataset has "
                f"{len(self._members)}"
            )
        k = instances_per_identity
        groups = sum(max(1, -(-len(members) // k)) for members in self._members)
        self._batches_per_epoch = groups // self.identities_per_batch

    def num_batches(self) -> int:
        return self._batches_per_epoch

    def global_batches(self, epoch: int) -> list[np.ndarray]:
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
        batches: list[np.ndarray] = []
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
            batches.append(np.concatenate(batch))
        return batches
