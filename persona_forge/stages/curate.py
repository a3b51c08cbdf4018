"""`forge curate`: a small training set chosen by method (quality- and diversity-aware), exported
in the formats trainers accept.

In:  <run_dir>/best.jsonl (Dialogue records from `forge generate`, the critic's figures in `scores`,
     `scores["critic"]` the combined score in [0, 1]) and <run_dir>/preferences.jsonl (Preference
     records), or --data FILE: any Synthetic-Persona-Chat-shaped JSONL(.gz) (user1_persona,
     user2_persona, turns[{speaker, text}]; unscored).
Out: <run_dir>/curated/: samples.jsonl (every Sample built), selected.jsonl (the chosen Samples),
     curate_rejections.jsonl (a Rejection for every sample or preference dropped, with its reason),
     sft.jsonl, dpo.jsonl, openai.jsonl, openai_dpo.jsonl, sharegpt.jsonl, dataset/ (a DatasetDict,
     splits train [and heldout]), parquet/, README.md (the dataset card), selection.json (the chosen
     strategy and random side by side); <run_dir>/curate.manifest.json; and an embedding cache
     <run_dir>/curate_embeddings.npy + .json that survives a changed config.

Steps: build samples (persona_forge.samples: the same messages eval and chat use) -> critic-score
floor -> exact duplicates -> near-duplicates (FAISS range search on sentence embeddings) -> choose n
(k-center greedy by default, facility location, or random; quality-weighted) -> render every chosen
row through the target model's chat template (a row it rejects is dropped and replaced) -> write.
The stage needs its whole input, so every file is written whole (atomically) at the end.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from .. import layout, selection
from ..config import BackendConfig, CurateConfig
from ..contract import StageContext, StageResult
from ..corpora import Conversations, load_conversations, load_preferences
from ..embeddings import Encoder, VectorCache, cached_embeddings, describe_model, set_threads
from ..errors import UserError
from ..exports import (DPO_PROMPT, RenderError, TemplateCheck, dataset_card, dpo_row, measure_cell, openai_dpo_row,
                       openai_file_errors, sft_row, sharegpt_row, template_check, write_datasets)
from ..prompts import library
from .. import samples as samples_module
from ..samples import SYSTEM_PROMPT, next_reply, reply_messages
from ..schema import ChatMessage, Dialogue, Preference, Rejection, Sample, record_id
from ..store import RunDir, atomic_write_json, atomic_write_jsonl, atomic_write_text, config_hash, file_sha256

STAGE = "curate"
FOLDER = layout.CURATED
INPUTS = (layout.BEST, layout.PREFERENCES)  # or curate.data (then no preferences)
OUTPUTS = (FOLDER,)
DONE_FILES = ("samples.jsonl", "selected.jsonl", "curate_rejections.jsonl", "sft.jsonl", "dpo.jsonl",
              "openai.jsonl", "sharegpt.jsonl", "README.md", "selection.json")
RENDER_ROUNDS = 5  # re-selections after the chat template rejects chosen rows


# --- building samples ----------------------------------------------------------------------------

def sample_id(dialogue_id: str, kind: str, position: int) -> str:
    """Stable: the dialogue, the kind and the target's position determine a sample (and its speaker)."""
    return samples_module.sample_id(dialogue_id, kind, position)


def persona_of(dialogue: Dialogue, speaker: str) -> list[str]:
    return dialogue.user1_persona if speaker == "user1" else dialogue.user2_persona


def next_reply_positions(dialogue: Dialogue, cfg: CurateConfig) -> list[int]:
    """Which replies become samples.

    study (the default): one per conversation, the reply at `position` (7: six turns of context,
    the other user's 7th turn as the prompt, the 8th turn as the target), as the study did, whose
    best result came from 200 such samples. One per conversation keeps the chosen n spread over n
    conversations: replies of one conversation share personas, topic and context, so several of
    them are near-duplicates in everything but the last line. A conversation too short for that
    position gives its last possible reply instead, so short conversations still count.
    all: every reply of both speakers (more samples, strongly correlated within a conversation;
    useful when conversations are few).
    """
    return samples_module.reply_positions(dialogue.turns, cfg.positions, cfg.position)


