"""Summarise the final test metrics of many runs: mean and spread per variant, paired differences.

Every `promptdecouple test` writes ``metrics-test.json`` into its run folder (see docs/training.md).
This script finds them under a folder laid out as ``<root>/<dataset>/<variant>/seed<N>/...`` (the
layout `examples/reproduce_paper.sh` writes), and prints, per dataset:

- per variant: the number of seeds, mean and sample standard deviation of R1, R5, R10, mAP and mINP;
- for each pair of variants given with ``--pair A B``: the mean paired difference A - B over the seeds
  both have, with its 95% confidence interval (Student's t on the per-seed differences).

A partial evaluation (``trainer.limit_test_batches``) is refused: its figures are not the split's.

    python examples/summarize_runs.py runs/paper --pair two-stage one-stage [--json summary.json]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path

METRICS = ("R1", "R5", "R10", "mAP", "mINP")
# Two-sided 95% quantiles of Student's t for 1..30 degrees of freedom; 1.96 (the normal) beyond.
_T95 = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
    2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
    2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
)  # fmt: skip


def t95(degrees_of_freedom: int) -> float:
    """The two-sided 95% quantile of Student's t."""
    if degrees_of_freedom < 1:
        raise ValueError("a confidence interval needs at least two paired values")
    return _T95[degrees_of_freedom - 1] if degrees_of_freedom <= len(_T95) else 1.96


def read_runs(root: Path) -> dict[tuple[str, str], dict[str, dict[str, float]]]:
    """``{(dataset, variant): {seed: metrics}}`` from every ``metrics-test.json`` under ``root``."""
    runs: dict[tuple[str, str], dict[str, dict[str, float]]] = {}
    for path in sorted(root.rglob("metrics-test.json")):
        parts = path.relative_to(root).parts
        if len(parts) < 4 or not parts[2].startswith("seed"):
            raise ValueError(
                f"{path}: expected <root>/<dataset>/<variant>/seed<N>/..., as reproduce_paper.sh writes"
            )
        dataset, variant, seed = parts[0], parts[1], parts[2]
        record = json.loads(path.read_text(encoding="utf-8"))
        if record.get("partial"):
            raise ValueError(
                f"{path}: a partial evaluation ({record.get('num_queries')} queries); rerun test in full"
            )
        seeds = runs.setdefault((dataset, variant), {})
        if seed in seeds:
            raise ValueError(
                f"{path}: a second test of {dataset}/{variant}/{seed}; keep one metrics-test.json per seed"
            )
        seeds[seed] = record["metrics"]
    if not runs:
        raise ValueError(f"no metrics-test.json under {root}")
    return runs


def paired_difference(a: list[float], b: list[float]) -> tuple[float, float, float]:
    """Mean of ``a[i] - b[i]`` and its 95% confidence interval (Student's t)."""
    differences = [x - y for x, y in zip(a, b, strict=True)]
    mean = statistics.fmean(differences)
    half = t95(len(differences) - 1) * statistics.stdev(differences) / math.sqrt(len(differences))
    return mean, mean - half, mean + half


def summarize(runs, pairs: list[tuple[str, str]]) -> dict:
    """Per dataset: per-variant mean/std of each metric, and the requested paired differences."""
    summary: dict = {}
    for (dataset, variant), seeds in sorted(runs.items()):
        entry = {"seeds": sorted(seeds)}
        for name in METRICS:
            values = [seeds[s][name] for s in sorted(seeds)]
            entry[name] = {
                "mean": statistics.fmean(values),
                "std": statistics.stdev(values) if len(values) > 1 else None,
            }
        summary.setdefault(dataset, {"variants": {}, "differences": {}})["variants"][variant] = entry
    for dataset, part in summary.items():
        for first, second in pairs:
            a, b = runs.get((dataset, first), {}), runs.get((dataset, second), {})
            common = sorted(set(a) & set(b))
            if len(common) < 2:
                print(
                    f"note: {dataset}: {first} - {second} not reported: {len(common)} seed(s) tested in both, "
                    "a paired difference needs 2",
                    file=sys.stderr,
                )
                continue
            part["differences"][f"{first} - {second}"] = {
                "seeds": common,
                **{
                    name: dict(
                        zip(
                            ("mean", "low", "high"),
                            paired_difference([a[s][name] for s in common], [b[s][name] for s in common]),
                            strict=True,
                        )
                    )
                    for name in METRICS
                },
            }
    return summary


def print_summary(summary: dict) -> None:
    for dataset, part in summary.items():
        print(f"\n## {dataset}\n")
        print("| variant | seeds | " + " | ".join(METRICS) + " |")
        print("|---|---:|" + "---:|" * len(METRICS))
        for variant, entry in part["variants"].items():
            cells = []
            for name in METRICS:
                mean, std = entry[name]["mean"], entry[name]["std"]
                cells.append(f"{mean:.2f}" if std is None else f"{mean:.2f} ± {std:.2f}")
            print(f"| {variant} | {len(entry['seeds'])} | " + " | ".join(cells) + " |")
        for label, entry in part["differences"].items():
            cells = [
                f"{entry[n]['mean']:+.2f} [{entry[n]['low']:+.2f}, {entry[n]['high']:+.2f}]" for n in METRICS
            ]
            print(f"| {label} (paired, 95% CI) | {len(entry['seeds'])} | " + " | ".join(cells) + " |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", type=Path, help="folder holding <dataset>/<variant>/seed<N>/ run folders")
    parser.add_argument(
        "--pair",
        nargs=2,
        action="append",
        default=[],
        metavar=("A", "B"),
        help="report the paired difference A - B",
    )
    parser.add_argument("--json", type=Path, help="also write the summary to this JSON file")
    args = parser.parse_args(argv)
    try:
        summary = summarize(read_runs(args.root), [tuple(p) for p in args.pair])
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print_summary(summary)
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
