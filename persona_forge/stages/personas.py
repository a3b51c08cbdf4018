"""`forge personas`: seed attributes in; an expanded attribute pool and NLI-consistent profiles out.

In:  a seed file (see persona_expand.read_seed_file), the chat backend (expansion), an NLI model.
Out, in the run directory:
  attributes.jsonl          Attribute: the pool (seeds, then expanded attributes with provenance).
  profiles.jsonl            Profile: n users of k attributes each, appended one by one as they finish.
  rejections.jsonl          Rejection: every candidate refused (contradiction, redundant, with both texts and
                            the probabilities), every profile given up (incomplete), every expansion line dropped.
  personas_questions.jsonl, personas_replies.jsonl   expansion side files (persona_expand.py).
  personas_checks.jsonl     ProfileCheck: the NLI probabilities of every within-profile pair, both directions.
  personas.manifest.json    config hash, seed-file hash, counts, prompt hashes, models, figures.

Profile construction: profile i has its own random generator (seed, i) and is built one attribute at a
time. A candidate comes from a topic not yet in the profile (any topic once all are used), and is
judged against every attribute already in it, both ways (premise=existing, hypothesis=candidate and the
reverse): rejected as a contradiction if a contradiction probability is above `contradiction`, as
redundant if an entailment probability is above `entailment`. All unfinished profiles advance together,
one candidate each per round, and a round's pairs go to the NLI in one predict call.

Figures: the paper's diversity measures for the seeds and for the whole pool (persona_expand.diversity),
and the contradiction rate inside finished profiles beside profiles of the same size drawn at random
from the same pool: the share of within-profile attribute pairs whose most likely NLI label is
contradiction in either direction.
"""

from __future__ import annotations

import contextlib
import random
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict

from .. import executors, layout, ui
from ..config import BackendConfig, NLIConfig, PersonasConfig
from ..contract import FAILED, StageContext, StageResult
from ..embeddings import Embed, Embedder
from ..errors import UserError
from ..nli.base import identity as nli_identity
from ..nli.labels import CONTRADICTION as CONTRA, ENTAILMENT as ENTAIL
from ..resources import data_dir
from ..schema import Attribute, Profile, Record, Rejection, record_id
from ..store import JsonlStore, RunDir, atomic_write_jsonl
from .persona_expand import (CLUSTER_DEFINITION, EXPAND_PROMPT, QUESTIONS_PROMPT, Expander,
                             ExpansionReply, SeenPool, TopicQuestions, cluster_topics, diversity,
                             load_seed_texts)

STAGE = "personas"
FILES = {"attributes": layout.ATTRIBUTES, "profiles": layout.PROFILES, "rejections": layout.PERSONA_REJECTIONS,
         "questions": layout.PERSONA_QUESTIONS, "replies": layout.PERSONA_REPLIES, "checks": layout.PERSONA_CHECKS}
INPUTS = ()  # the seed attributes come from the recipe (personas.seeds) or the package
OUTPUTS = tuple(FILES.values())