def build_samples(conv: Conversations, cfg: CurateConfig, source: str) -> tuple[list[Sample], list[Rejection]]:
    prompts = library()
    samples: list[Sample] = []
    rejected: list[Rejection] = []
    for dialogue in conv.dialogues:
        quality = dialogue.scores.get("critic")
        base = {"dialogue_id": dialogue.id, "pair_id": dialogue.pair_id, "quality": quality,
                "scores": dict(dialogue.scores), "source": source}
        if dialogue.parse_error:
            rejected.append(_reject("unparsed", dialogue.id, f"the conversation did not parse: {dialogue.parse_error}"))
            continue
        made = 0
        if cfg.kind == "next_reply":
            for position in next_reply_positions(dialogue, cfg):
                speaker = dialogue.turns[position].speaker
                persona = persona_of(dialogue, speaker)
                built = next_reply(persona, dialogue.turns, position, cfg.context, prompts)
                if built is None:
                    continue
                messages, target = built
                samples.append(Sample(id=sample_id(dialogue.id, cfg.kind, position), kind=cfg.kind, speaker=speaker,
                                      position=position, persona=list(persona),
                                      messages=[*messages, ChatMessage(role="assistant", content=target)], **base))
                made += 1
        else:
            for speaker in ("user1", "user2"):
                sample = conversation_sample(dialogue, speaker, base, prompts)
                if sample is not None:
                    samples.append(sample)
                    made += 1
        if not made and not dialogue.turns:
            rejected.append(_reject("empty", dialogue.id, "the conversation has no turns"))
        elif not made:
            rejected.append(_reject("too_short", dialogue.id, f"no {cfg.kind} sample: the conversation has "
                                    f"{len(dialogue.turns)} turn(s) and no reply to a turn by the other user"))
    return samples, rejected


def conversation_sample(dialogue: Dialogue, speaker: str, base: dict[str, Any], prompts) -> Sample | None:
    """The whole conversation from `speaker`'s side: their persona as system prompt, the turns up to
    their last one as alternating messages, their last turn as the final assistant message."""
    kept = [i for i, t in enumerate(dialogue.turns) if t.text.strip()]  # positions stay those of dialogue.turns
    mine = [i for i in kept if dialogue.turns[i].speaker == speaker]
    if not mine or not any(dialogue.turns[i].speaker != speaker for i in kept if i < mine[-1]):
        return None
    last = mine[-1]
    persona = persona_of(dialogue, speaker)
    messages = reply_messages(persona, [dialogue.turns[i] for i in kept if i < last], speaker, prompts)
    text = dialogue.turns[last].text
    if messages[-1].role == "assistant":  # their own turns right before the last: join, as reply_messages does
        messages[-1] = ChatMessage(role="assistant", content=f"{messages[-1].content}\n{text}")
    else:
        messages.append(ChatMessage(role="assistant", content=text))
    return Sample(id=sample_id(dialogue.id, "conversation", last), kind="conversation", speaker=speaker,
                  position=last, persona=list(persona), messages=messages, **base)


def _reject(reason: str, subject: str, detail: str, **extra: Any) -> Rejection:
    return Rejection(id=record_id(STAGE, reason, subject), stage=STAGE, subject_id=subject, reason=reason,
                     detail={"why": detail, **extra})


def embed_text(sample: Sample) -> str:
    """What a sample is about, for duplicates and diversity: the persona, and the exchange it trains
    (the other user's turn and the reply; for a conversation, the persona's own turns)."""
    persona = " ".join(sample.persona)
    if sample.kind == "next_reply":
        said = [m.content for m in sample.messages[-2:]]
    else:
        said = [m.content for m in sample.messages if m.role == "assistant"]
    return "\n".join([persona, *said])


def persona_key(sample: Sample) -> str:
    return record_id(sorted(a.strip().lower() for a in sample.persona))


