"""One-stage against two-stage fine-tuning of the pretrained mini-CLIP on the demo's target, over seeds.

The question of the paper at small scale: given a CLIP pretrained on another domain
(`benchmarks/miniworld/pretrain.py`), does training deep prompts on the frozen model first (stage 1)
and then fine-tuning the encoders with those prompts frozen (stage 2) beat fine-tuning directly?

Every arm trains the library's own `PromptDecoupleModule` with a `StageSwitch`, on the synthetic
CUHK-PEDES twin of the demo (`artifacts/demo/data`), with the demo's recipe (InfoNCE at temperature
0.07 in both stages, ID loss in stage 2, AdamW, prompt lr 3e-3, encoder lr 3e-4, warm-up + cosine per
stage, global batch 64). The arms, at equal total epochs E unless said otherwise:

- ``zero_shot``: the pretrained CLIP, no prompts, no training;
- ``prompts_only``: stage 1 for all E epochs (4 prompt tokens per layer in both towers);
- ``one_stage``: direct fine-tuning for E epochs (no prompts, ``switch_epoch: 0``), the paper's baseline;
- ``two_stage_sA`` and ``two_stage_sB``: prompts (4 per layer) trained for A or B epochs, then
  fine-tuning for the rest of the E epochs;
- ``two_stage_sA_plus``: A epochs of stage 1 added in front of E epochs of fine-tuning (equal
  fine-tuning epochs with ``one_stage``, A more epochs in all);
- ``two_stage_sA_len2`` / ``two_stage_sA_len8``: the ``two_stage_sA`` schedule with 2 or 8 prompt
  tokens per layer (length 4 is ``two_stage_sA``; length 0 leaves stage 1 nothing to train and is
  ``one_stage``).

Every training arm runs once per seed; the seed sets the prompts' and the ID head's initialisation,
the batch order and the augmentation (the CLIP and the data are the same for all). No checkpoint is
selected: each run is scored after its last epoch, on the val split (240 images, 480 captions of 60
identities) and on the test split (the same sizes, 60 other identities), and ``val+test`` averages
the two (an estimate from 120 identities); nothing in the study was chosen on either. Each run's
result is a JSON file under ``--out/runs`` (a rerun skips the runs already there), and
``--out/results.json`` gathers them: per arm the mean and standard deviation over seeds,
and the paired differences (same seed) of each two-stage arm minus ``one_stage`` with a 95% t
interval. ``--plot FILE`` draws the study as an SVG (no plotting library needed).

    python benchmarks/miniworld/compare.py --clip examples/miniworld_clip --data artifacts/demo/data \
        --out benchmarks/miniworld/results [--seeds 5] [--epochs 6] [--switch 1 3] [--jobs 2] [--plot F.svg]

Runs go ``--jobs`` at a time, each in its own process with one thread and no loader workers.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import statistics
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from multiprocessing import get_context
from pathlib import Path

METRICS = ("R1", "R5", "R10", "mAP", "mINP")


@dataclass(frozen=True)
class Arm:
    """One way of training: prompt length (both towers), first stage-2 epoch, total epochs."""

    name: str
    prompt_length: int
    switch_epoch: int
    epochs: int
    description: str


def study_arms(epochs: int, switch: tuple[int, int]) -> list[Arm]:
    """The arms of the study at `epochs` total epochs with the two switch points `switch`."""
    a, b = switch
    if not 0 < a < b < epochs:
        raise ValueError(
            f"the switch points must satisfy 0 < A < B < epochs, got {switch} with epochs={epochs}"
        )
    return [
        Arm("zero_shot", 0, 0, 0, "pretrained CLIP, no prompts, no training"),
        Arm(
            "prompts_only",
            4,
            epochs,
            epochs,
            f"stage 1 only: {epochs} epochs of prompts (4/layer), CLIP frozen",
        ),
        Arm("one_stage", 0, 0, epochs, f"direct fine-tuning, {epochs} epochs, no prompts"),
        Arm(
            f"two_stage_s{a}",
            4,
            a,
            epochs,
            f"{a} epochs of prompts (4/layer), then {epochs - a} of fine-tuning",
        ),
        Arm(
            f"two_stage_s{b}",
            4,
            b,
            epochs,
            f"{b} epochs of prompts (4/layer), then {epochs - b} of fine-tuning",
        ),
        Arm(
            f"two_stage_s{a}_plus",
            4,
            a,
            epochs + a,
            f"{a} epochs of prompts (4/layer), then {epochs} of fine-tuning (as many as one_stage)",
        ),
        Arm(f"two_stage_s{a}_len2", 2, a, epochs, f"as two_stage_s{a} with 2 prompt tokens per layer"),
        Arm(f"two_stage_s{a}_len8", 8, a, epochs, f"as two_stage_s{a} with 8 prompt tokens per layer"),
    ]


def run_arm(arm: Arm, seed: int, clip: str, data: str, out: str) -> dict:
    """Train `arm` with `seed` in this process (one thread), score it on val and test, write its JSON."""
    import logging
    import warnings

    import torch

    torch.set_num_threads(1)
    import lightning as L

    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    warnings.filterwarnings(
        "ignore", message=".*(LeafSpec|stage 2 will never run|does not have many workers).*"
    )

    from promptdecouple import PromptDecoupleModule, StageSwitch, TIReIDDataModule

    started = time.perf_counter()
    L.seed_everything(seed, verbose=False)
    datamodule = TIReIDDataModule(
        dataset="cuhk-pedes",
        root=data,
        tokenizer=clip,
        image_size=(128, 64),
        text_length=64,
        global_batch_size=64,
        num_workers=0,
        eval_split="val",
        seed=seed,
    )
    model = PromptDecoupleModule(
        clip=clip,
        num_classes=datamodule.num_classes,
        image_size=(128, 64),
        text_length=64,
        text_prompt_length=arm.prompt_length,
        vision_prompt_length=arm.prompt_length,
        stage1_losses=("itc",),
        stage2_losses=("itc", "id"),
        temperature=0.07,
        prompt_lr=3e-3,
        encoder_lr=3e-4,
        head_lr=1e-3,
        weight_decay=1e-4,
        optimizer="adamw",
        adam_eps=1e-8,
        stage1_warmup_epochs=0.5,
        stage2_warmup_epochs=1,
    )
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=arm.epochs,
        callbacks=[StageSwitch(switch_epoch=arm.switch_epoch)],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
    )
    if arm.epochs:
        trainer.fit(model, datamodule=datamodule)
    trained = time.perf_counter() - started
    evaluator = L.Trainer(
        accelerator="cpu", devices=1, logger=False, enable_progress_bar=False, enable_model_summary=False
    )
    evaluator.validate(model, datamodule=datamodule, verbose=False)
    evaluator.test(model, datamodule=datamodule, verbose=False)
    scores = {}
    for split, loop in (("val", "val"), ("test", "test")):
        summary = model.last_evaluation[loop]
        if summary.partial:
            raise RuntimeError(f"{arm.name} seed {seed}: the {split} split was only partly scored")
        scores[split] = {
            "metrics": summary.metrics,
            "chance": summary.chance,
            "queries": summary.num_queries,
            "gallery": summary.num_gallery,
        }
    record = {
        "arm": asdict(arm),
        "seed": seed,
        "stage_at_end": model.stage,
        "global_step": trainer.global_step,
        "train_seconds": round(trained, 1),
        "seconds": round(time.perf_counter() - started, 1),
        "scores": scores,
    }
    path = Path(out) / "runs" / f"{arm.name}-seed{seed}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return record


# Two-sided 95% quantiles of Student's t, by degrees of freedom (1-30).
_T975 = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
    2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
    2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
)  # fmt: skip


def t_quantile_975(dof: int) -> float:
    """The 0.975 quantile of Student's t with `dof` degrees of freedom (1.96 beyond 30, within 2%)."""
    if dof < 1:
        raise ValueError(f"a t interval needs at least 2 values (dof >= 1), got dof={dof}")
    return _T975[dof - 1] if dof <= len(_T975) else 1.96


