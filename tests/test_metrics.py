"""Retrieval metrics: hand-computed values, a plain per-query ranking as reference, errors, and DDP."""

from __future__ import annotations

import datetime
import math
import socket
import warnings

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import promptdecouple.metrics as metrics_module
from promptdecouple.metrics import RetrievalMetrics, retrieval_metrics


def plain_metrics(query_features, query_pids, gallery_features, gallery_pids, ks=(1, 5, 10)):
    """Deliberately plain: per query, sort the gallery by (similarity descending, non-matches first)."""
    queries = query_features.double() / query_features.double().norm(dim=1, keepdim=True)
    gallery = gallery_features.double() / gallery_features.double().norm(dim=1, keepdim=True)
    hits = dict.fromkeys(ks, 0)
    aps, inps = [], []
    for query, pid in zip(queries, query_pids.tolist(), strict=True):
        sims = (gallery @ query).tolist()
        is_match = [p == pid for p in gallery_pids.tolist()]
        order = sorted(range(len(sims)), key=lambda j: (-sims[j], is_match[j]))
        ranks = [position + 1 for position, j in enumerate(order) if is_match[j]]
        if not ranks:
            continue
        for k in ks:
            hits[k] += ranks[0] <= k
        aps.append(sum((i + 1) / rank for i, rank in enumerate(ranks)) / len(ranks))
        inps.append(len(ranks) / ranks[-1])
    scores = {f"R{k}": 100 * hits[k] / len(aps) for k in ks}
    scores["mAP"] = 100 * sum(aps) / len(aps)
    scores["mINP"] = 100 * sum(inps) / len(inps)
    return scores


def assert_same_scores(actual, expected):
    assert list(actual) == list(expected)
    for name, value in expected.items():
        assert actual[name] == pytest.approx(value, rel=1e-12, abs=1e-12), name


def clustered(num_queries=60, num_gallery=150, identities=12, dim=24, seed=0, dtype=torch.float64):
    generator = torch.Generator().manual_seed(seed)
    centres = torch.randn(identities, dim, generator=generator, dtype=dtype)
    gallery_pids = torch.arange(num_gallery) % identities
    query_pids = torch.randint(0, identities, (num_queries,), generator=generator)
    gallery = centres[gallery_pids] + 0.9 * torch.randn(num_gallery, dim, generator=generator, dtype=dtype)
    queries = centres[query_pids] + 1.2 * torch.randn(num_queries, dim, generator=generator, dtype=dtype)
    return queries, query_pids, gallery, gallery_pids


def four_hot(num, dim=10, seed=0):
    """Vectors with four entries 0.5: unit norm, and every cosine a multiple of 1/4, exact: many ties."""
    generator = torch.Generator().manual_seed(seed)
    features = torch.zeros(num, dim)
    for row in features:
        row[torch.randperm(dim, generator=generator)[:4]] = 0.5
    return features


@pytest.fixture(
    params=[
        "default",
        "small blocks, many steps",
        "serial steps",
        "gallery as given",
        "rows in place, serial",
    ]
)
def counting_strategy(request, monkeypatch):
    """Force each way of counting: the results must not depend on it."""
    # Gathered candidate blocks, except where the rows are compared in place.
    if request.param != "default":
        dense_share = 0.0 if request.param.startswith("rows in place") else float("inf")
        monkeypatch.setattr(metrics_module, "_DENSE_SHARE", dense_share)
    if request.param == "small blocks, many steps":
        # Blocks of 4 items (the small galleries here get padded, reordered and split into many candidates),
        # and steps of 2 blocks: every prefix boundary falls inside or between steps.
        monkeypatch.setattr(metrics_module, "_BLOCK_ITEMS", 4)
        monkeypatch.setattr(metrics_module, "_ORDER_CENTRES", 5)
        monkeypatch.setattr(metrics_module, "_PASS_STEP_ENTRIES", 8)
    elif request.param in ("serial steps", "rows in place, serial"):
        # What a busy machine switches to: steps of the serial size from the start.
        monkeypatch.setattr(metrics_module, "_BLOCK_ITEMS", 8)
        monkeypatch.setattr(metrics_module, "_SERIAL_STEP_ENTRIES", 24)

        class WatchedScratch(metrics_module._Scratch):
            def __init__(self, *args):
                super().__init__(*args)
                self.watch = True

        monkeypatch.setattr(metrics_module, "_Scratch", WatchedScratch)
        monkeypatch.setattr(metrics_module, "_STALL_CHECK_ENTRIES", 0)
        monkeypatch.setattr(metrics_module, "_STALLED_SECONDS_PER_ENTRY", 0.0)
    elif request.param == "gallery as given":
        monkeypatch.setattr(metrics_module, "_similarity_order", lambda gallery: torch.arange(len(gallery)))
    return request.param