# --- cleaning ------------------------------------------------------------------------------------

def priority(samples: list[Sample]) -> list[int]:
    """Best first: by quality (unscored as neutral), then by id, so every run keeps the same one."""
    def key(i: int) -> tuple[float, str]:
        q = samples[i].quality
        return (-(selection.NEUTRAL_QUALITY if q is None else q), samples[i].id)
    return sorted(range(len(samples)), key=key)


def quality_floor(samples: list[Sample], floor: float | None) -> tuple[list[Sample], list[Rejection]]:
    if floor is None:
        return samples, []
    kept, dropped = [], []
    for s in samples:
        if s.quality is not None and s.quality < floor:
            dropped.append(_reject("low_quality", s.id, f"critic score {s.quality:.3f} below the floor {floor}",
                                   quality=s.quality))
        else:
            kept.append(s)
    return kept, dropped


def exact_duplicates(samples: list[Sample]) -> tuple[list[Sample], list[Rejection]]:
    """Same messages (case and spacing aside): the better-scored one is kept."""
    seen: dict[str, str] = {}
    drop: dict[int, Rejection] = {}
    for i in priority(samples):
        key = record_id([(m.role, " ".join(m.content.lower().split())) for m in samples[i].messages])
        if key in seen:
            drop[i] = _reject("duplicate", samples[i].id, "the same messages as a kept sample", kept=seen[key])
        else:
            seen[key] = samples[i].id
    return [s for i, s in enumerate(samples) if i not in drop], [drop[i] for i in sorted(drop)]


def near_duplicates(vectors: np.ndarray, samples: list[Sample], threshold: float,
                    block: int = 8192) -> tuple[np.ndarray, list[Rejection]]:
    """Drop samples within `threshold` cosine similarity of a better-scored kept one. FAISS range
    search (exact inner product) finds every pair at or above the threshold; then, best first,
    a sample still standing keeps its place and removes its neighbours. Returns (keep mask, rejections)."""
    import faiss

    n = len(samples)
    keep = np.ones(n, dtype=bool)
    if n < 2 or threshold >= 1.0 + 1e-9:
        return keep, []
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(vectors)
    neighbours: list[tuple[np.ndarray, np.ndarray]] = []
    for start in range(0, n, block):
        lims, sims, rows = index.range_search(vectors[start:start + block], float(threshold))
        for q in range(len(lims) - 1):
            neighbours.append((rows[lims[q]:lims[q + 1]], sims[lims[q]:lims[q + 1]]))
    decided = np.zeros(n, dtype=bool)
    rejections = []
    for i in priority(samples):
        if decided[i]:
            continue
        decided[i] = True
        rows, sims = neighbours[i]
        for j, s in zip(rows.tolist(), sims.tolist()):
            if j != i and not decided[j]:
                decided[j] = True
                keep[j] = False
                rejections.append(_reject("near_duplicate", samples[j].id,
                                          f"cosine similarity {s:.3f} to a kept sample (threshold {threshold})",
                                          kept=samples[i].id, similarity=round(s, 4)))
    return keep, rejections


# --- the stage -----------------------------------------------------------------------------------

def stage_config(cfg: CurateConfig, check: str) -> dict[str, Any]:
    return {"curate": cfg.identity(), "template": check}


SCORE_FIELDS = ("words", "words_z", "tokens", "loss_context", "loss_alone", "ifd", "perplexity", "max_entailment",
                "max_contradiction", "c_score")


def parse_quality(spec: str) -> tuple[Path, str, bool]:
    """curate.quality "FILE:FIELD" (or FILE:-FIELD, lower is better) as (file, field, lower_is_better)."""
    path, sep, field = spec.rpartition(":")
    lower = field.startswith("-")
    field = field.removeprefix("-")
    if not sep or not path or field not in SCORE_FIELDS:
        raise UserError(f"--quality {spec!r}: expected FILE:FIELD (FILE:-FIELD when lower is better) with FIELD one "
                        f"of {', '.join(SCORE_FIELDS)}, e.g. train.scores.jsonl:max_entailment")
    if not Path(path).is_file():
        raise UserError(f"--quality {spec!r}: {path}: no such file; run forge score --data DATA first")
    return Path(path), field, lower


