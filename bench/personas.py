"""Profile construction on this machine: 1,000 profiles of 5 from an already expanded pool.

The pool is the packaged seed attributes (corpora/personas/seed_attributes.txt, about 4,700
Synthetic-Persona-Chat persona sentences), grouped into topics as the stage does; no LLM is involved.
Prints figures, never pass/fail: pool preparation time, profile-building time, NLI pairs judged and
pairs/s, rejections by reason, and the contradiction rate inside the built profiles beside profiles
of the same size drawn at random from the same pool.

    python bench/personas.py [--n 1000] [--k 5] [--nli-model FOLDER] [--threads N]

Without --nli-model it uses the embedded NLI (built on first use); with it, that Hugging Face folder.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from persona_forge.config import NLIConfig, PersonasConfig  # noqa: E402
from persona_forge.embeddings import Embedder  # noqa: E402
from persona_forge.nli.base import load_nli  # noqa: E402
from persona_forge.schema import Attribute, record_id  # noqa: E402
from persona_forge.stages import personas  # noqa: E402
from persona_forge.stages.persona_expand import cluster_topics, load_seed_texts  # noqa: E402


class Sink:
    """Collects records in memory: the bench times construction, not disk writes."""

    def __init__(self):
        self.records = []

    def write(self, record) -> None:
        self.records.append(record)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--topics", type=int, default=50)
    parser.add_argument("--nli-model", default=None, help="A Hugging Face NLI folder (default: the embedded NLI).")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: the usable cores).")
    args = parser.parse_args(argv)
    cfg = PersonasConfig(n=args.n, k=args.k, topics=args.topics, baseline=args.n, threads=args.threads)

    started = time.perf_counter()
    texts = load_seed_texts(personas.default_seed_file(), "text", 0, cfg.seed)
    emb = Embedder(cfg.model, threads=args.threads)(texts)
    topics = cluster_topics(emb, cfg.topics, cfg.seed)
    pool = [Attribute(id=record_id("seed", t), text=t, source="seed", topic=topic) for t, topic in zip(texts, topics)]
    prepared = time.perf_counter() - started

    nli_config = NLIConfig(kind="hf", model=args.nli_model, threads=args.threads) if args.nli_model \
        else NLIConfig(threads=args.threads)
    started = time.perf_counter()
    nli = load_nli(nli_config, progress=True)
    loaded = time.perf_counter() - started
    import torch

    print(f"pool: {len(pool):,} seed attributes in {len(set(topics))} topics (embedded and clustered in "
          f"{prepared:.1f} s); NLI {nli.describe()} loaded in {loaded:.1f} s; "
          f"{torch.get_num_threads()} torch threads\n")

    sinks = {"profiles": Sink(), "checks": Sink(), "rejections": Sink()}
    builder = personas.ProfileBuilder(cfg, pool, nli, sinks, set())
    started = time.perf_counter()
    builder.build(cfg.n, set(), lambda n=1: None)
    built_s = time.perf_counter() - started
    reasons = Counter(r.reason for r in sinks["rejections"].records)
    checks = [pc for c in sinks["checks"].records for pc in c.pairs]
    built = personas._rate(checks)

    started = time.perf_counter()
    rnd = personas._random_rates(cfg, pool, nli, len(sinks["profiles"].records))
    random_s = time.perf_counter() - started

    rows = [
        ("profiles built", f"{len(sinks['profiles'].records):,} of {cfg.k} attributes"),
        ("time to build", f"{built_s:.1f} s ({len(sinks['profiles'].records) / built_s:.1f} profiles/s)"),
        ("rounds (one NLI call each)", f"{builder.rounds}"),
        ("NLI pairs judged", f"{builder.pairs_judged:,} ({builder.pairs_judged / built_s:.0f} pairs/s)"),
        ("rejected: contradiction", f"{reasons['contradiction']:,}"),
        ("rejected: redundant", f"{reasons['redundant']:,}"),
        ("profiles given up", f"{reasons['incomplete']:,}"),
        ("contradiction rate, built", f"{built['rate']:.2%} ({built['contradictions']} of {built['pairs']:,} pairs)"),
        ("contradiction rate, random", f"{rnd['rate']:.2%} ({rnd['contradictions']} of {rnd['pairs']:,} pairs; "
                                       f"judged in {random_s:.1f} s)"),
        ("entailment rate, built / random", f"{built['entailment_rate']:.2%} / {rnd['entailment_rate']:.2%}"),
    ]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
