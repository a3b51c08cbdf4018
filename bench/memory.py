"""Does the persona model remember who it is talking to? Recall of facts a user revealed early,
asked about later, with no memory, the whole history in context, the memory block and retrieval.

From Synthetic-Persona-Chat TEST conversations (corpora/spc/test.jsonl.gz): the talking user is
user1 (the model's partner), the model plays user2 with its persona as the system prompt.
1. The partner's utterances in the first `--early` turns go through the memory extractor as a chat
   would see them (UserMemory.observe, one message at a time; the embedded NLI and MiniLM).
2. A partner persona sentence counts as revealed when the NLI finds one of those utterances entails
   it (premise = utterance, hypothesis = persona sentence, p >= 0.5).
3. Each revealed sentence becomes a probe question by a small rule set per slot (probe_question:
   pets, favourites, work, home, family, likes, "my X is"; else "Do you remember what I told you
   about my <last content word>?"); sentences no rule fits are skipped and counted.
4. SmolLM2 (the local backend, greedy, 40 new tokens) answers the probe in four conditions:
   none      the persona system prompt and the probe;
   history   the whole conversation (every turn) and then the probe;
   block     the persona system prompt with the memory block (every active fact, within the budget);
   retrieve  the block with the top-k facts by cosine to the probe (FAISS), within the budget
             (retrieve@K: with top_k K).
5. An answer counts when the NLI finds the fact entailed. The answer speaks to the user ("You have
   a turtle"), so its second person is turned into the first ("I have a turtle") before judging.
   Both directions are measured: answer -> fact (premise = the answer; the primary figure: a reply
   that states the fact and more still counts) and fact -> answer (premise = the fact, as the critic
   asks).
Prints recall with a bootstrap interval and mean prompt tokens per condition, and the targets.

    flock /tmp/pf-heavy.lock .venv/bin/python bench/memory.py [--probes 80] [--early 8] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from persona_forge.backends import ChatRequest, build_backend  # noqa: E402
from persona_forge.config import LocalBackendConfig, MemoryConfig, NLIConfig, SamplingConfig  # noqa: E402
from persona_forge.memory import SentenceEncoder, UserMemory, tokenizer_counter  # noqa: E402
from persona_forge.memory.extract import content_words  # noqa: E402
from persona_forge.metrics import bootstrap_indices, interval, mean_of  # noqa: E402
from persona_forge.nli.base import load_nli  # noqa: E402
from persona_forge.nli.labels import LABELS  # noqa: E402
from persona_forge.samples import reply_messages  # noqa: E402
from persona_forge.schema import Turn  # noqa: E402
from persona_forge.store import iter_jsonl  # noqa: E402

CONDITIONS = ("none", "history", "block", "retrieve")
PETS = r"\b(dogs?|cats?|pets?|turtles?|fish|birds?|parrots?|hamsters?|rabbits?|horses?|snakes?|lizards?|puppy|kittens?|goldfish)\b"
FAMILY = r"\b(kids?|children|sons?|daughters?|brothers?|sisters?|siblings|wife|husband|parents|mother|father|mom|dad|grandchildren|twins)\b"
JOB = r"^i (?:work|am employed|teach|own a|run a)\b|\bmy job\b|^i am an? (?:\w+ )?(?:nurse|teacher|doctor|lawyer|engineer|" \
      r"chef|student|writer|artist|musician|accountant|programmer|mechanic|firefighter|police|officer|farmer|" \
      r"waitress|waiter|cashier|pilot|dentist|vet|veterinarian|scientist|professor|librarian|carpenter|plumber)\b"
VAGUE = set("soon someday daily abroad ago today year years week weeks month months time times day days "
            "new old big little last first every lots".split())


def probe_question(sentence: str) -> tuple[str, str] | None:
    """(slot, question) about a persona sentence, or None when no rule fits."""
    s = re.sub(r"[.!]+$", "", sentence.strip().lower())
    s = s.replace("i'm ", "i am ").replace("favourite", "favorite")
    m = re.search(r"\bmy favorite ([a-z ]+?) (is|are)\b", s)
    if m:
        return "favorite", f"What {m.group(2)} my favorite {m.group(1)}?"
    if re.search(PETS, s) and re.search(r"\b(have|own|got|adopted)\b", s):
        return "pets", "What pets do I have?"
    if re.search(JOB, s):
        return "work", "What do I do for a living?"
    if re.search(r"^i (?:live|grew up|was born|am from|moved)\b", s):
        return "home", "Where do I live, and where am I from?"
    if re.search(FAMILY, s):
        return "family", "What do you remember about my family?"
    m = re.match(r"^i (?:really |also |just )?(like|love|enjoy|hate|dislike) ", s)
    if m:
        return "likes", f"What do I {m.group(1)}?"
    if re.match(r"^i used to ", s):
        return "past", "What did I use to do?"
    if re.match(r"^i am\b", s):
        return "identity", "What do you remember about who I am?"
    if re.match(r"^i (?:only |also |still )?(?:have|own)\b(?! \w+ed\b)", s):
        return "have", "What do I have?"
    m = re.match(r"^my ([a-z]+(?: [a-z]+)?) (?:is|are|was|were|has|have|[a-z]+s)\b", s)
    if m:
        return "my-x", f"What do you remember about my {m.group(1)}?"
    words = [w for w in content_words(s) if w not in VAGUE and not w.endswith(("ly", "ed", "ing"))]
    if words:
        return "topic", f"Do you remember what I told you about {words[-1]}?"
    return None


def to_first_person(text: str) -> str:
    """An answer to the user, in the user's voice: "You have a turtle" -> "I have a turtle"."""
    swaps = [(r"\byou are\b", "I am"), (r"\byou're\b", "I'm"), (r"\byou were\b", "I was"), (r"\byou've\b", "I've"),
             (r"\byou'd\b", "I'd"), (r"\byou'll\b", "I'll"), (r"\byourself\b", "myself"), (r"\byours\b", "mine"),
             (r"\byour\b", "my"), (r"\byou\b", "I")]
    for pattern, repl in swaps:
        text = re.sub(pattern, repl, text, flags=re.IGNORECASE)
    return text


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=ROOT / "corpora/spc/test.jsonl.gz")
    ap.add_argument("--probes", type=int, default=80, help="Stop adding conversations at this many probes.")
    ap.add_argument("--early", type=int, default=8, help="Turns whose partner utterances the extractor sees.")
    ap.add_argument("--revealed", type=float, default=0.5, help="NLI entailment for a persona sentence to count as revealed.")
    ap.add_argument("--counted", type=float, default=0.5, help="NLI entailment for an answer to count.")
    ap.add_argument("--top-k", type=int, default=MemoryConfig().top_k)
    ap.add_argument("--budget", type=int, default=MemoryConfig().budget_tokens)
    ap.add_argument("--max-tokens", type=int, default=40)
    ap.add_argument("--conditions", default=",".join(CONDITIONS))
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    started = time.time()

    from persona_forge.nli.train import embedded_dir

    if not (embedded_dir() / "build.json").is_file():
        sys.exit(f"the embedded NLI is not built yet ({embedded_dir()}); run `forge nli build` (under the lock) first")
    nli = load_nli(NLIConfig(), progress=False)
    encoder = SentenceEncoder()
    backend = build_backend(LocalBackendConfig(sampling=SamplingConfig(temperature=0.0, max_tokens=args.max_tokens)),
                            progress=False)
    _, tokenizer = backend.load()
    count = tokenizer_counter(tokenizer)
    config = MemoryConfig(top_k=args.top_k, budget_tokens=args.budget)
    ent = LABELS.index("entailment")
    conditions = args.conditions.split(",")

    probes: list[dict] = []
    skipped = 0
    extracted = 0
    setup_started = time.time()
    with tempfile.TemporaryDirectory() as memdir:
        config = config.model_copy(update={"dir": Path(memdir)})
        for convo in iter_jsonl(args.data):
            if len(probes) >= args.probes:
                break
            turns = [Turn(**t) for t in convo["turns"]]
            early = [t.text for t in turns[: args.early] if t.speaker == "user1"]
            persona_partner, persona_bot = convo["user1_persona"], convo["user2_persona"]
            if len(turns) < args.early + 2 or not early:
                continue
            probs = nli.predict([(u, s) for s in persona_partner for u in early]).reshape(len(persona_partner), len(early), 3)
            revealed = [s for s, p in zip(persona_partner, probs) if p[:, ent].max() >= args.revealed]
            if not revealed:
                continue
            memory = UserMemory(convo["id"], config, nli=nli, encoder=encoder, count=count)
            for utterance in early:
                memory.observe(utterance)
            extracted += len(memory.active())
            # The whole conversation, ending on the model's turn so that the probe follows it.
            history = turns[:-1] if turns[-1].speaker == "user1" else turns
            for sentence in revealed:
                made = probe_question(sentence)
                if made is None:
                    skipped += 1
                    continue
                slot, question = made
                probe = Turn(speaker="user1", text=question)
                messages = {}
                for c in conditions:
                    if c == "none":
                        messages[c] = reply_messages(persona_bot, [probe], "user2")
                    elif c == "history":
                        messages[c] = reply_messages(persona_bot, [*history, probe], "user2")
                    else:  # block, retrieve, retrieve@K
                        mode, _, k = c.partition("@")
                        memory.config = config.model_copy(update={"top_k": int(k)}) if k else config
                        messages[c] = reply_messages(persona_bot, [probe], "user2", memory=memory.block(question, mode))
                probes.append({"conversation": convo["id"], "fact": sentence, "slot": slot, "question": question,
                               "facts": [f.text for f in memory.active()],
                               "messages": {c: [m.model_dump() for m in messages[c]] for c in conditions}})
        setup_s = time.time() - setup_started

        requests = [ChatRequest.of(p["messages"][c], temperature=0.0, max_tokens=args.max_tokens)
                    for c in conditions for p in probes]
        gen_started = time.time()
        completions = backend.complete_sync(requests)
        gen_s = time.time() - gen_started

    n = len(probes)
    answers = {c: completions[i * n:(i + 1) * n] for i, c in enumerate(conditions)}
    pairs_af, pairs_fa = [], []
    for c in conditions:
        for p, comp in zip(probes, answers[c]):
            answer = to_first_person(comp.text or "")
            pairs_af.append((answer, p["fact"]))
            pairs_fa.append((p["fact"], answer))
    p_af = nli.predict(pairs_af)[:, ent].reshape(len(conditions), n)
    p_fa = nli.predict(pairs_fa)[:, ent].reshape(len(conditions), n)

    indices = bootstrap_indices(n, 1000, 0)
    rows = {}
    for i, c in enumerate(conditions):
        hit_af = (p_af[i] >= args.counted).astype(float)
        hit_fa = (p_fa[i] >= args.counted).astype(float)
        tokens = [comp.prompt_tokens for comp in answers[c]]
        rows[c] = {"recall": interval(mean_of(list(hit_af)), indices, n),
                   "recall_fact_to_answer": interval(mean_of(list(hit_fa)), indices, n),
                   "prompt_tokens": float(np.mean(tokens)) if tokens else None}
        for p, comp, a, b in zip(probes, answers[c], hit_af, hit_fa):
            p.setdefault("answers", {})[c] = {"text": comp.text, "answer_to_fact": bool(a), "fact_to_answer": bool(b)}

    print(f"{n} probes from {len({p['conversation'] for p in probes})} conversations "
          f"({skipped} revealed sentences without a probe rule); {extracted} facts extracted; "
          f"setup {setup_s:.0f} s, generation {gen_s:.0f} s, total {time.time() - started:.0f} s")
    slots: dict[str, int] = {}
    for p in probes:
        slots[p["slot"]] = slots.get(p["slot"], 0) + 1
    print("probe slots:", ", ".join(f"{k} {v}" for k, v in sorted(slots.items(), key=lambda kv: -kv[1])))
    print(f"{'condition':<10} {'recall (answer->fact)':<26} {'recall (fact->answer)':<26} {'prompt tokens':>13}")
    for c, row in rows.items():
        r, q = row["recall"], row["recall_fact_to_answer"]
        print(f"{c:<10} {r['value']:.3f} [{r['low']:.3f}, {r['high']:.3f}]{'':<5} "
              f"{q['value']:.3f} [{q['low']:.3f}, {q['high']:.3f}]{'':<5} {row['prompt_tokens']:>13.1f}")
    if {"none", "history"} <= set(rows):
        h, z = rows["history"]["recall"]["value"], rows["none"]["recall"]["value"]
        th = rows["history"]["prompt_tokens"]
        for c in (c for c in rows if c.startswith(("retrieve", "block"))):
            r, tr = rows[c]["recall"]["value"], rows[c]["prompt_tokens"]
            print(f"{c}: recall / history {r / h if h else float('nan'):.2f} (target >= 0.90); prompt tokens / "
                  f"history {tr / th:.2f} (target <= 0.30); recall / none {r / z if z else float('inf'):.2f} "
                  f"(target >= 2)")
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "rows": rows,
                                         "probes": probes}, indent=1))


if __name__ == "__main__":
    main()