# -- hand-computed ------------------------------------------------------------------------------------------


def one_hot_example():
    """Gallery = 6 one-hot vectors; a query's cosine to item j is proportional to its weight j.

    gallery pids 1 2 1 3 1 2
    A (pid 1) weights 6 5 1 3 4 2 -> order 0 1 4 3 5 2, matches at ranks 1, 3, 6: AP (1 + 2/3 + 3/6) / 3 = 13/18,
                                                                                   INP 3/6
    B (pid 2) weights 6 5 4 3 1 2 -> order 0 1 2 3 5 4, matches at ranks 2, 5:    AP (1/2 + 2/5) / 2 = 0.45,
                                                                                   INP 2/5
    C (pid 3) weights 6 5 4 3 2 1 -> match at rank 4:                              AP 1/4, INP 1/4
    """
    gallery = torch.eye(6)
    gallery_pids = torch.tensor([1, 2, 1, 3, 1, 2])
    queries = torch.tensor([[6, 5, 1, 3, 4, 2], [6, 5, 4, 3, 1, 2], [6, 5, 4, 3, 2, 1]], dtype=torch.float32)
    return queries, torch.tensor([1, 2, 3]), gallery, gallery_pids


def test_hand_computed_example():
    scores = retrieval_metrics(*one_hot_example(), ks=(1, 3, 5))
    expected = {
        "R1": 100 / 3,  # A only
        "R3": 200 / 3,  # A (1) and B (2); C's match is 4th
        "R5": 100.0,
        "mAP": 100 * (13 / 18 + 0.45 + 0.25) / 3,
        "mINP": 100 * (0.5 + 0.4 + 0.25) / 3,
    }
    assert_same_scores(scores, expected)
    assert_same_scores(scores, plain_metrics(*one_hot_example(), ks=(1, 3, 5)))


def test_ties_rank_non_matches_first():
    # Every gallery item is identical: all cosines tie, so the 3 matches come after the 3 non-matches.
    gallery = torch.tensor([[1.0, 0.0]]).repeat(6, 1)
    scores = retrieval_metrics(
        torch.tensor([[2.0, 0.0]]), torch.tensor([7]), gallery, torch.tensor([7, 1, 7, 2, 7, 3])
    )
    assert scores == pytest.approx(
        {"R1": 0.0, "R5": 100.0, "R10": 100.0, "mAP": 100 * (1 / 4 + 2 / 5 + 3 / 6) / 3, "mINP": 50.0}
    )
    # A match tied with a non-match at the top is second; another match below is third.
    gallery = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    scores = retrieval_metrics(
        torch.tensor([[1.0, 0.0]]), torch.tensor([5]), gallery, torch.tensor([5, 6, 5, 6])
    )
    assert scores == pytest.approx(
        {"R1": 0.0, "R5": 100.0, "R10": 100.0, "mAP": 100 * (1 / 2 + 2 / 3) / 2, "mINP": 100 * 2 / 3}
    )


def test_a_collapsed_model_scores_worst_not_lucky():
    # A zero query (or a model mapping everything to one point) ties with the whole gallery.
    gallery_pids = torch.tensor([4, 4, 1, 2, 3])
    scores = retrieval_metrics(
        torch.zeros(1, 3), torch.tensor([4]), torch.randn(5, 3), gallery_pids, ks=(1, 3)
    )
    assert scores == pytest.approx({"R1": 0.0, "R3": 0.0, "mAP": 100 * (1 / 4 + 2 / 5) / 2, "mINP": 40.0})


# -- against a plain per-query ranking ----------------------------------------------------------------------


@pytest.mark.parametrize("chunk_size", [1, 7, 64, 1000])
def test_matches_plain_ranking_on_clustered_features(chunk_size, counting_strategy):
    data = clustered()
    scores = retrieval_metrics(*data, chunk_size=chunk_size)
    assert_same_scores(scores, plain_metrics(*data))
    assert 5 < scores["mAP"] < 95  # neither trivial nor hopeless


