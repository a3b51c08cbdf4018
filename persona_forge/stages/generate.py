"""`forge generate`: the paper's Generator-Critic loop.

In:  <run_dir>/pairs.jsonl (Pair records) and the profiles they refer to (<run_dir>/profiles.jsonl,
     or the Synthetic-Persona-Chat file pairing read).
Out: dialogues.jsonl (every candidate, with every expert's score and the reasons), best.jsonl (the
     critic's choice per pair), preferences.jsonl (chosen vs rejected from one pair, for DPO),
     generate_rejections.jsonl (candidates the hard filters refused, pairs with no acceptable
     candidate), generate.manifest.json (per-round figures).

Method: the pairs are split over `rounds`. In each round the generator writes `candidates`
conversations per pair, with few-shot examples: Synthetic-Persona-Chat conversations in round 1,
the previous round's best conversations after that. In `whole` mode one request writes a whole
conversation (the paper; strong models); in `turns` mode two persona agents take turns, one
reply per request, each seeing only its own persona and the conversation so far (small models
cannot hold the whole format). In `turns` mode `turn_candidates` > 1 samples that many replies per
turn and keeps the one persona_forge.replyscore prefers (not contradicting the speaker's persona,
grounded in it, well formed); each conversation records which reply it kept per turn and its scores.
The critic (stages/critic.py) scores every candidate and picks the best acceptable one per pair.
A generator adapter (`generate.generator`, from `forge train --method generator`) is applied to the
local model; its hash is part of the config and the manifest.

Resumption: candidates are written as each chunk of pairs is generated and scored; a re-run
generates only the candidates that are missing. In `turns` mode every finished turn is also appended
to generate_progress.jsonl (keyed by candidate and step), so a run killed in the middle of a
conversation continues it from its last finished turn (a turn cut off while its replies were being
sampled is sampled again, with the same seeds); the file is removed when every conversation is
written. best, preferences and rejections are derived from dialogues.jsonl at the end, in one atomic
write each.
"""

from __future__ import annotations

import contextlib
import random
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import executors, layout, replyscore, ui
from ..config import BackendConfig, GenerateConfig, NLIConfig
from ..contract import FAILED, StageContext, StageResult
from ..corpora import load_profiles, spc_file
from ..errors import UserError
from ..nli.base import identity as nli_identity
from ..prompts import library
from ..samples import TURN_PROMPT, turn_messages
from ..schema import (Dialogue, Pair, Preference, Profile, Provenance, Rejection, Turn, TurnChoice, TurnProgress,
                      record_id)
from ..store import JsonlStore, RunDir, atomic_write_jsonl, file_sha256, iter_jsonl
from ..transcript import ParseError, clean_reply, format_transcript, parse_transcript
from . import critic
from .critic import Candidate

STAGE = "generate"
INPUTS = (layout.PAIRS, layout.PROFILES)  # or generate.pairs / generate.profiles
FILES = {"dialogues": layout.DIALOGUES, "best": layout.BEST, "preferences": layout.PREFERENCES,
         "rejections": layout.GENERATE_REJECTIONS, "progress": layout.GENERATE_PROGRESS}
OUTPUTS = tuple(FILES.values())
WHOLE_PROMPT = "generate/whole"  # TURN_PROMPT (generate/turn) lives with turn_messages in samples.py
SPC_EXAMPLES = 200  # corpus conversations the first round draws its examples from


def generator_prompt(mode: str) -> str:
    return WHOLE_PROMPT if mode == "whole" else TURN_PROMPT


@dataclass
class Work:
    """One candidate to generate: its id, pair, round, index, seed and examples."""

    id: str
    pair: Pair
    user1: list[str]
    user2: list[str]
    round: int
    index: int
    examples: list[list[Turn]]
    turns_wanted: int
    turns: list[Turn] = field(default_factory=list)
    choices: list[TurnChoice] = field(default_factory=list)
    error: str | None = None
    parse_error: str | None = None
    raw: str | None = None


# --- inputs --------------------------------------------------------------------------------

