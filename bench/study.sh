#!/usr/bin/env bash
# The study's experiment at our scale (docs/RESULTS.md): the packaged SmolLM2-135M-Instruct,
# vs LoRA SFT on 200 curated Synthetic-Persona-Chat samples (k-center), vs LoRA SFT on 200 random
# ones; same n, same recipe, same budget (2 epochs: 3 take 14 min per run here); evaluated on the SPC test split.
#
#   bench/study.sh [LIMIT]      # LIMIT test conversations (default 100); about 35 min on 2 cores
set -euo pipefail
cd "$(dirname "$0")/.."
FORGE=${FORGE:-.venv/bin/forge}
LIMIT=${1:-100}
for strategy in kcenter random; do
  run=runs/study-$strategy
  $FORGE --run-dir $run curate --n 200 --data corpora/spc/train.jsonl.gz --strategy $strategy
  $FORGE --run-dir $run train --epochs 2
done
$FORGE --run-dir runs/study-eval --set eval.limit=$LIMIT eval \
  --adapter curated=runs/study-kcenter/train/sft/adapter \
  --adapter random=runs/study-random/train/sft/adapter