@pytest.mark.parametrize("chunk_size", [3, 1000])
def test_matches_plain_ranking_with_many_ties(chunk_size, counting_strategy):
    generator = torch.Generator().manual_seed(1)
    gallery_pids = torch.randint(0, 6, (80,), generator=generator)
    query_pids = gallery_pids[torch.randint(0, 80, (40,), generator=generator)]
    data = (four_hot(40, seed=2), query_pids, four_hot(80, seed=3), gallery_pids)
    assert_same_scores(retrieval_metrics(*data, chunk_size=chunk_size), plain_metrics(*data))


@pytest.mark.parametrize("dense_share", [float("inf"), 0.0], ids=["gathered blocks", "rows in place"])
def test_counting_reads_negative_zero_as_equal_to_zero(dense_share, monkeypatch):
    # The counting passes read sign bits, and -0.0 has its sign bit set although -0.0 >= +0.0.
    monkeypatch.setattr(metrics_module, "_DENSE_SHARE", dense_share)
    block = metrics_module._BLOCK_ITEMS
    sims = torch.full((2, 2 * block), -1.0)
    sims[0, :3] = torch.tensor([-0.0, 0.0, 0.5])
    sims[1, block : block + 2] = torch.tensor([-0.0, -0.0])
    thresholds = torch.tensor([[0.0, 0.5], [-0.0, 0.0]])
    counts = metrics_module._count_at_least(
        sims, thresholds, metrics_module._Scratch(torch.float32, sims.device)
    )
    assert counts.tolist() == [[3, 1], [2, 2]]
    assert counts.tolist() == (sims[:, None, :] >= thresholds[:, :, None]).sum(2).tolist()


def test_float32_single_chunk_matches_plain_ranking():
    data = clustered(dtype=torch.float32, seed=4)
    assert_same_scores(retrieval_metrics(*data), plain_metrics(*data))


def test_low_precision_features_are_scored_in_float32():
    queries, query_pids, gallery, gallery_pids = clustered(dtype=torch.float32, seed=5)
    queries, gallery = queries.bfloat16(), gallery.bfloat16()
    expected = retrieval_metrics(queries.float(), query_pids, gallery.float(), gallery_pids)
    assert retrieval_metrics(queries, query_pids, gallery, gallery_pids) == expected


def test_scores_do_not_depend_on_gallery_or_query_order():
    queries, query_pids, gallery, gallery_pids = clustered(seed=6)
    scores = retrieval_metrics(queries, query_pids, gallery, gallery_pids)
    q_order, g_order = torch.randperm(len(queries)), torch.randperm(len(gallery))
    shuffled = retrieval_metrics(
        queries[q_order], query_pids[q_order], gallery[g_order], gallery_pids[g_order]
    )
    assert_same_scores(shuffled, scores)


# -- queries without a match, and bad input ------------------------------------------------------------------


def test_unmatched_queries_are_left_out_with_a_warning():
    queries, query_pids, gallery, gallery_pids = one_hot_example()
    with_stranger = (torch.cat([queries, torch.ones(1, 6)]), torch.cat([query_pids, torch.tensor([9])]))
    with pytest.warns(UserWarning, match=r"1 of 4 queries have an identity with no gallery item"):
        scores = retrieval_metrics(*with_stranger, gallery, gallery_pids)
    assert_same_scores(scores, retrieval_metrics(queries, query_pids, gallery, gallery_pids))
    with pytest.raises(ValueError, match=r"1 of 4 queries.*unmatched_queries='error'"):
        retrieval_metrics(*with_stranger, gallery, gallery_pids, unmatched_queries="error")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert retrieval_metrics(*with_stranger, gallery, gallery_pids, unmatched_queries="ignore") == scores
    with pytest.raises(ValueError, match="that is all of them"):
        retrieval_metrics(
            queries, torch.tensor([8, 9, 10]), gallery, gallery_pids, unmatched_queries="ignore"
        )