def mean_std(values: list[float]) -> dict:
    """Mean and sample standard deviation (0 for one value) of `values`, with their count."""
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "n": len(values),
    }


def paired_difference(treated: dict[int, float], baseline: dict[int, float]) -> dict | None:
    """Mean of ``treated[s] - baseline[s]`` over the seeds both have, with its 95% t interval.

    None when fewer than 2 seeds are shared (no interval exists).
    """
    seeds = sorted(set(treated) & set(baseline))
    if len(seeds) < 2:
        return None
    differences = [treated[s] - baseline[s] for s in seeds]
    mean = statistics.fmean(differences)
    half = t_quantile_975(len(seeds) - 1) * statistics.stdev(differences) / math.sqrt(len(seeds))
    return {"mean": mean, "ci95": [mean - half, mean + half], "n": len(seeds), "seeds": seeds}


def with_split_mean(records: list[dict]) -> list[dict]:
    """The records with a ``val+test`` score: each metric averaged over the two splits (two independent
    sets of 60 identities, each ranked in its own gallery: an estimate from 120 identities)."""
    merged = []
    for record in records:
        val, test = record["scores"]["val"]["metrics"], record["scores"]["test"]["metrics"]
        mean = {name: (val[name] + test[name]) / 2 for name in METRICS}
        merged.append({**record, "scores": {**record["scores"], "val+test": {"metrics": mean}}})
    return merged