def input_paths(cfg: GenerateConfig, run_dir: Path, default_profiles: Path | None = None) -> tuple[Path, Path]:
    """pairs.jsonl and the profiles the pairs name: generate.profiles, else `default_profiles` (the
    file pairing read, which the caller hands on), else the personas stage's profiles.jsonl."""
    pairs = Path(cfg.pairs) if cfg.pairs else Path(run_dir) / layout.PAIRS
    if cfg.profiles:
        profiles = Path(cfg.profiles)
    elif default_profiles:
        profiles = Path(default_profiles)
    else:
        profiles = Path(run_dir) / layout.PROFILES
    for path, made_by in ((pairs, "forge pair"), (profiles, "forge personas")):
        if not path.is_file():
            raise UserError(f"{path}: not found; run `{made_by}` first or give generate.pairs / generate.profiles")
    return pairs, profiles


def load_pairs(pairs_path: Path, profiles_path: Path, limit: int) -> tuple[list[Pair], dict[str, Profile]]:
    pairs = list(iter_jsonl(pairs_path, Pair))
    if limit:
        pairs = pairs[:limit]
    if not pairs:
        raise UserError(f"{pairs_path}: no pairs in it; `forge pair` found none (see its summary)")
    profiles = {p.id: p for p in load_profiles(profiles_path).profiles}
    for pair in pairs:
        for user in (pair.user1, pair.user2):
            if user not in profiles:
                raise UserError(f"{pairs_path}: pair {pair.id} names user {user}, who is not in {profiles_path}; "
                                "give the profiles the pairs were made from (generate.profiles)")
    return pairs, profiles


def corpus_examples(count: int, seed: int) -> list[list[Turn]]:
    """Synthetic-Persona-Chat training conversations: the first round's few-shot examples."""
    rows = [row for row in iter_jsonl(spc_file("train"))]
    rng = random.Random(seed)
    chosen = rng.sample(rows, min(count, len(rows)))
    return [[Turn(**t) for t in row["turns"]] for row in chosen]


# --- the stage -----------------------------------------------------------------------------

def resolve_mode(cfg: GenerateConfig, backend_kind: str) -> str:
    if cfg.mode != "auto":
        return cfg.mode
    return "turns" if backend_kind == "local" else "whole"


def generator_adapter(cfg: GenerateConfig) -> Path | None:
    """The adapter folder generate.generator names (train/<name>/ or its adapter/), checked."""
    if cfg.generator is None:
        return None
    folder = Path(cfg.generator)
    for candidate in (folder / layout.ADAPTER, folder):
        if (candidate / "adapter_config.json").is_file() and (candidate / "adapter_model.safetensors").is_file():
            return candidate
    raise UserError(f"generate.generator {folder}: no LoRA adapter there (no adapter_config.json and "
                    "adapter_model.safetensors); train one with `forge train --method generator` and give its "
                    "folder, e.g. runs/NAME/train/generator")


def backend_config(cfg: GenerateConfig, chat: BackendConfig) -> BackendConfig:
    """The backend generate runs on: `chat` (the recipe's backend), with the generator adapter in place
    of backend.adapter when generate.generator names one (build the stage's backend from this)."""
    adapter = generator_adapter(cfg)
    if adapter is None:
        return chat
    if chat.kind == "openai":
        raise UserError("generate.generator: a LoRA adapter is applied to a local model; with an "
                        "OpenAI-compatible endpoint, serve it (forge serve --adapter generator=DIR) and name it "
                        "in backend.model instead")
    return chat.model_copy(update={"adapter": adapter})


def stage_config(cfg: GenerateConfig, chat: BackendConfig, nli_config: NLIConfig, mode: str,
                 prompts) -> dict[str, Any]:
    names = [critic.JUDGE_PROMPT] if cfg.critic.judge else []
    names.append(generator_prompt(mode))
    config = {"generate": cfg.identity(), "mode": mode, "backend": backend_config(cfg, chat).identity(),
              "nli": nli_identity(nli_config), "prompts": {n: prompts.ref(n).hash for n in names}}
    adapter = generator_adapter(cfg)
    if adapter is not None:
        config["generator"] = file_sha256(adapter / "adapter_model.safetensors")[:16]
    return config


