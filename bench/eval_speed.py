"""Speed of forge eval's model work: the old path against the shared-pass path, same process, same
examples. Benchmarks report figures; they never pass or fail.

old: what forge eval did before decoding.py: LocalBackend.complete_sync (transformers' generate,
     greedy, batches of eval.batch_size sorted within each chunk of 32), then metrics.reference_nll
     for the reference (perplexity), then metrics.reference_nll again for all K Hits@1 candidates
     (the reference among them, so it was scored twice), each a full pass over prompt + reply.
new: Generator.generate_and_score: examples sorted by prompt length, each prompt run once; the
     candidates scored on its KV cache; the greedy reply decoded from it, finished rows leaving.

Both get the same examples (the first --compare of the SPC test split) and their figures are compared
(identical replies, perplexity and candidate-score relative differences, Hits@1 agreement); the new
path then runs alone on --n examples for the projection to 968. BERTScore and NLI (the same for both
paths) are timed once on the new replies and added to both projections.

    python bench/eval_speed.py                      # --n 40 --compare 6 --hits 20, batch 32 (old: 8), 2 threads
    python bench/eval_speed.py --n 968 --compare 0  # the whole split, new path only
    python bench/eval_speed.py --hits 0             # perplexity only, no Hits@1
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

FULL = 968


def old_path(generator, examples, cfg, candidates, chunk: int = 32):
    """The pre-decoding.py eval: generate, then perplexity, then Hits@1, each on its own."""
    from persona_forge import metrics as M

    model, tokenizer = generator.lm
    replies, nll, ranked = [], [], []
    for start in range(0, len(examples), chunk):
        part = examples[start:start + chunk]
        replies += [(c.text or "").strip() for c in generator.backend.complete_sync(generator.requests(part, cfg))]
        prompts = [[m.model_dump() for m in e.messages] for e in part]
        nll += M.reference_nll(model, tokenizer, prompts, [e.reference for e in part], cfg.batch_size)
        if candidates:
            cands = candidates[start:start + chunk]
            flat_prompts = [p for p, options in zip(prompts, cands) for _ in options]
            flat = M.reference_nll(model, tokenizer, flat_prompts, [c for options in cands for c in options],
                                   cfg.batch_size)
            at = 0
            for options in cands:
                ranked.append([-total for total, _ in flat[at:at + len(options)]])
                at += len(options)
    return replies, nll, ranked


def new_path(generator, examples, cfg, candidates, penalty: float, chunk: int = 32):
    """forge eval's path now: examples ordered by prompt length, one shared pass per prompt."""
    order = generator.order(examples)
    index = {e.id: i for i, e in enumerate(examples)}
    replies, nll, ranked = [None] * len(examples), [None] * len(examples), [None] * len(examples)
    for start in range(0, len(order), chunk):
        part = order[start:start + chunk]
        cands = [candidates[index[e.id]] for e in part] if candidates else [[e.reference] for e in part]
        completions, part_nll, part_ranked = generator.generate_and_score(part, cfg, cands, penalty)
        for e, c, n, r in zip(part, completions, part_nll, part_ranked):
            i = index[e.id]
            replies[i], nll[i], ranked[i] = (c.text or "").strip(), n, r
    return replies, nll, (ranked if candidates else [])


def rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-12)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=40, help="examples for the new path's projection (968: all)")
    parser.add_argument("--compare", type=int, default=6, help="examples run by both paths (0: new path only)")
    parser.add_argument("--hits", type=int, default=20, help="Hits@1 candidates (0: off)")
    parser.add_argument("--batch-size", type=int, default=32, help="eval.batch_size of the new path (its default)")
    parser.add_argument("--old-batch-size", type=int, default=8, help="eval.batch_size of the old path (its default)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    args = parser.parse_args(argv)

    from persona_forge.config import load_recipe
    from persona_forge.stages import evaluation as E

    t0 = time.perf_counter()
    recipe = load_recipe(None, {"backend": {"threads": args.threads},
                                "eval": {"hits_candidates": args.hits, "batch_size": args.old_batch_size,
                                         "max_new_tokens": args.max_new_tokens}})
    cfg = recipe.eval
    data = E.default_data()
    examples, _ = E.load_examples(data, cfg.model_copy(update={"limit": max(args.n, args.compare)}))
    pool = E.distractor_pool(data) if args.hits else []
    candidates = [E.hits_candidates(e, pool, args.hits, cfg.seed) for e in examples] if args.hits else None
    generator = E.Generator.for_model(cfg, recipe.backend, E.ModelUnderTest("base", None, "bench"), False)
    new_cfg = cfg.model_copy(update={"batch_size": args.batch_size})
    penalty = recipe.backend.repetition_penalty
    print(f"setup (imports, data, model load): {time.perf_counter() - t0:.1f} s; {args.threads} threads; "
          f"Hits@1 of {args.hits or 'off'}; max {args.max_new_tokens} new tokens; penalty {penalty}", flush=True)

    k = min(args.compare, len(examples))
    if k:
        part = examples[:k]
        cands = candidates[:k] if candidates else None
        t = time.perf_counter()
        old = old_path(generator, part, cfg, cands)
        t_old = time.perf_counter() - t
        t = time.perf_counter()
        new = new_path(generator, part, new_cfg, cands, penalty)
        t_new = time.perf_counter() - t
        same = sum(a == b for a, b in zip(old[0], new[0]))
        ppl_rel = max(rel(a[0], b[0]) for a, b in zip(new[1], old[1]))
        tokens_same = all(a[1] == b[1] for a, b in zip(new[1], old[1]))
        line = (f"same {k} examples: old {t_old:.1f} s, new {t_new:.1f} s, ratio {t_old / t_new:.1f}x; "
                f"replies identical {same}/{k}; reference NLL max rel. diff {ppl_rel:.2e} "
                f"(token counts equal: {tokens_same})")
        if cands:
            score_rel = max(rel(a, b) for ra, rb in zip(new[2], old[2]) for a, b in zip(ra, rb))
            ranks_same = sum(sorted(range(len(a)), key=a.__getitem__) == sorted(range(len(b)), key=b.__getitem__)
                             for a, b in zip(new[2], old[2]))
            line += f"; candidate scores max rel. diff {score_rel:.2e}, rankings identical {ranks_same}/{k}"
        print(line, flush=True)
        print(f"  old per example {t_old / k:.2f} s -> {FULL} examples {t_old / k * FULL / 60:.1f} min "
              f"(model work only)", flush=True)

    cfg = new_cfg
    n = min(args.n, len(examples))
    generator.timings.clear()
    t = time.perf_counter()
    replies, _, _ = new_path(generator, examples[:n], cfg, candidates[:n] if candidates else None, penalty)
    t_new = time.perf_counter() - t
    scorers = E.default_scorers(cfg, recipe.backend, recipe.nli, False)
    t = time.perf_counter()
    scorers.bertscore, scorers.nli
    t_load = time.perf_counter() - t
    t = time.perf_counter()
    E.score_examples(examples[:n], replies, scorers, cfg.contradiction)
    t_score = time.perf_counter() - t
    per = t_new / n
    print(f"new path on {n} examples (batch {cfg.batch_size}): {t_new:.1f} s ({per:.2f} s/example); "
          f"BERTScore+NLI+text metrics {t_score:.1f} s (+{t_load:.1f} s loading)", flush=True)
    print("  new path phases: " + ", ".join(f"{k} {v:.1f} s" for k, v in generator.timings.items()), flush=True)
    projected = per * FULL + t_score / n * FULL + t_load
    print(f"projected {FULL} examples, one model: new {projected / 60:.1f} min", end="")
    if k:
        projected_old = t_old / k * FULL + t_score / n * FULL + t_load
        print(f", old {projected_old / 60:.1f} min, ratio {projected_old / projected:.1f}x", end="")
    print(" (plus setup)", flush=True)


if __name__ == "__main__":
    main()
