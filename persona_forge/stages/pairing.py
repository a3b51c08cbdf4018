"""`forge pair`: pair users who have something to talk about (the paper's "User Pairing").

In:  <run_dir>/profiles.jsonl or --profiles FILE: Profile records, or a Synthetic-Persona-Chat JSONL(.gz)
     (records with user1_persona / user2_persona), whose distinct personas become Profiles.
Out: <run_dir>/pairs.jsonl (Pair records with similarity and shared topics; written in one step,
     since pairing needs the whole input), pair_rejections.jsonl (a Rejection per unpaired user),
     pair_similarity.png, pair.manifest.json; and caches that survive a changed policy:
     pair_embeddings.npy + .json (one normalised vector per profile, with the ordered ids) and
     pair_attribute_embeddings.npy + .json (attribute vectors, for shared topics).

Method: each profile's attributes, joined, are embedded and normalised; FAISS finds each profile's
k nearest neighbours by inner product (exact, or HNSW above a size threshold, its recall@k
against exact measured on a sample), searching deeper past near-copies (similarity above `high`,
or more than `max_identical_attributes` sentences in common); candidate pairs whose similarity
lies in [low, high] are taken greedily, most similar first, each user in at most `per_user`
pairs. A random matching under the same degree limit is always computed too, as the baseline
the greedy one should beat.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .. import layout, plots
from ..config import PairConfig
from ..contract import StageContext, StageResult
from ..corpora import ProfileSet, load_profiles
from ..embeddings import Encoder, VectorCache, cached_embeddings, describe_model, set_threads
from ..errors import UserError
from ..schema import Pair, Profile, Rejection, SharedTopic, record_id
from ..store import RunDir, atomic_write_jsonl, config_hash, file_sha256, sniff_gzip

STAGE = "pair"
INPUTS = (layout.PROFILES,)  # or pair.profiles
OUTPUTS = (layout.PAIRS, layout.PAIR_REJECTIONS, layout.PAIR_SIMILARITY)

# Why the default band is [0.50, 0.75] (config.PairConfig), measured with all-MiniLM-L6-v2 on
# 3,000 distinct Synthetic-Persona-Chat personas (attributes joined into one text):
# - random pairs: mean similarity 0.27, 95th percentile 0.475. `low` = 0.50 is above 95% of them,
#   and about the median similarity of the 10th nearest neighbour among personas that share no two
#   attributes (0.50), so a typical user still has several candidates in the band.
# - near-copies: SPC reuses attributes across personas (17,286 distinct personas from 4,723
#   distinct sentences), so many nearest neighbours are the same person reshuffled (1-NN median
#   0.95). Pairs sharing 3+ identical attributes are 2% of pairs at 0.65-0.70, 13% at 0.70-0.75,
#   43% at 0.75-0.80 and 83% at 0.80-0.85: `high` = 0.75 keeps most of them out. 0.9, the first
#   guess, would let greedy matching (which takes the most similar first) choose mostly near-copies.
#   The rest embed below 0.75 (a sentence swapped, the order shuffled): on all 17,286 train
#   personas a third of the greedy pairs still shared 3+ identical sentences, hence
#   `max_identical_attributes` = 1 as well (one shared sentence is a good topic).
# Shared topics: random attribute pairs score 0.16 (median) and 0.37 (95th percentile); at 0.45
# sentences are on one subject ("I go surfing any chance I get." / "I enjoy vacations at the beach.").


# --- embeddings (cached in the run directory) ----------------------------------------------------

def profile_text(profile: Profile) -> str:
    return " ".join(profile.attributes)


# --- nearest neighbours --------------------------------------------------------------------------

@dataclass
class Neighbours:
    index: np.ndarray        # (n, k) candidate rows: the k nearest at or below `high`; -1 where none
    similarity: np.ndarray   # (n, k) their inner products (normalised vectors: cosine similarity)
    kind: str                # "exact" or "hnsw"
    nearest: np.ndarray      # (n, k) similarities of the plain k nearest, near-copies included (nan: none)
    near_copies: np.ndarray  # (n,) neighbours above `high` passed over on the way
    depth: int               # the deepest neighbour list searched
    recall: float | None = None
    recall_queries: int = 0


def choose_index(cfg: PairConfig, n: int) -> str:
    if cfg.index != "auto":
        return cfg.index
    return "hnsw" if n > cfg.approximate_above else "exact"


def nearest_neighbours(emb: np.ndarray, cfg: PairConfig, codes: np.ndarray | None = None) -> Neighbours:
    """Each row's k nearest other rows that are not near-copies, by inner product (exact, or HNSW
    with its recall@k against exact measured on a sample of queries). `codes` (attribute_codes)
    lets identical attributes count too."""
    n = len(emb)
    k = min(cfg.k, n - 1)
    kind = choose_index(cfg, n)
    index = exact_index(emb) if kind == "exact" else hnsw_index(emb, cfg)
    rows, sims = search(index, emb, np.arange(n), k)
    recall = None
    queries = np.random.default_rng(cfg.seed).choice(n, size=min(cfg.recall_sample, n), replace=False)
    if kind != "exact":
        exact_rows, _ = search(exact_index(emb), emb, queries, k)
        recall = recall_at_k(rows[queries], exact_rows)
    found = skip_near_copies(index, emb, rows, sims, k, cfg, codes)
    found.nearest = np.where(rows >= 0, sims, np.nan)
    found.kind, found.recall, found.recall_queries = kind, recall, len(queries) if recall is not None else 0
    return found


def search(index, emb: np.ndarray, queries: np.ndarray, depth: int) -> tuple[np.ndarray, np.ndarray]:
    """The `depth` nearest other rows of each query row: (rows, similarities)."""
    hnsw = getattr(index, "hnsw", None)
    if hnsw is not None and hnsw.efSearch < depth + 1:
        hnsw.efSearch = depth + 1  # HNSW returns at most efSearch results
    sims, rows = index.search(emb[queries], depth + 1)
    return drop_self(rows, sims, depth, self_rows=queries)


def skip_near_copies(index, emb: np.ndarray, rows: np.ndarray, sims: np.ndarray, k: int,
                     cfg: PairConfig, codes: np.ndarray | None = None) -> Neighbours:
    """Keep each row's k nearest that are not near-copies (above `high`, or sharing more than
    `max_identical_attributes` identical attributes), searching deeper (doubling, up to
    `search_depth`) for rows whose nearest neighbours are near-copies.

    Synthetic-Persona-Chat recombines a few thousand sentences, so a persona has a median of 16
    neighbours above 0.75 (99th percentile 38): with plain k=10 neighbours, 95% of its users had no
    candidate in the band at all; searching past them, 99% have one. The similarity band alone is
    not enough there: a third of the pairs greedy chose below 0.75 still shared 3 or more
    identical sentences. A row stops early once its deepest neighbour is below `low`: everything
    further is below the band too.
    """
    n = len(emb)
    out_rows = np.full((n, k), -1, dtype=np.int64)
    out_sims = np.full((n, k), -np.inf, dtype=np.float32)
    near_copies = np.zeros(n, dtype=np.int64)
    todo, depth, cap = np.arange(n), k, max(k, min(cfg.search_depth, n - 1))
    while True:
        valid = rows >= 0
        copy = valid & (sims > cfg.high)
        if codes is not None:
            copy |= valid & (identical_attributes(codes, todo, rows) > cfg.max_identical_attributes)
        keep = valid & ~copy
        first = np.argsort(~keep, axis=1, kind="stable")[:, :k]  # kept entries first, in rank order
        kept = np.take_along_axis(keep, first, axis=1)
        out_rows[todo] = np.where(kept, np.take_along_axis(rows, first, axis=1), -1)
        out_sims[todo] = np.where(kept, np.take_along_axis(sims, first, axis=1), -np.inf)
        near_copies[todo] = copy.sum(axis=1)
        exhausted = ~valid[:, -1] | (sims[:, -1] < cfg.low)
        again = (keep.sum(axis=1) < k) & ~exhausted
        if depth >= cap or not again.any():
            break
        todo, depth = todo[again], min(cap, depth * 2)
        rows, sims = search(index, emb, todo, depth)
    return Neighbours(out_rows, out_sims, "", np.empty(0), near_copies, depth)


def attribute_codes(profiles: list[Profile]) -> np.ndarray:
    """Each profile's attributes as integer codes, (n, most attributes), padded with -1."""
    vocabulary: dict[str, int] = {}
    width = max(len(p.attributes) for p in profiles)
    codes = np.full((len(profiles), width), -1, dtype=np.int64)
    for row, profile in enumerate(profiles):
        unique = dict.fromkeys(a.strip().lower() for a in profile.attributes)
        codes[row, :len(unique)] = [vocabulary.setdefault(a, len(vocabulary)) for a in unique]
    return codes