def run(cfg: GenerateConfig, context: StageContext, backend, nli: Callable[[], Any] | Any, *, chat: BackendConfig,
        nli_config: NLIConfig, embed: Callable[[list[str]], np.ndarray] | None = None,
        default_profiles: Path | None = None, prompts_dir: Path | None = None) -> StageResult:
    """Run (or resume) the stage on `backend` (built from `backend_config(cfg, chat)`); `chat` is the
    recipe's backend section (its identity goes into the config hash, its kind chooses the mode);
    `nli` is an NLI model or a function that loads one, `nli_config` the section it comes from;
    `default_profiles`: the profiles file when generate.profiles is unset (pairing's pair.profiles)."""
    rows = _run(cfg, context, backend, nli, chat, nli_config, embed, default_profiles, prompts_dir)
    return StageResult.read(STAGE, rows, context.run_dir, OUTPUTS, failed=int(rows.get(FAILED) or 0))


def _run(cfg: GenerateConfig, context: StageContext, backend, nli, chat: BackendConfig, nli_config: NLIConfig,
         embed, default_profiles: Path | None, prompts_dir: Path | None) -> dict[str, Any]:
    pairs_path, profiles_path = input_paths(cfg, context.run_dir, default_profiles)
    pairs, profiles = load_pairs(pairs_path, profiles_path, cfg.limit)
    prompts = library(prompts_dir)
    mode = resolve_mode(cfg, chat.kind)
    config = stage_config(cfg, chat, nli_config, mode, prompts)
    inputs = [pairs_path, profiles_path] + ([Path(cfg.critic.blocklist)] if cfg.critic.blocklist else [])
    stage = RunDir(context.run_dir).begin(STAGE, config, inputs=inputs, outputs=list(OUTPUTS), force=context.force)
    for name, digest in config["prompts"].items():
        stage.record_prompt(name, digest)
    stage.record_model("generator", str(backend.describe()))
    if "generator" in config:
        stage.record_model("generator_adapter", f"{generator_adapter(cfg)} (sha256 {config['generator']})")
    store = JsonlStore(stage.run_dir.file(FILES["dialogues"]), Dialogue)
    store.repair()
    progress = JsonlStore(stage.run_dir.file(FILES["progress"]), TurnProgress)
    executor = context.executor or executors.get()
    loop = Loop(cfg, mode, backend, executor.nli(nli_config, nli), embed, prompts, profiles, store, progress)
    loop.run(pairs)
    if not loop.failed:  # every conversation is in dialogues.jsonl: no unfinished turns to keep
        progress.path.unlink(missing_ok=True)
        progress.path.with_name(progress.path.name + ".lock").unlink(missing_ok=True)
    stage.record_model("nli", loop.nli_description)
    results = select(loop.by_pair, pairs, cfg)
    write_results(stage.run_dir, results)
    figures = report(loop.by_pair, pairs, results, cfg)
    figures["usage"] = backend.usage.as_dict()
    figures["nli_pairs"] = loop.nli_counts
    figures["executor"] = executor.describe()
    for key, value in results.counts().items():
        stage.set_count(key, value)
    if loop.failed:
        stage.manifest.figures.update(figures)
        stage.save()
    else:
        stage.finish(**figures)
    return summary_rows(mode, pairs, results, figures, loop.failed, stage.run_dir.path)