def summarize(records: list[dict], arms: list[Arm], split: str = "test") -> dict:
    """Per arm: mean/std of every metric over seeds; per two-stage arm: paired difference to one_stage."""
    by_arm: dict[str, dict[int, dict]] = {}
    for record in records:
        by_arm.setdefault(record["arm"]["name"], {})[record["seed"]] = record["scores"][split]["metrics"]
    table = {}
    for arm in arms:
        runs = by_arm.get(arm.name, {})
        if not runs:
            continue
        table[arm.name] = {
            "description": arm.description,
            "prompt_length": arm.prompt_length,
            "switch_epoch": arm.switch_epoch,
            "epochs": arm.epochs,
            "seeds": sorted(runs),
            **{name: mean_std([runs[s][name] for s in sorted(runs)]) for name in METRICS},
            "per_seed": {name: [runs[s][name] for s in sorted(runs)] for name in ("R1", "mAP")},
        }
    differences = {}
    baseline = by_arm.get("one_stage", {})
    for arm in arms:
        if not arm.name.startswith("two_stage") or arm.name not in by_arm:
            continue
        runs = by_arm[arm.name]
        found = {
            name: paired_difference(
                {s: m[name] for s, m in runs.items()}, {s: m[name] for s, m in baseline.items()}
            )
            for name in ("R1", "mAP")
        }
        if all(value is not None for value in found.values()):
            differences[f"{arm.name} - one_stage"] = found
    return {"split": split, "arms": table, "paired_differences": differences}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clip", default="examples/miniworld_clip", help="the pretrained mini-CLIP")
    parser.add_argument("--data", default="artifacts/demo/data", help="the demo's synthetic CUHK-PEDES twin")
    parser.add_argument("--out", default="benchmarks/miniworld/results", help="folder of the results")
    parser.add_argument("--seeds", type=int, default=5, help="seeds 0 .. N-1 for every training arm")
    parser.add_argument("--epochs", type=int, default=6, help="total epochs E of the equal-epoch arms")
    parser.add_argument("--switch", type=int, nargs=2, default=(1, 3), help="the two switch points A < B")
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time, one process and thread each")
    parser.add_argument("--plot", type=Path, help="also draw the study as an SVG here")
    parser.add_argument("--markdown", action="store_true", help="also print the tables as Markdown")
    args = parser.parse_args()

    out = Path(args.out)
    arms = study_arms(args.epochs, tuple(args.switch))
    planned = [(arm, seed) for seed in range(args.seeds) for arm in arms if arm.epochs or seed == 0]
    todo = [
        (arm, seed) for arm, seed in planned if not (out / "runs" / f"{arm.name}-seed{seed}.json").exists()
    ]
    print(
        f"{len(planned)} runs planned, {len(planned) - len(todo)} already in {out / 'runs'}, {len(todo)} to run"
    )
    started = time.perf_counter()
    if todo:  # the CLIP and the data are needed only to train; summarising reads the runs
        for path, what in ((Path(args.clip) / "config.json", "--clip"), (Path(args.data), "--data")):
            if not path.exists():
                raise SystemExit(
                    f"{what}: {path} does not exist. Make the CLIP with benchmarks/miniworld/pretrain.py and the data "
                    "with `promptdecouple fit --config examples/configs/demo.yaml` (or `promptdecouple data synth`)."
                )
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        with ProcessPoolExecutor(max_workers=args.jobs, mp_context=get_context("spawn")) as pool:
            futures = {
                pool.submit(run_arm, arm, seed, args.clip, args.data, str(out)): (arm, seed)
                for arm, seed in todo
            }
            for done, future in enumerate(as_completed(futures), 1):
                arm, seed = futures[future]
                record = future.result()
                test = record["scores"]["test"]["metrics"]
                elapsed = time.perf_counter() - started
                print(
                    f"[{done}/{len(todo)}, {elapsed / 60:.1f} min] {arm.name} seed {seed}: test R1 {test['R1']:.2f} "
                    f"mAP {test['mAP']:.2f} ({record['seconds']:.0f} s)",
                    flush=True,
                )
        wall = time.perf_counter() - started
        with open(out / "sessions.jsonl", "a", encoding="utf-8") as file:
            file.write(
                json.dumps({"runs": len(todo), "jobs": args.jobs, "wall_seconds": round(wall, 1)}) + "\n"
            )

    records = [json.loads(p.read_text(encoding="utf-8")) for p in sorted((out / "runs").glob("*.json"))]
    wanted = {(arm.name, seed) for arm, seed in planned}
    records = [r for r in records if (r["arm"]["name"], r["seed"]) in wanted]
    sessions = [
        json.loads(line) for line in (out / "sessions.jsonl").read_text(encoding="utf-8").splitlines()
    ]
    weights = Path(args.clip) / "model.safetensors"
    results = {
        "settings": {
            "clip": args.clip,
            "clip_sha256": hashlib.sha256(weights.read_bytes()).hexdigest() if weights.is_file() else None,
            "data": args.data,
            "seeds": args.seeds,
            "epochs": args.epochs,
            "switch": list(args.switch),
        },
        "cost": {
            "run_seconds_total": round(sum(r["seconds"] for r in records), 1),
            "wall_seconds_total": round(sum(s["wall_seconds"] for s in sessions), 1),
            "sessions": sessions,
        },
        "test": summarize(records, arms, "test"),
        "val": summarize(records, arms, "val"),
        "val+test": summarize(with_split_mean(records), arms, "val+test"),
    }
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print_summary(results["test"])
    if args.markdown:
        print("\n" + "\n".join(markdown_tables(results[split]) for split in ("test", "val", "val+test")))
    if args.plot:
        args.plot.parent.mkdir(parents=True, exist_ok=True)
        args.plot.write_text(draw_svg(results["test"]), encoding="utf-8")
        print(f"plot: {args.plot}")
    print(f"results: {out / 'results.json'}")


