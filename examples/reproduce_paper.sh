#!/bin/bash
# One-stage against two-stage training on CUHK-PEDES, ICFG-PEDES and RSTPReid, as the paper compares
# them, with the shipped recipes (examples/configs/<dataset>.yaml), the same seeds for both, and a
# summary table of the final test metrics with the paired difference two-stage - one-stage.
#
#   bash examples/reproduce_paper.sh                        # all three datasets, seeds 0 1 2
#   DATASETS="rstpreid" SEEDS="0 1 2 3 4" DEVICES=4 bash examples/reproduce_paper.sh
#
# Needs GPUs, the datasets under data/ as the configs name them (docs/datasets.md) and the
# openai/clip-vit-base-patch16 weights (from the hub, or a local folder: CLIP=/path/to/clip).
# Not run on this project's machines (no GPU, no datasets, no hub there).
#
# Variants, each seed once:
#   two-stage: the shipped recipe: stage 1 (prompts, CLIP frozen) then stage 2 (CLIP + ID head).
#   one-stage: direct fine-tuning, the paper's baseline (IRRA's recipe): no prompts, stage 2 only
#              (stage_switch.switch_epoch 0), for the same number of fine-tuning epochs as stage 2
#              of the two-stage run.
# Each fit logs to W&B (group = dataset, run name = variant-seedN; WANDB_MODE=offline works) and
# selects its checkpoint by val/R1 on the dataset's validation split (ICFG-PEDES has none: the
# shipped config holds out identities of the training split, docs/datasets.md). The selected
# checkpoint is then tested once; `test` writes metrics-test.json into the run folder, which the
# summary reads, so no W&B access is needed to compare.
# Results: runs/paper/<dataset>/<variant>/seed<N>/ (checkpoints, fit and test folders, configs).
# An interrupted script (preemption: exit status 143) is rerun as it was: finished runs are
# skipped, an interrupted fit resumes from its last checkpoint.
# CONFIGS=<folder> takes <folder>/<dataset>.yaml instead of the shipped configs (the tests run this
# script on a synthetic dataset and a tiny CLIP that way).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CONFIGS=${CONFIGS:-$HERE/configs}
DATASETS=${DATASETS:-"cuhk_pedes icfg_pedes rstpreid"}
SEEDS=${SEEDS:-"0 1 2"}
DEVICES=${DEVICES:-1}
ROOT=${ROOT:-runs/paper}
CLIP=${CLIP:-openai/clip-vit-base-patch16}
strategy=auto
if [ "$DEVICES" -gt 1 ]; then strategy=ddp; fi

# stage 2 epochs of a shipped config: max_epochs - switch_epoch
epochs() {
  python - "$1" <<'EOF'
import sys, yaml
config = yaml.safe_load(open(sys.argv[1]))
print(config["trainer"]["max_epochs"], config["stage_switch"]["switch_epoch"])
EOF
}

for dataset in $DATASETS; do
  config=$CONFIGS/$dataset.yaml
  read -r max_epochs switch_epoch < <(epochs "$config")
  for seed in $SEEDS; do
    for variant in two-stage one-stage; do
      run=$ROOT/$dataset/$variant/seed$seed
      if compgen -G "$run/test/lightning_logs/*/metrics-test.json" > /dev/null; then
        echo "== $run: tested already, skipped"
        continue
      fi
      mkdir -p "$run"
      # The run's own checkpoint folder and logger (a second config file replaces these lists).
      cat > "$run/run.yaml" <<EOF
seed_everything: $seed
trainer:
  devices: $DEVICES
  strategy: $strategy
  logger:
    class_path: lightning.pytorch.loggers.WandbLogger
    init_args:
      project: promptdecouple-paper
      group: $dataset
      name: $variant-seed$seed
      save_dir: $run
  callbacks:
    - class_path: lightning.pytorch.callbacks.ModelCheckpoint
      init_args:
        dirpath: $run/checkpoints
        monitor: val/R1
        mode: max
        save_last: true
        filename: "best-epoch{epoch:02d}"
        auto_insert_metric_name: false
    - class_path: lightning.pytorch.callbacks.LearningRateMonitor
      init_args:
        logging_interval: step
model:
  clip: $CLIP
EOF
      if [ "$variant" = one-stage ]; then
        cat >> "$run/run.yaml" <<EOF
  text_prompt_length: 0
  vision_prompt_length: 0
stage_switch:
  switch_epoch: 0
EOF
        extra=(--trainer.max_epochs "$((max_epochs - switch_epoch))")
      else
        extra=()
      fi
      echo "== $run: fit"
      # --ckpt_path last: a rerun after an interruption resumes (a fresh start when there is none)
      promptdecouple fit --config "$config" --config "$run/run.yaml" "${extra[@]}" --ckpt_path last
      best=$(python - "$run" <<'EOF'
import json, pathlib, sys
records = sorted(pathlib.Path(sys.argv[1]).rglob("metrics-fit*.json"), key=lambda p: p.stat().st_mtime)
print(json.loads(records[-1].read_text())["best_checkpoints"][0]["path"])
EOF
)
      echo "== $run: test $best"
      promptdecouple test --config "$config" --config "$run/run.yaml" "${extra[@]}" \
        --trainer.devices 1 --trainer.strategy auto --trainer.logger false \
        --trainer.default_root_dir "$run/test" --ckpt_path "$best"
    done
  done
done

python "$HERE/summarize_runs.py" "$ROOT" --pair two-stage one-stage --json "$ROOT/summary.json"