class Loop:
    """The rounds: generate the missing candidates chunk by chunk, score them, append them."""

    def __init__(self, cfg: GenerateConfig, mode: str, backend, nli, embed, prompts, profiles: dict[str, Profile],
                 store: JsonlStore, progress: JsonlStore | None = None):
        self.cfg, self.mode = cfg, mode
        self.backend, self._nli, self.embed, self.prompts = backend, nli, embed, prompts
        self.profiles, self.store, self.progress = profiles, store, progress
        self.by_pair: dict[str, list[Dialogue]] = defaultdict(list)
        for dialogue in store.read():
            self.by_pair[dialogue.pair_id].append(dialogue)
        # Finished turns of conversations a killed run left unfinished: candidate id -> step -> record.
        self.partial: dict[str, dict[int, TurnProgress]] = defaultdict(dict)
        if progress is not None and mode == "turns":
            for record in progress.read():
                self.partial[record.candidate][record.step] = record
        self.failed = 0
        self.nli_counts = {"nli_pairs": 0, "nli_pairs_skipped": 0, "nli_pairs_judged": 0, "persona_pairs_judged": 0,
                           "sentence_pairs_judged": 0}
        if mode == "turns" and self.cfg.turn_candidates > 1:
            self.nli_counts["turn_selection_pairs_judged"] = 0
        self.nli_description = "not loaded (nothing to score)"
        self._chunk_memo = None
        self._blocklist = critic.blocklist(self.cfg.critic.blocklist)
        # Hashed once: every candidate's provenance names the same template (reading and hashing
        # it per candidate was a file read per record).
        self.prompt_ref = prompts.ref(generator_prompt(mode))

    def _memo(self):
        """The NLI, remembering this chunk's judgements when turns are selected: the critic then finds
        the (sentence, reply) pairs of every kept reply already judged. Forgotten after each chunk."""
        if self.cfg.turn_candidates == 1:
            return self.nli
        if self._chunk_memo is None:
            self._chunk_memo = replyscore.RememberingNLI(self.nli)
        return self._chunk_memo

    @property
    def nli(self):
        if callable(self._nli) and not hasattr(self._nli, "predict"):
            self._nli = self._nli()
        self.nli_description = self._nli.describe()
        return self._nli

    def run(self, pairs: list[Pair]) -> None:
        # One session for the whole stage: one event loop and one client from the first chunk to the
        # last. Chunks stay barriers: the critic scores a whole chunk (its NLI batches and the
        # siblings form compares), each turn needs the one before, and a round's examples are the
        # previous round's best.
        with self.backend.session() as self._session:
            self._rounds(pairs)

    def _complete(self, requests: list) -> list:
        return self._session.complete(requests)

    def _rounds(self, pairs: list[Pair]) -> None:
        cfg = self.cfg
        pool = corpus_examples(SPC_EXAMPLES, cfg.seed) if cfg.examples else []
        for round_no in range(cfg.rounds):
            members = [p for i, p in enumerate(pairs) if i % cfg.rounds == round_no]
            if round_no > 0 and cfg.examples:
                pool = self.best_of_round(round_no - 1, members=pairs) or pool
            work = [w for p in members for w in self.missing(p, round_no, pool)]
            if not work:
                continue
            with ui.progress(f"round {round_no + 1}/{cfg.rounds}: candidates", total=len(work)) as advance:
                for start in range(0, len(work), cfg.chunk_pairs * cfg.candidates):
                    chunk = work[start:start + cfg.chunk_pairs * cfg.candidates]
                    self.generate(chunk)
                    self.score_and_write(chunk)
                    self._chunk_memo = None
                    advance(len(chunk))

    def best_of_round(self, round_no: int, members: list[Pair]) -> list[list[Turn]]:
        """The top `example_pool` acceptable conversations of a round: the next round's examples."""
        best = []
        for pair in members:
            dialogues = [d for d in self.by_pair.get(pair.id, []) if d.round == round_no]
            choice = pick(dialogues, self.cfg)
            if choice is not None:
                best.append(choice)
        best.sort(key=lambda d: (-(d.scores.get("critic") or 0.0), d.id))
        return [list(d.turns) for d in best[: self.cfg.example_pool]]

    def missing(self, pair: Pair, round_no: int, pool: list[list[Turn]]) -> list[Work]:
        have = {d.candidate for d in self.by_pair.get(pair.id, [])}
        user1 = self.profiles[pair.user1].attributes
        user2 = self.profiles[pair.user2].attributes
        out = []
        for index in range(self.cfg.candidates):
            if index in have:
                continue
            cid = record_id("candidate", pair.id, index, self.cfg.seed)
            rng = random.Random(cid)
            shown = self.cfg.examples if self.mode == "whole" else min(1, self.cfg.examples)
            examples = rng.sample(pool, min(shown, len(pool))) if pool else []
            wanted = self.cfg.turns or rng.randint(self.cfg.min_turns, self.cfg.max_turns)
            work = Work(cid, pair, list(user1), list(user2), round_no, index, examples, wanted)
            done = self.partial.get(cid, {})
            while len(work.turns) in done:  # the turns a killed run finished, in order
                record = done[len(work.turns)]
                work.turns.append(record.turn)
                if record.choice is not None:
                    work.choices.append(record.choice)
            out.append(work)
        return out

    # --- generation ---

    def generate(self, chunk: list[Work]) -> None:
        if self.mode == "whole":
            self._whole(chunk)
        else:
            self._turns(chunk)

    def _seed(self, work: Work, step: int = 0, reply: int = 0) -> int:
        """The seed of a request; reply j > 0 of a turn (turn selection) gets its own, reply 0 the one
        a single reply has always had."""
        key = record_id(work.id, step) if reply == 0 else record_id(work.id, step, reply)
        return int(key, 16) % 2**31

    def _whole(self, chunk: list[Work]) -> None:
        from ..backends import ChatRequest

        cfg = self.cfg
        requests = []
        for work in chunk:
            topics = [(t.user1_attribute, t.user2_attribute) for t in work.pair.shared_topics]
            rendered = self.prompts.render(WHOLE_PROMPT, user1=work.user1, user2=work.user2, topics=topics,
                                           examples=[format_transcript(e) for e in work.examples],
                                           min_turns=cfg.min_turns, max_turns=cfg.max_turns)
            requests.append(ChatRequest.of(rendered.messages, max_tokens=cfg.max_tokens,
                                           temperature=cfg.temperature, seed=self._seed(work)))
        for work, completion in zip(chunk, self._complete(requests)):
            if not completion.ok:
                work.error = completion.error
                continue
            work.raw = completion.text
            try:
                work.turns = parse_transcript(completion.text)
            except ParseError as exc:
                work.parse_error = str(exc)

    def _turns(self, chunk: list[Work]) -> None:
        """Persona agents in lockstep: step t asks every candidate that has t turns for its turn t
        (`turn_candidates` replies each); finished turns go to the progress log as they come."""
        from ..backends import ChatRequest

        k = self.cfg.turn_candidates
        longest = max(w.turns_wanted for w in chunk)
        with contextlib.ExitStack() as stack:
            log = stack.enter_context(self.progress.appender()) if self.progress is not None else None
            for step in range(min(len(w.turns) for w in chunk), longest):
                active = [w for w in chunk if len(w.turns) == step < w.turns_wanted
                          and w.error is None and w.parse_error is None]
                if not active:
                    continue  # resumed conversations further on may still want this chunk's later steps
                requests = [ChatRequest.of(self._agent_messages(w, step), max_tokens=self.cfg.turn_max_tokens,
                                           temperature=self.cfg.temperature, seed=self._seed(w, step, j),
                                           stop=("\n\n",)) for w in active for j in range(k)]
                completions = self._complete(requests)
                replies, raw = {}, {}
                for i, work in enumerate(active):
                    mine = completions[i * k:(i + 1) * k]
                    failed = next((c for c in mine if not c.ok), None)
                    if failed is not None:  # retried whole on a re-run: the kept reply never depends on luck
                        work.error = failed.error
                        continue
                    raw[work.id] = [c.text for c in mine]
                    replies[work.id] = [clean_reply(c.text, truncated=c.finish_reason == "length") for c in mine]
                chosen = self._select(step, [w for w in active if w.id in replies], replies)
                speaker = "user1" if step % 2 == 0 else "user2"
                for work in active:
                    if work.id not in replies:
                        continue
                    index, choice = chosen[work.id]
                    text = replies[work.id][index]
                    if not text:  # (selection keeps an empty reply only when every reply was empty)
                        work.parse_error = f"turn {step + 1}: empty reply ({raw[work.id][index][:80]!r})"
                        continue
                    work.turns.append(Turn(speaker=speaker, text=text))
                    if choice is not None:
                        work.choices.append(choice)
                    if log is not None:
                        log.write(TurnProgress(id=record_id(work.id, step), candidate=work.id, step=step,
                                               turn=work.turns[-1], choice=choice))

    def _select(self, step: int, works: list[Work], replies: dict[str, list[str]]) -> dict[str, tuple[int, Any]]:
        """Per conversation: the index of the reply to keep and its TurnChoice (None with one reply)."""
        if self.cfg.turn_candidates == 1:
            return {w.id: (0, None) for w in works}
        speaker = "user1" if step % 2 == 0 else "user2"
        batch = []
        for work in works:
            persona = work.user1 if speaker == "user1" else work.user2
            earlier = [t.text for t in work.turns if t.speaker == speaker]
            previous = work.turns[-1].text if work.turns else None
            batch += [replyscore.Reply(persona, text, earlier, previous) for text in replies[work.id]]
        scores, judged = replyscore.score_replies(batch, self._memo(), self.cfg.turn_max_words,
                                                   self.cfg.critic.contradiction if self.cfg.critic.by_sentence else None)
        self.nli_counts["turn_selection_pairs_judged"] += judged
        out, k = {}, self.cfg.turn_candidates
        for i, work in enumerate(works):
            mine = scores[i * k:(i + 1) * k]
            index = replyscore.preferred(mine, self.cfg.critic.contradiction)
            kept = mine[index]
            out[work.id] = (index, TurnChoice(kept=index, of=k, contradiction=kept.contradiction,
                                              grounding=kept.grounding, form=kept.form))
        return out

    def _agent_messages(self, work: Work, step: int) -> list[dict[str, str]]:
        speaker = "user1" if step % 2 == 0 else "user2"
        persona = work.user1 if speaker == "user1" else work.user2
        topics = work.pair.shared_topics
        topic = (topics[0].user1_attribute if speaker == "user1" else topics[0].user2_attribute) if topics else None
        example = work.examples[0][: self.cfg.example_turns] if work.examples else None
        return turn_messages(persona, work.turns, speaker, topic, example, self.prompts)

    # --- critic ---

    def score_and_write(self, chunk: list[Work]) -> None:
        done = [w for w in chunk if w.error is None]
        self.failed += len(chunk) - len(done)
        scored = [w for w in done if w.parse_error is None and w.turns]
        candidates = {w.id: Candidate(w.id, w.user1, w.user2, w.turns) for w in scored}
        if candidates:
            self._critique(scored, candidates)
        with self.store.appender() as out:
            for work in done:
                dialogue = self._dialogue(work, candidates.get(work.id))
                out.write(dialogue)
                self.by_pair[work.pair.id].append(dialogue)

    def _critique(self, scored: list[Work], candidates: dict[str, Candidate]) -> None:
        cfg = self.cfg.critic
        counts = critic.score_faithfulness(list(candidates.values()), self._memo(), cfg, self.embed)
        for key, value in counts.items():
            self.nli_counts[key] += value
        if cfg.judge:
            requests = [critic.judge_request(candidates[w.id], self.prompts, cfg) for w in scored]
            for work, completion in zip(scored, self._complete(requests)):
                critic.read_judgement(candidates[work.id], completion)
        siblings: dict[str, list[Candidate]] = defaultdict(list)
        for work in scored:
            siblings[work.pair.id].append(candidates[work.id])
        for work in scored:
            candidate = candidates[work.id]
            previous = [Candidate(d.id, [], [], list(d.turns)) for d in self.by_pair.get(work.pair.id, [])]
            critic.score_form(candidate, siblings[work.pair.id] + previous, self.cfg.min_turns, self.cfg.max_turns)
            critic.score_safety(candidate, self._blocklist)
            critic.combine(candidate, cfg)

    def _dialogue(self, work: Work, candidate: Candidate | None) -> Dialogue:
        params = {"mode": self.mode, "examples": len(work.examples), "seed": self.cfg.seed}
        if work.choices:
            params["turn_candidates"] = self.cfg.turn_candidates
        provenance = Provenance(backend=self.backend.name, model=self.backend.model, prompt=self.prompt_ref.name,
                                prompt_hash=self.prompt_ref.hash, params=params)
        scores = dict(candidate.scores) if candidate else {"critic": 0.0}
        reasons = dict(candidate.reasons) if candidate else {}
        if work.parse_error and work.raw:
            reasons["raw"] = work.raw[:500]
        return Dialogue(id=work.id, pair_id=work.pair.id, user1_persona=work.user1, user2_persona=work.user2,
                        turns=work.turns, round=work.round, candidate=work.index, provenance=provenance,
                        parse_error=work.parse_error, scores=scores, reasons=reasons,
                        turn_choices=list(work.choices) if work.choices else None)