@pytest.mark.parametrize(
    ("change", "error", "message"),
    [
        (dict(query_features=torch.zeros(0, 6)), ValueError, r"query_features is empty"),
        (dict(gallery_features=torch.zeros(6, 0)), ValueError, r"gallery_features is empty"),
        (dict(query_features=torch.ones(3)), ValueError, r"query_features must be 2-D"),
        (dict(gallery_features=torch.ones(6, 5)), ValueError, r"6 dimensions but gallery_features 5"),
        (dict(query_pids=torch.tensor([1, 2])), ValueError, r"query_pids must have shape \(3,\)"),
        (
            dict(gallery_pids=torch.tensor([[1, 2, 1, 3, 1, 2]])),
            ValueError,
            r"gallery_pids must have shape \(6,\)",
        ),
        (dict(query_pids=torch.tensor([1.0, 2.0, 3.0])), TypeError, r"query_pids must be integers"),
        (dict(query_features=torch.ones(3, 6, dtype=torch.int64)), TypeError, r"must be floating point"),
        (
            dict(query_features=torch.tensor([[1.0] * 6, [float("nan")] * 6, [1.0] * 6])),
            ValueError,
            r"NaN.*row 1",
        ),
        (
            dict(gallery_features=torch.eye(6).index_fill(0, torch.tensor([4]), math.inf)),
            ValueError,
            r"at row 4",
        ),
        (dict(ks=(1, 0)), ValueError, r"ks must be"),
        (dict(ks=(5, 5)), ValueError, r"duplicates"),
        (dict(ks=()), ValueError, r"ks must be"),
        (dict(chunk_size=0), ValueError, r"chunk_size must be a positive integer"),
        (dict(unmatched_queries="drop"), ValueError, r"unmatched_queries must be one of"),
    ],
)
def test_bad_input_gets_a_clear_error(change, error, message):
    queries, query_pids, gallery, gallery_pids = one_hot_example()
    arguments = dict(
        query_features=queries, query_pids=query_pids, gallery_features=gallery, gallery_pids=gallery_pids
    )
    with pytest.raises(error, match=message):
        retrieval_metrics(**{**arguments, **change})


def test_huge_finite_features_are_not_mistaken_for_infinite():
    queries, query_pids, gallery, gallery_pids = one_hot_example()
    big = torch.full((2, 6), 3e38)  # their sum overflows, yet every value is finite
    scores = retrieval_metrics(
        queries, query_pids, torch.cat([gallery, big]), torch.cat([gallery_pids, torch.tensor([8, 8])])
    )
    assert set(scores) == {"R1", "R5", "R10", "mAP", "mINP"}


# -- RetrievalMetrics ---------------------------------------------------------------------------------------


def feed(metric, features, pids, indices, role, batch_size):
    for begin in range(0, len(features), batch_size):
        end = begin + batch_size
        metric.update(features[begin:end], pids[begin:end], indices[begin:end], role=role)


def test_metric_accumulates_batches_and_ignores_repeated_items():
    queries, query_pids, gallery, gallery_pids = clustered(seed=7)
    expected = retrieval_metrics(queries, query_pids, gallery, gallery_pids)
    metric = RetrievalMetrics()
    # As DistributedSampler pads: some items come again at the end, and batches arrive out of order.
    q_index = torch.cat([torch.arange(len(queries)).flip(0), torch.arange(5)])
    g_index = torch.cat([torch.arange(len(gallery)), torch.tensor([3, 3, 9])])
    feed(metric, gallery[g_index], gallery_pids[g_index], g_index, "gallery", 32)
    feed(metric, queries[q_index], query_pids[q_index], q_index, "query", 16)
    assert metric.compute() == expected
    metric.reset()
    with pytest.raises(ValueError, match=r"needs query items"), pytest.warns(UserWarning, match="before the"):
        metric.compute()


def test_metric_options_reach_the_computation():
    queries, query_pids, gallery, gallery_pids = one_hot_example()
    metric = RetrievalMetrics(ks=(2,), chunk_size=1, unmatched_queries="error", compute_on_cpu=True)
    metric.update(gallery, gallery_pids, torch.arange(6), role="gallery")
    metric.update(torch.ones(2, 6), torch.tensor([9, 1]), torch.tensor([0, 1]), role="query")
    with pytest.raises(ValueError, match="unmatched_queries='error'"):
        metric.compute()
    metric.reset()
    metric.update(gallery, gallery_pids, torch.arange(6), role="gallery")
    metric.update(queries, query_pids, torch.arange(3), role="query")
    assert list(metric.compute()) == ["R2", "mAP", "mINP"]


