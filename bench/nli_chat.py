"""How the embedded NLI judges chat replies, the form the generate critic feeds it.

Built from Synthetic-Persona-Chat *test* personas (the NLI trains on train personas only), each
reply opening with an interjection and closing with a coda that the training data never uses
(the stand-in server's own, among others):
- restated: "No way! I love to ride horses." against "I love to ride horses." (entailment);
- other:    a reply stating another attribute of the same persona (neutral; a persona is
            consistent by construction);
- negated:  a reply stating the attribute negated or with another value (contradiction).
Prints, for each, the share the critic would flag (contradiction probability above the threshold,
0.8 as in critic.contradiction): false alarms for the first two, recall for the third. Then the
share of real conversations the critic would reject: the first 8 turns of 200 Synthetic-Persona-
Chat test conversations (faithful by construction, bar a few), every utterance against each of its
own speaker's persona sentences: flagged (any alarm) and rejected by the critic (alarms that the
persona itself explains are not counted, stages/critic.py). With
--compare FOLDER, the same figures for another model folder (e.g. an earlier build in the cache).

    .venv/bin/python bench/nli_chat.py [--n 600] [--threshold 0.8] [--compare ~/.cache/persona_forge/nli/OLD]
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from persona_forge.config import CriticConfig  # noqa: E402
from persona_forge.nli.base import CrossEncoderNLI  # noqa: E402
from persona_forge.nli.labels import CONTRADICTION  # noqa: E402
from persona_forge.nli.data import _favorites, contradictions_of, load_spc, normalize  # noqa: E402
from persona_forge.nli.train import ensure_embedded  # noqa: E402
from persona_forge.schema import Turn  # noqa: E402
from persona_forge.stages import critic  # noqa: E402
from persona_forge.stages.critic import Candidate, nli_pairs  # noqa: E402

UNSEEN_OPENERS = ["No way! ", "Funny you ask, ", "Let me think... ", "Oh nice. ", "Interesting. ", "I see. ",
                  "That's cool! ", "Oh my gosh, ", "Yikes, ", "Ha, good one. ", "Dude, ", "Nah, you know what? "]
UNSEEN_CODAS = ["", " What about you?", " That's a big part of my life.", " How about that?", " Crazy, right?",
                " Anyway, tell me more about you!"]


def probe(n: int, seed: int = 0) -> dict[str, list[tuple[str, str]]]:
    rng = random.Random(seed)
    personas = sorted({tuple(normalize(a) for a in c[k]) for c in load_spc("test")
                       for k in ("user1_persona", "user2_persona")})
    favorites = _favorites(personas)

    def reply(text: str) -> str:
        said = text.rstrip(".")
        said = said if said.startswith(("I ", "I'")) else said[:1].lower() + said[1:]
        return rng.choice(UNSEEN_OPENERS) + said + "." + rng.choice(UNSEEN_CODAS)

    sets: dict[str, list[tuple[str, str]]] = {"restated": [], "other": [], "negated": []}
    while min(len(v) for v in sets.values()) < n:
        persona = rng.choice(personas)
        if len(persona) < 2:
            continue
        attribute, other = rng.sample(persona, 2)
        sets["restated"].append((attribute, reply(attribute)))
        sets["other"].append((attribute, reply(other)))
        negations = [t for _, t in contradictions_of(attribute, rng, favorites)]
        if negations:
            sets["negated"].append((attribute, reply(rng.choice(negations))))
    return {k: v[:n] for k, v in sets.items()}


def flagged(model: CrossEncoderNLI, pairs: list[tuple[str, str]], threshold: float) -> float:
    return float(np.mean(model.predict(pairs)[:, CONTRADICTION] > threshold))


def real_conversations(n: int = 200, turns: int = 8) -> list[Candidate]:
    """The first turns of Synthetic-Persona-Chat test conversations, as the critic sees them."""
    return [Candidate(str(i), list(c["user1_persona"]), list(c["user2_persona"]),
                      [Turn(speaker=t["speaker"], text=t["text"]) for t in c["turns"][:turns]])
            for i, c in enumerate(load_spc("test")[:n])]


def conversations_flagged(model: CrossEncoderNLI, conversations: list[Candidate], threshold: float) -> tuple[float, float]:
    """(share with any utterance above the threshold, share the critic rejects: the same, less the
    alarms the persona itself explains)."""
    flat = [pair[2:] for c in conversations for pair in nli_pairs(c)]
    probs = model.predict(flat)[:, CONTRADICTION]
    raw, start = [], 0
    for c in conversations:
        n = len(nli_pairs(c))
        raw.append(bool((probs[start:start + n] > threshold).any()))
        start += n
    critic.score_faithfulness(conversations, model, CriticConfig(contradiction=threshold))
    return float(np.mean(raw)), float(np.mean([c.scores["contradicted"] > 0 for c in conversations]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=600, help="Pairs per set.")
    parser.add_argument("--threshold", type=float, default=0.8)
    parser.add_argument("--compare", type=Path, default=None, help="Another NLI model folder to run alongside.")
    args = parser.parse_args()
    sets = probe(args.n)
    models = {"embedded (current)": str(ensure_embedded(progress=False))}
    if args.compare:
        models[f"compare ({args.compare.name})"] = str(args.compare)
    print(f"chat replies from Synthetic-Persona-Chat test personas, {args.n} pairs a set, flagged when "
          f"P(contradiction) > {args.threshold}")
    print(f"{'model':<40} {'restated (false alarms)':>24} {'other attribute (false alarms)':>31} "
          f"{'negated (recall)':>17} {'SPC conversations: flagged / rejected':>38}")
    for name, path in models.items():
        model = CrossEncoderNLI(path, trace=True, precision="auto")
        rates = [flagged(model, sets[k], args.threshold) for k in ("restated", "other", "negated")]
        flagged_share, rejected_share = conversations_flagged(model, real_conversations(), args.threshold)
        print(f"{name:<40} {rates[0]:>24.3f} {rates[1]:>31.3f} {rates[2]:>17.3f} "
              f"{flagged_share:>29.3f} / {rejected_share:.3f}")
    example = sets["restated"][0]
    print(f"\ne.g. restated: {example[1]!r} vs {example[0]!r}")


if __name__ == "__main__":
    main()