# --- selection ---------------------------------------------------------------------------------

def verdict(dialogue: Dialogue, cfg: GenerateConfig) -> str | None:
    """The hard filters' reason for refusing a candidate, or None."""
    if dialogue.parse_error:
        return "unparseable"
    if len(dialogue.turns) < cfg.min_turns:
        return "too_short"
    if (dialogue.scores.get("contradicted") or 0) > cfg.critic.max_contradicted:
        return "contradiction"
    if dialogue.scores.get("unsafe"):
        return "unsafe"
    return None


def pick(dialogues: Sequence[Dialogue], cfg: GenerateConfig) -> Dialogue | None:
    """The best acceptable candidate (highest critic score; ties: lowest candidate index)."""
    ok = [d for d in dialogues if verdict(d, cfg) is None]
    return min(ok, key=lambda d: (-(d.scores.get("critic") or 0.0), d.candidate)) if ok else None


@dataclass
class Results:
    best: list[Dialogue] = field(default_factory=list)
    preferences: list[Preference] = field(default_factory=list)
    rejections: list[Rejection] = field(default_factory=list)
    candidates: int = 0

    def counts(self) -> dict[str, int]:
        return {"candidates": self.candidates, "best": len(self.best), "preferences": len(self.preferences),
                "rejections": len(self.rejections)}