def score_quality(samples: list[Sample], spec: str) -> tuple[list[Sample], int]:
    """Each sample's quality from a forge score file: the percentile rank (0-1, ties averaged) of its
    signal among the samples the file scores; unscored samples get None (neutral in selection). The
    raw signal is kept in scores["score.<field>"]. Returns the samples and how many were scored."""
    from ..schema import ReplyScore
    from ..store import read_jsonl

    path, field, lower = parse_quality(spec)
    values = {r.id: getattr(r, field) for r in read_jsonl(path, ReplyScore)}
    found = [(i, float(values[s.id])) for i, s in enumerate(samples) if values.get(s.id) is not None]
    if not found:
        raise UserError(f"--quality {spec!r}: none of the {len(samples):,} samples is in {path}; score the same data "
                        f"with the same positions (forge score --data DATA --positions {{study|all}})")
    raw = np.array([v for _, v in found])
    ranks = _average_ranks(-raw if lower else raw)
    quality = ranks / (len(raw) - 1) if len(raw) > 1 else np.ones(1)
    out = [s.model_copy(update={"quality": None}) for s in samples]
    for (i, value), q in zip(found, quality):
        out[i] = samples[i].model_copy(update={"quality": float(q),
                                               "scores": {**samples[i].scores, f"score.{field}": value}})
    return out, len(found)


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """0-based ranks, ties given their mean rank."""
    order = np.argsort(values, kind="stable")
    ranks = np.empty(len(values))
    ranks[order] = np.arange(len(values))
    for v in np.unique(values):
        tied = values == v
        ranks[tied] = ranks[tied].mean()
    return ranks


def inputs_of(cfg: CurateConfig, run_dir: RunDir) -> tuple[Path, Path | None]:
    data = Path(cfg.data) if cfg.data else run_dir.file(layout.BEST)
    if not data.is_file():
        what = "no such file" if cfg.data else "no conversations here yet (forge generate writes best.jsonl)"
        raise UserError(f"{data}: {what}; run forge generate first, or pass --data FILE (a Synthetic-Persona-Chat "
                        f"-shaped .jsonl/.jsonl.gz such as corpora/spc/train.jsonl.gz)")
    if cfg.preferences:
        prefs = Path(cfg.preferences)
        if not prefs.is_file():
            raise UserError(f"{prefs}: no such file; give the Preference JSONL forge generate wrote")
    else:
        prefs = run_dir.file(layout.PREFERENCES) if not cfg.data else None
        prefs = prefs if prefs is not None and prefs.is_file() else None
    if not cfg.data:
        generate = run_dir.manifest("generate")
        if generate is not None and generate.status != "done":
            raise UserError(f"{data}: the generate stage has not finished there; run it to the end first (the same "
                            f"command resumes it), or pass --data to curate that file as it is")
    return data, prefs


def run(cfg: CurateConfig, context: StageContext, backend: BackendConfig, encoder: Any = None,
        check: TemplateCheck | None = None) -> StageResult:
    """Curate for the chat model `backend` names (every row must pass its chat template); `encoder`
    (with .spec and .encode(texts, label)) and `check` may be given (tests)."""
    rows = _run(cfg, RunDir(context.run_dir), backend, context.force, context.progress, encoder, check,
                context.executor)
    return StageResult.read(STAGE, rows, context.run_dir, OUTPUTS)