class PairCheck(BaseModel):
    """NLI probabilities (entailment, neutral, contradiction) of profile attributes a and b, both ways."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    a: int
    b: int
    ab: list[float]
    ba: list[float]


class ProfileCheck(Record):
    """Every within-profile pair of one profile (id: the profile's), as judged while it was built."""

    pairs: list[PairCheck]


def default_seed_file() -> Path:
    return data_dir("corpora") / "personas" / "seed_attributes.txt"


def run(cfg: PersonasConfig, context: StageContext, backend, nli, *, chat: BackendConfig, nli_config: NLIConfig,
        embed: Embed | None = None, prompts_dir: Path | None = None) -> StageResult:
    """Run the stage; `backend` (None when personas.expand is off) is the chat backend built from `chat`,
    the recipe's backend section; `nli` is an NLI model or a function that loads one (called only when
    needed), `nli_config` the section it comes from.

    Expansion requests that fail are retried by the next run; profiles are built only once every
    expansion request is done, so they always draw on the final pool.
    """
    rows = _run(cfg, context, backend, nli, chat, nli_config, embed, prompts_dir)
    return StageResult.read(STAGE, rows, context.run_dir, OUTPUTS, failed=int(rows.get(FAILED) or 0))


def _run(cfg: PersonasConfig, context: StageContext, backend, nli, chat: BackendConfig, nli_config: NLIConfig,
         embed: Embed | None, prompts_dir: Path | None) -> dict[str, Any]:
    seeds_path = Path(cfg.seeds) if cfg.seeds else default_seed_file()
    texts = load_seed_texts(seeds_path, cfg.column, cfg.max_seeds, cfg.seed)
    if not cfg.expand and len(texts) < cfg.k:
        raise UserError(f"{seeds_path}: {len(texts)} distinct seed attributes, fewer than the {cfg.k} a profile "
                        f"needs; give more seeds, a smaller personas.k, or --expand")
    prompts = _prompt_library(prompts_dir)
    stage = _begin(cfg, context, chat, nli_config, seeds_path, texts, prompts)
    stores = {name: JsonlStore(stage.run_dir.file(f), _MODELS[name]) for name, f in FILES.items()}
    executor = context.executor or executors.get()
    embed = embed or Embedder(cfg.model, cfg.batch_size, cfg.threads, executor)
    nli = executor.nli(nli_config, nli)

    seeds, seed_emb = _seed_attributes(texts, stores["attributes"], embed, cfg)
    expander, pool_emb = None, seed_emb
    if cfg.expand:
        stage.record_model("chat", str(backend.describe()))
        expander, seen = _expand(cfg, backend, prompts, record_id("seed-set", texts), seeds, seed_emb, embed, stores)
        pool_emb = seen.index.reconstruct_n(0, seen.index.ntotal)  # file order: seeds, then as appended
    pool = stores["attributes"].read()
    if len(pool_emb) != len(pool):
        raise UserError(f"{stores['attributes'].path}: holds expanded attributes but expansion is off; "
                        f"pass --expand, or --force to start over")
    measures = {"seeds": diversity(seed_emb, texts, cfg.cluster_similarity),
                "pool": diversity(pool_emb, [a.text for a in pool], cfg.cluster_similarity)}
    failed = expander.counts.failed + expander.counts.questions_failed if expander else 0
    rates: dict[str, Any] = {}
    if not failed:
        model = nli() if callable(nli) else nli
        stage.record_model("nli", model.describe())
        rates = _profiles(cfg, pool, model, stores)
    counts = _counts(stores, seeds, pool, expander)
    figures = {"measures": measures, "cluster_definition": CLUSTER_DEFINITION.format(
        similarity=cfg.cluster_similarity), **rates, "usage": backend.usage.as_dict() if cfg.expand else {}}
    _finish(stage, counts, figures, done=not failed)
    return _rows(cfg, counts, measures, rates, expander, failed, stage.run_dir)


def _begin(cfg: PersonasConfig, context: StageContext, chat: BackendConfig, nli_config: NLIConfig, seeds_path: Path,
           texts: list[str], prompts):
    """Start (or resume) the stage: the config hash covers the personas settings, the seed set, the
    NLI, the chat backend and the prompt templates: anything that changes what comes out."""
    prompt_refs = {name: prompts.ref(name).hash for name in (QUESTIONS_PROMPT, EXPAND_PROMPT)} if cfg.expand else {}
    config = {"personas": cfg.identity(), "seed_set": record_id("seed-set", texts), "nli": nli_identity(nli_config),
              "backend": chat.identity() if cfg.expand else None, "prompts": prompt_refs}
    stage = RunDir(context.run_dir).begin(STAGE, config, inputs=[seeds_path], outputs=list(FILES.values()),
                                          force=context.force)
    for name, digest in prompt_refs.items():
        stage.record_prompt(name, digest)
    stage.record_model("embeddings", cfg.model)
    return stage


def _finish(stage, counts: dict[str, int], figures: dict[str, Any], done: bool) -> None:
    for key, value in counts.items():
        stage.set_count(key, value)
    if done:
        stage.finish(**figures)
    else:  # requests failed: the manifest stays "running" until a re-run completes them
        stage.manifest.figures.update(figures)
        stage.save()


_MODELS = {"attributes": Attribute, "profiles": Profile, "rejections": Rejection, "questions": TopicQuestions,
           "replies": ExpansionReply, "checks": ProfileCheck}


def _prompt_library(prompts_dir: Path | None):
    from ..prompts import library

    return library(str(prompts_dir) if prompts_dir else None)


# --- the pool ---------------------------------------------------------------------------------

def _seed_attributes(texts: list[str], store: JsonlStore, embed: Embed, cfg) -> tuple[list[Attribute], np.ndarray]:
    """Seed Attribute records with topics: from attributes.jsonl on a re-run, else clustered and
    written there in one step (so the file never holds half the seeds)."""
    with ui.console.status(f"embedding {len(texts):,} seed attributes"):
        emb = embed(texts)
    if store.exists():
        seeds = [a for a in store.read() if a.source == "seed"]
        if [a.text for a in seeds] != texts:
            raise UserError(f"{store.path}: its seed attributes differ from the seed file's; pass --force to "
                            f"start over or choose another --run-dir")
        return seeds, emb
    topics = cluster_topics(emb, cfg.topics, cfg.seed, cfg.threads)
    seeds = [Attribute(id=record_id("seed", text), text=text, source="seed", topic=t)
             for text, t in zip(texts, topics)]
    atomic_write_jsonl(store.path, seeds)
    return seeds, emb


def _expand(cfg, backend, prompts, seed_set: str, seeds: list[Attribute], seed_emb: np.ndarray, embed: Embed,
            stores: dict[str, JsonlStore]) -> tuple[Expander, SeenPool]:
    topics: dict[int, list[int]] = {}
    for i, attribute in enumerate(seeds):
        topics.setdefault(int(attribute.topic or 0), []).append(i)
    expander = Expander(cfg, backend, prompts, seed_set, seeds, seed_emb, topics, embed, stores)
    with backend.session():  # one loop and client for the questions and the expansion after them
        questions = expander.questions()
        requests = expander.requests(questions)
        pool = SeenPool(seed_emb.shape[1])
        pool.add([a.text for a in seeds], seed_emb)
        expanded = [a for a in stores["attributes"].read() if a.source == "expanded"]
        if expanded:
            pool.add([a.text for a in expanded], embed([a.text for a in expanded]))
        expander.expand(requests, pool)
    return expander, pool


# --- profiles ---------------------------------------------------------------------------------

def verdict(forward: np.ndarray, backward: np.ndarray, contradiction: float,
            entailment: float) -> tuple[str | None, int]:
    """("contradiction" | "redundant" | None, the member it concerns) for one candidate.

    forward[j]: member j as premise, the candidate as hypothesis; backward[j]: the reverse. A
    contradiction outranks a redundancy: it is the worse fault in a profile.
    """
    contra = np.maximum(forward[:, CONTRA], backward[:, CONTRA])
    entail = np.maximum(forward[:, ENTAIL], backward[:, ENTAIL])
    if contra.max() > contradiction:
        return "contradiction", int(contra.argmax())
    if entail.max() > entailment:
        return "redundant", int(entail.argmax())
    return None, -1


def check_candidate(nli, members: Sequence[str], candidate: str, contradiction: float = 0.5,
                    entailment: float = 0.6) -> tuple[str | None, np.ndarray]:
    """Judge one candidate against a profile's attributes: (reason or None, probabilities), the
    probabilities in rows member-then-candidate, candidate-then-member for each member."""
    pairs = [p for m in members for p in ((m, candidate), (candidate, m))]
    probs = nli.predict(pairs)
    reason, _ = verdict(probs[0::2], probs[1::2], contradiction, entailment)
    return reason, probs


@dataclass
class _Building:
    """A profile under construction."""

    index: int
    id: str
    rng: random.Random
    members: list[int] = field(default_factory=list)
    tried: set[int] = field(default_factory=set)
    tried_in_topic: Counter = field(default_factory=Counter)
    pairs: list[PairCheck] = field(default_factory=list)
    attempts: int = 0


class ProfileBuilder:
    """Builds profiles over a fixed pool; see the module docstring for the rules."""

    def __init__(self, cfg, pool: Sequence[Attribute], nli, sinks: dict[str, Any], have_rejections: set[str]):
        self.cfg = cfg
        self.pool = list(pool)
        self.nli = nli
        self.sinks = sinks
        self.have_rejections = have_rejections
        self.pool_hash = record_id("pool", sorted(a.id for a in self.pool))
        self.topic_of = [int(a.topic or 0) for a in self.pool]
        self.by_topic: dict[int, list[int]] = {}
        # Sorted by id: the pool's file order depends on when replies arrived; profiles must not.
        for i in sorted(range(len(self.pool)), key=lambda i: self.pool[i].id):
            self.by_topic.setdefault(self.topic_of[i], []).append(i)
        self.topic_ids = sorted(self.by_topic)
        self.pairs_judged = 0
        self.rounds = 0
        self.given_up = 0

    def profile_id(self, index: int) -> str:
        return record_id("profile", self.pool_hash, self.cfg.seed, index)

    def build(self, needed: int, done: set[str], advance: Callable[[int], None]) -> None:
        """Finish `needed` more profiles, skipping indices whose ids are in `done`."""
        indices = self._indices(done)
        active = [self._start(next(indices)) for _ in range(needed)]
        while active:
            self.rounds += 1
            still: list[_Building] = []
            for state, finished in self._round(active):
                if finished == "done":
                    advance(1)
                elif finished == "incomplete":
                    self.given_up += 1
                    if self.given_up > max(100, needed):
                        raise UserError(f"{self.given_up} profiles could not reach {self.cfg.k} consistent "
                                        f"attributes in {self.cfg.max_candidates} tries each; lower personas.k, "
                                        f"raise personas.max_candidates or the NLI thresholds, or give more seeds")
                    still.append(self._start(next(indices)))
                else:
                    still.append(state)
            active = still

    def _indices(self, done: set[str]):
        index = 0
        while True:
            if self.profile_id(index) not in done:
                yield index
            index += 1

    def _start(self, index: int) -> _Building:
        pid = self.profile_id(index)
        return _Building(index, pid, random.Random(int(pid, 16)))

    def _round(self, active: list[_Building]) -> list[tuple[_Building, str]]:
        """One candidate for every active profile, all judged in one NLI call."""
        outcome: list[tuple[_Building, str]] = []
        judged: list[tuple[_Building, int, int]] = []  # (state, candidate, first pair row)
        pairs: list[tuple[str, str]] = []
        for state in active:
            candidate = self._candidate(state) if state.attempts < self.cfg.max_candidates else None
            if candidate is None:
                self._give_up(state)
                outcome.append((state, "incomplete"))
                continue
            state.attempts += 1
            state.tried.add(candidate)
            state.tried_in_topic[self.topic_of[candidate]] += 1
            if not state.members:
                outcome.append((state, self._accept(state, candidate, [])))
                continue
            judged.append((state, candidate, len(pairs)))
            text = self.pool[candidate].text
            for m in state.members:
                pairs += [(self.pool[m].text, text), (text, self.pool[m].text)]
        probs = self.nli.predict(pairs) if pairs else np.zeros((0, 3), dtype=np.float32)
        self.pairs_judged += len(pairs)
        for state, candidate, row in judged:
            block = probs[row:row + 2 * len(state.members)]
            outcome.append((state, self._decide(state, candidate, block[0::2], block[1::2])))
        return outcome

    def _candidate(self, state: _Building) -> int | None:
        """A random untried attribute from a topic the profile lacks (any topic once it has them all)."""
        open_topics = [t for t in self.topic_ids if state.tried_in_topic[t] < len(self.by_topic[t])]
        used = {self.topic_of[m] for m in state.members}
        fresh = [t for t in open_topics if t not in used]
        choices = fresh or open_topics
        if not choices:
            return None
        members = self.by_topic[state.rng.choice(choices)]
        for _ in range(16):  # the pool is much larger than what one profile tries
            pick = state.rng.choice(members)
            if pick not in state.tried:
                return pick
        return state.rng.choice([i for i in members if i not in state.tried])

    def _decide(self, state: _Building, candidate: int, forward: np.ndarray, backward: np.ndarray) -> str:
        reason, j = verdict(forward, backward, self.cfg.contradiction, self.cfg.entailment)
        if reason:
            self._reject(state, candidate, reason, j, forward, backward)
            return "open"
        return self._accept(state, candidate, list(zip(forward, backward)))

    def _accept(self, state: _Building, candidate: int, checks: list[tuple[np.ndarray, np.ndarray]]) -> str:
        position = len(state.members)
        for j, (ab, ba) in enumerate(checks):
            state.pairs.append(PairCheck(a=j, b=position, ab=_r(ab), ba=_r(ba)))
        state.members.append(candidate)
        if len(state.members) < self.cfg.k:
            return "open"
        attributes = [self.pool[m] for m in state.members]
        self.sinks["profiles"].write(Profile(id=state.id, attribute_ids=[a.id for a in attributes],
                                             attributes=[a.text for a in attributes]))
        self.sinks["checks"].write(ProfileCheck(id=state.id, pairs=state.pairs))
        return "done"

    def _reject(self, state: _Building, candidate: int, reason: str, j: int, forward: np.ndarray,
                backward: np.ndarray) -> None:
        against = self.pool[state.members[j]]
        cand = self.pool[candidate]
        column = CONTRA if reason == "contradiction" else ENTAIL
        self._log(Rejection(
            id=record_id(STAGE, "profile", state.id, state.attempts), stage=STAGE, subject_id=cand.id,
            reason=reason,
            detail={"profile_id": state.id, "profile_index": state.index, "candidate": cand.text,
                    "against": against.text, "against_id": against.id,
                    "probability": round(float(max(forward[j][column], backward[j][column])), 4),
                    "forward": _r(forward[j]), "backward": _r(backward[j]),
                    "note": "forward: premise=against, hypothesis=candidate; probabilities are "
                            "(entailment, neutral, contradiction)"}))

    def _give_up(self, state: _Building) -> None:
        self._log(Rejection(
            id=record_id(STAGE, "incomplete", state.id), stage=STAGE, subject_id=state.id, reason="incomplete",
            detail={"profile_index": state.index, "attributes": [self.pool[m].text for m in state.members],
                    "candidates_tried": state.attempts}))

    def _log(self, rejection: Rejection) -> None:
        if rejection.id not in self.have_rejections:  # logged already by an interrupted run
            self.sinks["rejections"].write(rejection)
            self.have_rejections.add(rejection.id)


def _r(probs: np.ndarray) -> list[float]:
    return [round(float(p), 4) for p in probs]


def _profiles(cfg, pool: list[Attribute], nli, stores: dict[str, JsonlStore]) -> dict[str, Any]:
    """Build the missing profiles, then measure contradiction rates: built vs random."""
    if len(pool) < cfg.k:
        raise UserError(f"the attribute pool has {len(pool)} attributes, fewer than the {cfg.k} a profile "
                        f"needs; give more seeds or a smaller personas.k")
    have = stores["profiles"].read()
    rejections = stores["rejections"].read()
    given_up = {r.subject_id for r in rejections if r.reason == "incomplete"}
    needed = max(0, cfg.n - len(have))
    builder = ProfileBuilder(cfg, pool, nli, {}, {r.id for r in rejections})
    started = time.perf_counter()
    if needed:
        with contextlib.ExitStack() as stack:
            builder.sinks = {name: stack.enter_context(stores[name].appender())
                             for name in ("profiles", "checks", "rejections")}
            advance = stack.enter_context(ui.progress("building profiles", total=needed))
            builder.build(needed, {p.id for p in have} | given_up, advance)
    seconds = time.perf_counter() - started
    profiles = stores["profiles"].read()
    built = _built_rates(profiles, stores["checks"], nli)
    by_id = {a.id: a for a in pool}
    figures: dict[str, Any] = {
        "profiles_seconds_this_run": round(seconds, 2), "nli_pairs_this_run": builder.pairs_judged,
        "contradiction_rate_built": built, "topic_coverage": _coverage(profiles, pool, by_id)}
    if cfg.baseline:
        figures["contradiction_rate_random"] = _random_rates(cfg, pool, nli, min(cfg.baseline, len(profiles)))
    return figures


def _built_rates(profiles: list[Profile], checks_store: JsonlStore, nli) -> dict[str, Any]:
    checks = {c.id: c for c in checks_store.read()}
    missing = [p for p in profiles if p.id not in checks]
    pairs: list[PairCheck] = [pc for p in profiles if p.id in checks for pc in checks[p.id].pairs]
    if missing:  # a profile written just before a kill, its checks not yet: judge it now
        pairs += _judge([p.attributes for p in missing], nli)
    return _rate(pairs)


def _random_rates(cfg, pool: list[Attribute], nli, count: int) -> dict[str, Any]:
    rng = random.Random(int(record_id("random-profiles", cfg.seed), 16))
    size = min(cfg.k, len(pool))
    profiles = [[pool[i].text for i in rng.sample(range(len(pool)), size)] for _ in range(count)]
    return _rate(_judge(profiles, nli, "judging random profiles"))


def _judge(profiles: list[list[str]], nli, label: str | None = None) -> list[PairCheck]:
    """Every within-profile pair, both directions, in one predict call."""
    spans = [(texts, a, b) for texts in profiles for a in range(len(texts)) for b in range(a + 1, len(texts))]
    pairs = [p for texts, a, b in spans for p in ((texts[a], texts[b]), (texts[b], texts[a]))]
    if not pairs:
        return []
    if label:
        with ui.progress(label, total=len(pairs)) as advance:
            probs = nli.predict(pairs, advance)
    else:
        probs = nli.predict(pairs)
    return [PairCheck(a=a, b=b, ab=_r(probs[2 * i]), ba=_r(probs[2 * i + 1])) for i, (_, a, b) in enumerate(spans)]


def _rate(pairs: list[PairCheck]) -> dict[str, Any]:
    """Share of pairs whose most likely label is contradiction (or entailment) in either direction."""
    contra = sum(1 for p in pairs if int(np.argmax(p.ab)) == CONTRA or int(np.argmax(p.ba)) == CONTRA)
    entail = sum(1 for p in pairs if int(np.argmax(p.ab)) == ENTAIL or int(np.argmax(p.ba)) == ENTAIL)
    n = len(pairs)
    return {"pairs": n, "contradictions": contra, "rate": round(contra / n, 4) if n else 0.0,
            "entailments": entail, "entailment_rate": round(entail / n, 4) if n else 0.0}


def _coverage(profiles: list[Profile], pool: list[Attribute], by_id: dict[str, Attribute]) -> dict[str, Any]:
    topics = {a.topic for a in pool}
    used = Counter(by_id[i].topic for p in profiles for i in p.attribute_ids if i in by_id)
    per_profile = [len({by_id[i].topic for i in p.attribute_ids if i in by_id}) for p in profiles]
    return {"topics": len(topics), "topics_used": len(used),
            "mean_topics_per_profile": round(float(np.mean(per_profile)), 3) if per_profile else 0.0,
            "largest_topic_share": round(max(used.values()) / sum(used.values()), 4) if used else 0.0,
            "expanded_share": round(sum(1 for p in profiles for i in p.attribute_ids
                                        if i in by_id and by_id[i].source == "expanded")
                                    / max(1, sum(len(p.attribute_ids) for p in profiles)), 4)}


# --- counts and the summary -------------------------------------------------------------------

def _counts(stores: dict[str, JsonlStore], seeds: list[Attribute], pool: list[Attribute],
            expander: Expander | None) -> dict[str, int]:
    """Counts read back from the files, so a resumed run reports the whole run, not its last part."""
    rejected = Counter(r.reason for r in stores["rejections"].read())
    profiles = stores["profiles"].read()
    replies = stores["replies"].read()
    questions = stores["questions"].read()
    counts = {"seeds": len(seeds), "topics": len({a.topic for a in seeds}), "attributes": len(pool),
              "expanded": len(pool) - len(seeds),
              "questions": sum(len(q.questions) for q in questions if not q.fallback),
              "question_fallbacks": sum(1 for q in questions if q.fallback),
              "expansion_requests_done": len(replies),
              "parse_errors": sum(1 for r in replies if r.parse_error),
              "profiles": len(profiles), "accepted": sum(len(p.attribute_ids) for p in profiles)}
    counts.update({f"rejected_{reason}": n for reason, n in sorted(rejected.items())})
    if expander:
        counts["expansion_requests"] = expander.counts.requests
        counts["failed_this_run"] = expander.counts.failed + expander.counts.questions_failed
    return counts


def _rows(cfg, counts: dict[str, int], measures: dict[str, dict], rates: dict[str, Any],
          expander: Expander | None, failed: int, run_dir: RunDir) -> dict[str, Any]:
    seeds, pool = measures["seeds"], measures["pool"]
    rows: dict[str, Any] = {"seed attributes": counts["seeds"], "topics (k-means)": counts["topics"]}
    if expander:
        rows["questions induced"] = f"{counts['questions']} ({counts['question_fallbacks']} topics fell back " \
                                    f"to a generic question)"
        rows["expansion requests"] = f"{counts['expansion_requests_done']} of {counts['expansion_requests']} " \
                                     f"done ({expander.counts.already_done} before this run)"
        rows["expanded attributes kept"] = counts["expanded"]
        rows["dropped: exact / near duplicates"] = \
            f"{counts.get('rejected_duplicate_exact', 0)} / {counts.get('rejected_duplicate_near', 0)}"
        rows["dropped: lines not an attribute"] = counts.get("rejected_not_attribute", 0)
        rows["parse errors (replies with nothing usable)"] = counts["parse_errors"]
    clusters = f"clusters (leader, cos >= {cfg.cluster_similarity})"
    for key, label in (("attributes", "attributes"), ("clusters", clusters),
                       ("inter_cluster_distance", "mean inter-cluster distance"),
                       ("mean_length", "mean length (words)")):
        rows[f"{label}: seeds -> pool"] = f"{_fmt(seeds[key])} -> {_fmt(pool[key])}"
    if failed:
        rows["failed (re-run to retry)"] = failed
        rows["profiles"] = "not built until every expansion request is done"
        return rows
    rows["profiles"] = f"{counts['profiles']} (asked for {cfg.n})"
    rows["candidates: accepted / contradiction / redundant"] = \
        f"{counts['accepted']} / {counts.get('rejected_contradiction', 0)} / {counts.get('rejected_redundant', 0)}"
    rows["profiles given up (incomplete)"] = counts.get("rejected_incomplete", 0)
    coverage = rates["topic_coverage"]
    rows["topic coverage"] = f"{coverage['topics_used']} of {coverage['topics']} topics; " \
                             f"{coverage['mean_topics_per_profile']:.2f} topics per profile"
    built = rates["contradiction_rate_built"]
    rows["contradiction rate, built profiles"] = _rate_text(built)
    if "contradiction_rate_random" in rates:
        rows["contradiction rate, random profiles"] = _rate_text(rates["contradiction_rate_random"])
    rows["outputs"] = f"{run_dir.path}/" + ", ".join(FILES[k] for k in ("attributes", "profiles", "rejections"))
    return rows


def _rate_text(rate: dict[str, Any]) -> str:
    return f"{rate['rate']:.2%} ({rate['contradictions']} of {rate['pairs']} pairs)"


def _fmt(value: float | int) -> str:
    return f"{value:,}" if isinstance(value, int) else f"{value:.3f}"