def select(by_pair: dict[str, list[Dialogue]], pairs: list[Pair], cfg: GenerateConfig) -> Results:
    results = Results()
    for pair in pairs:
        dialogues = sorted(by_pair.get(pair.id, []), key=lambda d: d.candidate)
        results.candidates += len(dialogues)
        for dialogue in dialogues:
            reason = verdict(dialogue, cfg)
            if reason:
                results.rejections.append(Rejection(
                    id=record_id(STAGE, dialogue.id, reason), stage=STAGE, subject_id=dialogue.id, reason=reason,
                    detail={"pair_id": pair.id, "critic": dialogue.scores.get("critic"),
                            **{k: v for k, v in dialogue.reasons.items() if k != "raw"}}))
        if len(dialogues) < cfg.candidates:
            continue  # not finished (requests failed): no verdict on the pair yet
        chosen = pick(dialogues, cfg)
        if chosen is None:
            results.rejections.append(Rejection(
                id=record_id(STAGE, pair.id, "no_acceptable_candidate"), stage=STAGE, subject_id=pair.id,
                reason="no_acceptable_candidate", detail={"candidates": [d.id for d in dialogues]}))
            continue
        results.best.append(chosen)
        preference = preference_for(chosen, dialogues, cfg)
        if preference is not None:
            results.preferences.append(preference)
    return results