def _run(cfg: CurateConfig, run_dir: RunDir, backend: BackendConfig, force: bool, progress: bool, encoder: Any,
         check: TemplateCheck | None, executor: Any = None) -> dict[str, Any]:
    data, prefs_path = inputs_of(cfg, run_dir)
    inputs = [data] + ([prefs_path] if prefs_path else [])
    if cfg.quality:
        inputs.append(parse_quality(cfg.quality)[0])
    check_spec = "injected" if check is not None else f"{backend.kind}:{backend.model}"
    config = stage_config(cfg, check_spec)
    done = already_done(run_dir, config, inputs)
    if done is not None:
        return done
    run_dir.check(STAGE, config, inputs=inputs, force=force)
    started = time.time()
    timings: dict[str, float] = {}
    threads = set_threads(cfg.threads)

    conv = load_conversations(data)
    preferences = load_preferences(prefs_path) if prefs_path else []
    samples, rejections = build_samples(conv, cfg, str(data))
    built = list(samples)
    pool, dropped = quality_floor(samples, cfg.min_quality)
    rejections += dropped
    pool, dropped = exact_duplicates(pool)
    rejections += dropped
    if cfg.quality and pool:
        pool, _ = score_quality(pool, cfg.quality)
    if not pool:
        reasons = ", ".join(f"{k} {v:,}" for k, v in sorted(Counter(r.reason for r in rejections).items()))
        raise UserError(f"{data}: no sample is left to choose from ({len(built):,} built; dropped: {reasons or 'none'}); "
                        f"lower the floor (--set curate.min_quality=0.3, or null for none) or give longer conversations")

    t = time.time()
    encoder = encoder or Encoder(cfg.model, cfg.batch_size, executor)
    vectors, embedded = cached_embeddings([embed_text(s) for s in pool], [s.id for s in pool], encoder,
                                          VectorCache(run_dir.path, layout.CURATE_EMBEDDINGS, "ids").load(), "samples")
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    timings["embed_s"] = time.time() - t
    t = time.time()
    keep, dropped = near_duplicates(vectors, pool, cfg.dedup_threshold)
    rejections += dropped
    pool = [s for s, k in zip(pool, keep) if k]
    vectors = vectors[keep]
    timings["dedup_s"] = time.time() - t

    check = check or template_check(backend.model, backend.kind, progress=progress)
    t = time.time()
    chosen, tokens, render_drops, selection_s = choose(cfg, pool, vectors, check)
    rejections += render_drops
    timings["select_s"] = selection_s
    timings["render_s"] = time.time() - t - selection_s
    if not chosen:
        raise UserError(f"{data}: the chat template of {check.source} rejected every sample; see "
                        f"{run_dir.file(FOLDER)}/curate_rejections.jsonl after fixing, or check backend.model")
    t = time.time()
    report = selection_report(cfg, pool, vectors, chosen)
    timings["report_s"] = time.time() - t
    heldout = held_out(cfg, pool, chosen, check, tokens, rejections)

    dpo_rows, dpo_tokens, dropped = preference_rows(preferences, cfg, check)
    rejections += dropped

    stage = run_dir.begin(STAGE, config, inputs=inputs, outputs=OUTPUTS, force=force)
    stage.record_model("embedding", describe_model(cfg.model))
    stage.record_model("chat_template", check.describe())
    for model in conv.models:
        stage.record_model(f"generator:{model}", model)
    prompts = library()
    for name in (SYSTEM_PROMPT, DPO_PROMPT):
        stage.record_prompt(name, prompts.ref(name).hash)
    selected = [pool[i] for i in chosen]
    t = time.time()
    counts = write_outputs(run_dir, cfg, conv, data, prefs_path, built, selected, heldout, dpo_rows, rejections,
                           report, check, tokens, dpo_tokens, prompts)
    timings["write_s"] = time.time() - t
    counts.update(conversations=len(conv.dialogues), pool=len(pool), embedded=embedded, preferences=len(preferences))
    for key, value in counts.items():
        stage.set_count(key, value)
    rows = summary_rows(cfg, conv, data, run_dir, counts, report, check, timings, threads, time.time() - started)
    stage.finish(selection=report, seconds={k: round(v, 2) for k, v in timings.items()}, summary=rows)
    return rows


