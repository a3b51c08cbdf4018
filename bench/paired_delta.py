"""Paired bootstrap differences between two models of one `forge eval` run (docs/RESULTS.md).

forge eval's delta table compares every model with the base; the study also needs arm vs arm
(e.g. curated - random). Same examples, the same 1,000 resamples for every metric (seed 0, 95%
percentile intervals); perplexity is the corpus perplexity of each resample, as eval computes it.

    bench/paired_delta.py runs/q19/dev-eval/eval/generations.jsonl q-max_entailment random
"""

from __future__ import annotations

import argparse
import json
import math

import numpy as np

KEYS = ("f1", "rougeL", "bleu_sentence", "bertscore_f1", "c_score", "contradicts")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("generations")
    parser.add_argument("model")
    parser.add_argument("baseline")
    parser.add_argument("--resamples", type=int, default=1000)
    args = parser.parse_args()
    by: dict[str, dict[str, dict]] = {}
    with open(args.generations, encoding="utf-8") as fh:
        for line in fh:
            row = json.loads(line)
            by.setdefault(row["model"], {})[row["example_id"]] = row
    a, b = args.model, args.baseline
    ids = sorted(set(by[a]) & set(by[b]))
    resamples = np.random.default_rng(0).integers(0, len(ids), size=(args.resamples, len(ids)))

    def values(model: str, key: str) -> np.ndarray:
        return np.array([np.nan if by[model][i]["metrics"].get(key) is None else by[model][i]["metrics"][key]
                         for i in ids], float)

    print(f"{a} - {b} (n = {len(ids)}, {args.resamples} paired resamples, 95% intervals)")
    for key in KEYS:
        diff = values(a, key) - values(b, key)
        if np.all(np.isnan(diff)):
            continue
        low, high = np.percentile(np.nanmean(diff[resamples], axis=1), [2.5, 97.5])
        print(f"  {key:14s} {np.nanmean(diff):+.4f} [{low:+.4f}, {high:+.4f}]")
    nll = {m: np.array([np.nan if by[m][i]["reference_nll"] is None else by[m][i]["reference_nll"] for i in ids],
                       float) for m in (a, b)}
    tokens = np.array([by[a][i]["reference_tokens"] or 0 for i in ids], float)
    if not np.isnan(nll[a]).any() and not np.isnan(nll[b]).any():
        def ppl(m: str, rows: np.ndarray) -> float:
            return math.exp(nll[m][rows].sum() / tokens[rows].sum())
        whole = np.arange(len(ids))
        low, high = np.percentile([ppl(a, r) - ppl(b, r) for r in resamples], [2.5, 97.5])
        print(f"  {'perplexity':14s} {ppl(a, whole) - ppl(b, whole):+.4f} [{low:+.4f}, {high:+.4f}]")


if __name__ == "__main__":
    main()
