"""`forge pair` at scale. Benchmarks report figures; they never pass or fail.

pairing: 100,000 profiles (default) from embeddings, through the stage's own functions: the kNN
index the stage chooses at that size (HNSW above pair.approximate_above) with its recall@10 against
exact search on 1,000 queries, the greedy matching, the random baseline, shared topics and the
written pairs.jsonl; then exact kNN for comparison, timed on a sample of queries and extrapolated
(all 100,000 queries against 100,000 vectors is about 4e12 multiply-adds), and recall at other
efSearch values. The vectors are synthetic (no model makes 100,000 real ones in a bench's time
here): normalised 384-d clustered Gaussians, topics > subtopics > profiles, plus a shared
direction so that random pairs are as alike as real MiniLM profiles are; the output prints their
similarity statistics next to those of real personas. Peak memory (ru_maxrss) is read before any
model is loaded, so it is the pairing's alone.

embedding: the packaged MiniLM on real Synthetic-Persona-Chat personas (default 2,000 distinct
profiles from the train split), profiles/s and the projected time for 100,000; then every distinct
attribute sentence of the train split (attributes/s, as shared topics need them).

recall on real-derived vectors: SPC builds its personas by recombining a few thousand sentences, so
100,000 profiles made the same way (4-5 real attribute vectors, averaged and normalised) give the
HNSW index a second, closer-to-real test of recall@10 against exact search.

    python bench/pairing.py                       # 100,000 profiles, 2,000 embedded, 1 thread
    python bench/pairing.py --profiles 20000 --embed 500 --threads 2
"""

from __future__ import annotations

import argparse
import gzip
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from persona_forge.config import PairConfig  # noqa: E402
from persona_forge.embeddings import Encoder  # noqa: E402
from persona_forge.schema import Profile  # noqa: E402
from persona_forge.stages import pairing  # noqa: E402
from persona_forge.store import atomic_write_jsonl  # noqa: E402

SPC = ROOT / "corpora" / "spc" / "train.jsonl.gz"
DIM = 384


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def synthetic_embeddings(n: int, seed: int = 0, topics: int = 300, subtopics: int = 8) -> np.ndarray:
    """Clustered unit vectors: a shared direction (MiniLM's anisotropy: random real profiles score
    0.27), 300 topics of 8 subtopics with Zipf-like popularity, and per-profile noise."""
    rng = np.random.default_rng(seed)
    shared = unit(rng.normal(size=DIM))
    centres = unit(rng.normal(size=(topics, DIM)))
    subs = unit(centres[:, None, :] + unit(rng.normal(size=(topics, subtopics, DIM)))).reshape(-1, DIM)
    weight = 1.0 / np.arange(1, len(subs) + 1) ** 0.5
    which = rng.choice(len(subs), size=n, p=weight / weight.sum())
    out = np.empty((n, DIM), dtype=np.float32)
    for start in range(0, n, 10_000):  # in blocks: float64 temporaries for 100k rows would double the peak
        idx = which[start:start + 10_000]
        noise = unit(rng.normal(size=(len(idx), DIM)))
        out[start:start + len(idx)] = unit(0.9 * shared + subs[idx] + 1.1 * noise)
    return out


def similarity_profile(emb: np.ndarray, sample: int = 1000, seed: int = 1) -> dict[str, float]:
    """Random-pair mean and nearest-neighbour medians, from `sample` queries against all rows."""
    rng = np.random.default_rng(seed)
    q = rng.choice(len(emb), size=min(sample, len(emb)), replace=False)
    sims = emb[q] @ emb.T
    sims[np.arange(len(q)), q] = -1.0
    top = -np.sort(-sims, axis=1)[:, :10]
    other = rng.choice(len(emb), size=len(q))
    return {"random pair mean": float(np.mean(np.sum(emb[q] * emb[other], axis=1))),
            "1-NN median": float(np.median(top[:, 0])), "10-NN median": float(np.median(top[:, 9]))}


def synthetic_profiles(n: int, pool: int, seed: int) -> tuple[list[Profile], dict[str, np.ndarray]]:
    """Profiles of 5 attributes drawn from a pool of `pool` attribute vectors (SPC reuses its
    sentences the same way), to time shared topics without embedding half a million sentences."""
    rng = np.random.default_rng(seed)
    texts = [f"attribute {i}" for i in range(pool)]
    vectors = dict(zip(texts, unit(rng.normal(size=(pool, DIM))).astype(np.float32)))
    picks = rng.integers(0, pool, size=(n, 5))
    profiles = [Profile(id=f"p{i:07d}", attribute_ids=[], attributes=[texts[j] for j in row])
                for i, row in enumerate(picks.tolist())]
    return profiles, vectors


def timed(fn, *args, **kwargs):
    started = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - started


