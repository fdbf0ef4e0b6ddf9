"""Retrieval metrics at ICFG-PEDES scale: time and memory against the bare similarity matmul and a full sort.

ICFG-PEDES's test split ranks 19,848 captions against 19,848 images of 1,000 identities. Features here are
512-d and synthetic, of two kinds:

- ``clustered`` (default): identity centres drawn around 50 shared "appearance" centres, images close to their
  identity, captions noisier, with per-item noise scales; a trained-model regime (the script prints its
  metrics: about R1 70 / mAP 31 / mINP 5, where IRRA reports 63 / 38 / 8 on the real ICFG-PEDES).
- ``random``: an untrained model, matches spread uniformly through the ranking. The costly case for
  ``retrieval_metrics``, which counts, for each match, the gallery items scoring above it.

Measured in one run:

- ``warm matmul``: the floor. The query x gallery similarity matmul of the normalised features into a
  preallocated, already touched output (``torch.mm(q, g.T, out=buffer)``), the least any evaluation does; the
  best of two calls per round;
- ``bare``: normalise both sets and compute the similarity matrix into a fresh output (which the system must
  allocate and fault in, 1.6 GB at full size): what the first version of this script compared with, kept as
  an extra row;
- ``retrieval_metrics`` (``promptdecouple.metrics``);
- ``full sort``: what IRRA's ``rank()`` does (similarity matrix, ``argsort`` of every row, gather the gallery
  pids, cumulative sums), vectorised. It runs on the first ``--reference-queries`` queries and is extrapolated
  linearly to all of them: every row is sorted independently, so its time and memory grow with the rows.

Timing: rounds alternate the warm matmul, ``bare`` and ``retrieval_metrics`` so that load from other processes
hits all; the table shows medians and the median of the per-round ratios to the warm matmul. The load average
is printed before and after, to say how busy the machine was; ``--busy-cores N`` keeps N cores busy with
spinning processes during the rounds, as other jobs on a shared machine would. Memory: each method runs once more in a fresh
subprocess that loads the features from a file; its peak resident memory (``VmHWM``, reset just before the
call) minus its resident memory before the call is the memory used above the features. (tracemalloc does not
see torch's allocations; torch's CPU allocator keeps no statistics.) Agreement: for every query, the ranks of
its first and last match (integers, compared exactly) and its AP, against a full sort with the same tie rule
(non-matches first among equal similarities) on the same similarity values, run slice by slice.

    python benchmarks/retrieval_metrics.py [--features clustered|random] [--rounds 3] [--threads N]
                                           [--chunk-size N] [--reference-queries 4096] [--device cpu|cuda]
                                           [--busy-cores N] [--profile]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from promptdecouple.metrics import _auto_chunk_size, _query_statistics, retrieval_metrics

MiB = 2**20


def make_features(
    kind: str, queries: int, gallery: int, dim: int, identities: int, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Query features, query pids, gallery features, gallery pids (every identity has gallery images)."""
    generator = torch.Generator().manual_seed(seed)
    gallery_pids = torch.arange(gallery) % identities
    query_pids = torch.arange(queries) % identities
    query_pids = query_pids[torch.randperm(queries, generator=generator)]
    if kind == "random":
        query_features = torch.randn(queries, dim, generator=generator)
        gallery_features = torch.randn(gallery, dim, generator=generator)
        return query_features, query_pids, gallery_features, gallery_pids
    groups = torch.randn(50, dim, generator=generator)
    centres = 3.0 * groups[torch.arange(identities) % 50] + torch.randn(identities, dim, generator=generator)
    centres = F.normalize(centres, dim=1)

    def around(pids: torch.Tensor, spread: float) -> torch.Tensor:
        scale = spread * torch.exp(0.5 * torch.randn(len(pids), 1, generator=generator)) / dim**0.5
        return centres[pids] + scale * torch.randn(len(pids), dim, generator=generator)

    return around(query_pids, 2.2), query_pids, around(gallery_pids, 0.6), gallery_pids


def bare_similarity(query_features: torch.Tensor, gallery_features: torch.Tensor) -> torch.Tensor:
    return F.normalize(query_features, dim=1) @ F.normalize(gallery_features, dim=1).T


