#!/usr/bin/env bash
# The study's quality-weighted arm (issue #19; docs/RESULTS.md "Quality-weighted selection"):
#   1. a dev split carved from SPC TRAIN (bench/spc_dev_split.py): 100 dev conversations, the first
#      POOL of the rest as the pool every arm selects from (forge score takes ~1.3 s a sample here);
#   2. forge score on the pool (IFD, perplexity, persona entailment per next-reply sample);
#   3. on dev: random 200 vs k-center weighted by each candidate signal (quality weight 1.0), the same
#      training recipe as bench/study.sh, plus the retrieval baseline; the signal is chosen on dev only;
#   4. the chosen arm's adapter (trained on train data only: nothing to retrain) on the first LIMIT SPC
#      test conversations beside the base, random and the retrieval baseline over the whole train split.
#
#   bench/study_quality.sh [POOL] [LIMIT] [SIGNALS]   # steps 1-3; defaults 1000, 100, "-ifd max_entailment"
#   CHOSEN=-ifd bench/study_quality.sh                # then step 4 with the signal dev chose
#   RETRIEVAL= CHOSEN=-ifd bench/study_quality.sh     # step 4 without the retrieval baseline (embedding the
#                                                     # whole train split takes longer than the rest here)
#   SEED=1 CHOSEN=-ifd bench/study_quality.sh         # a replicate: the random and chosen arms drawn and
#                                                     # trained again with seed 1 (curate.seed, train.seed), then step 4
set -euo pipefail
cd "$(dirname "$0")/.."
FORGE=${FORGE:-.venv/bin/forge}
PY=${PY:-.venv/bin/python}
POOL=${1:-1000}
LIMIT=${2:-100}
SIGNALS=${3:-"-ifd max_entailment"}
OUT=runs/q19
TRAIN=corpora/spc/train.jsonl.gz
SEED=${SEED:-0}
RETRIEVAL=${RETRIEVAL-$TRAIN}
PREFIX=$([ "$SEED" = 0 ] && echo "" || echo "s$SEED-")

$PY bench/spc_dev_split.py --out $OUT --dev 100 --seed 19
(set +o pipefail; zcat $OUT/pool.jsonl.gz | head -n "$POOL" | gzip -n > $OUT/pool$POOL.jsonl.gz)  # head closes the pipe early
# a replicate selects with the scores of the first run: same pool, same signals
[ "$SEED" != 0 ] || $FORGE score --data $OUT/pool.jsonl.gz --out $OUT/scores --limit "$POOL"
SCORES=$OUT/scores/pool.scores.jsonl

arm() {  # arm NAME CURATE-ARGS...
  local name=$1; shift
  $FORGE --run-dir $OUT/$PREFIX$name --set curate.seed=$SEED curate --n 200 --data $OUT/pool$POOL.jsonl.gz "$@"
  $FORGE --run-dir $OUT/$PREFIX$name --set train.seed=$SEED train --epochs 2
}
slug() { echo "${1#-}"; }

if [ -z "${CHOSEN:-}" ]; then
  arm dev-random --strategy random
  adapters=(--adapter random=$OUT/dev-random/train/sft/adapter)
  for signal in $SIGNALS; do
    arm dev-$(slug "$signal") --strategy kcenter --quality "$SCORES:$signal" --quality-weight 1.0
    adapters+=(--adapter "q-$(slug "$signal")=$OUT/dev-$(slug "$signal")/train/sft/adapter")
  done
  $FORGE --run-dir $OUT/dev-eval --set eval.data=$OUT/dev.jsonl.gz --set eval.limit=100 \
    --set eval.retrieval=$OUT/pool.jsonl.gz eval "${adapters[@]}"
  for signal in $SIGNALS; do
    $PY bench/paired_delta.py $OUT/dev-eval/eval/generations.jsonl "q-$(slug "$signal")" random
  done
else
  if [ "$SEED" != 0 ]; then
    arm dev-random --strategy random
    arm dev-$(slug "$CHOSEN") --strategy kcenter --quality "$SCORES:$CHOSEN" --quality-weight 1.0
  fi
  $FORGE --run-dir $OUT/${PREFIX}test-eval --set eval.limit="$LIMIT" ${RETRIEVAL:+--set eval.retrieval=$RETRIEVAL} eval \
    --adapter "quality=$OUT/${PREFIX}dev-$(slug "$CHOSEN")/train/sft/adapter" \
    --adapter random=$OUT/${PREFIX}dev-random/train/sft/adapter
  $PY bench/paired_delta.py $OUT/${PREFIX}test-eval/eval/generations.jsonl quality random
fi
