"""Does the judge agree with the critic? The critic of `forge generate` picks the best of each
pair's candidate conversations; the judge (the recipe's backend, or --model) is asked which of two
candidates is better, in both orders, from its token probabilities (prompts/judge/choice_conversation.j2).

For every pair in <run_dir>/dialogues.jsonl: the critic's choice (best.jsonl, else the highest
critic score) against each other candidate with a lower score. The judge agrees when its
probability for the critic's choice, averaged over the two orders (the position cancels), is
above 0.5. Prints the agreement rate with a Wilson 95% interval and a bootstrap interval over
pairs, the position bias (mean P(A) - 0.5) and the judge's mean probability mass on "A"/"B".

    flock /tmp/pf-heavy.lock .venv/bin/python bench/judge_critic.py --run-dir runs/gen [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from persona_forge.backends import ChatRequest, build_backend  # noqa: E402
from persona_forge.config import LocalBackendConfig  # noqa: E402
from persona_forge.metrics import wilson_interval  # noqa: E402
from persona_forge.prompts import library  # noqa: E402
from persona_forge.schema import Dialogue  # noqa: E402
from persona_forge.store import JsonlStore  # noqa: E402
from persona_forge.transcript import format_transcript  # noqa: E402

PROMPT = "judge/choice_conversation"


def comparisons(run_dir: Path) -> list[tuple[Dialogue, Dialogue]]:
    """(critic's choice, a candidate it ranked lower) for every pair."""
    dialogues = JsonlStore(run_dir / "dialogues.jsonl", Dialogue).read()
    best_path = run_dir / "best.jsonl"
    best = {d.pair_id: d.id for d in JsonlStore(best_path, Dialogue).read()} if best_path.is_file() else {}
    by_pair: dict[str, list[Dialogue]] = defaultdict(list)
    for d in dialogues:
        if d.pair_id and d.scores.get("critic") is not None and d.turns:
            by_pair[d.pair_id].append(d)
    out = []
    for pair_id, candidates in by_pair.items():
        chosen = next((d for d in candidates if d.id == best.get(pair_id)), None) or \
            max(candidates, key=lambda d: d.scores["critic"])
        out += [(chosen, d) for d in candidates if d.scores["critic"] < chosen.scores["critic"]]
    return out


def request(prompts, a: Dialogue, b: Dialogue) -> ChatRequest:
    rendered = prompts.render(PROMPT, user1=a.user1_persona, user2=a.user2_persona,
                              transcript_a=format_transcript(a.turns), transcript_b=format_transcript(b.turns))
    return ChatRequest.of(rendered.messages, temperature=0.0)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run-dir", type=Path, required=True)
    parser.add_argument("--model", default="packaged:smollm2-135m-instruct")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--resamples", type=int, default=2000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    pairs = comparisons(args.run_dir)
    if not pairs:
        sys.exit(f"{args.run_dir}: no candidates with critic scores to compare")
    prompts = library()
    backend = build_backend(LocalBackendConfig(model=args.model, threads=args.threads), progress=False)
    requests = [request(prompts, chosen, other) for chosen, other in pairs] + \
               [request(prompts, other, chosen) for chosen, other in pairs]
    answers = backend.option_probs_sync(requests, ("A", "B"))
    n = len(pairs)
    first, second = answers[:n], answers[n:]
    p_chosen = np.array([(f.probs["A"] + s.probs["B"]) / 2 for f, s in zip(first, second)])
    agree = p_chosen > 0.5
    k = int(agree.sum())
    low, high = wilson_interval(k, n)
    # bootstrap over generation pairs (a pair's comparisons share a chosen conversation)
    groups: dict[str, list[int]] = defaultdict(list)
    for i, (chosen, _) in enumerate(pairs):
        groups[chosen.pair_id].append(i)
    keys = list(groups)
    rng = np.random.default_rng(0)
    rates = []
    for _ in range(args.resamples):
        idx = [i for g in rng.choice(len(keys), len(keys)) for i in groups[keys[g]]]
        rates.append(float(agree[idx].mean()))
    p_a = [a.probs["A"] for a in answers]
    gaps = [abs(chosen.scores["critic"] - other.scores["critic"]) for chosen, other in pairs]
    big = [a for a, g in zip(agree, gaps) if g >= float(np.median(gaps))]
    figures = {
        "comparisons": n, "generation_pairs": len(keys), "agree": k, "agreement": round(k / n, 4),
        "wilson95": [round(low, 4), round(high, 4)],
        "bootstrap95": [round(float(np.percentile(rates, 2.5)), 4), round(float(np.percentile(rates, 97.5)), 4)],
        "mean_p_critic_choice": round(float(p_chosen.mean()), 4),
        "agreement_when_critic_gap_at_least_median": round(float(np.mean(big)), 4) if big else None,
        "position_bias": round(float(np.mean(p_a)) - 0.5, 4),
        "order_consistent": round(float(np.mean([(f.probs["A"] > 0.5) != (s.probs["A"] > 0.5)
                                                 for f, s in zip(first, second)])), 4),
        "mean_mass_on_A_B": round(float(np.mean([a.mass for a in answers])), 4),
        "unreadable": sum(not a.ok for a in answers), "model": args.model,
    }
    if args.json:
        print(json.dumps(figures, indent=2))
        return
    for key, value in figures.items():
        print(f"{key:45s} {value}")


if __name__ == "__main__":
    main()