def full_sort_statistics(
    sims: torch.Tensor, query_pids: torch.Tensor, gallery_pids: torch.Tensor, pessimistic_ties: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """First-match rank, last-match rank and AP per query from a full sort of every row, as IRRA's rank().

    ``pessimistic_ties=False`` sorts the similarities as IRRA does (tie order unspecified); ``True`` sorts by
    (similarity descending, non-matches first), the rule of ``retrieval_metrics``.
    """
    num_gallery = sims.shape[1]
    if pessimistic_ties:
        bits = (sims + 0.0).view(torch.int32).long()  # + 0.0 turns -0.0 into +0.0, which compare equal
        ordered = torch.where(bits >= 0, bits, bits ^ 0x7FFFFFFF)  # integer order = float order
        non_match = (gallery_pids[None, :] != query_pids[:, None]).long()
        order = torch.argsort(ordered * 2 + non_match, dim=1, descending=True)
    else:
        order = torch.argsort(sims, dim=1, descending=True)
    matches = gallery_pids[order] == query_pids[:, None]
    hits = matches.cumsum(1)
    ranks = torch.arange(1, num_gallery + 1, dtype=torch.float64)
    ap = (hits / ranks * matches).sum(1) / matches.sum(1)
    first = matches.int().argmax(1) + 1
    last = num_gallery - matches.flip(1).int().argmax(1)
    return first, last, ap


def full_sort_metrics(query_features, query_pids, gallery_features, gallery_pids) -> dict[str, float]:
    first, last, ap = full_sort_statistics(
        bare_similarity(query_features, gallery_features), query_pids, gallery_pids, pessimistic_ties=False
    )
    num_matches = torch.bincount(gallery_pids)[query_pids]
    return {
        "R1": 100 * (first <= 1).double().mean().item(),
        "mAP": 100 * ap.mean().item(),
        "mINP": 100 * (num_matches / last).mean().item(),
    }


def _load() -> str:
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


def timed(function, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    function()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def measure_memory_here(method: str, features_path: str, chunk_size: int, reference_queries: int) -> None:
    """Subprocess side: load the features, run one method once, print MiB above the resident baseline."""
    q, qp, g, gp = torch.load(features_path)
    run = {
        "bare": lambda: bare_similarity(q, g),
        "retrieval_metrics": lambda: retrieval_metrics(q, qp, g, gp, chunk_size=chunk_size),
        "full_sort": lambda: full_sort_metrics(q[:reference_queries], qp[:reference_queries], g, gp),
    }[method]
    before = _rss_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # resets the peak (VmHWM) to the current resident size
    result = run()
    del result
    print((_rss_kib("VmHWM") - before) / 1024)


def measure_memory(method: str, features_path: str, chunk_size: int, reference_queries: int) -> float:
    command = [
        sys.executable,
        __file__,
        "--measure-memory",
        method,
        "--features-path",
        features_path,
        "--chunk-size",
        str(chunk_size),
        "--reference-queries",
        str(reference_queries),
    ]
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    output = subprocess.run(command, check=True, capture_output=True, text=True, env=env).stdout
    return float(output.split()[-1])


def profile_call(q, qp, g, gp, chunk_size: int | None, warm_matmul, device: torch.device) -> None:
    """One retrieval_metrics call under torch.profiler: self time by operation, in seconds and in warm matmuls.

    Runs after the timed rounds, with the spinning processes stopped; the warm matmul is timed again just
    before (best of 2), under the same conditions. The profiler adds a little time to every call, so small
    operations look dearer than they are.
    """
    from torch.profiler import ProfilerActivity, profile

    warm_seconds = min(timed(warm_matmul, device) for _ in range(2))
    started = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        retrieval_metrics(q, qp, g, gp, chunk_size=chunk_size)
    wall = time.perf_counter() - started
    events = sorted(profiler.key_averages(), key=lambda event: -event.self_cpu_time_total)
    total = sum(event.self_cpu_time_total for event in events) / 1e6
    print(
        f"\nprofile of one retrieval_metrics call (spinners stopped; load {_load()}): {wall:.2f} s wall "
        f"({wall / warm_seconds:.2f} x a warm matmul of {warm_seconds:.2f} s timed just before), "
        f"{total:.2f} s of operations"
    )
    print("| operation | calls | self time (s) | x warm matmul |\n|---|---|---|---|")
    shown = 0.0
    for event in events[:10]:
        seconds = event.self_cpu_time_total / 1e6
        shown += seconds
        print(f"| {event.key} | {event.count} | {seconds:.3f} | {seconds / warm_seconds:.3f} |")
    print(f"| everything else | | {total - shown:.3f} | {(total - shown) / warm_seconds:.3f} |")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--features", choices=("clustered", "random"), default="clustered")
    parser.add_argument("--queries", type=int, default=19_848)
    parser.add_argument("--gallery", type=int, default=19_848)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--identities", type=int, default=1_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--chunk-size", type=int, default=None, help="default: the library's choice")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--reference-queries", type=int, default=4_096)
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="also profile one retrieval_metrics call (torch.profiler): where its time goes, by operation",
    )
    parser.add_argument(
        "--busy-cores",
        type=int,
        default=0,
        help="run this many spinning processes during the timed rounds, as other jobs on a shared machine",
    )
    parser.add_argument("--measure-memory", help=argparse.SUPPRESS)
    parser.add_argument("--features-path", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure_memory:
        measure_memory_here(args.measure_memory, args.features_path, args.chunk_size, args.reference_queries)
        return

    if args.threads:
        torch.set_num_threads(args.threads)
    args.chunk_size = args.chunk_size or _auto_chunk_size(args.gallery, torch.float32)
    device = torch.device(args.device)
    q, qp, g, gp = make_features(args.features, args.queries, args.gallery, args.dim, args.identities)
    reference_queries = min(args.reference_queries, args.queries)
    feature_mib = (q.numel() + g.numel()) * q.element_size() / MiB
    print(
        f"{args.features} features: {args.queries:,} queries x {args.gallery:,} gallery, {args.dim}-d, "
        f"{args.identities:,} identities ({feature_mib:.0f} MiB); device {device}, "
        f"{torch.get_num_threads()} threads, chunk_size {args.chunk_size}"
    )
    q, qp, g, gp = (t.to(device) for t in (q, qp, g, gp))

    # Agreement: every query's first/last match rank and AP against a tie-consistent full sort of the same
    # similarity values (computed in the same chunks as retrieval_metrics), slice by slice.
    first, last, ap, num_matches = _query_statistics(q, qp, g, gp, chunk_size=args.chunk_size)
    qn, gn = F.normalize(q, dim=1), F.normalize(g, dim=1)
    max_ap_difference, rank_mismatches = 0.0, 0
    for begin in range(0, args.queries, 2048):
        end = min(begin + 2048, args.queries)
        sims = torch.cat([c @ gn.T for c in qn[begin:end].split(args.chunk_size)])
        ref_first, ref_last, ref_ap = full_sort_statistics(sims, qp[begin:end], gp, pessimistic_ties=True)
        rank_mismatches += int((ref_first != first[begin:end]).sum() + (ref_last != last[begin:end]).sum())
        max_ap_difference = max(max_ap_difference, (ref_ap - ap[begin:end]).abs().max().item())
    scores = retrieval_metrics(q, qp, g, gp, chunk_size=args.chunk_size)
    print("metrics:", ", ".join(f"{name} {value:.2f}" for name, value in scores.items()))
    print(
        f"agreement with the full sort over all {args.queries:,} queries: {rank_mismatches} first/last-rank "
        f"mismatches, max |AP difference| {max_ap_difference:.1e}"
    )

    buffer = torch.zeros(args.queries, args.gallery, dtype=qn.dtype, device=device)  # allocated and touched
    gallery_t = gn.T

    def warm_matmul() -> None:
        torch.mm(qn, gallery_t, out=buffer)

    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.busy_cores)]
    if spinners:
        time.sleep(5)  # let the load average see them
        print(f"{len(spinners)} spinning process(es) started to keep cores busy")
    print(f"load average before timing: {_load()}")
    warm_times, bare_times, metric_times, ratios, bare_ratios = [], [], [], [], []
    for round_ in range(args.rounds):
        warm = min(timed(warm_matmul, device) for _ in range(2))
        bare = timed(lambda: bare_similarity(q, g), device)
        ours = timed(lambda: retrieval_metrics(q, qp, g, gp, chunk_size=args.chunk_size), device)
        warm_times.append(warm)
        bare_times.append(bare)
        metric_times.append(ours)
        ratios.append(ours / warm)
        bare_ratios.append(bare / warm)
        print(
            f"round {round_ + 1}: warm matmul {warm:.2f} s, bare {bare:.2f} s, retrieval_metrics {ours:.2f} s, "
            f"ratio to the warm matmul {ours / warm:.2f}"
        )
    print(f"load average after timing: {_load()}")
    for spinner in spinners:
        spinner.kill()

    if args.profile:
        profile_call(q, qp, g, gp, args.chunk_size, warm_matmul, device)

    sub = (q[:reference_queries], qp[:reference_queries], g, gp)
    sort_time = timed(lambda: full_sort_metrics(*sub), device)
    scale = args.queries / reference_queries

    memory = {}
    if device.type == "cpu":
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "features.pt")
            torch.save((q, qp, g, gp), path)
            for method in ("bare", "retrieval_metrics", "full_sort"):
                memory[method] = measure_memory(method, path, args.chunk_size, reference_queries)

    warm_median = statistics.median(warm_times)
    ours_median = statistics.median(metric_times)
    rows = [
        ("warm matmul (floor)", warm_median, "1.00", None),
        (
            "bare: normalise + matmul into a fresh output",
            statistics.median(bare_times),
            f"{statistics.median(bare_ratios):.2f}",
            memory.get("bare"),
        ),
        (
            "retrieval_metrics",
            ours_median,
            f"{statistics.median(ratios):.2f}",
            memory.get("retrieval_metrics"),
        ),
    ]
    full_memory = memory.get("full_sort")
    if scale != 1:
        rows.append(
            (f"full sort, first {reference_queries:,} queries (measured)", sort_time, "", full_memory)
        )
        full_memory = None if full_memory is None else full_memory * scale
    label = f"full sort, all {args.queries:,} queries" + (" (extrapolated)" if scale != 1 else "")
    rows.append((label, sort_time * scale, f"{sort_time * scale / warm_median:.2f}", full_memory))
    print("\n| method | time (s) | x warm matmul | peak memory above the features (MiB) |\n|---|---|---|---|")
    for name, seconds, ratio, mib in rows:
        mem = "n/a" if mib is None else f"{mib:,.0f}"
        print(f"| {name} | {seconds:.2f} | {ratio} | {mem} |")


if __name__ == "__main__":
    main()
