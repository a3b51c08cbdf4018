"""The critic's NLI on whole real conversations: Synthetic-Persona-Chat TEST conversations, full length.

Every conversation goes through the critic's faithfulness expert exactly as `forge generate` runs
it (stages/critic.py: every utterance against each sentence of its own speaker's persona, the
critic's thresholds, alarms the persona itself explains set aside). Prints:
- flagged: the share of real conversations (faithful by construction, bar a few) the critic would
  reject (more contradicting utterances than critic.max_contradicted);
- covered: the share of persona sentences entailed by some utterance of their speaker (above
  critic.entailment), over all sentences, and the critic's mean `coverage` score;
- caught: one utterance per conversation replaced by a hand-written contradiction of its speaker's
  persona (corpora/nli/spc_test_injected.jsonl): the share of those conversations the critic then
  rejects, and the share whose injected utterance itself is above the contradiction threshold.
Every figure comes twice: with the critic's alarms judged on whole utterances, and confirmed
sentence by sentence (critic.by_sentence, the default: replyscore.confirm_by_sentence).
With --compare FOLDER, the same figures for another model folder (e.g. an older build in the
cache). --split train measures on train conversations instead (for tuning; never tune on test).

    .venv/bin/python bench/nli_conversations.py [--n 0] [--contradiction 0.8] [--entailment 0.5] [--compare DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from persona_forge.config import CriticConfig  # noqa: E402
from persona_forge.nli.base import CrossEncoderNLI  # noqa: E402
from persona_forge.nli.labels import CONTRADICTION, ENTAILMENT  # noqa: E402
from persona_forge import replyscore  # noqa: E402
from persona_forge.replyscore import RememberingNLI  # noqa: E402
from persona_forge.nli.data import load_spc  # noqa: E402
from persona_forge.nli.train import ensure_embedded  # noqa: E402
from persona_forge.schema import Turn  # noqa: E402
from persona_forge.stages import critic  # noqa: E402
from persona_forge.stages.critic import Candidate  # noqa: E402

INJECTED = ROOT / "corpora" / "nli" / "spc_test_injected.jsonl"


def candidates(conversations: list[dict]) -> list[Candidate]:
    return [Candidate(c["id"], list(c["user1_persona"]), list(c["user2_persona"]),
                      [Turn(speaker=t["speaker"], text=t["text"]) for t in c["turns"]]) for c in conversations]


def injected(conversations: list[dict]) -> list[tuple[Candidate, str, str]]:
    """(the conversation with one utterance replaced, the persona sentence it contradicts, the utterance)."""
    by_id = {c["id"]: c for c in conversations}
    out = []
    for line in INJECTED.read_text().splitlines():
        row = json.loads(line)
        conversation = by_id.get(row["conversation_id"])
        if conversation is None:
            continue
        turns = [dict(t) for t in conversation["turns"]]
        assert turns[row["turn"]]["speaker"] == row["speaker"], row
        turns[row["turn"]]["text"] = row["utterance"]
        changed = candidates([{**conversation, "turns": turns}])[0]
        out.append((changed, row["persona_sentence"], row["utterance"]))
    return out


def covered_share(cands: list[Candidate], model, cfg: CriticConfig) -> float:
    """Persona sentences entailed (above cfg.entailment) by some utterance of their speaker, over all."""
    pairs = sorted({(a, t.text) for c in cands for t in c.turns for a in c.persona(t.speaker)})
    entail = dict(zip(pairs, model.predict(pairs)[:, ENTAILMENT]))
    total = hit = 0
    for c in cands:
        for speaker in ("user1", "user2"):
            lines = [t.text for t in c.turns if t.speaker == speaker]
            for a in c.persona(speaker):
                total += 1
                hit += any(entail[(a, x)] > cfg.entailment for x in lines)
    return hit / total if total else 0.0


def injected_line_worst(changed: Candidate, utterance: str, model, cfg: CriticConfig) -> float:
    """The injected utterance's worst contradiction against its speaker's persona, under the critic's
    alarm rule (confirmed sentence by sentence when cfg.by_sentence)."""
    speaker = next(t.speaker for t in changed.turns if t.text == utterance)
    pairs = [(a, utterance) for a in changed.persona(speaker)]
    judged = dict(zip(pairs, model.predict(pairs)))
    if cfg.by_sentence:
        replyscore.confirm_by_sentence(judged, model, cfg.contradiction)
    return float(max(row[CONTRADICTION] for row in judged.values()))


def measure(model, conversations: list[dict], cfg: CriticConfig, with_injected: bool) -> dict:
    started = time.time()
    if not isinstance(model, RememberingNLI):
        model = RememberingNLI(model)  # the critic, coverage and injected figures share pairs: each judged once
    real = candidates(conversations)
    changed = injected(conversations) if with_injected else []
    critic.score_faithfulness(real + [c for c, _, _ in changed], model, cfg)
    out = {
        "conversations": len(real),
        "flagged": float(np.mean([c.scores["contradicted"] > cfg.max_contradicted for c in real])),
        "any_alarm": float(np.mean([c.scores["contradiction"] > cfg.contradiction for c in real])),
        "coverage_mean": float(np.mean([c.scores["coverage"] for c in real])),
        "covered": covered_share(real, model, cfg),
    }
    if changed:
        probs = model.predict([(sentence, utterance) for _, sentence, utterance in changed])
        speaker_worst = [injected_line_worst(c, u, model, cfg) for c, _, u in changed]
        out.update(injected=len(changed),
                   caught=float(np.mean([c.scores["contradicted"] > cfg.max_contradicted for c, _, _ in changed])),
                   injected_line_flagged=float(np.mean(np.array(speaker_worst) > cfg.contradiction)),
                   injected_pair_flagged=float(np.mean(probs[:, CONTRADICTION] > cfg.contradiction)))
    out["seconds"] = round(time.time() - started, 1)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=0, help="Conversations (0: all).")
    parser.add_argument("--split", choices=("test", "train"), default="test")
    parser.add_argument("--contradiction", type=float, default=None, help="Default: critic.contradiction.")
    parser.add_argument("--entailment", type=float, default=None, help="Default: critic.entailment.")
    parser.add_argument("--model", type=Path, default=None, help="Model folder (default: the embedded build).")
    parser.add_argument("--compare", type=Path, default=None, help="Another model folder to measure alongside.")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    cfg = CriticConfig(**{k: v for k, v in (("contradiction", args.contradiction), ("entailment", args.entailment))
                          if v is not None})
    conversations = load_spc(args.split)
    if args.split == "train":
        import random

        conversations = random.Random(0).sample(conversations, args.n or 300)
    elif args.n:
        conversations = conversations[:args.n]
    folders = [("new", args.model or ensure_embedded())] + ([("compare", args.compare)] if args.compare else [])
    results = {}
    for name, folder in folders:
        model = RememberingNLI(CrossEncoderNLI(str(folder), batch_size=64, trace=True, precision="auto"))
        # each model under both alarm rules (critic.by_sentence), sharing one memo of judged pairs
        for by_sentence in (False, True):
            rule = cfg.model_copy(update={"by_sentence": by_sentence})
            results[f"{name}, by_sentence={by_sentence}"] = {
                "model": f"{Path(folder).name}{' /sent' if by_sentence else ''}",
                **measure(model, conversations, rule, args.split == "test")}
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    print(f"SPC {args.split} conversations, full length, critic thresholds: contradiction {cfg.contradiction}, "
          f"entailment {cfg.entailment}, max_contradicted {cfg.max_contradicted}\n")
    keys = ["conversations", "flagged", "any_alarm", "covered", "coverage_mean", "injected", "caught",
            "injected_line_flagged", "injected_pair_flagged", "seconds"]
    print(f"{'figure':<24}" + "".join(f"{r['model']:>28}" for r in results.values()))
    for key in keys:
        if any(key in r for r in results.values()):
            print(f"{key:<24}" + "".join(f"{r.get(key, float('nan')):>28.3f}" if isinstance(r.get(key), float)
                                         else f"{str(r.get(key, '')):>28}" for r in results.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
