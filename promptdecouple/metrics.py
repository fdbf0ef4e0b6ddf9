"""Text-to-image retrieval metrics: Rank-k, mAP and mINP, exact, in bounded memory, and DDP-safe.

Every query (a caption) is ranked against the whole gallery (the images) by cosine similarity; a gallery item
is a match when it shows the query's identity. With the match ranks ``r_1 < ... < r_m`` of one query:

- Rank-k: 1 if ``r_1 <= k``; its mean over queries is the CMC value at k;
- AP: ``mean_i(i / r_i)``, over all ``m`` matches (no top-k truncation);
- INP: ``m / r_m`` (Zheng et al.'s inverse negative penalty: how deep the hardest match lies).

These are the numbers TIReID code (IRRA and its forks) gets by sorting the whole query x gallery matrix. Here
nothing is sorted: queries are taken in chunks, each chunk's similarities to the gallery come from one matmul,
and the rank of a match is the number of gallery items scoring at least as high as it. Those counts come from
comparison passes, one per match score, over the blocks of gallery items whose highest similarity reaches that
score: the gallery is put in an order where similar items are neighbours, so that for ranks of features that
separate identities these are a few percent of the chunk (when most blocks reach, as for an untrained model,
whole rows are compared instead). Time stays close to that of the similarity matmul itself for a trained model,
within about 3x of it for an untrained one, and memory to one chunk (``benchmarks/retrieval_metrics.py``,
``docs/benchmarks.md``).

Ties (equal similarities) are ranked pessimistically: a non-matching item that scores exactly as high as a match
is placed before it. This equals a full stable sort by (similarity descending, non-matches first), makes the
result independent of gallery order, and gives a model that maps everything to one feature the worst score rather
than a lucky one.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat
from torchmetrics.utilities.distributed import gather_all_tensors

__all__ = ["RetrievalMetrics", "ScoredItems", "chance_metrics", "match_ranks", "retrieval_metrics"]

UnmatchedPolicy = Literal["warn", "error", "ignore"]
_UNMATCHED_POLICIES = ("warn", "error", "ignore")
_ROLES = ("query", "gallery")

# Bytes of similarities per chunk when chunk_size is None (256 MB): fewer, larger matmuls run closer to the
# speed of one whole matmul, most of all with several threads.
_AUTO_CHUNK_BYTES = 1 << 28
# Gallery items per block: the counting works on blocks of this many consecutive gallery items and skips every
# block whose highest similarity is below a threshold.
_BLOCK_ITEMS = 128
# The gallery is put in an order where similar items are neighbours, so that the items above a query's
# thresholds fall into few blocks: items are grouped by the nearest of this many centres, found by a few
# k-means steps on a sample drawn with a fixed seed. It decides speed only, never the result.
_ORDER_CENTRES = 64
_ORDER_SAMPLE = 4096
_ORDER_STEPS = 10
# Similarity entries per thread compared per step of a counting pass on CPU: they stay in a core's cache.
# (Accelerators compare all remaining blocks at once.) Steps that take longer than 1.5 ns per compared entry,
# about 3 times their normal cost, are stalling (see _Scratch); that is judged once 2**22 entries have been
# compared.
_PASS_STEP_ENTRIES = 1 << 17
_STALLED_SECONDS_PER_ENTRY = 1.5e-9
_STALL_CHECK_ENTRIES = 1 << 22
# When the candidate blocks would take more than this share of the comparisons of all blocks with all
# thresholds, every row is compared in place instead (no gathering).
_DENSE_SHARE = 0.5
# torch runs element-wise operations and reductions on fewer entries than this (its GRAIN_SIZE) on the calling
# thread only; at exactly this many it starts a parallel section.
_SERIAL_STEP_ENTRIES = 1 << 15
# The signed integer type whose bits a pass reads the sign of (see _count_at_least).
_INTEGER_VIEW = {torch.float32: torch.int32, torch.float64: torch.int64}


@torch.no_grad()
def retrieval_metrics(
    query_features: Tensor,
    query_pids: Tensor,
    gallery_features: Tensor,
    gallery_pids: Tensor,
    ks: Sequence[int] = (1, 5, 10),
    chunk_size: int | None = None,
    unmatched_queries: UnmatchedPolicy = "warn",
) -> dict[str, float]:
    """Rank-k, mAP and mINP (in percent) of ranking the gallery for every query by cosine similarity.

    Args:
        query_features: ``(Q, D)`` query embeddings (normalised here; any float dtype, any device).
        query_pids: ``(Q,)`` integer identity of each query.
        gallery_features: ``(G, D)`` gallery embeddings, on the same device as the queries.
        gallery_pids: ``(G,)`` integer identity of each gallery item.
        ks: the cut-offs reported as ``R<k>``.
        chunk_size: queries compared with the gallery at once. Working memory is at most about twice the
            chunk's ``chunk_size x G`` similarities (float32 unless the features are float64), on top of the
            normalised features (the chunk, and a copy of the gallery blocks that can hold a match's rank: a few
            percent of it once features separate identities, all of it at worst); None picks 256 MB of
            similarities (``2**26 // G`` float32 queries).
        unmatched_queries: what to do with queries whose identity has no gallery item (they cannot be scored):
            ``"warn"`` leaves them out of every average and warns how many, ``"error"`` raises, ``"ignore"``
            leaves them out silently.

    Returns:
        ``{"R<k>": ..., "mAP": ..., "mINP": ...}`` as floats in percent, averaged over the scored queries.
        Ties are ranked pessimistically (see the module docstring); the numbers are exact for the similarities
        as computed.
    """
    ks = _check_ks(ks)
    if chunk_size is not None:
        _check_positive_int(chunk_size, "chunk_size")
    _check_policy(unmatched_queries)
    queries = _check_features(query_features, "query_features")
    gallery = _check_features(gallery_features, "gallery_features")
    qpids = _check_pids(query_pids, "query_pids", len(queries), queries.device)
    gpids = _check_pids(gallery_pids, "gallery_pids", len(gallery), queries.device)
    if gallery.device != queries.device:
        raise ValueError(
            f"query_features are on {queries.device} but gallery_features on {gallery.device}; "
            "put both on one device"
        )
    if queries.shape[1] != gallery.shape[1]:
        raise ValueError(
            f"query_features have {queries.shape[1]} dimensions but gallery_features {gallery.shape[1]}"
        )

    best, last, ap, num_matches = _query_statistics(
        queries, qpids, gallery, gpids, chunk_size=chunk_size, unmatched_queries=unmatched_queries
    )
    scores = {f"R{k}": 100.0 * (best <= k).double().mean().item() for k in ks}
    scores["mAP"] = 100.0 * ap.mean().item()
    scores["mINP"] = 100.0 * (num_matches.double() / last.double()).mean().item()
    return scores


def _query_statistics(
    queries: Tensor,
    query_pids: Tensor,
    gallery: Tensor,
    gallery_pids: Tensor,
    chunk_size: int | None = None,
    unmatched_queries: UnmatchedPolicy = "warn",
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per scored query: rank of the first match, rank of the last match, AP (float64), number of matches.

    Unmatched queries are dropped according to ``unmatched_queries``; the others keep their order. Inputs are
    assumed validated.
    """
    dtype = torch.float64 if torch.float64 in (queries.dtype, gallery.dtype) else torch.float32
    device = queries.device

    # The gallery is counted in an order where similar items are neighbours (see _count_at_least): positions
    # below are in that order, which changes no result.
    gallery = F.normalize(gallery.to(dtype), dim=1)
    neighbours = _similarity_order(gallery)
    gallery, gallery_pids = gallery[neighbours], gallery_pids[neighbours]
    # Gallery positions grouped by identity: the matches of pid p are order[start[p] : start[p] + count[p]].
    order = torch.argsort(gallery_pids, stable=True)
    identities, counts = torch.unique_consecutive(gallery_pids[order], return_counts=True)
    starts = counts.cumsum(0) - counts
    slot = torch.searchsorted(identities, query_pids).clamp_(max=len(identities) - 1)
    matched = identities[slot] == query_pids
    num_unmatched = int((~matched).sum())
    if num_unmatched:
        message = (
            f"{num_unmatched} of {len(query_pids)} queries have an identity with no gallery item; "
            "they cannot be ranked"
        )
        if num_unmatched == len(query_pids):
            raise ValueError(f"{message}, and that is all of them: no query can be scored")
        if unmatched_queries == "error":
            raise ValueError(f"{message} (unmatched_queries='error')")
        if unmatched_queries == "warn":
            warnings.warn(
                f"{message} and are left out of every metric (pass unmatched_queries='error' to refuse them "
                "or 'ignore' to silence this)",
                UserWarning,
                stacklevel=3,
            )
        queries, slot = queries[matched], slot[matched]

    queries = F.normalize(queries.to(dtype), dim=1)
    num_gallery = len(gallery)
    chunk_size = chunk_size or _auto_chunk_size(num_gallery, dtype)
    rows = min(chunk_size, len(queries))
    # Whole blocks: the padding items score -inf, which no threshold reaches.
    num_blocks = -(-num_gallery // _BLOCK_ITEMS)
    gallery_t = torch.zeros(gallery.shape[1], num_blocks * _BLOCK_ITEMS, dtype=dtype, device=device)
    gallery_t[:, :num_gallery] = gallery.T
    sims_buffer = torch.empty(rows, num_blocks * _BLOCK_ITEMS, dtype=dtype, device=device)
    scratch = _Scratch(dtype, device)

    # Queries with equally many matches go together, so that no chunk pads many queries to a long one.
    num_matches = counts[slot]
    by_width = torch.argsort(num_matches, stable=True)
    best, last, ap = (
        torch.empty(len(slot), dtype=t, device=device) for t in (torch.int64, torch.int64, torch.float64)
    )
    for begin in range(0, len(slot), chunk_size):
        chunk = by_width[begin : begin + chunk_size]
        sims = torch.mm(queries[chunk], gallery_t, out=sims_buffer[: len(chunk)])
        sims[:, num_gallery:] = -torch.inf
        m = num_matches[chunk]
        widths = m.tolist()
        offsets = torch.arange(widths[-1], device=device)
        valid = offsets < m[:, None]
        columns = order[(starts[slot[chunk]][:, None] + offsets).clamp_(max=num_gallery - 1)]
        match_scores = sims.gather(1, columns).masked_fill_(~valid, float("inf"))
        thresholds = match_scores.sort(dim=1).values  # ascending per query, +inf padding last
        at_least = _count_at_least(sims, thresholds, scratch)
        # Pessimistic ranks: the match with the j-th lowest score is the (m - j)-th best match, and is preceded
        # by every non-match scoring at least as high.
        matches_at_least = m[:, None] - torch.searchsorted(thresholds, thresholds)
        position = m[:, None] - offsets
        ranks = position + at_least - matches_at_least
        best[chunk] = ranks.gather(1, (m - 1)[:, None]).squeeze(1)
        last[chunk] = at_least[:, 0]
        ap[chunk] = torch.where(valid, position.double() / ranks.double(), 0.0).sum(1) / m
    return best, last, ap, num_matches


def _auto_chunk_size(num_gallery: int, dtype: torch.dtype) -> int:
    """Queries per chunk when ``chunk_size`` is None: `_AUTO_CHUNK_BYTES` of similarities."""
    return max(1, _AUTO_CHUNK_BYTES // (num_gallery * torch.finfo(dtype).bits // 8))


def _similarity_order(gallery: Tensor) -> Tensor:
    """A permutation of the (normalised) gallery that puts similar items side by side.

    Items are grouped by the nearest of `_ORDER_CENTRES` centres, found by `_ORDER_STEPS` k-means steps (cosine)
    on a sample of `_ORDER_SAMPLE` items drawn with a fixed seed, started from the first items of the sample: the
    same order every time, for a small fraction of the similarity matmul's cost. (An evenly spaced sample is
    not used: galleries listed identity by identity repeat a pattern that it can pick in step with.) Any
    permutation gives the same metrics; a good one makes counting faster.
    """
    num_gallery = len(gallery)
    if num_gallery <= 2 * _BLOCK_ITEMS:
        return torch.arange(num_gallery, device=gallery.device)
    picks = torch.randperm(num_gallery, generator=torch.Generator().manual_seed(0))[:_ORDER_SAMPLE]
    sample = gallery[picks.to(gallery.device)]
    centres = sample[:_ORDER_CENTRES]
    for _ in range(_ORDER_STEPS):
        nearest = torch.mm(sample, centres.T).argmax(1)
        sums = torch.zeros_like(centres).index_add_(0, nearest, sample)
        centres = F.normalize(sums + 1e-6 * centres, dim=1)  # an empty centre stays where it was
    return torch.argsort(torch.mm(gallery, centres.T).argmax(1), stable=True)


class _Scratch:
    """A reusable buffer for the counting passes, and how many blocks a pass step compares.

    On CPU, a step compares blocks small enough to stay in a core's cache with all their thresholds in turn.
    With several threads each step is a parallel section, and on a machine whose cores are busy with other work
    every section can wait for a descheduled thread: when steps turn out that slow, the rest of the call uses
    steps below torch's parallel grain size, which run on the calling thread alone.
    """

    def __init__(self, dtype: torch.dtype, device: torch.device) -> None:
        self.dtype, self.device = dtype, device
        if device.type == "cpu":
            self.step_blocks = max(1, _PASS_STEP_ENTRIES * torch.get_num_threads() // _BLOCK_ITEMS)
        else:
            self.step_blocks = None  # all remaining blocks at once
        self.watch = device.type == "cpu" and torch.get_num_threads() > 1
        self._difference = torch.empty(0, dtype=dtype, device=device)
        self._started, self._compared = 0.0, 0

    def difference(self, blocks: int) -> Tensor:
        if self._difference.numel() < blocks * _BLOCK_ITEMS:
            self._difference = torch.empty(blocks * _BLOCK_ITEMS, dtype=self.dtype, device=self.device)
        return self._difference[: blocks * _BLOCK_ITEMS].view(blocks, _BLOCK_ITEMS)

    def start(self) -> None:
        """A counting call begins: the stall watch times it from here."""
        self._started, self._compared = time.perf_counter(), 0

    def stepped(self, compared: int) -> None:
        """A step compared this many entries; serialise if the call's steps are stalling."""
        if not self.watch:
            return
        self._compared += compared
        seconds = time.perf_counter() - self._started
        if self._compared >= _STALL_CHECK_ENTRIES and seconds > _STALLED_SECONDS_PER_ENTRY * self._compared:
            self.serialise()

    def serialise(self) -> None:
        self.step_blocks = max(1, (_SERIAL_STEP_ENTRIES - 1) // _BLOCK_ITEMS)
        self.watch = False


def _count_at_least(sims: Tensor, thresholds: Tensor, scratch: _Scratch) -> Tensor:
    """``counts[r, j]`` = number of entries of ``sims[r]`` that are ``>= thresholds[r, j]``.

    ``thresholds`` is ascending per row (``+inf`` padding last); each row of ``sims`` is whole blocks of
    `_BLOCK_ITEMS` entries.

    Only blocks whose highest entry reaches a threshold can hold entries at or above it. The blocks that reach
    at least the lowest threshold of their row are gathered, in decreasing order of how many thresholds they
    reach, so that the blocks to compare with the j-th thresholds are a prefix of them; for ranks of well
    separated features they are a few percent of the chunk (the gallery order puts similar items in the same
    blocks). The prefixes are compared step by step, a few cache-sized blocks at a time with all their
    thresholds.

    A comparison does not compare: torch's comparisons write booleans at about 1.4 ns an entry on CPU, where
    arithmetic is vectorised. It subtracts the threshold (``s - t`` is negative exactly when ``s < t``: the
    difference of two different floats is never zero, and the gathered entries hold no ``-0.0``), shifts the
    sign bit of the difference's integer view across it (-1 below the threshold, 0 at or above) and sums:
    ``count = block size + sum`` (0.35-0.7 ns an entry in all, measured on CPU, as more or less of a step stays in
    cache).
    """
    num_rows, width = thresholds.shape
    blocks = sims.view(-1, _BLOCK_ITEMS)
    num_blocks = len(blocks) // num_rows
    block_max = blocks.amax(1).view(num_rows, num_blocks)
    reach = torch.searchsorted(thresholds, block_max, right=True)  # thresholds <= the block's max
    if int(reach.sum()) > _DENSE_SHARE * reach.numel() * width:
        # Most blocks hold entries to count (features that do not separate identities yet): gathering them
        # would copy most of the chunk for nothing, so the rows are compared in place.
        return _count_rows_at_least(sims, thresholds, scratch)
    candidate_rows, candidate_blocks = reach.nonzero().unbind(1)
    candidates = candidate_rows * num_blocks + candidate_blocks
    reach, by_reach = reach.view(-1).index_select(0, candidates).sort(descending=True, stable=True)
    candidates, candidate_rows = (
        candidates.index_select(0, by_reach),
        candidate_rows.index_select(0, by_reach),
    )
    # prefix[j] = candidate blocks that reach the j-th threshold of their row
    prefix = torch.bincount(reach, minlength=width + 1).flip(0).cumsum(0).flip(0)[1:].tolist()
    gathered = blocks.index_select(0, candidates).add_(0.0)  # -0.0 + 0.0 = +0.0, and -0.0 == +0.0

    # candidate_counts[j, c]: entries of candidate block c at or above its row's j-th threshold
    candidate_counts = torch.zeros(width, len(gathered), dtype=torch.int32, device=sims.device)
    compare = _Comparison(sims.dtype, _BLOCK_ITEMS, sims.device)
    scratch.start()
    begin = 0
    while begin < len(gathered):
        end = min(begin + (scratch.step_blocks or len(gathered)), len(gathered))
        step_thresholds = thresholds.index_select(0, candidate_rows[begin:end])
        difference = scratch.difference(end - begin)
        compared = 0
        for j in range(width):
            n = min(prefix[j], end) - begin
            if n <= 0:
                break
            compare(
                gathered[begin : begin + n],
                step_thresholds[:n, j : j + 1],
                difference[:n],
                candidate_counts[j, begin : begin + n],
            )
            compared += n * _BLOCK_ITEMS
        begin = end
        scratch.stepped(compared)
    counts = torch.zeros(num_rows, width, dtype=torch.int32, device=sims.device)
    return counts.index_add_(0, candidate_rows, candidate_counts.T).long()


def _count_rows_at_least(sims: Tensor, thresholds: Tensor, scratch: _Scratch) -> Tensor:
    """`_count_at_least` by comparing every entry of ``sims`` with every threshold of its row.

    The same comparisons as there (subtract, sign shift, sum), on consecutive rows of ``sims`` in place, a few
    cache-sized steps at a time; the rows' ``-0.0`` entries become ``+0.0`` (which compares the same).
    """
    num_rows, row_entries = sims.shape
    width = thresholds.shape[1]
    counts = torch.zeros(width, num_rows, dtype=torch.int32, device=sims.device)
    compare = _Comparison(sims.dtype, row_entries, sims.device)
    scratch.start()
    begin = 0
    while begin < num_rows:
        step_rows = (
            num_rows
            if scratch.step_blocks is None
            else max(1, scratch.step_blocks * _BLOCK_ITEMS // row_entries)
        )
        end = min(begin + step_rows, num_rows)
        rows = sims[begin:end].add_(0.0)
        difference = scratch.difference((end - begin) * row_entries // _BLOCK_ITEMS).view(
            end - begin, row_entries
        )
        for j in range(width):
            compare(rows, thresholds[begin:end, j : j + 1], difference, counts[j, begin:end])
        begin = end
        scratch.stepped(rows.numel() * width)
    return counts.T.long()


class _Comparison:
    """One comparison step: ``out[r]`` = entries of ``values[r]`` (rows of ``items`` entries) at or above
    ``thresholds[r]``, by subtraction and the sign bit (see `_count_at_least`)."""

    def __init__(self, dtype: torch.dtype, items: int, device: torch.device) -> None:
        # 0-dimensional tensors: Python numbers would be converted on every call
        self.sign_shift = torch.tensor(torch.finfo(dtype).bits - 1, device=device)
        self.items = torch.tensor(items, dtype=torch.int32, device=device)
        self.integer_view = _INTEGER_VIEW[dtype]

    def __call__(self, values: Tensor, thresholds: Tensor, difference: Tensor, out: Tensor) -> None:
        torch.sub(values, thresholds, out=difference)
        signs = difference.view(self.integer_view).bitwise_right_shift_(self.sign_shift)
        torch.sum(signs, 1, dtype=torch.int32, out=out).add_(self.items)


@dataclass(frozen=True)
class ScoredItems:
    """The distinct queries and gallery items one computation of the metrics ranked (CPU identities).

    Queries whose identity has no item in the gallery cannot be ranked and are not in any metric
    (`retrieval_metrics`' ``unmatched_queries``); `num_scored_queries` counts the others.
    """

    query_pids: Tensor
    gallery_pids: Tensor

    @property
    def num_queries(self) -> int:
        """Distinct queries given."""
        return len(self.query_pids)

    @property
    def num_gallery(self) -> int:
        """Distinct gallery items given: every one is ranked."""
        return len(self.gallery_pids)

    @property
    def num_scored_queries(self) -> int:
        """Queries that were ranked: those whose identity has an item in the gallery."""
        return int(torch.isin(self.query_pids, self.gallery_pids).sum())

    def chance(self, ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
        """`chance_metrics` of exactly these queries and gallery items."""
        return chance_metrics(self.query_pids, self.gallery_pids, ks=ks)


class RetrievalMetrics(Metric):
    """``retrieval_metrics`` accumulated over batches and processes, for validation and test loops.

    ``update(features, pids, indices, role="query" | "gallery")`` stores one batch of queries or gallery
    items; ``indices`` are the items' positions in their dataset. ``compute()`` gathers every process's items,
    keeps one copy per index (Lightning's ``DistributedSampler`` pads the evaluation sets by repeating items,
    which would otherwise count them twice) and returns the same dict as ``retrieval_metrics``. The result does
    not depend on the number of processes or on how items were split among them.

    After ``compute()``, ``scored`` says which distinct queries and gallery items were ranked (their identities and
    counts, `ScoredItems`): fewer than the evaluation set when only part of it was evaluated (Lightning's
    ``limit_val_batches``), and the expected metrics of a random ranking of exactly those (``scored.chance()``).

    Pass ``compute_on_cpu=True`` to move the stored features to CPU after every update (GPU memory stays free;
    the final computation then runs on CPU). Gathering works with that option under NCCL as well, and when a
    process received no items at all.

    In a LightningModule whose evaluation loaders are (queries, gallery)::

        def validation_step(self, batch, batch_idx, dataloader_idx=0):
            role = ("query", "gallery")[dataloader_idx]
            self.val_retrieval.update(self.embed(batch), batch["pid"], batch["index"], role=role)

        def on_validation_epoch_end(self):
            self.log_dict({f"val/{k}": v for k, v in self.val_retrieval.compute().items()})
            self.val_retrieval.reset()
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(
        self,
        ks: Sequence[int] = (1, 5, 10),
        chunk_size: int | None = None,
        unmatched_queries: UnmatchedPolicy = "warn",
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("dist_sync_fn", _gather_state)
        super().__init__(**kwargs)
        self.ks = _check_ks(ks)
        self.chunk_size = None if chunk_size is None else _check_positive_int(chunk_size, "chunk_size")
        self.unmatched_queries = _check_policy(unmatched_queries)
        self.scored: ScoredItems | None = None
        for role in _ROLES:
            for field in ("features", "pids", "indices"):
                self.add_state(f"{role}_{field}", default=[], dist_reduce_fx="cat")

    def update(self, features: Tensor, pids: Tensor, indices: Tensor, role: str = "query") -> None:
        """Store a batch of query (``role="query"``) or gallery (``role="gallery"``) embeddings."""
        if role not in _ROLES:
            raise ValueError(f"role must be 'query' or 'gallery', got {role!r}")
        if not isinstance(features, Tensor) or features.ndim != 2:
            shape = tuple(features.shape) if isinstance(features, Tensor) else type(features).__name__
            raise ValueError(f"{role} features must be a 2-D tensor (batch, dim), got {shape}")
        pids = _check_pids(pids, f"{role} pids", len(features), features.device)
        indices = _check_pids(indices, f"{role} indices", len(features), features.device)
        getattr(self, f"{role}_features").append(features.detach())
        getattr(self, f"{role}_pids").append(pids)
        getattr(self, f"{role}_indices").append(indices)

    def compute(self) -> dict[str, float]:
        """Metrics over every distinct query and gallery item seen by any process."""
        queries, query_pids = self._distinct("query")
        gallery, gallery_pids = self._distinct("gallery")
        self.scored = ScoredItems(query_pids.cpu(), gallery_pids.cpu())
        return retrieval_metrics(
            queries,
            query_pids,
            gallery,
            gallery_pids,
            ks=self.ks,
            chunk_size=self.chunk_size,
            unmatched_queries=self.unmatched_queries,
        )

    def items(self, role: str) -> tuple[Tensor, Tensor]:
        """(features, pids) of every distinct ``role`` item seen by any process, in index order.

        Gathers across processes like ``compute()``: a collective, so call it on every rank. The local
        state is kept, so ``compute()`` can follow.
        """
        if role not in _ROLES:
            raise ValueError(f"role must be 'query' or 'gallery', got {role!r}")
        with self.sync_context(dist_sync_fn=self.dist_sync_fn, process_group=self.process_group):
            return self._distinct(role)

    def _distinct(self, role: str) -> tuple[Tensor, Tensor]:
        """The stored items of one role, one per index, in index order."""
        stored = getattr(self, f"{role}_features")
        features = dim_zero_cat(stored) if not isinstance(stored, list) or stored else None
        if features is None or features.numel() == 0:  # none given here, or (after a sync) by any process
            raise ValueError(
                f"RetrievalMetrics.compute() needs {role} items: call update(..., role={role!r})"
            )
        pids = dim_zero_cat(getattr(self, f"{role}_pids"))
        indices = dim_zero_cat(getattr(self, f"{role}_indices"))
        order = torch.argsort(indices, stable=True)
        features, pids, indices = features[order], pids[order], indices[order]
        first = torch.ones_like(indices, dtype=torch.bool)
        first[1:] = indices[1:] != indices[:-1]
        conflict = ~first & (pids != pids.roll(1))
        if conflict.any():
            index = int(indices[conflict][0])
            raise ValueError(f"{role} index {index} was given twice with different pids")
        return features[first], pids[first]


_STATE_DTYPES = (
    torch.float16,
    torch.bfloat16,
    torch.float32,
    torch.float64,
    torch.uint8,
    torch.int8,
    torch.int16,
    torch.int32,
    torch.int64,
    torch.bool,
)


def _gather_state(tensor: Tensor, group: Any = None) -> list[Tensor]:
    """All-gather one metric state across processes (torchmetrics ``dist_sync_fn``).

    Beyond torchmetrics' ``gather_all_tensors``: a process that received no items sends torchmetrics' 1-D
    float placeholder, which would abort the collective (size mismatch); it is given the shape and dtype of the
    other processes' state instead. CPU states (``compute_on_cpu=True``) travel through the current GPU when
    the backend is NCCL, which only moves CUDA tensors. Results come back on the state's device.
    """
    device = tensor.device
    if device.type == "cpu" and "nccl" in str(torch.distributed.get_backend(group)).lower():
        tensor = tensor.to(torch.device("cuda", torch.cuda.current_device()))
    world_size = torch.distributed.get_world_size(group)
    width = tensor.shape[1] if tensor.ndim > 1 else 0
    layout = torch.tensor(
        [tensor.numel() > 0, tensor.ndim, width, _STATE_DTYPES.index(tensor.dtype)], device=tensor.device
    )
    layouts = [torch.empty_like(layout) for _ in range(world_size)]
    torch.distributed.all_gather(layouts, layout, group=group)
    filled = {tuple(row[1:].tolist()) for row in layouts if row[0]}
    if len(filled) > 1:
        raise ValueError(f"processes hold metric states of different shapes or dtypes: {sorted(filled)}")
    if filled and tensor.numel() == 0:
        ndim, width, dtype = next(iter(filled))
        shape = (0, width) if ndim == 2 else (0,) * ndim
        tensor = torch.empty(shape, dtype=_STATE_DTYPES[dtype], device=tensor.device)
    return [part.to(device) for part in gather_all_tensors(tensor, group)]


def _check_features(features: Any, name: str) -> Tensor:
    if not isinstance(features, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(features).__name__}")
    if features.ndim != 2:
        raise ValueError(f"{name} must be 2-D (items, dim), got shape {tuple(features.shape)}")
    if features.shape[0] == 0 or features.shape[1] == 0:
        raise ValueError(f"{name} is empty (shape {tuple(features.shape)})")
    if not features.is_floating_point():
        raise TypeError(f"{name} must be floating point, got {features.dtype}")
    # One reduction finds any NaN or infinity (it may also overflow on huge finite values: then look closer).
    if not bool(torch.isfinite(features.sum())):
        finite = torch.isfinite(features).all(dim=1)
        if not bool(finite.all()):
            bad = (~finite).nonzero().squeeze(1)
            raise ValueError(
                f"{name} contain NaN or infinite values in {len(bad)} row(s), first at row {int(bad[0])}"
            )
    return features


def _check_pids(pids: Any, name: str, length: int, device: torch.device) -> Tensor:
    if not isinstance(pids, Tensor):
        pids = torch.as_tensor(pids)
    if pids.ndim != 1 or len(pids) != length:
        raise ValueError(f"{name} must have shape ({length},) to match the features, got {tuple(pids.shape)}")
    if pids.is_floating_point() or pids.is_complex() or pids.dtype == torch.bool:
        raise TypeError(f"{name} must be integers, got {pids.dtype}")
    return pids.to(device=device, dtype=torch.int64)


def _check_ks(ks: Sequence[int]) -> tuple[int, ...]:
    ks = tuple(ks)
    if not ks or any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in ks):
        raise ValueError(f"ks must be a non-empty sequence of positive integers, got {ks!r}")
    if len(set(ks)) != len(ks):
        raise ValueError(f"ks contains duplicates: {ks!r}")
    return ks


def _check_positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def _check_policy(policy: str) -> str:
    if policy not in _UNMATCHED_POLICIES:
        raise ValueError(f"unmatched_queries must be one of {_UNMATCHED_POLICIES}, got {policy!r}")
    return policy


def match_ranks(scores: Tensor, gallery_pids: Tensor, pid: int) -> tuple[Tensor, Tensor]:
    """The gallery positions of identity `pid` and their ranks for one query's `scores`, best first.

    Ranks are 1-based and pessimistic, as in `retrieval_metrics`: every other item scoring at least as
    high comes first. For pictures and tables of single queries (search, the W&B panel).
    """
    gallery_pids = torch.as_tensor(gallery_pids, device=scores.device)
    positions = (gallery_pids == pid).nonzero().squeeze(1)
    ranks = (scores[None, :] >= scores[positions][:, None]).sum(1)
    order = ranks.argsort(stable=True)
    return positions[order].cpu(), ranks[order].cpu()


def chance_metrics(
    query_pids: Tensor, gallery_pids: Tensor, ks: Sequence[int] = (1, 5, 10)
) -> dict[str, float]:
    """Expected metrics (percent) of a uniformly random ranking, for judging a model against chance.

    Exact expectations per query with m matches among G gallery items, averaged over the queries
    that have a match: Rank-k `1 - C(G-m, k) / C(G, k)`; AP `(H_G + (m-1)/(G-1) (G - H_G)) / G`
    with `H_G` the G-th harmonic number; INP `sum_r m/r P(last match at r)`, where
    `P(last match at r) = C(r-1, m-1) / C(G, m)`.
    """
    ks = _check_ks(ks)
    gallery_pids, query_pids = _pid_tensor(gallery_pids), _pid_tensor(query_pids)
    size = len(gallery_pids)
    if size == 0 or len(query_pids) == 0:
        raise ValueError("chance_metrics needs at least one query and one gallery item")
    ids, counts = torch.unique(gallery_pids, return_counts=True)
    matches_of = dict(zip(ids.tolist(), counts.tolist(), strict=True))
    matches = [matches_of[p] for p in query_pids.tolist() if p in matches_of]
    if not matches:
        raise ValueError("no query identity has an image in the gallery")
    ranks = torch.arange(1, size + 1, dtype=torch.float64)
    harmonic = float((1 / ranks).sum())

    def log_choose(n: Tensor | float, k: Tensor | float) -> Tensor:
        n, k = torch.as_tensor(n, dtype=torch.float64), torch.as_tensor(k, dtype=torch.float64)
        return torch.lgamma(n + 1) - torch.lgamma(k + 1) - torch.lgamma(n - k + 1)

    per_m: dict[int, dict[str, float]] = {}
    for m in set(matches):
        values = {}
        for k in ks:
            k_eff = min(k, size)
            miss = (
                0.0
                if size - m < k_eff
                else float(torch.exp(log_choose(size - m, k_eff) - log_choose(size, k_eff)))
            )
            values[f"R{k}"] = 1 - miss
        values["mAP"] = (harmonic + (m - 1) / max(1, size - 1) * (size - harmonic)) / size
        last = ranks[m - 1 :]
        p_last = torch.exp(log_choose(last - 1, m - 1) - log_choose(size, m))
        values["mINP"] = float((m / last * p_last).sum())
        per_m[m] = values
    names = [f"R{k}" for k in ks] + ["mAP", "mINP"]
    return {name: 100 * sum(per_m[m][name] for m in matches) / len(matches) for name in names}


def _pid_tensor(pids: Any) -> Tensor:
    """A CPU tensor of identities from a tensor, list or (possibly read-only) NumPy array."""
    if isinstance(pids, Tensor):
        return pids.detach().cpu()
    return torch.tensor(list(pids) if not hasattr(pids, "tolist") else pids.tolist())