def draw_svg(summary: dict, metric: str = "R1") -> str:
    """The study as an SVG: left, `metric` per arm (a dot per seed, the mean with +- one standard
    deviation); right, each two-stage arm minus one_stage (paired by seed), its mean and 95% interval."""
    arms = list(summary["arms"].items())
    differences = summary["paired_differences"]
    row, top, left, width, gap = 26, 46, 190, 330, 60
    height = top + row * len(arms) + 50
    right_left = left + width + gap
    values = [v for _, r in arms for v in r["per_seed"][metric]]
    low, high = math.floor(min(values) / 5) * 5, math.ceil(max(values) / 5) * 5
    spans = [abs(x) for d in differences.values() for x in d[metric]["ci95"]] or [1.0]
    step = next(s for s in (1, 2, 5, 10, 20, 50) if max(spans) / s <= 4)
    reach = step * max(1, math.ceil(max(spans) / step))

    def x_of(value: float) -> float:
        return left + (value - low) / (high - low) * width

    def dx_of(value: float) -> float:
        return right_left + (value + reach) / (2 * reach) * width

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{right_left + width + 50}" height="{height}" '
        'font-family="sans-serif" font-size="12">',
        '<rect width="100%" height="100%" fill="white"/>',
        f'<text x="{left}" y="18" font-weight="bold">{summary["split"]} {metric} per arm '
        "(dots: seeds; bar: mean +- std)</text>",
        f'<text x="{right_left}" y="18" font-weight="bold">minus one_stage, same seed (mean, 95% CI)</text>',
    ]
    for tick in range(int(low), int(high) + 1, 5):
        x = x_of(tick)
        parts.append(f'<line x1="{x:.1f}" y1="{top - 12}" x2="{x:.1f}" y2="{height - 40}" stroke="#ddd"/>')
        parts.append(f'<text x="{x:.1f}" y="{height - 24}" text-anchor="middle">{tick}</text>')
    for tick in range(-reach, reach + 1, step):
        x = dx_of(tick)
        colour = "#888" if tick == 0 else "#ddd"
        parts.append(
            f'<line x1="{x:.1f}" y1="{top - 12}" x2="{x:.1f}" y2="{height - 40}" stroke="{colour}"/>'
        )
        parts.append(f'<text x="{x:.1f}" y="{height - 24}" text-anchor="middle">{tick:+d}</text>')
    for index, (name, arm) in enumerate(arms):
        y = top + index * row
        parts.append(f'<text x="{left - 8}" y="{y + 4}" text-anchor="end">{name}</text>')
        mean, std = arm[metric]["mean"], arm[metric]["std"]
        parts.append(
            f'<line x1="{x_of(mean - std):.1f}" y1="{y}" x2="{x_of(mean + std):.1f}" y2="{y}" '
            'stroke="#1f77b4" stroke-width="3" opacity="0.5"/>'
        )
        parts.append(
            f'<line x1="{x_of(mean):.1f}" y1="{y - 8}" x2="{x_of(mean):.1f}" y2="{y + 8}" stroke="#1f77b4" stroke-width="2"/>'
        )
        for value in arm["per_seed"][metric]:
            parts.append(f'<circle cx="{x_of(value):.1f}" cy="{y}" r="3" fill="#d62728" opacity="0.7"/>')
        found = differences.get(f"{name} - one_stage")
        if found:
            d = found[metric]
            parts.append(
                f'<line x1="{dx_of(d["ci95"][0]):.1f}" y1="{y}" x2="{dx_of(d["ci95"][1]):.1f}" y2="{y}" '
                'stroke="#2ca02c" stroke-width="3"/>'
            )
            parts.append(f'<circle cx="{dx_of(d["mean"]):.1f}" cy="{y}" r="4" fill="#2ca02c"/>')
            parts.append(
                f'<text x="{right_left + width + 4}" y="{y + 4}" font-size="10">{d["mean"]:+.2f}</text>'
            )
    parts.append(f'<text x="{left + width / 2}" y="{height - 6}" text-anchor="middle">{metric} (%)</text>')
    parts.append(
        f'<text x="{right_left + width / 2}" y="{height - 6}" text-anchor="middle">{metric} difference (points)</text>'
    )
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def markdown_tables(summary: dict) -> str:
    """The study as two Markdown tables (arms; paired differences), for docs/evidence.md."""
    lines = [
        f"| arm ({summary['split']} split) | prompts | switch | epochs | seeds | R1 | mAP | mINP |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, row in summary["arms"].items():
        cells = [  # one seed has no spread to show
            f"{row[m]['mean']:.2f}" + (f" ± {row[m]['std']:.2f}" if row[m]["n"] > 1 else "")
            for m in ("R1", "mAP", "mINP")
        ]
        lines.append(
            f"| `{name}` | {row['prompt_length']} | {row['switch_epoch']} | {row['epochs']} | {row['R1']['n']} | "
            + " | ".join(cells)
            + " |"
        )
    lines += [
        "",
        "| paired difference (same seed) | R1 [95% CI] | mAP [95% CI] | seeds |",
        "|---|---:|---:|---:|",
    ]
    for name, found in summary["paired_differences"].items():
        cells = [
            f"{found[m]['mean']:+.2f} [{found[m]['ci95'][0]:+.2f}, {found[m]['ci95'][1]:+.2f}]"
            for m in ("R1", "mAP")
        ]
        lines.append(f"| `{name}` | " + " | ".join(cells) + f" | {found['R1']['n']} |")
    return "\n".join(lines) + "\n"


def print_summary(summary: dict) -> None:
    """The study as two text tables: arms (mean +- std over seeds), paired differences to one_stage."""
    print(f"\n{summary['split']} split, mean +- std over seeds")
    print(f"{'arm':<22} {'seeds':>5} {'R1':>14} {'mAP':>14}")
    for name, row in summary["arms"].items():
        r1, m = row["R1"], row["mAP"]
        print(
            f"{name:<22} {r1['n']:>5} {r1['mean']:>7.2f} +- {r1['std']:<4.2f} {m['mean']:>7.2f} +- {m['std']:<4.2f}"
        )
    print("\npaired difference (same seed), mean and 95% t interval")
    for name, found in summary["paired_differences"].items():
        r1, m = found["R1"], found["mAP"]
        print(
            f"{name:<32} R1 {r1['mean']:+.2f} [{r1['ci95'][0]:+.2f}, {r1['ci95'][1]:+.2f}]  "
            f"mAP {m['mean']:+.2f} [{m['ci95'][0]:+.2f}, {m['ci95'][1]:+.2f}]  (n={r1['n']})"
        )


if __name__ == "__main__":
    main()