def preference_for(chosen: Dialogue, dialogues: Sequence[Dialogue], cfg: GenerateConfig) -> Preference | None:
    """Chosen vs the lowest-scoring readable candidate of the same pair (a refused one is a fine
    `rejected`: the critic says why it is worse), when the gap is at least `min_margin`."""
    readable = [d for d in dialogues if d.id != chosen.id and not d.parse_error and d.turns]
    if not readable:
        return None
    worst = min(readable, key=lambda d: ((d.scores.get("critic") or 0.0), -d.candidate))
    margin = (chosen.scores.get("critic") or 0.0) - (worst.scores.get("critic") or 0.0)
    if margin < cfg.critic.min_margin:
        return None
    return Preference(id=record_id("preference", chosen.id, worst.id), pair_id=chosen.pair_id or "",
                      user1_persona=chosen.user1_persona, user2_persona=chosen.user2_persona, round=chosen.round,
                      chosen_id=chosen.id, rejected_id=worst.id, chosen_turns=chosen.turns,
                      rejected_turns=worst.turns, chosen_score=chosen.scores.get("critic") or 0.0,
                      rejected_score=worst.scores.get("critic") or 0.0)


def write_results(run_dir: RunDir, results: Results) -> None:
    atomic_write_jsonl(run_dir.file(FILES["best"]), results.best)
    atomic_write_jsonl(run_dir.file(FILES["preferences"]), results.preferences)
    atomic_write_jsonl(run_dir.file(FILES["rejections"]), results.rejections)