def choose(cfg: CurateConfig, pool: list[Sample], vectors: np.ndarray,
           check: TemplateCheck) -> tuple[list[int], dict[str, int], list[Rejection], float]:
    """Select n, render each chosen row through the chat template; rows it rejects (or that are
    too long) are excluded and the selection is made again without them (at most RENDER_ROUNDS times)."""
    quality = quality_array(pool)
    exclude = np.zeros(len(pool), dtype=bool)
    tokens: dict[str, int] = {}
    drops: list[Rejection] = []
    seconds = 0.0
    chosen: list[int] = []
    for _ in range(RENDER_ROUNDS):
        t = time.time()
        chosen = selection.select(cfg.strategy, vectors, cfg.n, quality, cfg.quality_weight, cfg.seed,
                                  cfg.facility_ground, exclude, cfg.density_weight)
        seconds += time.time() - t
        bad = [i for i in chosen if not render_ok(pool[i], check, cfg.max_tokens, tokens, drops)]
        if not bad:
            break
        exclude[bad] = True
    chosen = [i for i in chosen if not exclude[i]]
    return chosen, tokens, drops, seconds


def render_ok(sample: Sample, check: TemplateCheck, max_tokens: int, tokens: dict[str, int],
              drops: list[Rejection]) -> bool:
    if sample.id in tokens:
        return True
    try:
        n = check.tokens(sft_row(sample))
    except RenderError as exc:
        drops.append(_reject("template_rejected", sample.id, f"{check.kind}: {exc}"))
        return False
    if n > max_tokens:
        drops.append(_reject("too_long", sample.id, f"{n} tokens after the chat template, above {max_tokens}",
                             tokens=n))
        return False
    tokens[sample.id] = n
    return True


def quality_array(samples: list[Sample]) -> np.ndarray | None:
    q = np.array([np.nan if s.quality is None else s.quality for s in samples], dtype=np.float64)
    return None if np.isnan(q).all() else q


def selection_report(cfg: CurateConfig, pool: list[Sample], vectors: np.ndarray, chosen: list[int]) -> dict[str, Any]:
    """The chosen strategy and its comparison (random; or k-center when random was chosen), side by side."""
    quality = quality_array(pool)
    k = cfg.clusters or cfg.n
    t = time.time()
    labels = selection.cluster_labels(vectors, k, cfg.seed)
    cluster_s = time.time() - t
    personas = [persona_key(s) for s in pool]
    other = "kcenter" if cfg.strategy == "random" else "random"
    t = time.time()
    baseline = selection.select(other, vectors, len(chosen), quality, cfg.quality_weight, cfg.seed,
                                cfg.facility_ground, density_weight=cfg.density_weight)
    other_s = time.time() - t
    mine = selection.measure(vectors, chosen, labels, quality, personas).as_dict()
    theirs = selection.measure(vectors, baseline, labels, quality, personas).as_dict()
    return {"pool": len(pool), "n": cfg.n, "strategy": cfg.strategy, "quality_weight": cfg.quality_weight,
            "density_weight": cfg.density_weight if "kcenter" in (cfg.strategy, other) else None,
            "clusters": int(labels.max()) + 1, "distinct_personas_in_pool": len(set(personas)),
            "measures": {cfg.strategy: mine, other: theirs},
            "notes": {"coverage_mean_distance": "mean cosine distance from every pool sample to its nearest chosen "
                                                "one (lower covers better)",
                      "max_distance": "the worst-covered pool sample's distance (what k-center minimises)",
                      "clusters_covered": f"of {int(labels.max()) + 1} k-means clusters of the pool, how many hold "
                                          f"a chosen sample"},
            "seconds": {"kmeans": round(cluster_s, 2), other: round(other_s, 2)}}


def held_out(cfg: CurateConfig, pool: list[Sample], chosen: list[int], check: TemplateCheck,
             tokens: dict[str, int], rejections: list[Rejection]) -> list[Sample]:
    """`heldout` samples at random (seeded) from conversations no chosen sample comes from."""
    if not cfg.heldout:
        return []
    used = {pool[i].dialogue_id for i in chosen}
    candidates = [i for i, s in enumerate(pool) if s.dialogue_id not in used]
    order = np.random.default_rng(cfg.seed + 1).permutation(len(candidates)).tolist()
    out: list[Sample] = []
    taken: set[str] = set()
    for j in order:
        sample = pool[candidates[j]]
        if sample.dialogue_id in taken:  # one per conversation, like the study's test set
            continue
        if render_ok(sample, check, cfg.max_tokens, tokens, rejections):
            out.append(sample)
            taken.add(sample.dialogue_id)
        if len(out) == cfg.heldout:
            break
    return out


