#!/bin/bash
# One VQA screen: train a fusion model with config overrides, then score its VQA by question type on the
# first IMAGES validation and test images (experiments/fusion_comparison/vqa_errors.py; rows appended to
# results/vqa_errors.jsonl with tag NAME). Runs after the README's first command (runs/clip_shapes) and,
# for flamingo, configs/lm_shapes.py (runs/lm_shapes).
#
#   bash experiments/fusion_comparison/vqa_screen.sh llava NAME STEPS [--config.KEY=VALUE ...]
#   bash experiments/fusion_comparison/vqa_screen.sh flamingo NAME STEPS [--config.KEY=VALUE ...]
#
# llava trains stage 1 (150 steps) into runs/screen_NAME_s1 and stage 2 (STEPS) from it into
# runs/screen_NAME; the overrides go to both stages (the scoring reads the run's saved config), and
# STAGE2_ARGS (a space-separated list) to stage 2 / flamingo alone. IMAGES=500 by default.
set -euo pipefail
cd "$(dirname "$0")/../.."
design=$1 name=$2 steps=$3
shift 3
wd=runs/screen_$name
images=${IMAGES:-500}
rm -rf "$wd" "${wd}_s1"
init=()
if [ "$design" = llava ]; then
  cfg=configs/llava_shapes.py:stage=2
  python -m mmjax.train --config=configs/llava_shapes.py:stage=1 --workdir="${wd}_s1" "$@"
  init=(--config.init_from.workdir="${wd}_s1")
elif [ "$design" = flamingo ]; then
  cfg=configs/flamingo_shapes.py
else
  echo "vqa_screen.sh: unknown design '$design'; use llava or flamingo" >&2
  exit 2
fi
start=$(date +%s)
read -r -a stage2 <<< "${STAGE2_ARGS:-}"
python -m mmjax.train --config="$cfg" --workdir="$wd" --config.total_steps="$steps" "${init[@]}" "$@" \
  "${stage2[@]}"
echo "vqa_screen.sh: $name trained in $(( $(date +%s) - start )) s (stage 2 / flamingo)"
for split in validation test; do
  python experiments/fusion_comparison/vqa_errors.py --workdir="$wd" --split=$split \
    --images="$images" --tag="$name"
done