# --- figures -----------------------------------------------------------------------------------

def _rate(dialogues: Sequence[Dialogue], cfg: GenerateConfig) -> float | None:
    """Share of conversations with at least one utterance contradicting its speaker's persona."""
    scored = [d for d in dialogues if "contradicted" in d.scores]
    if not scored:
        return None
    return round(sum((d.scores["contradicted"] or 0) > 0 for d in scored) / len(scored), 4)


def _mean(values: Sequence[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return round(float(np.mean(kept)), 4) if kept else None


def report(by_pair: dict[str, list[Dialogue]], pairs: list[Pair], results: Results, cfg: GenerateConfig) -> dict:
    """Per round and overall: mean critic score and contradiction rate of every candidate, of the
    first candidate of each pair (what a single-shot generator would have kept) and of the
    critic's choice."""
    chosen = {d.pair_id: d for d in results.best}
    rounds = []
    for round_no in range(cfg.rounds):
        members = [p.id for i, p in enumerate(pairs) if i % cfg.rounds == round_no]
        rounds.append(_figures(round_no + 1, members, by_pair, chosen, cfg))
    overall = _figures("all", [p.id for p in pairs], by_pair, chosen, cfg)
    return {"rounds": rounds, "overall": overall}


def _figures(label, members: list[str], by_pair, chosen, cfg: GenerateConfig) -> dict[str, Any]:
    everything = [d for pid in members for d in by_pair.get(pid, [])]
    first = [d for d in everything if d.candidate == 0]
    best = [chosen[pid] for pid in members if pid in chosen]
    return {
        "round": label, "pairs": len(members), "candidates": len(everything),
        "unparseable": sum(bool(d.parse_error) for d in everything), "kept_pairs": len(best),
        "critic_mean_all": _mean([d.scores.get("critic") for d in everything]),
        "critic_mean_single_shot": _mean([d.scores.get("critic") for d in first]),
        "critic_mean_selected": _mean([d.scores.get("critic") for d in best]),
        "contradiction_rate_all": _rate(everything, cfg),
        "contradiction_rate_single_shot": _rate(first, cfg),
        "contradiction_rate_selected": _rate(best, cfg),
        "quality_mean_selected": _mean([d.scores.get("quality") for d in best]),
        "coverage_mean_selected": _mean([d.scores.get("coverage") for d in best]),
        "turns_mean_selected": _mean([len(d.turns) for d in best]),
    }


def summary_rows(mode: str, pairs: list[Pair], results: Results, figures: dict, failed: int, path: Path) -> dict:
    rows: dict[str, Any] = {"mode": mode, "pairs": len(pairs), "candidates": results.candidates}
    for r in figures["rounds"]:
        rows[f"round {r['round']}: mean critic (all / selected)"] = f"{_fmt(r['critic_mean_all'])} / " \
                                                                    f"{_fmt(r['critic_mean_selected'])}"
        rows[f"round {r['round']}: contradiction rate (all / selected)"] = \
            f"{_fmt(r['contradiction_rate_all'])} / {_fmt(r['contradiction_rate_selected'])}"
    overall = figures["overall"]
    rows["contradiction rate: single-shot -> selected"] = \
        f"{_fmt(overall['contradiction_rate_single_shot'])} -> {_fmt(overall['contradiction_rate_selected'])}"
    rows["pairs kept (best.jsonl)"] = len(results.best)
    rows["preference pairs (DPO)"] = len(results.preferences)
    reasons: dict[str, int] = defaultdict(int)
    for rejection in results.rejections:
        reasons[rejection.reason] += 1
    rows["refused"] = ", ".join(f"{k} {v}" for k, v in sorted(reasons.items())) or "none"
    if failed:
        rows["failed (re-run to retry)"] = failed
    rows["output"] = str(path)
    return rows


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"