def preference_rows(preferences: list[Preference], cfg: CurateConfig,
                    check: TemplateCheck) -> tuple[list[dict[str, Any]], list[int], list[Rejection]]:
    """DPO rows from the critic's preferences: a clear margin, two different conversations, each pair
    once (the widest margin kept), and a render the chat template accepts."""
    rows, tokens, dropped = [], [], []
    best: dict[str, Preference] = {}
    for p in sorted(preferences, key=lambda p: (-(p.chosen_score - p.rejected_score), p.id)):
        margin = p.chosen_score - p.rejected_score
        if margin < cfg.dpo_min_margin or margin <= 0:
            dropped.append(_reject("small_margin", p.id, f"chosen beats rejected by {margin:.3f}, less than "
                                   f"{cfg.dpo_min_margin}", margin=round(margin, 4)))
        elif [t.text for t in p.chosen_turns] == [t.text for t in p.rejected_turns]:
            dropped.append(_reject("same_conversation", p.id, "chosen and rejected are the same conversation"))
        elif p.pair_id in best:
            dropped.append(_reject("duplicate", p.id, "another preference of this pair has a wider margin",
                                   kept=best[p.pair_id].id))
        else:
            best[p.pair_id] = p
    prompts = library()
    for p in best.values():
        row = dpo_row(p, prompts)
        try:
            n = check.tokens(row)
        except RenderError as exc:
            dropped.append(_reject("template_rejected", p.id, f"{check.kind}: {exc}"))
            continue
        if n > cfg.max_tokens:
            dropped.append(_reject("too_long", p.id, f"{n} tokens after the chat template, above {cfg.max_tokens}",
                                   tokens=n))
            continue
        rows.append(row)
        tokens.append(n)
    return rows, tokens, dropped


# --- writing -------------------------------------------------------------------------------------

def write_outputs(run_dir: RunDir, cfg: CurateConfig, conv: Conversations, data: Path, prefs: Path | None,
                  built: list[Sample], selected: list[Sample], heldout: list[Sample], dpo_rows: list[dict[str, Any]],
                  rejections: list[Rejection], report: dict[str, Any], check: TemplateCheck, tokens: dict[str, int],
                  dpo_tokens: list[int], prompts) -> dict[str, int]:
    out = run_dir.file(FOLDER)
    out.mkdir(parents=True, exist_ok=True)
    sft = [sft_row(s) for s in selected]
    openai_rows = [sft_row(s) for s in selected]
    errors = openai_file_errors(openai_rows)
    dpo_openai = [openai_dpo_row(r) for r in dpo_rows]
    dpo_errors = openai_file_errors(dpo_openai, dpo=True) if dpo_openai else {}
    # The minimum-size rule is the one OpenAI rule a correct small file can break: report it, write anyway.
    fatal = {k: v for k, v in {**errors, **dpo_errors}.items() if not k.startswith("fewer than")}
    if fatal:
        raise UserError(f"internal check failed: the OpenAI export would be invalid ({fatal})")
    atomic_write_jsonl(out / "samples.jsonl", built)
    atomic_write_jsonl(out / "selected.jsonl", selected)
    atomic_write_jsonl(out / "curate_rejections.jsonl", rejections)
    atomic_write_jsonl(out / "sft.jsonl", sft)
    atomic_write_jsonl(out / "dpo.jsonl", dpo_rows)
    atomic_write_jsonl(out / "openai.jsonl", openai_rows)
    atomic_write_jsonl(out / "openai_dpo.jsonl", dpo_openai)
    atomic_write_jsonl(out / "sharegpt.jsonl", [sharegpt_row(s) for s in selected])
    if heldout:
        atomic_write_jsonl(out / "heldout_sft.jsonl", [sft_row(s) for s in heldout])
    write_datasets(out, sft, [sft_row(s) for s in heldout], dpo_rows)
    token_counts = [tokens[s.id] for s in selected]
    report["tokens"] = _token_stats(token_counts, check)
    report["openai_check"] = {"sft": errors or "valid", "dpo": dpo_errors or ("valid" if dpo_openai else "no rows")}
    atomic_write_json(out / "selection.json", report)
    reasons = Counter(r.reason for r in rejections)
    counts = {"samples": len(built), "selected": len(selected), "heldout": len(heldout), "dpo_rows": len(dpo_rows),
              "rejections": len(rejections), **{f"dropped_{k}": v for k, v in sorted(reasons.items())}}
    atomic_write_text(out / "README.md", dataset_card(cfg, conv, data, prefs, counts, report, check, prompts,
                                                      reasons, dpo_tokens))
    return counts