def test_metric_rejects_bad_updates():
    metric = RetrievalMetrics()
    with pytest.raises(ValueError, match="role must be 'query' or 'gallery'"):
        metric.update(torch.ones(2, 3), torch.tensor([1, 2]), torch.tensor([0, 1]), role="image")
    with pytest.raises(ValueError, match=r"query features must be a 2-D tensor"):
        metric.update(torch.ones(3), torch.tensor([1, 2, 3]), torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match=r"gallery indices must have shape \(2,\)"):
        metric.update(torch.ones(2, 3), torch.tensor([1, 2]), torch.tensor([0]), role="gallery")
    with pytest.raises(ValueError, match=r"ks must be"):
        RetrievalMetrics(ks=[0])
    metric.update(torch.ones(2, 3), torch.tensor([1, 2]), torch.tensor([0, 1]), role="gallery")
    metric.update(torch.ones(2, 3), torch.tensor([1, 2]), torch.tensor([0, 0]), role="query")
    with pytest.raises(ValueError, match="query index 0 was given twice with different pids"):
        metric.compute()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_gpu_gives_the_cpu_result():
    data = clustered(seed=8)
    expected = retrieval_metrics(*data, chunk_size=16)
    assert_same_scores(retrieval_metrics(*(t.cuda() for t in data), chunk_size=16), expected)
    metric = RetrievalMetrics(chunk_size=16).cuda()
    queries, query_pids, gallery, gallery_pids = (t.cuda() for t in data)
    metric.update(gallery, gallery_pids, torch.arange(len(gallery), device="cuda"), role="gallery")
    metric.update(queries, query_pids, torch.arange(len(queries), device="cuda"), role="query")
    assert_same_scores(metric.compute(), expected)


# -- two processes ------------------------------------------------------------------------------------------

# Rank 0 and rank 1 get uneven shards; like DistributedSampler, each may repeat items of the other.
SHARDS = {
    "queries": ([*range(0, 13)], [*range(13, 60), 0, 1]),
    "gallery": ([*range(0, 100)], [*range(100, 150), 100, 0]),
}


def _ddp_worker(rank, port, results):
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=2,
        timeout=datetime.timedelta(seconds=60),
    )
    try:
        queries, query_pids, gallery, gallery_pids = clustered(seed=9)
        uneven = RetrievalMetrics(chunk_size=8)
        one_sided = RetrievalMetrics(chunk_size=8)  # rank 1 never sees a gallery item
        q_index = torch.tensor(SHARDS["queries"][rank])
        g_index = torch.tensor(SHARDS["gallery"][rank])
        feed(uneven, queries[q_index], query_pids[q_index], q_index, "query", 5)
        feed(uneven, gallery[g_index], gallery_pids[g_index], g_index, "gallery", 32)
        feed(one_sided, queries[q_index], query_pids[q_index], q_index, "query", 5)
        if rank == 0:
            feed(one_sided, gallery, gallery_pids, torch.arange(len(gallery)), "gallery", 64)
        results[rank] = {"uneven": uneven.compute(), "one_sided": one_sided.compute()}
    finally:
        dist.destroy_process_group()


def test_two_processes_give_the_single_process_result():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    manager = mp.get_context("spawn").Manager()
    results = manager.dict()
    mp.spawn(_ddp_worker, args=(port, results), nprocs=2, join=True)
    expected = retrieval_metrics(*clustered(seed=9), chunk_size=8)
    for rank in (0, 1):
        assert results[rank]["uneven"] == expected
        assert results[rank]["one_sided"] == expected


def test_chance_metrics_equal_the_average_of_random_rankings():
    from promptdecouple.metrics import chance_metrics

    gallery_pids = torch.arange(30).repeat_interleave(3)
    gallery_pids = torch.cat([gallery_pids, torch.tensor([30])])  # one identity with a single image
    query_pids = torch.cat([torch.arange(31).repeat_interleave(2), torch.tensor([99])])  # 99: no match
    expected = chance_metrics(query_pids, gallery_pids)
    trials, average = 300, dict.fromkeys(expected, 0.0)
    generator = torch.Generator().manual_seed(0)
    for _ in range(trials):
        queries = torch.randn(len(query_pids), 8, generator=generator)
        gallery = torch.randn(len(gallery_pids), 8, generator=generator)
        with pytest.warns(UserWarning):
            result = retrieval_metrics(queries, query_pids, gallery, gallery_pids)
        for name in average:
            average[name] += result[name] / trials
    for name, value in expected.items():
        assert average[name] == pytest.approx(value, rel=0.08), name
    # hand-checkable corner: one match in a gallery of 4 -> R1 = 1/4, AP = H_4 / 4, INP = AP
    single = chance_metrics(torch.tensor([1]), torch.tensor([1, 2, 3, 4]), ks=(1, 2))
    assert single["R1"] == pytest.approx(25.0) and single["R2"] == pytest.approx(50.0)
    assert single["mAP"] == pytest.approx(100 * (1 + 1 / 2 + 1 / 3 + 1 / 4) / 4)
    assert single["mINP"] == pytest.approx(single["mAP"])