def identical_attributes(codes: np.ndarray, queries: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """(queries, depth): how many attributes each query shares word for word with each neighbour."""
    out = np.empty(rows.shape, dtype=np.int64)
    for start in range(0, len(queries), 4096):  # in blocks: the comparison is (block, depth, a, a)
        block = slice(start, start + 4096)
        mine = codes[queries[block]][:, None, :, None]                 # (b, 1, a, 1)
        theirs = codes[np.maximum(rows[block], 0)][:, :, None, :]      # (b, depth, 1, a)
        out[block] = ((mine == theirs) & (mine >= 0)).sum(axis=(2, 3))  # padding (-1) never counts
    return out


def exact_index(emb: np.ndarray):
    import faiss

    index = faiss.IndexFlatIP(emb.shape[1])
    index.add(emb)
    return index


def hnsw_index(emb: np.ndarray, cfg: PairConfig):
    import faiss

    index = faiss.IndexHNSWFlat(emb.shape[1], cfg.hnsw_m, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = cfg.hnsw_ef_construction
    index.hnsw.efSearch = max(cfg.hnsw_ef_search, cfg.k + 1)
    # Inserting in parallel makes the graph depend on thread timing; one thread keeps the
    # neighbours, and so the pairs, the same on every run. Searching stays parallel (it is exact per query).
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        index.add(emb)
    finally:
        faiss.omp_set_num_threads(threads)
    return index


def drop_self(rows: np.ndarray, sims: np.ndarray, k: int,
              self_rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Remove each query's own row from its k+1 results (or the last one, if a duplicate outranked it)."""
    own = np.arange(len(rows)) if self_rows is None else np.asarray(self_rows)
    is_self = rows == own[:, None]
    no_self = ~is_self.any(axis=1)
    is_self[no_self, -1] = True
    keep = np.argsort(is_self, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(rows, keep, axis=1), np.take_along_axis(sims, keep, axis=1)


def recall_at_k(approx: np.ndarray, exact: np.ndarray) -> float:
    """Mean share of the exact k nearest neighbours that the approximate search also found."""
    hits = [len(set(a[a >= 0].tolist()) & set(e.tolist())) / max(1, len(e)) for a, e in zip(approx, exact)]
    return float(np.mean(hits)) if hits else 1.0


# --- matching ------------------------------------------------------------------------------------

@dataclass
class Edges:
    """Undirected candidate pairs (a < b) with their similarity."""

    a: np.ndarray
    b: np.ndarray
    similarity: np.ndarray


def candidate_edges(neighbours: np.ndarray, similarity: np.ndarray) -> Edges:
    """The kNN graph as unique undirected edges, without self-loops or missing neighbours."""
    n, k = neighbours.shape
    src = np.repeat(np.arange(n), k)
    dst = neighbours.ravel()
    sim = similarity.ravel()
    ok = (dst >= 0) & (dst != src)
    a, b = np.minimum(src[ok], dst[ok]), np.maximum(src[ok], dst[ok])
    _, first = np.unique(a.astype(np.int64) * n + b, return_index=True)
    return Edges(a[first], b[first], sim[ok][first].astype(np.float64))


def greedy_pairs(edges: Edges, ids: list[str], low: float, high: float, per_user: int) -> list[tuple[int, int, float]]:
    """In-band edges, most similar first, each user in at most `per_user` pairs.

    Similarities are rounded to 1e-6 before sorting, so float noise from thread counts or BLAS
    cannot reorder near-ties; ties then go by the two profile ids, which makes the result
    depend only on the input.
    """
    band = (edges.similarity >= low) & (edges.similarity <= high)
    a, b, sim = edges.a[band], edges.b[band], edges.similarity[band]
    rank = np.empty(len(ids), dtype=np.int64)
    rank[np.argsort(np.array(ids, dtype=object), kind="stable")] = np.arange(len(ids))
    lo, hi = np.minimum(rank[a], rank[b]), np.maximum(rank[a], rank[b])
    order = np.lexsort((hi, lo, -np.round(sim, 6)))
    degree = np.zeros(len(ids), dtype=np.int64)
    chosen = []
    for i, j, s in zip(a[order].tolist(), b[order].tolist(), sim[order].tolist()):
        if degree[i] < per_user and degree[j] < per_user:
            degree[i] += 1
            degree[j] += 1
            chosen.append((i, j, s))
    return chosen


def random_pairs(emb: np.ndarray, per_user: int, seed: int) -> list[tuple[int, int, float]]:
    """The baseline: `per_user` rounds of a seeded shuffle paired off two by two (no band)."""
    rng = np.random.default_rng(seed)
    n = len(emb)
    seen: set[tuple[int, int]] = set()
    chosen = []
    for _ in range(per_user):
        order = rng.permutation(n)
        for i, j in zip(order[0:n - 1:2].tolist(), order[1:n:2].tolist()):
            key = (min(i, j), max(i, j))
            if key not in seen:  # a pair drawn again in a later round is skipped, not repeated
                seen.add(key)
                chosen.append((*key, float(emb[i] @ emb[j])))
    return chosen


def no_pair_message(cfg: PairConfig, nearest: np.ndarray) -> str:
    """What to change when no candidate is in the band, from the plain nearest-neighbour similarities."""
    sims = nearest[~np.isnan(nearest)]
    where = f"no nearest-neighbour candidate (k={cfg.k}) has a similarity within [{cfg.low:.2f}, {cfg.high:.2f}]"
    if not len(sims):
        return f"{where}; add more profiles"
    spread = f"the {cfg.k} nearest run {sims.min():.2f} to {sims.max():.2f}, median {np.median(sims):.2f}"
    if np.median(sims) < cfg.low:
        fix = f"--low {np.floor(np.quantile(sims, 0.5) * 20) / 20:.2f}"
    else:
        fix = f"--high {min(1.0, np.ceil(np.quantile(sims, 0.9) * 20) / 20):.2f}"
    return f"{where} ({spread}); widen the band, e.g. {fix} (or --set pair.low=/pair.high=)"


# --- shared topics -------------------------------------------------------------------------------

def shared_topics(attrs1: list[str], vecs1: np.ndarray, attrs2: list[str], vecs2: np.ndarray,
                  top: int, floor: float) -> list[SharedTopic]:
    """The most alike attribute pairs above `floor`, each attribute used once, most alike first.

    Using each attribute once gives up to `top` different subjects rather than one subject
    matched three ways.
    """
    if top == 0 or not attrs1 or not attrs2:
        return []
    sims = vecs1 @ vecs2.T
    cells = sorted(((-round(float(sims[i, j]), 6), attrs1[i], attrs2[j], i, j)
                    for i in range(len(attrs1)) for j in range(len(attrs2))))
    used1: set[int] = set()
    used2: set[int] = set()
    topics = []
    for neg, text1, text2, i, j in cells:
        if -neg < floor or len(topics) == top:
            break
        if i not in used1 and j not in used2:
            used1.add(i)
            used2.add(j)
            topics.append(SharedTopic(user1_attribute=text1, user2_attribute=text2, similarity=-neg))
    return topics


def pair_records(chosen: list[tuple[int, int, float]], profiles: list[Profile], attr_vecs: dict[str, np.ndarray],
                 cfg: PairConfig) -> list[Pair]:
    """Pair records, user1 being the smaller id; the id hashes both ids and what shapes the record."""
    records = []
    for i, j, sim in chosen:
        p1, p2 = sorted((profiles[i], profiles[j]), key=lambda p: p.id)
        topics = shared_topics(p1.attributes, np.stack([attr_vecs[a] for a in p1.attributes]),
                               p2.attributes, np.stack([attr_vecs[a] for a in p2.attributes]),
                               cfg.topics, cfg.topic_floor)
        pid = record_id(STAGE, p1.id, p2.id, cfg.model, cfg.topics, cfg.topic_floor)
        records.append(Pair(id=pid, user1=p1.id, user2=p2.id, similarity=round(sim, 6), shared_topics=topics))
    return records


def rejections(profiles: list[Profile], chosen: list[tuple[int, int, float]], edges: Edges,
               cfg: PairConfig) -> list[Rejection]:
    """One record per user left without a partner, saying why."""
    paired = np.zeros(len(profiles), dtype=bool)
    for i, j, _ in chosen:
        paired[i] = paired[j] = True
    band = in_band(edges, cfg)
    has_candidate = np.zeros(len(profiles), dtype=bool)
    has_candidate[edges.a[band]] = has_candidate[edges.b[band]] = True
    out = []
    for row in np.flatnonzero(~paired).tolist():
        if cfg.strategy == "random":
            reason = "left over by the random pairing"
        elif has_candidate[row]:
            reason = f"every in-band candidate already had {cfg.per_user} partner(s)"
        else:
            reason = f"no nearest neighbour within [{cfg.low}, {cfg.high}]"
        pid = profiles[row].id
        out.append(Rejection(id=record_id(STAGE, "unpaired", pid), stage=STAGE, subject_id=pid, reason=reason))
    return out


# --- figure --------------------------------------------------------------------------------------

def save_histogram(path: Path, chosen: np.ndarray, nearest: np.ndarray, candidates: np.ndarray,
                   baseline: np.ndarray, cfg: PairConfig) -> None:
    """Chosen-pair similarities as bars; as outlines the k nearest neighbours (near-copies included),
    the candidates (near-copies passed over) and the other strategy's pairs; the band shaded."""
    plt = plots.pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    lowest = min(float(np.min(v, initial=0.0)) for v in (chosen, nearest, candidates, baseline))
    bins = np.linspace(min(-0.1, np.floor(lowest * 10) / 10), 1.0, 56)
    other = "random" if cfg.strategy == "greedy" else "greedy"
    ax.hist(nearest, bins=bins, density=True, histtype="step", color="0.45", linewidth=1.5,
            label=f"each profile's {cfg.k} nearest neighbours (n={len(nearest):,})")
    ax.hist(candidates, bins=bins, density=True, histtype="step", color="black", linewidth=1.0, linestyle=":",
            label=f"candidates: {cfg.k} nearest that are not near-copies (n={len(candidates):,})")
    if len(baseline):
        ax.hist(baseline, bins=bins, density=True, histtype="step", color="tab:orange", linewidth=1.5,
                linestyle="--", label=f"{other} pairs (n={len(baseline):,}, mean {np.mean(baseline):.3f})")
    ax.hist(chosen, bins=bins, density=True, color="tab:blue", alpha=0.6,
            label=f"chosen: {cfg.strategy} pairs (n={len(chosen):,}, mean {np.mean(chosen):.3f})")
    ax.axvspan(cfg.low, cfg.high, color="tab:green", alpha=0.08)
    for edge in (cfg.low, cfg.high):
        ax.axvline(edge, color="tab:green", linestyle=":", linewidth=1.2)
    ax.set_title(f"pair similarity ({cfg.model}); band [{cfg.low}, {cfg.high}] shaded")
    ax.set_xlabel("cosine similarity of the two profiles")
    ax.set_ylabel("density")
    ax.legend(loc="upper left", fontsize=8)
    plots.save(fig, path)


# --- the stage -----------------------------------------------------------------------------------

def stage_config(cfg: PairConfig) -> dict[str, Any]:
    return {"pair": cfg.identity()}


def run(cfg: PairConfig, context: StageContext) -> StageResult:
    """Pair the profiles (pair.profiles, else the run directory's profiles.jsonl); the stage contract:
    its own config section and the context in, a StageResult out."""
    rows = _run(cfg, RunDir(context.run_dir), context.force, context.executor)
    return StageResult.read(STAGE, rows, context.run_dir, OUTPUTS)


def _run(cfg: PairConfig, run_dir: RunDir, force: bool, executor: Any = None) -> dict[str, Any]:
    path = Path(cfg.profiles) if cfg.profiles else run_dir.file(layout.PROFILES)
    if not path.is_file():
        what = "no such file" if cfg.profiles else "no profiles here yet (the personas stage writes them)"
        raise UserError(f"{path}: {what}; pass --profiles FILE (a Profile JSONL, or a Synthetic-Persona-Chat "
                        f".jsonl/.jsonl.gz such as corpora/spc/train.jsonl.gz)")
    sniff_gzip(path)  # unreadable: one clear line now, not a traceback from hashing it
    if not cfg.profiles:
        refuse_unfinished_personas(run_dir)
    done = already_done(run_dir, stage_config(cfg), path)
    if done is not None:
        return done
    # Refuse a changed config or input now, before minutes of embedding; the manifest itself is
    # begun only once there are pairs to write, so a failed run leaves nothing to --force past.
    run_dir.check(STAGE, stage_config(cfg), inputs=[path], force=force)
    started = time.time()
    loaded = load_profiles(path)
    if len(loaded.profiles) < 2:
        found = "only one profile" if loaded.profiles else "no profile with attributes"
        raise UserError(f"{path}: {found} in it ({loaded.description}); pairing needs at least two")
    outcome = match(cfg, loaded.profiles, Encoder(cfg.model, cfg.batch_size, executor), run_dir)
    if not outcome.chosen:
        raise UserError(no_pair_message(cfg, outcome.found.nearest))
    return write(cfg, run_dir, path, loaded, outcome, force, started)


@dataclass
class Outcome:
    """Everything the matching found, for the records, the figure, the manifest and the summary."""

    chosen: list[tuple[int, int, float]]   # (row, row, similarity) of the strategy asked for
    other: list[tuple[int, int, float]]    # the other strategy, for comparison
    found: Neighbours
    edges: Edges
    encoder: Encoder
    counts: dict[str, int]
    timings: dict[str, float]
    threads: int

    def similarities(self) -> tuple[np.ndarray, np.ndarray]:
        return np.array([s for *_, s in self.chosen]), np.array([s for *_, s in self.other])


def match(cfg: PairConfig, profiles: list[Profile], encoder: Encoder, run_dir: RunDir) -> Outcome:
    """Embed (or reuse), find neighbours, match greedily and at random."""
    threads = set_threads(cfg.threads)
    t = time.time()
    emb, embedded = cached_embeddings([profile_text(p) for p in profiles], [p.id for p in profiles], encoder,
                                      VectorCache(run_dir.path, layout.PAIR_EMBEDDINGS, "ids").load(), "profiles")
    timings = {"embed_s": time.time() - t, "encode_s": encoder.seconds}
    t = time.time()
    found = nearest_neighbours(emb, cfg, attribute_codes(profiles))
    timings["knn_s"] = time.time() - t
    t = time.time()
    edges = candidate_edges(found.index, found.similarity)
    greedy = greedy_pairs(edges, [p.id for p in profiles], cfg.low, cfg.high, cfg.per_user)
    baseline = random_pairs(emb, cfg.per_user, cfg.seed)
    timings["match_s"] = time.time() - t
    chosen, other = (greedy, baseline) if cfg.strategy == "greedy" else (baseline, greedy)
    counts = {"profiles": len(profiles), "candidates": len(edges.a),
              "in_band_candidates": int(in_band(edges, cfg).sum()), "profiles_embedded": embedded}
    return Outcome(chosen, other, found, edges, encoder, counts, timings, threads)


def write(cfg: PairConfig, run_dir: RunDir, path: Path, loaded: ProfileSet, outcome: Outcome, force: bool,
          started: float) -> dict[str, Any]:
    """Begin the stage (only now: a failed run leaves nothing behind), write every output, finish."""
    profiles = loaded.profiles
    stage = run_dir.begin(STAGE, stage_config(cfg), inputs=[path], outputs=OUTPUTS, force=force)
    stage.record_model("embedding", describe_model(cfg.model))
    t = time.time()
    attr_vecs, outcome.counts["attributes_embedded"] = attribute_vectors(outcome.chosen, profiles, outcome.encoder,
                                                                         run_dir)
    records = pair_records(outcome.chosen, profiles, attr_vecs, cfg)
    outcome.timings["topics_s"] = time.time() - t
    dropped = rejections(profiles, outcome.chosen, outcome.edges, cfg)
    atomic_write_jsonl(run_dir.file(layout.PAIRS), records)
    atomic_write_jsonl(run_dir.file(layout.PAIR_REJECTIONS), dropped)
    sims, other_sims = outcome.similarities()
    nearest = outcome.found.nearest[~np.isnan(outcome.found.nearest)]
    save_histogram(run_dir.file(layout.PAIR_SIMILARITY), sims, nearest, outcome.edges.similarity, other_sims, cfg)
    outcome.counts.update(pairs=len(records), unpaired=len(dropped),
                          no_candidate=sum(r.reason.startswith("no nearest") for r in dropped))
    for key, value in outcome.counts.items():
        stage.set_count(key, value)
    rows = summary_rows(cfg, loaded.description, path, run_dir, outcome, time.time() - started)
    stage.finish(**figures(cfg, outcome), summary=rows)
    return rows


def in_band(edges: Edges, cfg: PairConfig) -> np.ndarray:
    return (edges.similarity >= cfg.low) & (edges.similarity <= cfg.high)


def attribute_vectors(chosen: list[tuple[int, int, float]], profiles: list[Profile], encoder: Encoder,
                      run_dir: RunDir) -> tuple[dict[str, np.ndarray], int]:
    """Vectors for the attributes of paired users only (the rest need none), cached by text."""
    texts = sorted({a for i, j, _ in chosen for row in (i, j) for a in profiles[row].attributes})
    cache = VectorCache(run_dir.path, layout.PAIR_ATTRIBUTE_EMBEDDINGS, "texts").load()
    vectors, embedded = cached_embeddings(texts, texts, encoder, cache, "attributes", keep_old=True)
    return dict(zip(texts, vectors)), embedded


def _stats(values: np.ndarray) -> dict[str, float]:
    if not len(values):
        return {"n": 0}
    return {"n": int(len(values)), "mean": round(float(np.mean(values)), 4),
            "median": round(float(np.median(values)), 4), "min": round(float(np.min(values)), 4),
            "max": round(float(np.max(values)), 4)}


def figures(cfg: PairConfig, outcome: Outcome) -> dict[str, Any]:
    other = "random" if cfg.strategy == "greedy" else "greedy"
    sims, other_sims = outcome.similarities()
    found = outcome.found
    out: dict[str, Any] = {
        "similarity": {cfg.strategy: _stats(sims), other: _stats(other_sims),
                       "knn_candidates": _stats(outcome.edges.similarity),
                       "k_nearest": _stats(found.nearest[~np.isnan(found.nearest)]),
                       "nearest_neighbour": _stats(found.nearest[~np.isnan(found.nearest[:, 0]), 0])},
        "near_copies": {"above": cfg.high, "max_identical_attributes": cfg.max_identical_attributes,
                        "passed_over": int(found.near_copies.sum()),
                        "users_with_some": int((found.near_copies > 0).sum()), "search_depth": found.depth},
        "index": found.kind, "threads": outcome.threads,
        "seconds": {k: round(v, 2) for k, v in outcome.timings.items()},
    }
    if found.recall is not None:
        out["approximate_recall_at_k"] = {"k": int(found.index.shape[1]), "recall": round(found.recall, 4),
                                          "queries": found.recall_queries}
    return out


def summary_rows(cfg: PairConfig, description: str, path: Path, run_dir: RunDir, outcome: Outcome,
                 seconds: float) -> dict[str, Any]:
    counts, timings, found = outcome.counts, outcome.timings, outcome.found
    sims, other_sims = outcome.similarities()
    greedy, random_ = (sims, other_sims) if cfg.strategy == "greedy" else (other_sims, sims)
    index = "exact (FAISS IndexFlatIP)" if found.kind == "exact" else \
        f"HNSW (M={cfg.hnsw_m}, efSearch={cfg.hnsw_ef_search}): recall@{found.index.shape[1]} " \
        f"{found.recall:.3f} vs exact on {found.recall_queries:,} queries"
    rate = counts["profiles_embedded"] / timings["encode_s"] if counts["profiles_embedded"] else None
    unpaired_why = f" ({counts['no_candidate']:,} without an in-band candidate)" if cfg.strategy == "greedy" else ""
    return {
        "read": f"{path}: {description}",
        "profiles": counts["profiles"],
        "embeddings": f"{counts['profiles_embedded']:,} embedded" + (f" ({rate:,.0f}/s)" if rate else "")
                      + f", {counts['profiles'] - counts['profiles_embedded']:,} from the cache",
        "index": index,
        "candidates in band": f"{counts['in_band_candidates']:,} of {counts['candidates']:,} kNN pairs "
                              f"in [{cfg.low}, {cfg.high}]",
        "near-copies passed over": f"{int(found.near_copies.sum()):,} neighbours above {cfg.high} or sharing "
                                   f"{cfg.max_identical_attributes + 1}+ identical attributes (of "
                                   f"{int((found.near_copies > 0).sum()):,} users; searched to depth {found.depth})",
        "strategy": f"{cfg.strategy}, at most {cfg.per_user} conversation(s) per user",
        "pairs made": counts["pairs"],
        "users left unpaired": f"{counts['unpaired']:,}{unpaired_why}",
        "mean similarity": f"greedy {_mean(greedy)} | random {_mean(random_)}",
        "seconds (embed / kNN / match)": f"{timings['embed_s']:.1f} / {timings['knn_s']:.1f} / "
                                         f"{timings['match_s']:.1f} on {outcome.threads} thread(s)",
        "histogram": str(run_dir.file(layout.PAIR_SIMILARITY)),
        "output": str(run_dir.file(layout.PAIRS)),
        "seconds": round(seconds, 1),
    }


def _mean(values: np.ndarray) -> str:
    return f"{np.mean(values):.3f} (n={len(values):,})" if len(values) else "- (no pairs)"


# --- resumability --------------------------------------------------------------------------------

def already_done(run_dir: RunDir, config: dict[str, Any], path: Path) -> dict[str, Any] | None:
    """The last summary, if this stage already finished with this config and this input."""
    previous = run_dir.manifest(STAGE)
    if previous is None or previous.status != "done" or previous.config_hash != config_hash(config):
        return None
    if previous.inputs.get(str(path)) != file_sha256(path):
        return None
    if not all(run_dir.file(name).is_file() for name in OUTPUTS):
        return None
    rows = dict(previous.figures.get("summary", {}))
    return {"status": "already done with this config and input: nothing to do", **rows}


def refuse_unfinished_personas(run_dir: RunDir) -> None:
    """The personas stage appends profiles as they finish: pairing a partial file would pair a partial set."""
    personas = run_dir.manifest("personas")
    if personas is not None and personas.status != "done":
        raise UserError(f"{run_dir.file(layout.PROFILES)}: the personas stage has not finished there; run it to "
                        f"the end first (the same command resumes it), or pass --profiles to pair that file as it is")
