"""forge curate's selection: speed at 100,000 samples, and coverage against random on real samples.

1. Speed: choose 200 of 100,000 SYNTHETIC vectors (384 dims, L2-normalised, drawn around 2,000
   random centres so that the pool has structure like sentence embeddings). Embedding 100,000 real
   texts takes over 4 minutes on 2 cores, and selection time depends only on the vectors' count and
   dimension, so the timing uses synthetic vectors; the figures say so.
   k-center runs with the default density weight (0.7) and plain (0).
2. Coverage: real next-reply samples built from Synthetic-Persona-Chat train (the study's sample,
   one per conversation), embedded with all-MiniLM-L6-v2, cleaned like `forge curate`; then n = 200
   chosen by k-center, facility location and random (5 seeds), with coverage (mean cosine distance
   of every pool sample to its nearest chosen one), the worst distance, clusters covered (of 200
   k-means clusters) and distinct personas.

Run (heavy: wrap in the shared lock): flock /tmp/pf-heavy.lock python bench/curate.py [--limit N]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from persona_forge import selection  # noqa: E402


def synthetic(n: int, dim: int = 384, centres: int = 2000, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((centres, dim)).astype(np.float32)
    v = c[rng.integers(0, centres, n)] + 0.8 * rng.standard_normal((n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def speed(n_pool: int, n: int) -> None:
    vectors = synthetic(n_pool)
    print(f"## speed: choose {n} of {n_pool:,} synthetic normalised vectors (384 dims; synthetic, see the docstring)")
    for strategy, density in (("kcenter", 0.7), ("kcenter", 0.0), ("facility", 0.0), ("random", 0.0)):
        started = time.time()
        chosen = selection.select(strategy, vectors, n, None, 0.0, seed=0, density_weight=density)
        seconds = time.time() - started
        dist = selection.nearest_chosen_distance(vectors, chosen)
        name = f"{strategy} d={density}" if strategy == "kcenter" else strategy
        print(f"{name:15s} {seconds:6.2f} s   coverage {dist.mean():.4f}   max {dist.max():.4f}")
    quality = np.random.default_rng(1).random(n_pool)
    started = time.time()
    selection.kcenter(vectors, n, quality, 0.3)
    print(f"kcenter with quality weight 0.3: {time.time() - started:.2f} s")


def real(limit: int | None, n: int) -> None:
    from persona_forge.corpora import load_conversations
    from persona_forge.config import CurateConfig
    from persona_forge.hardware import set_torch_threads
    from persona_forge.models import sentence_transformer
    from persona_forge.stages import curate

    set_torch_threads(2)
    cfg = CurateConfig(n=n)
    data = ROOT / "corpora" / "spc" / "train.jsonl.gz"
    conv = load_conversations(data)
    if limit:
        conv.dialogues = conv.dialogues[:limit]
    samples, _ = curate.build_samples(conv, cfg, str(data))
    samples, _ = curate.exact_duplicates(samples)
    started = time.time()
    model = sentence_transformer(cfg.model)
    vectors = model.encode([curate.embed_text(s) for s in samples], batch_size=64, normalize_embeddings=True,
                           convert_to_numpy=True, show_progress_bar=False).astype(np.float32)
    embed_s = time.time() - started
    keep, dropped = curate.near_duplicates(vectors, samples, cfg.dedup_threshold)
    samples = [s for s, k in zip(samples, keep) if k]
    vectors = np.ascontiguousarray(vectors[keep])
    print(f"\n## coverage at n = {n}: {len(samples):,} next-reply samples from {len(conv.dialogues):,} SPC train "
          f"conversations (all-MiniLM-L6-v2, {len(samples) / embed_s:.0f} texts/s; {len(dropped)} near-duplicates "
          f"at >= {cfg.dedup_threshold} dropped)")
    labels = selection.cluster_labels(vectors, n, 0)
    personas = [curate.persona_key(s) for s in samples]
    print(f"{'strategy':22s} {'coverage':>9s} {'max dist':>9s} {'clusters':>9s} {'personas':>9s} {'seconds':>8s}")

    def show(name: str, chosen: list[int], seconds: float) -> selection.Measures:
        m = selection.measure(vectors, chosen, labels, None, personas)
        print(f"{name:22s} {m.coverage:9.4f} {m.worst:9.4f} {m.clusters_covered:6d}/{m.clusters:<3d}"
              f"{m.distinct_personas:8d} {seconds:8.2f}")
        return m

    for strategy, density in (("kcenter", 0.7), ("kcenter", 0.5), ("kcenter", 0.0), ("facility", 0.0)):
        started = time.time()
        chosen = selection.select(strategy, vectors, n, None, 0.0, seed=0, density_weight=density)
        show(f"{strategy} d={density}" if strategy == "kcenter" else strategy, chosen, time.time() - started)
    randoms = [show(f"random (seed {seed})", selection.random_choice(len(vectors), n, seed), 0.0) for seed in range(10)]
    print(f"{'random, mean of 10':22s} {np.mean([m.coverage for m in randoms]):9.4f} "
          f"{np.mean([m.worst for m in randoms]):9.4f} {np.mean([m.clusters_covered for m in randoms]):9.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pool", type=int, default=100_000, help="synthetic pool size for the speed test")
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--limit", type=int, default=None, help="use only the first N SPC conversations")
    parser.add_argument("--skip-real", action="store_true")
    args = parser.parse_args()
    import faiss

    faiss.omp_set_num_threads(2)
    speed(args.pool, args.n)
    if not args.skip_real:
        real(args.limit, args.n)


if __name__ == "__main__":
    main()