def _token_stats(values: list[int], check: TemplateCheck) -> dict[str, Any]:
    if not values:
        return {"rows": 0}
    arr = np.array(values)
    return {"counted_with": check.describe(), "rows": len(values), "total": int(arr.sum()),
            "mean": round(float(arr.mean()), 1), "max": int(arr.max())}


def summary_rows(cfg: CurateConfig, conv: Conversations, data: Path, run_dir: RunDir, counts: dict[str, int],
                 report: dict[str, Any], check: TemplateCheck, timings: dict[str, float], threads: int,
                 seconds: float) -> dict[str, Any]:
    measures = report["measures"]
    names = list(measures)

    def side(key: str) -> str:
        return " | ".join(f"{n} {measure_cell(measures[n][key])}" for n in names)

    dropped = ", ".join(f"{k.removeprefix('dropped_')} {v:,}" for k, v in counts.items() if k.startswith("dropped_"))
    return {
        "read": f"{data}: {conv.description}",
        "samples built": f"{counts['samples']:,} ({cfg.kind}, positions {cfg.positions})",
        "dropped": dropped or "none",
        "pool after cleaning": counts["pool"],
        "chosen": f"{counts['selected']:,} by {cfg.strategy} (quality weight {cfg.quality_weight})"
                  + (f"; fewer than the {cfg.n:,} asked for (--n): the pool after cleaning holds {counts['pool']:,}"
                     if counts["selected"] < cfg.n else ""),
        "coverage (mean distance, lower is better)": side("coverage_mean_distance"),
        f"clusters covered (of {report['clusters']})": side("clusters_covered"),
        "mean quality": side("mean_quality"),
        "distinct personas": side("distinct_personas"),
        "held-out": counts["heldout"],
        "DPO rows": f"{counts['dpo_rows']:,} of {counts['preferences']:,} preferences",
        "render check": check.describe(),
        "seconds (embed / dedup / select / render)": f"{timings['embed_s']:.1f} / {timings['dedup_s']:.1f} / "
                                                     f"{timings['select_s']:.2f} / {timings['render_s']:.1f} "
                                                     f"on {threads} thread(s)",
        "output": str(run_dir.file(FOLDER)),
        "seconds": round(seconds, 1),
    }


# --- resumability --------------------------------------------------------------------------------

def already_done(run_dir: RunDir, config: dict[str, Any], inputs: list[Path]) -> dict[str, Any] | None:
    """The last summary, if this stage already finished with this config and these inputs."""
    previous = run_dir.manifest(STAGE)
    if previous is None or previous.status != "done" or previous.config_hash != config_hash(config):
        return None
    if set(previous.inputs) != {str(p) for p in inputs}:
        return None
    if any(previous.inputs[str(p)] != file_sha256(p) for p in inputs):
        return None
    if not all((run_dir.file(FOLDER) / name).is_file() for name in DONE_FILES):
        return None
    return {"status": "already done with this config and input: nothing to do",
            **dict(previous.figures.get("summary", {}))}