def bench_pairing(n: int, exact_sample: int) -> None:
    cfg = PairConfig()
    print(f"\n== pairing {n:,} profiles from embeddings (synthetic clustered 384-d unit vectors) ==")
    emb, t_gen = timed(synthetic_embeddings, n)
    print(f"generated in {t_gen:.1f}s; {emb.nbytes / 2**20:,.0f} MB of float32")
    shape = similarity_profile(emb)
    print("synthetic similarity: " + ", ".join(f"{k} {v:.3f}" for k, v in shape.items()))
    ids = [f"p{i:07d}" for i in range(n)]
    profiles, attr_vecs = synthetic_profiles(n, 20_000, seed=2)
    codes, t_codes = timed(pairing.attribute_codes, profiles)
    found, t_knn = timed(pairing.nearest_neighbours, emb, cfg, codes)
    t_knn += t_codes
    edges, t_edges = timed(pairing.candidate_edges, found.index, found.similarity)
    greedy, t_greedy = timed(pairing.greedy_pairs, edges, ids, cfg.low, cfg.high, cfg.per_user)
    baseline, t_random = timed(pairing.random_pairs, emb, cfg.per_user, cfg.seed)
    records, t_topics = timed(pairing.pair_records, greedy, profiles, attr_vecs, cfg)
    with tempfile.TemporaryDirectory() as tmp:
        _, t_write = timed(atomic_write_jsonl, Path(tmp) / "pairs.jsonl", records)
    total = t_knn + t_edges + t_greedy + t_random + t_topics + t_write
    in_band = int(pairing.in_band(edges, cfg).sum())
    print(f"index chosen by the stage: {found.kind} (approximate_above={cfg.approximate_above:,}; "
          f"M={cfg.hnsw_m}, efConstruction={cfg.hnsw_ef_construction}, efSearch={cfg.hnsw_ef_search})")
    print(f"  kNN, k={cfg.k}: {t_knn:6.1f}s  (build, search all, the near-copy checks, and the recall "
          f"check on {found.recall_queries:,} exact queries)")
    if found.recall is not None:
        print(f"  recall@{cfg.k} vs exact: {found.recall:.4f} on {found.recall_queries:,} queries")
    print(f"  near-copies passed over: {int(found.near_copies.sum()):,} (above {cfg.high} or sharing "
          f"{cfg.max_identical_attributes + 1}+ identical attributes); searched to depth {found.depth}")
    print(f"  candidate edges:  {t_edges:6.2f}s  ({len(edges.a):,} unique, {in_band:,} in [{cfg.low}, {cfg.high}])")
    print(f"  greedy matching:  {t_greedy:6.2f}s  ({len(greedy):,} pairs, {n - 2 * len(greedy):,} unpaired, "
          f"mean similarity {np.mean([s for *_, s in greedy]):.3f})")
    print(f"  random baseline:  {t_random:6.2f}s  ({len(baseline):,} pairs, mean similarity "
          f"{np.mean([s for *_, s in baseline]):.3f})")
    print(f"  shared topics + Pair records: {t_topics:6.2f}s  (5 attributes per profile from a pool of 20,000)")
    print(f"  pairs.jsonl written: {t_write:6.2f}s")
    print(f"pairing time from embeddings: {total:.1f}s (target < 60 s); peak memory {peak_mb():,.0f} MB "
          f"(ru_maxrss, whole process; target < 4 GB)")
    bench_exact_and_sweep(emb, cfg, found.kind, t_knn, exact_sample)


def bench_exact_and_sweep(emb: np.ndarray, cfg: PairConfig, kind: str, t_knn: float, sample: int) -> None:
    """Exact search timed on a sample and extrapolated; HNSW recall and speed at other efSearch."""
    n = len(emb)
    rng = np.random.default_rng(3)
    queries = rng.choice(n, size=min(sample, n), replace=False)
    exact = pairing.exact_index(emb)
    exact.search(emb[queries[:100]], cfg.k + 1)  # warm-up: BLAS threads and caches
    # Best of three: the machine is shared, and a sub-second timing is easily disturbed.
    runs = [timed(exact.search, emb[queries], cfg.k + 1) for _ in range(3)]
    (sims, rows), t_sample = runs[0][0], min(t for _, t in runs)
    t_exact = t_sample * n / len(queries)
    print(f"exact kNN (IndexFlatIP): {len(queries):,} queries in {t_sample:.2f}s (best of 3) -> all {n:,} "
          f"about {t_exact:.0f}s (extrapolated, not run); approximate/exact time {t_knn / t_exact:.2f} "
          f"(the stage's {kind} kNN: {t_knn:.1f}s incl. build and recall check)")
    exact_rows, _ = pairing.drop_self(rows, sims, cfg.k, self_rows=queries)
    hnsw, t_build = timed(pairing.hnsw_index, emb, cfg)
    print(f"HNSW build alone {t_build:.1f}s (one thread, so that the graph is the same on every run)")
    # exact grows with n^2, HNSW about with n: where they cross on this machine
    print(f"exact and HNSW would take the same time near {n * t_knn / t_exact:,.0f} profiles "
          f"(approximate_above is {cfg.approximate_above:,})")
    for ef in (16, 32, 64, 128, 256):
        hnsw.hnsw.efSearch = max(ef, cfg.k + 1)
        (a_sims, a_rows), t = timed(hnsw.search, emb[queries], cfg.k + 1)
        a_rows, _ = pairing.drop_self(a_rows, a_sims, cfg.k, self_rows=queries)
        print(f"  efSearch {ef:4d}: recall@{cfg.k} {pairing.recall_at_k(a_rows, exact_rows):.4f}, "
              f"{t / len(queries) * 1e3:.2f} ms/query -> all {n:,} in {t * n / len(queries):.1f}s")


def spc_profiles(limit: int) -> list[Profile]:
    from persona_forge.nli.data import normalize
    from persona_forge.schema import record_id

    seen: dict[str, Profile] = {}
    with gzip.open(SPC, "rt", encoding="utf-8") as fh:
        for line in fh:
            row = json.loads(line)
            for key in ("user1_persona", "user2_persona"):
                sentences = [normalize(s) for s in row[key]]
                seen.setdefault(record_id(sentences), Profile(id=record_id(sentences), attribute_ids=[],
                                                             attributes=sentences))
            if len(seen) >= limit:
                return list(seen.values())[:limit]
    return list(seen.values())


def bench_embedding(limit: int, target: int, batch_size: int) -> np.ndarray:
    profiles = spc_profiles(limit)
    print(f"\n== embedding {len(profiles):,} real Synthetic-Persona-Chat profiles with packaged:minilm-l6 ==")
    encoder = Encoder("packaged:minilm-l6", batch_size)
    _, t_load = timed(encoder._load)
    texts = [pairing.profile_text(p) for p in profiles]
    emb, t = timed(encoder.encode, texts, "embedding profiles")
    rate = len(texts) / t
    words = np.mean([len(x.split()) for x in texts])
    print(f"model load {t_load:.1f}s; {rate:,.1f} profiles/s (batch {batch_size}, {words:.0f} words each) -> "
          f"{target:,} profiles in about {target / rate / 60:.1f} min")
    shape = similarity_profile(emb)
    print("real SPC similarity (for the synthetic comparison): " + ", ".join(f"{k} {v:.3f}" for k, v in shape.items()))
    attrs = spc_attributes()
    attr_emb, t_attr = timed(encoder.encode, attrs, "embedding attributes")
    print(f"attributes (for shared topics): all {len(attrs):,} distinct sentences of the train split, "
          f"{len(attrs) / t_attr:,.1f}/s")
    return attr_emb


def spc_attributes() -> list[str]:
    from persona_forge.nli.data import normalize

    with gzip.open(SPC, "rt", encoding="utf-8") as fh:
        rows = [json.loads(line) for line in fh]
    return sorted({normalize(s) for row in rows for key in ("user1_persona", "user2_persona") for s in row[key]})


def bench_recall_real_mix(attr_emb: np.ndarray, n: int, queries: int) -> None:
    """HNSW recall@k against exact on profiles recombined from real attribute vectors."""
    rng = np.random.default_rng(4)
    sizes = rng.integers(4, 6, size=n)
    picks = rng.integers(0, len(attr_emb), size=(n, 5))
    mask = np.arange(5)[None, :] < sizes[:, None]
    emb = np.empty((n, DIM), dtype=np.float32)
    for start in range(0, n, 10_000):
        block = attr_emb[picks[start:start + 10_000]] * mask[start:start + 10_000, :, None]
        emb[start:start + len(block)] = unit(block.sum(axis=1))
    print(f"\n== HNSW recall on {n:,} profiles recombined from {len(attr_emb):,} real SPC attribute vectors ==")
    print("similarity: " + ", ".join(f"{k} {v:.3f}" for k, v in similarity_profile(emb).items()))
    cfg = PairConfig(recall_sample=queries, index="hnsw")
    found, t = timed(pairing.nearest_neighbours, emb, cfg)
    print(f"{found.kind}: recall@{cfg.k} {found.recall:.4f} on {found.recall_queries:,} queries (plain first pass); "
          f"kNN for all in {t:.1f}s, including the deeper search past {int(found.near_copies.sum()):,} "
          f"neighbours above {cfg.high} (to depth {found.depth}): averaged vectors run high")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--profiles", type=int, default=100_000, help="profiles to pair (synthetic vectors)")
    parser.add_argument("--embed", type=int, default=2_000, help="real SPC profiles to embed")
    parser.add_argument("--exact-sample", type=int, default=2_000, help="queries on which exact kNN is timed")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1, help="torch and FAISS threads (the machine is shared)")
    args = parser.parse_args()

    import faiss

    from persona_forge import ui

    ui.set_verbosity(-1)  # no progress bars between the figures
    faiss.omp_set_num_threads(args.threads)
    print(f"threads: {args.threads} (torch and FAISS); figures only, nothing passes or fails")
    bench_pairing(args.profiles, args.exact_sample)
    import torch

    torch.set_num_threads(args.threads)
    attr_emb = bench_embedding(args.embed, args.profiles, args.batch_size)
    bench_recall_real_mix(attr_emb, args.profiles, 1000)


if __name__ == "__main__":
    main()
