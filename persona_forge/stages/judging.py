"""`forge judge`: an LLM judge on eval's replies, and Big Five probes of the models under test.

In:  <run_dir>/eval/generations.jsonl (EvalGeneration; or --input) and eval/metrics.json (which
     models, which adapters); corpora/bigfive/ipip_items.jsonl (IPIP-style items in paraphrase groups).
Out: <run_dir>/judge/judgements.jsonl (RubricJudgement: persona consistency, tone, helpfulness,
     naturalness, 1-5 with reasons), pairwise.jsonl (PairwiseJudgement: base vs each adapter, asked
     A/B and B/A), bigfive.jsonl (BigFiveAnswer), judge.json, judge.png, report.md;
     <run_dir>/judge.manifest.json. Every file is appended as answers arrive: a re-run asks only
     what is missing.

The judge is the recipe's backend (or `judge.backend`); the Big Five items are answered by each
model under test in persona (the item as the other user's turn after the persona system prompt).
Where the backend gives token probabilities (`judge.scoring`: local, openai) every question asks
for one token and the score is the expectation over the answer options (rubric.py defines them);
elsewhere the answer is JSON text (with a structured-output schema on endpoints). A judge reply
that cannot be read is kept with its parse error and counted, never fatal. `plan` builds every
request once: `run` sends it, `estimate` counts it; the judge cache (judgecache.py) answers
repeated questions without a request.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .. import metrics as M
from .. import layout, plots, ui
from ..config import BackendConfig, JudgeConfig, NLIConfig
from ..contract import StageContext, StageResult
from ..errors import UserError
from ..prompts import library
from ..rubric import LIKERT, REPLY, RubricParse
from ..rubric import PAIRWISE as PAIRWISE_CHOICE
from ..resources import data_dir
from ..samples import reply_messages
from ..schema import (BASE, BigFiveAnswer, EvalGeneration, PairwiseJudgement, Provenance, RubricJudgement, Turn,
                      record_id)
from ..store import JsonlStore, RunDir, atomic_write_json, atomic_write_text, iter_json_lines

STAGE = "judge"
FOLDER = layout.JUDGE
INPUTS = (layout.EVAL_GENERATIONS,)  # or judge.input; eval's metrics.json beside it names the adapters
OUTPUTS = (FOLDER,)
TRAITS = ("openness", "conscientiousness", "extraversion", "agreeableness", "neuroticism")
RUBRIC, PAIRWISE, BIGFIVE = "judge/rubric", "judge/pairwise", "judge/bigfive"
CRITERION, CHOICE = "judge/criterion", "judge/choice"   # the one-token questions of method logprobs
# Text the answer starts with, for backends that prefill the assistant turn (local); empty: the
# first token of the answer is read (the prompts end "Answer with a single digit/letter").
ANSWER_PREFIX = ""


# --- reading judge replies (one definition each, in rubric.py) ------------------------------------

CRITERIA = REPLY.keys


def parse_rubric(parsed: Any, text: str | None = None) -> RubricParse:
    """Scores for each criterion from a JSON judge reply (rubric.REPLY.parse; the score rule is
    rubric.py's: a number on the scale, decimals kept, the first number of a string)."""
    return REPLY.parse(parsed, text)


def parse_winner(parsed: Any, text: str | None = None) -> tuple[str | None, str | None, str | None]:
    """("A" | "B" | "tie" | None, reason, parse error) from a pairwise reply."""
    return PAIRWISE_CHOICE.parse(parsed, text)


def parse_likert(text: str | None) -> tuple[int | None, str | None]:
    """The answer 1-5 of a Big Five probe: the first digit 1-5 standing alone, else the scale's words."""
    return LIKERT.parse(text)


# --- the pieces ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Item:
    id: str
    trait: str
    keyed: str
    group: str
    text: str


def default_items() -> Path:
    return data_dir("corpora") / "bigfive" / "ipip_items.jsonl"


def load_items(path: Path) -> list[Item]:
    items = []
    for line_no, row in iter_json_lines(path):
        try:
            item = Item(str(row["id"]), str(row["trait"]), str(row["keyed"]), str(row["group"]), str(row["text"]))
        except (KeyError, TypeError):
            raise UserError(f"{path}:{line_no}: an item needs id, trait, keyed (+ or -), group and text") from None
        if item.trait not in TRAITS or item.keyed not in "+-" or len(item.keyed) != 1:
            raise UserError(f"{path}:{line_no}: trait must be one of {', '.join(TRAITS)} and keyed + or -")
        items.append(item)
    if not items:
        raise UserError(f"{path}: no items")
    return items


def history_of(generation: EvalGeneration) -> list[dict[str, str]]:
    """The conversation before the reply, as the judge prompts show it (Me / Them)."""
    return [{"speaker": "Me" if m.role == "assistant" else "Them", "text": m.content}
            for m in generation.messages if m.role != "system"]


def read_generations(path: Path) -> list[EvalGeneration]:
    store = JsonlStore(path, EvalGeneration)
    if not store.exists():
        raise UserError(f"{path}: no generations to judge; run forge eval first (or give --input)")
    return store.read()


@dataclass(frozen=True)
class ProbeModel:
    name: str
    adapter: Path | None
    digest: str


def probe_models(chat: BackendConfig, generations: Sequence[EvalGeneration], metrics_path: Path) -> list[ProbeModel]:
    """The models under test: eval's (with their adapters) when metrics.json says, else the base."""
    if metrics_path.is_file():
        models = json.loads(metrics_path.read_text())["models"]
        return [ProbeModel(name, Path(row["adapter"]) if row.get("adapter") else None, row["digest"])
                for name, row in models.items()]
    digests = {g.model: g.model_digest for g in generations}
    return [ProbeModel(BASE, None, digests.get(BASE, record_id(chat.model)))]


def judge_backend_config(cfg: JudgeConfig, chat: BackendConfig) -> BackendConfig:
    """The judge: judge.backend, else the recipe's backend `chat` without its adapter."""
    return cfg.backend or chat.model_copy(update={"adapter": None})


BackendFactory = Callable[[BackendConfig], Any]


# --- the stage -------------------------------------------------------------------------------------

def stage_config(cfg: JudgeConfig, chat: BackendConfig) -> dict[str, Any]:
    ident = cfg.identity()
    ident["backend"] = judge_backend_config(cfg, chat).identity()
    ident["probe_backend"] = {k: v for k, v in chat.identity().items() if k != "adapter"}
    return {"judge": ident}


def uses_logprobs(scoring: str, config: BackendConfig) -> bool:
    """Whether questions to this backend are asked for token probabilities (`judge.scoring`)."""
    if scoring != "auto":
        return scoring == "logprobs"
    return config.kind in ("local", "openai")


@dataclass
class Part:
    """One batch of questions to one backend: the requests, and what each one is about.

    `run` sends them and `estimate` counts them: one builder, so the estimate is what is sent."""

    name: str                           # rubric, pairwise, bigfive
    label: str                          # progress and usage label
    config: BackendConfig               # the backend that answers
    role: str                           # the manifest's models entry
    options: tuple[str, ...] | None     # the answer options (method logprobs); None: a text answer
    requests: list[Any]
    meta: list[Any]
    prompt: str                         # the template asked


@dataclass
class Context:
    cfg: JudgeConfig
    chat: BackendConfig                 # the recipe's backend: the probed models run on it
    folder: Path
    prompts: Any
    generations: list[EvalGeneration]
    items: list[Item]
    models: list[ProbeModel]


def _request(prompts, name: str, variables: dict[str, Any], cfg, schema: dict[str, Any] | None = None,
             json_mode: bool = True):
    from ..backends import ChatRequest

    rendered = prompts.render(name, **variables)
    return ChatRequest.of(rendered.messages, json=json_mode, temperature=cfg.temperature, max_tokens=cfg.max_tokens,
                          seed=cfg.seed, schema=schema)


def _rubric_part(ctx: Context) -> tuple[Part, set[str]]:
    cfg = ctx.cfg
    judge_cfg = judge_backend_config(cfg, ctx.chat)
    probs = uses_logprobs(cfg.scoring, judge_cfg)
    name = CRITERION if probs else RUBRIC
    digest = ctx.prompts.ref(name).hash
    ids = {g.id: record_id(g.id, digest) for g in ctx.generations}
    done = JsonlStore(ctx.folder / "judgements.jsonl", RubricJudgement).ids()
    todo = [g for g in ctx.generations if ids[g.id] not in done]
    requests, meta = [], []
    for g in todo:
        base = {"persona": g.persona, "history": history_of(g), "reply": g.reply}
        if probs:
            for c in REPLY.criteria:
                variables = {**base, **REPLY.variables(), "criterion": {"key": c.key, "question": c.question}}
                requests.append(_request(ctx.prompts, name, variables, cfg, json_mode=False))
                meta.append((ids[g.id], g, c.key))
        else:
            requests.append(_request(ctx.prompts, name, {**base, **REPLY.variables()}, cfg,
                                     schema=REPLY.response_format()))
            meta.append((ids[g.id], g, None))
    part = Part("rubric", "judge: rubric", judge_cfg, "judge", REPLY.options if probs else None, requests, meta, name)
    return part, set(ids.values())


def _pairwise_part(ctx: Context) -> tuple[Part, set[str]]:
    cfg = ctx.cfg
    judge_cfg = judge_backend_config(cfg, ctx.chat)
    probs = uses_logprobs(cfg.scoring, judge_cfg)
    name = CHOICE if probs else PAIRWISE
    digest = ctx.prompts.ref(name).hash
    by = {(g.model, g.example_id): g for g in ctx.generations}
    adapters = [m for m in dict.fromkeys(g.model for g in ctx.generations) if m != BASE]
    questions = []   # (record id, example, a, b, order)
    for adapter in adapters:
        for example in dict.fromkeys(g.example_id for g in ctx.generations):
            base, other = by.get((BASE, example)), by.get((adapter, example))
            if base is None or other is None:
                continue
            for order, (a, b) in (("base_first", (base, other)), ("base_second", (other, base))):
                questions.append((record_id(a.id, b.id, order, digest), example, a, b, order))
    done = JsonlStore(ctx.folder / "pairwise.jsonl", PairwiseJudgement).ids()
    todo = [q for q in questions if q[0] not in done]
    requests = [_request(ctx.prompts, name, {"persona": a.persona, "history": history_of(a), "reply_a": a.reply,
                                             "reply_b": b.reply}, cfg, json_mode=not probs,
                         schema=None if probs else PAIRWISE_CHOICE.response_format())
                for _, _, a, b, _ in todo]
    part = Part("pairwise", "judge: pairwise", judge_cfg, "judge", PAIRWISE_CHOICE.options if probs else None,
                requests, todo, name)
    return part, {q[0] for q in questions}


def _bigfive_parts(ctx: Context) -> tuple[list[Part], set[str]]:
    from ..backends import ChatRequest

    cfg = ctx.cfg
    digest = ctx.prompts.ref(BIGFIVE).hash
    personas = list({record_id(g.persona): g.persona for g in ctx.generations}.items())[:cfg.personas]
    done = JsonlStore(ctx.folder / "bigfive.jsonl", BigFiveAnswer).ids()
    parts, wanted = [], set()
    for model in ctx.models:
        config = ctx.chat.model_copy(update={"adapter": model.adapter})
        probs = uses_logprobs(cfg.scoring, config)
        method = ("logprobs",) if probs else ()
        rows = [(record_id(model.name, model.digest, pid, item.id, digest, *method), pid, persona, item)
                for pid, persona in personas for item in ctx.items]
        wanted.update(r[0] for r in rows)
        todo = [r for r in rows if r[0] not in done]
        requests = []
        for _, _, persona, item in todo:
            question = ctx.prompts.render(BIGFIVE, item=item.text).messages[-1]["content"]
            messages = reply_messages(persona, [Turn(speaker="user2", text=question)], "user1", ctx.prompts)
            requests.append(ChatRequest.of([m.model_dump() for m in messages], temperature=0.0,
                                           max_tokens=cfg.probe_max_tokens, seed=cfg.seed))
        parts.append(Part("bigfive", f"bigfive: {model.name}", config, f"bigfive:{model.name}",
                          LIKERT.options if probs else None, requests, [(model, *r) for r in todo], BIGFIVE))
    return parts, wanted


def plan(ctx: Context) -> tuple[list[Part], dict[str, set[str]]]:
    """Every question the run would send now (answered ones left out), by part; and per part the
    record ids its summary covers."""
    cfg = ctx.cfg
    parts: list[Part] = []
    wanted: dict[str, set[str]] = {}
    if cfg.rubric:
        part, wanted["rubric"] = _rubric_part(ctx)
        parts.append(part)
    if cfg.pairwise:
        part, wanted["pairwise"] = _pairwise_part(ctx)
        parts.append(part)
    if cfg.bigfive:
        more, wanted["bigfive"] = _bigfive_parts(ctx)
        parts += more
    return parts, wanted


def _context(cfg: JudgeConfig, run_dir: RunDir, chat: BackendConfig,
             prompts_dir: Path | None) -> tuple[Context, Path, Path]:
    source = Path(cfg.input) if cfg.input else run_dir.file(layout.EVAL_GENERATIONS)
    generations = read_generations(source)
    items_path = Path(cfg.items) if cfg.items else default_items()
    items = load_items(items_path) if cfg.bigfive else []
    examples = list(dict.fromkeys(g.example_id for g in generations))
    if cfg.limit:
        examples = examples[:cfg.limit]
    keep = set(examples)
    generations = [g for g in generations if g.example_id in keep]
    prompts = library(str(prompts_dir) if prompts_dir else None)
    models = probe_models(chat, generations, source.parent / "metrics.json") if cfg.bigfive else []
    return Context(cfg, chat, run_dir.file(FOLDER), prompts, generations, items, models), source, items_path


def _cache(cfg: JudgeConfig):
    from ..judgecache import JudgeCache

    if not cfg.cache:
        return None
    return JudgeCache(Path(cfg.cache_path) if cfg.cache_path else None)


def run(cfg: JudgeConfig, context: StageContext, *, chat: BackendConfig, nli_config: NLIConfig,
        bootstrap: tuple[int, int], contradiction: float, prompts_dir: Path | None = None,
        backend_factory: BackendFactory | None = None) -> StageResult:
    """Judge eval's replies. Handed by the caller: `chat`, the recipe's backend (the probed models, and
    the judge unless judge.backend is set); `nli_config`, the NLI judge.nli_agreement loads;
    `bootstrap`, (resamples, seed) of the rubric's intervals, and `contradiction`, the threshold the NLI
    agreement uses: eval's, so both stages' figures are drawn alike. The result's `data` is judge.json's
    content."""
    data = _run(cfg, context, chat, nli_config, bootstrap, contradiction, prompts_dir, backend_factory)
    summary = {"examples": data["examples"], "judge": data["judge"]["model"],
               "outputs": str(Path(context.run_dir) / FOLDER)}
    return StageResult.read(STAGE, summary, context.run_dir, OUTPUTS, data=data)


def _run(cfg: JudgeConfig, context: StageContext, chat: BackendConfig, nli_config: NLIConfig,
         bootstrap: tuple[int, int], contradiction: float, prompts_dir: Path | None,
         backend_factory: BackendFactory | None) -> dict[str, Any]:
    from ..backends import build_backend

    run_dir = RunDir(context.run_dir)
    ctx, source, items_path = _context(cfg, run_dir, chat, prompts_dir)
    make = backend_factory or (lambda c: build_backend(c, progress=context.progress))
    stage = run_dir.begin(STAGE, stage_config(cfg, chat), inputs=[items_path] if cfg.bigfive else [],
                          outputs=OUTPUTS, force=context.force)
    for name in (RUBRIC, PAIRWISE, BIGFIVE, CRITERION, CHOICE):
        stage.record_prompt(name, ctx.prompts.ref(name).hash)
    examples = list(dict.fromkeys(g.example_id for g in ctx.generations))
    models = list(dict.fromkeys(g.model for g in ctx.generations))
    judge_cfg = judge_backend_config(cfg, chat)
    parts, wanted = plan(ctx)
    cache = _cache(cfg)

    backends: dict[str, Any] = {}   # role -> backend, made only when it has something to answer
    usage: dict[str, dict[str, Any]] = {}   # per part: what its requests cost
    # One session per backend: the judge keeps its loop and client across the rubric, pairwise and
    # probe parts; a part's requests go out together (its writer pairs answers up by request).
    sessions: dict[str, Any] = {}
    failed: list[str] = []
    try:
        for part in parts:
            if not part.requests:
                continue
            if part.role not in backends:
                backends[part.role] = make(part.config)
                sessions[part.role] = backends[part.role].session().open()
                stage.record_model(part.role, json.dumps(backends[part.role].describe()))
            backend = backends[part.role]
            before = backend.usage.counters()
            answers = _ask(backend, sessions[part.role], part, cache, ctx.prompts)
            WRITERS[part.name](ctx, part, backend, answers, failed)
            usage[part.label] = _usage(before, backend.usage.counters(), part.config)
            if part.role != "judge":
                sessions.pop(part.role).close()
                del backends[part.role]   # a probe model answers once: free its memory
    finally:
        for session in sessions.values():
            session.close()
        if cache is not None:
            cache.close()

    result: dict[str, Any] = {"judge": {"backend": judge_cfg.kind, "model": judge_cfg.model},
                              "source": str(source), "examples": len(examples), "models": models,
                              "method": "logprobs" if uses_logprobs(cfg.scoring, judge_cfg) else "text"}
    if cfg.rubric:
        records = [r for r in JsonlStore(ctx.folder / "judgements.jsonl", RubricJudgement).read()
                   if r.id in wanted["rubric"]]
        result["rubric"] = summarize_rubric(records, *bootstrap)
        agreement = _agreement(ctx, run_dir.path, nli_config, contradiction, records)
        if agreement:
            result["agreement"] = agreement
    if cfg.pairwise:
        result["pairwise"] = summarize_pairwise([r for r in JsonlStore(ctx.folder / "pairwise.jsonl",
                                                                       PairwiseJudgement).read()
                                                 if r.id in wanted["pairwise"]])
    if cfg.bigfive:
        result["bigfive"] = summarize_bigfive([r for r in JsonlStore(ctx.folder / "bigfive.jsonl", BigFiveAnswer).read()
                                               if r.id in wanted["bigfive"]])
    result["usage"] = usage
    if cache is not None:
        result["cache"] = {**cache.stats.as_dict(), "path": str(cache.path)}
    atomic_write_json(ctx.folder / "judge.json", result)
    save_chart(run_dir.file(layout.JUDGE_CHART), result)
    atomic_write_text(run_dir.file(layout.JUDGE_REPORT), report(result))
    stage.set_count("examples", len(examples))
    figures = {"usage": usage, "cache": result.get("cache")}
    if failed:
        stage.set_count("failed", len(failed))
        stage.manifest.figures.update(figures)
        stage.save()
        raise UserError(f"{len(failed)} judge or probe requests failed after retries (first: {failed[0]}); the "
                        f"report covers the rest; run the same command again to retry only those")
    stage.finish(**figures)
    return result


def _usage(before: dict[str, int | float], after: dict[str, int | float], config: BackendConfig) -> dict[str, Any]:
    """What a part cost: the difference of two UsageTotals.counters() snapshots, priced."""
    from ..costs import cost

    out = {k: round(after[k] - before[k], 3) if isinstance(after[k], float) else after[k] - before[k] for k in after}
    price = cost(out["prompt_tokens"], out["completion_tokens"], config.prices)
    if price is not None:
        out["cost"] = price
    return out


def _ask(backend, session, part: Part, cache, prompts) -> list:
    """The answers to a part's requests, in order: from the judge cache where it has them, the
    rest from the backend (text completions, or OptionProbs for parts with options)."""
    from ..judgecache import ask_options, ask_text

    identity = {"backend": part.config.identity(), "describe": backend.describe()}
    with ui.progress(part.label, total=len(part.requests)) as advance:
        if part.options is None:
            return ask_text(backend, part.requests, identity, cache,
                            lambda requests: session.complete(requests, advance))

        def send(requests):
            answers = session.option_probs(requests, part.options, ANSWER_PREFIX)
            advance(len(requests))
            return answers

        return ask_options(backend, part.requests, part.options, ANSWER_PREFIX, identity, cache, send)


def _provenance(backend, prompts, name: str, request) -> Provenance:
    return Provenance(backend=backend.name, model=str(backend.model), prompt=name,
                      prompt_hash=prompts.ref(name).hash, params=request.params())


def _write_rubric(ctx: Context, part: Part, backend, answers: list, failed: list[str]) -> None:
    store = JsonlStore(ctx.folder / "judgements.jsonl", RubricJudgement)
    with store.appender() as out:
        if part.options is None:
            for (rid, g, _), request, completion in zip(part.meta, part.requests, answers):
                if not completion.ok:   # not written: a re-run asks again
                    failed.append(f"rubric: {completion.error}")
                    continue
                parsed = parse_rubric(completion.parsed, completion.text)
                out.write(RubricJudgement(id=rid, generation_id=g.id, example_id=g.example_id, model=g.model,
                                          scores=parsed.scores, reasons=parsed.reasons, raw=completion.text,
                                          parse_error=parsed.error,
                                          provenance=_provenance(backend, ctx.prompts, part.prompt, request)))
            return
        grouped: dict[str, list] = defaultdict(list)
        for (rid, g, criterion), request, answer in zip(part.meta, part.requests, answers):
            grouped[rid].append((g, criterion, request, answer))
        for rid, rows in grouped.items():
            errors = [a.error for _, _, _, a in rows if a.error and not a.probs]
            transport = [e for e in errors if e and not e.startswith("no ")]
            if transport:   # a request that failed: the whole reply is asked again on a re-run
                failed.append(f"rubric: {transport[0]}")
                continue
            g = rows[0][0]
            scores, probs, entropy = {}, {}, {}
            for _, criterion, _, answer in rows:
                score, bits = REPLY.expectation(answer.probs) if answer.probs else (None, None)
                scores[criterion] = score
                if answer.probs:
                    probs[criterion] = {k: round(v, 6) for k, v in answer.probs.items()}
                    entropy[criterion] = bits
            bad = [c for c in REPLY.keys if scores.get(c) is None]
            out.write(RubricJudgement(
                id=rid, generation_id=g.id, example_id=g.example_id, model=g.model, scores=scores, method="logprobs",
                probs=probs, entropy=entropy, parse_error=("no answer for: " + ", ".join(bad)) if bad else None,
                provenance=_provenance(backend, ctx.prompts, part.prompt, rows[0][2])))


def _write_pairwise(ctx: Context, part: Part, backend, answers: list, failed: list[str]) -> None:
    store = JsonlStore(ctx.folder / "pairwise.jsonl", PairwiseJudgement)
    with store.appender() as out:
        for (rid, example, a, b, order), request, answer in zip(part.meta, part.requests, answers):
            probs = None
            if part.options is None:
                if not answer.ok:
                    failed.append(f"pairwise: {answer.error}")
                    continue
                winner, reason, error = parse_winner(answer.parsed, answer.text)
                raw = answer.text
            else:
                if answer.error and not answer.probs and not answer.error.startswith("no "):
                    failed.append(f"pairwise: {answer.error}")
                    continue
                probs = {k: round(v, 6) for k, v in answer.probs.items()} or None
                winner = max(probs, key=probs.get) if probs else None
                reason, error, raw = None, None if probs else answer.error, answer.text
            winner_model = {"A": a.model, "B": b.model, "tie": "tie"}.get(winner) if winner else None
            out.write(PairwiseJudgement(id=rid, example_id=example, model_a=a.model, model_b=b.model,
                                        order=order, winner=winner, winner_model=winner_model, reason=reason,
                                        raw=raw, parse_error=error, probs=probs,
                                        provenance=_provenance(backend, ctx.prompts, part.prompt, request)))


def _write_bigfive(ctx: Context, part: Part, backend, answers: list, failed: list[str]) -> None:
    store = JsonlStore(ctx.folder / "bigfive.jsonl", BigFiveAnswer)
    with store.appender() as out:
        for (model, rid, pid, persona, item), answer in zip(part.meta, answers):
            extra: dict[str, Any] = {}
            if part.options is None:
                if not answer.ok:
                    failed.append(f"bigfive {model.name}: {answer.error}")
                    continue
                value, error = parse_likert(answer.text)
                raw = answer.text
            else:
                if answer.error and not answer.probs and not answer.error.startswith("no "):
                    failed.append(f"bigfive {model.name}: {answer.error}")
                    continue
                expected, bits = LIKERT.expectation(answer.probs) if answer.probs else (None, None)
                value = int(max(answer.probs, key=answer.probs.get)) if answer.probs else None
                error = None if answer.probs else answer.error
                raw = answer.text
                extra = {"expected": expected, "entropy": bits,
                         "probs": {k: round(v, 6) for k, v in answer.probs.items()} or None}
            out.write(BigFiveAnswer(id=rid, model=model.name, model_digest=model.digest, persona_id=pid,
                                    persona=persona, item_id=item.id, trait=item.trait, keyed=item.keyed,
                                    group=item.group, item=item.text, answer=value, raw=raw, parse_error=error,
                                    **extra))


WRITERS = {"rubric": _write_rubric, "pairwise": _write_pairwise, "bigfive": _write_bigfive}


# --- estimate: what a run would send, before anything is sent ------------------------------------

def estimate(cfg: JudgeConfig, run_dir: Path, *, chat: BackendConfig, prompts_dir: Path | None = None,
             backend_factory: BackendFactory | None = None) -> dict[str, Any]:
    """Requests, tokens and cost the judge stage would spend now: the same plan `run` sends
    (answered records and judge-cache hits left out). Prompt tokens are counted with the
    backend's tokenizer (local) or about 4 characters a token (endpoints); completion tokens are
    each request's limit (text answers: an upper bound) or the few tokens of an option question.
    JSON repair requests, which only unreadable answers cost, are not in it."""
    from ..backends import build_backend
    from ..costs import estimate_requests

    ctx, _, _ = _context(cfg, RunDir(run_dir), chat, prompts_dir)
    parts, _ = plan(ctx)
    cache = _cache(cfg)
    make = backend_factory or (lambda c: build_backend(c, progress=False))
    made: dict[str, Any] = {}
    groups = []
    try:
        for part in parts:
            backend = made.get(part.role) or make(part.config)
            made[part.role] = backend
            requests = _uncached(backend, part, cache)
            groups.append(estimate_requests(part.label, requests, backend, part.config.prices,
                                            options=part.options is not None))
    finally:
        if cache is not None:
            cache.close()
    from ..costs import total

    return {"parts": groups, "total": total(groups)}


def estimate_table(planned: dict[str, Any]) -> str:
    lines = ["| part | backend | requests | prompt tokens | completion tokens (at most) | cost |",
             "|---|---|---:|---:|---:|---:|"]
    for row in [*planned["parts"], {"part": "total", "backend": "", **planned["total"]}]:
        lines.append(f"| {row['part']} | {row['backend']} | {row['requests']} | {row['prompt_tokens']} | "
                     f"{row['completion_tokens']} | {_fmt(row.get('cost'), 4)} |")
    return "\n".join(lines) + "\n"


def _uncached(backend, part: Part, cache) -> list:
    from ..judgecache import request_key

    if cache is None or not getattr(backend, "deterministic", True):
        return list(part.requests)
    identity = {"backend": part.config.identity(), "describe": backend.describe()}
    if part.options is None:
        keys = [request_key(identity, "text", r) for r in part.requests]
    else:
        keys = [request_key(identity, "options", r, options=list(part.options), prefix=ANSWER_PREFIX)
                for r in part.requests]
    return [r for r, k in zip(part.requests, keys) if cache.get(k) is None]


# --- agreement: the judge against the critic's NLI, and against people ----------------------------

def _agreement(ctx: Context, run_dir: Path, nli_config: NLIConfig, threshold: float,
               records: Sequence[RubricJudgement]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    humans = read_annotations(run_dir / "annotations.jsonl")
    if humans:
        out["human"] = human_agreement(humans, records, ctx)
    if ctx.cfg.nli_agreement and records:
        from ..nli.base import load_nli

        by_id = {g.id: g for g in ctx.generations}
        gens = [by_id[r.generation_id] for r in records if r.generation_id in by_id]
        nli = load_nli(nli_config, progress=False)
        contradiction = nli_contradiction(gens, nli)
        out["nli"] = nli_agreement(records, contradiction, threshold)
    return out


def nli_contradiction(generations: Sequence[EvalGeneration], nli) -> dict[str, float]:
    """Per generation id: the NLI's highest contradiction probability of the reply against any
    sentence of its persona (premise = persona sentence, hypothesis = reply, as the critic asks)."""
    from ..nli.labels import CONTRADICTION

    pairs = [(g.id, attribute, g.reply) for g in generations for attribute in g.persona if g.reply.strip()]
    if not pairs:
        return {}
    probs = nli.predict([(a, r) for _, a, r in pairs])
    out: dict[str, float] = {g.id: 0.0 for g in generations}
    for (gid, _, _), row in zip(pairs, probs):
        out[gid] = max(out[gid], float(row[CONTRADICTION]))
    return out


def nli_agreement(records: Sequence[RubricJudgement], contradiction: dict[str, float],
                  threshold: float = 0.5) -> dict[str, Any]:
    """How the judge's persona consistency agrees with the NLI on the same replies: Spearman's
    rho between the score and 1 - contradiction, and the AUC of the score for telling the replies
    the NLI flags (contradiction > threshold) from the rest (0.5: no better than chance)."""
    rows = [(r.scores.get("persona_consistency"), contradiction[r.generation_id]) for r in records
            if r.generation_id in contradiction and r.scores.get("persona_consistency") is not None]
    out: dict[str, Any] = {"replies": len(rows), "flagged": sum(c > threshold for _, c in rows), "threshold": threshold}
    if len(rows) < 3:
        return {**out, "spearman": None, "auc": None}
    from scipy.stats import spearmanr

    scores = np.array([s for s, _ in rows], dtype=float)
    safe = 1 - np.array([c for _, c in rows], dtype=float)
    rho = spearmanr(scores, safe).statistic if len(set(scores)) > 1 and len(set(safe)) > 1 else None
    out["spearman"] = None if rho is None or np.isnan(rho) else round(float(rho), 4)
    flagged = [s for s, c in rows if c > threshold]
    clean = [s for s, c in rows if c <= threshold]
    out["auc"] = round(auc(clean, flagged), 4) if flagged and clean else None
    return out


def auc(positives: Sequence[float], negatives: Sequence[float]) -> float:
    """P(a positive scores above a negative), ties half (the Mann-Whitney AUC)."""
    wins = sum((p > n) + 0.5 * (p == n) for p in positives for n in negatives)
    return wins / (len(positives) * len(negatives))


def read_annotations(path: Path) -> list[dict[str, Any]]:
    """Human annotations (forge annotate writes them: {item, annotator, answer, ...}), read
    defensively: unreadable lines and rows without an item or an answer are skipped."""
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and row.get("item") is not None and row.get("answer") is not None:
            rows.append(row)
    return rows


def human_agreement(annotations: Sequence[dict[str, Any]], records: Sequence[RubricJudgement],
                    ctx: Context) -> dict[str, Any]:
    """The judge against people, on the items both answered: a numeric answer (1-5) against the
    judge's score of the same reply (the annotation's `criterion`, default persona consistency;
    Spearman's rho and mean absolute difference); an answer A/B against the judge's pairwise
    choice in the same order (share agreeing). Items are matched by generation id, judgement id
    or pairwise record id."""
    from ..rubric import parse_score

    by_generation = {r.generation_id: r for r in records}
    by_id = {r.id: r for r in records}
    pairwise = {r.id: r for r in JsonlStore(ctx.folder / "pairwise.jsonl", PairwiseJudgement).read()} \
        if (ctx.folder / "pairwise.jsonl").is_file() else {}
    scored, chosen = [], []
    for row in annotations:
        item = str(row["item"])
        answer = row["answer"]
        if isinstance(answer, dict):
            answer = answer.get("score", answer.get("winner", answer.get("answer")))
        judged = by_generation.get(item) or by_id.get(item)
        if judged is not None:
            criterion = str(row.get("criterion") or "persona_consistency")
            human = parse_score(answer)
            judge = judged.scores.get(criterion)
            if human is not None and judge is not None:
                scored.append((float(human), float(judge)))
            continue
        if item in pairwise and str(answer).strip().upper() in ("A", "B"):
            winner = pairwise[item].winner
            if winner in ("A", "B"):
                chosen.append(str(answer).strip().upper() == winner)
    out: dict[str, Any] = {"annotations": len(annotations), "annotators": len({str(r.get("annotator")) for r in
                                                                               annotations}),
                           "scored": len(scored), "pairwise": len(chosen)}
    if len(scored) >= 3 and len({h for h, _ in scored}) > 1 and len({j for _, j in scored}) > 1:
        from scipy.stats import spearmanr

        out["spearman"] = round(float(spearmanr([h for h, _ in scored], [j for _, j in scored]).statistic), 4)
    if scored:
        out["mean_abs_diff"] = round(float(np.mean([abs(h - j) for h, j in scored])), 4)
    if chosen:
        out["pairwise_agreement"] = round(float(np.mean(chosen)), 4)
    return out


def summarize_rubric(records: Sequence[RubricJudgement], resamples: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Per model and criterion: the mean score with a bootstrap interval, how many were scored,
    and (method logprobs) the judge's mean entropy in bits (its uncertainty; 2.32 = uniform)."""
    out: dict[str, Any] = {}
    for model in dict.fromkeys(r.model for r in records):
        rows = [r for r in records if r.model == model]
        idx = M.bootstrap_indices(len(rows), resamples, seed)
        entry: dict[str, Any] = {"n": len(rows), "parse_errors": sum(r.parse_error is not None for r in rows)}
        for criterion in CRITERIA:
            values = [r.scores.get(criterion) for r in rows]
            interval = M.interval(M.mean_of(values), idx, len(rows))
            entry[criterion] = {k: (None if v is None or np.isnan(v) else v) for k, v in interval.items()}
            entry[criterion]["scored"] = sum(v is not None for v in values)
            bits = [r.entropy[criterion] for r in rows if criterion in r.entropy]
            if bits:
                entry[criterion]["entropy"] = round(float(np.mean(bits)), 4)
        out[model] = entry
    return out


def combine_orders(first: PairwiseJudgement | None, second: PairwiseJudgement | None) -> str | None:
    """One verdict from both orders: the model both picked, "tie" when both tie, "inconsistent"
    when they disagree (the position decided), None when either could not be read."""
    if first is None or second is None or first.winner_model is None or second.winner_model is None:
        return None
    if first.winner_model == second.winner_model:
        return first.winner_model
    return "inconsistent"


def summarize_pairwise(records: Sequence[PairwiseJudgement]) -> dict[str, Any]:
    """Per adapter: wins, ties and losses against the base (verdicts of both orders combined), the
    agreement between orders, and how often the judge picked position A (0.5 is unbiased)."""
    out: dict[str, Any] = {}
    groups: dict[str, dict[str, dict[str, PairwiseJudgement]]] = defaultdict(lambda: defaultdict(dict))
    for r in records:
        adapter = r.model_b if r.order == "base_first" else r.model_a
        groups[adapter][r.example_id][r.order] = r
    for adapter, examples in groups.items():
        verdicts = Counter()
        positions = Counter()
        for pair in examples.values():
            for r in pair.values():
                if r.winner:
                    positions[r.winner] += 1
            verdict = combine_orders(pair.get("base_first"), pair.get("base_second"))
            verdicts["unreadable" if verdict is None else "adapter" if verdict == adapter else verdict] += 1
        readable = sum(v for k, v in verdicts.items() if k != "unreadable")
        decided = positions["A"] + positions["B"]
        out[adapter] = {
            "examples": len(examples), "both_orders_read": readable,
            "adapter_wins": verdicts["adapter"], "base_wins": verdicts[BASE], "ties": verdicts["tie"],
            "inconsistent": verdicts["inconsistent"], "unreadable": verdicts["unreadable"],
            "agreement": (readable - verdicts["inconsistent"]) / readable if readable else None,
            "adapter_win_rate": verdicts["adapter"] / readable if readable else None,
            "base_win_rate": verdicts[BASE] / readable if readable else None,
            "position_a_rate": positions["A"] / decided if decided else None,
            "answers": dict(positions),
        }
        out[adapter].update(_pairwise_probs(adapter, examples))
    return out


def _pairwise_probs(adapter: str, examples: dict[str, dict[str, PairwiseJudgement]]) -> dict[str, Any]:
    """From P(A) and P(B) (method logprobs): the adapter's mean probability of being preferred,
    averaged over both orders (the position cancels), how often that average exceeds 0.5, and the
    position bias exactly: the mean P(A) over every question minus 0.5 (0: unbiased)."""
    both, p_a = [], []
    for pair in examples.values():
        first, second = pair.get("base_first"), pair.get("base_second")
        for r in (first, second):
            if r is not None and r.probs:
                p_a.append(r.probs.get("A", 0.0))
        if first is not None and second is not None and first.probs and second.probs:
            both.append((first.probs.get("B", 0.0) + second.probs.get("A", 0.0)) / 2)
    if not p_a:
        return {}
    return {"p_adapter": round(float(np.mean(both)), 4) if both else None,
            "adapter_preferred": sum(p > 0.5 for p in both), "base_preferred": sum(p < 0.5 for p in both),
            "position_bias": round(float(np.mean(p_a)) - 0.5, 4)}


def keyed_score(answer: BigFiveAnswer) -> float | None:
    """The answer on the trait's direction (reverse-keyed: 6 - answer); the expectation where the
    answer's probabilities were read."""
    value = answer.expected if answer.expected is not None else answer.answer
    if value is None:
        return None
    return value if answer.keyed == "+" else 6 - value


def summarize_bigfive(answers: Sequence[BigFiveAnswer]) -> dict[str, Any]:
    """Per model: each trait's mean keyed score (1-5; reverse-keyed items as 6 - answer), the
    spread across personas, and the consistency within paraphrase groups (same persona, same
    meaning): mean absolute difference of the keyed answers (0 = consistent, 4 = opposite) and
    the share of groups answered identically."""
    out: dict[str, Any] = {}
    for model in dict.fromkeys(a.model for a in answers):
        rows = [a for a in answers if a.model == model]
        entry: dict[str, Any] = {"answers": len(rows), "unreadable": sum(a.answer is None for a in rows),
                                 "personas": len({a.persona_id for a in rows}), "traits": {}}
        for trait in TRAITS:
            scores = [keyed_score(a) for a in rows if a.trait == trait]
            scored = [s for s in scores if s is not None]
            per_persona = []
            for pid in dict.fromkeys(a.persona_id for a in rows):
                mine = [keyed_score(a) for a in rows if a.trait == trait and a.persona_id == pid]
                mine = [s for s in mine if s is not None]
                if mine:
                    per_persona.append(float(np.mean(mine)))
            entry["traits"][trait] = {
                "mean": float(np.mean(scored)) if scored else None, "scored": len(scored),
                "persona_sd": float(np.std(per_persona)) if len(per_persona) > 1 else None}
        groups: dict[tuple[str, str], list[float]] = defaultdict(list)
        for a in rows:
            s = keyed_score(a)
            if s is not None:
                groups[(a.persona_id, a.group)].append(s)
        diffs, same = [], []
        for values in groups.values():
            if len(values) >= 2:
                pairs = [abs(x - y) for i, x in enumerate(values) for y in values[i + 1:]]
                diffs.append(float(np.mean(pairs)))
                same.append(float(len({round(v) for v in values}) == 1))
        entry["consistency"] = {"groups": len(diffs), "mean_abs_diff": float(np.mean(diffs)) if diffs else None,
                                "identical": float(np.mean(same)) if same else None}
        out[model] = entry
    return out


# --- outputs -----------------------------------------------------------------------------------------

def _fmt(value: Any, decimals: int = 2) -> str:
    return "n/a" if value is None else f"{value:.{decimals}f}"


def rubric_table(rubric: dict[str, Any]) -> str:
    lines = ["| Model | " + " | ".join(c.replace("_", " ") for c in CRITERIA) + " | unreadable |",
             "|---|" + "---:|" * (len(CRITERIA) + 1)]
    for model, row in rubric.items():
        cells = []
        for c in CRITERIA:
            m = row[c]
            cell = _fmt(m["value"])
            if m["low"] is not None:
                cell += f" [{_fmt(m['low'])}, {_fmt(m['high'])}]"
            cells.append(cell)
        lines.append(f"| {model} | " + " | ".join(cells) + f" | {row['parse_errors']}/{row['n']} |")
    return "\n".join(lines) + "\n"


def pairwise_table(pairwise: dict[str, Any]) -> str:
    lines = ["| Adapter vs base | examples | adapter wins | base wins | ties | inconsistent (order decided) | "
             "unreadable | agreement between orders | P(judge picks A) |", "|---|" + "---:|" * 8]
    for adapter, row in pairwise.items():
        lines.append(f"| {adapter} | {row['examples']} | {row['adapter_wins']} | {row['base_wins']} | {row['ties']} | "
                     f"{row['inconsistent']} | {row['unreadable']} | {_fmt(row['agreement'])} | "
                     f"{_fmt(row['position_a_rate'])} |")
    text = "\n".join(lines) + "\n"
    probs = [(a, r) for a, r in pairwise.items() if "position_bias" in r]
    if probs:
        text += ("\n| Adapter vs base | P(adapter better), both orders averaged | adapter preferred | base preferred "
                 "| position bias (mean P(A) - 0.5) |\n|---|---:|---:|---:|---:|\n")
        text += "".join(f"| {a} | {_fmt(r['p_adapter'])} | {r['adapter_preferred']} | {r['base_preferred']} | "
                        f"{r['position_bias']:+.3f} |\n" for a, r in probs)
    return text


def bigfive_table(bigfive: dict[str, Any]) -> str:
    lines = ["| Model | " + " | ".join(t.capitalize() for t in TRAITS) +
             " | paraphrase mean abs. diff | paraphrases identical | unreadable |", "|---|" + "---:|" * (len(TRAITS) + 3)]
    for model, row in bigfive.items():
        cells = [_fmt(row["traits"][t]["mean"]) for t in TRAITS]
        c = row["consistency"]
        lines.append(f"| {model} | " + " | ".join(cells) + f" | {_fmt(c['mean_abs_diff'])} | "
                     f"{_fmt(c['identical'])} | {row['unreadable']}/{row['answers']} |")
    return "\n".join(lines) + "\n"


def save_chart(path: Path, result: dict[str, Any]) -> None:
    plt = plots.pyplot()
    panels = [k for k in ("rubric", "bigfive") if result.get(k)]
    if not panels:
        return
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.2), dpi=100, squeeze=False)
    for ax, panel in zip(axes[0], panels):
        data = result[panel]
        names = list(data)
        keys = CRITERIA if panel == "rubric" else TRAITS
        x = np.arange(len(keys))
        for j, name in enumerate(names):
            if panel == "rubric":
                vals = [data[name][k]["value"] or 0 for k in keys]
                errs = np.array([[max(0.0, (data[name][k]["value"] or 0) - (data[name][k]["low"] or 0)) if
                                  data[name][k]["low"] is not None else 0 for k in keys],
                                 [max(0.0, (data[name][k]["high"] or 0) - (data[name][k]["value"] or 0)) if
                                  data[name][k]["high"] is not None else 0 for k in keys]])
            else:
                vals = [data[name]["traits"][k]["mean"] or 0 for k in keys]
                errs = None
            offset, width = plots.grouped_offsets(j, len(names))
            ax.bar(x + offset, vals, width, yerr=errs, capsize=2, label=name)
        empty = all((data[n][k]["value"] if panel == "rubric" else data[n]["traits"][k]["mean"]) is None
                    for n in names for k in keys)
        if empty:   # say so, rather than show an empty frame
            ax.text(0.5, 0.5, "no readable answers", transform=ax.transAxes, ha="center", va="center", color="0.4")
        ax.set_xticks(x, [k.replace("_", " ") for k in keys], rotation=20, ha="right", fontsize=8)
        ax.set_ylim(0, 5.2)
        ax.set_title("judge rubric (1-5, 95% intervals)" if panel == "rubric" else "Big Five, in persona (1-5)",
                     fontsize=10)
        ax.legend(fontsize=8)
    plots.save(fig, path)


def report(result: dict[str, Any]) -> str:
    judge = result["judge"]
    parts = ["# forge judge report", "",
             f"Judge: `{judge['model']}` ({judge['backend']} backend). Replies: `{result['source']}`, "
             f"{result['examples']} examples, models {', '.join(result['models'])}.", ""]
    if judge["backend"] == "local":
        parts += ["The judge is a small local model: its scores are real but weak evidence; use "
                  "`judge.backend` with a strong model for conclusions.", ""]
    if result.get("method") == "logprobs":
        parts += ["Scores are read from the judge's token probabilities: one criterion at a time, the score is "
                  "the expectation over the answer tokens 1-5 (prompts/judge/criterion.j2); pairwise compares "
                  "P(A) with P(B) in both orders (prompts/judge/choice.j2); the Big Five answer is the "
                  "expectation over 1-5 at the start of the model's answer.", ""]
    if result.get("rubric"):
        parts += ["## Rubric", "", "Mean score 1-5 with 95% bootstrap intervals; unreadable judge replies are left "
                  "out of the means and counted.", "", rubric_table(result["rubric"])]
    agreement = result.get("agreement") or {}
    if agreement.get("nli"):
        a = agreement["nli"]
        parts += ["### The judge against the NLI", "",
                  f"On {a['replies']} replies ({a['flagged']} flagged by the NLI, contradiction > {a['threshold']}): "
                  f"Spearman's rho between persona consistency and 1 - contradiction {_fmt(a['spearman'])}; AUC of "
                  f"the judge's score for the replies the NLI does not flag {_fmt(a['auc'])} (0.5: chance).", ""]
    if agreement.get("human"):
        a = agreement["human"]
        parts += ["### The judge against people", "",
                  f"{a['annotations']} annotations by {a['annotators']} annotators; {a['scored']} scores matched "
                  f"(Spearman {_fmt(a.get('spearman'))}, mean |difference| {_fmt(a.get('mean_abs_diff'))}), "
                  f"{a['pairwise']} pairwise choices matched (agreement {_fmt(a.get('pairwise_agreement'))}).", ""]
    if result.get("pairwise"):
        parts += ["## Pairwise: each adapter against the base", "",
                  "Every example is asked twice, A/B and B/A. A verdict counts only when both orders pick the "
                  "same reply (or both tie); disagreement means the position decided (position bias). "
                  "P(judge picks A) near 0.5 is unbiased.", "", pairwise_table(result["pairwise"])]
    if result.get("bigfive"):
        parts += ["## Big Five, answered in persona", "",
                  "Mean keyed score per trait (1-5; reverse-keyed items as 6 - answer) over the personas and "
                  "items; consistency: mean |difference| between paraphrases of one item for one persona "
                  "(0 = consistent) and the share answered identically.", "", bigfive_table(result["bigfive"])]
    if result.get("rubric") or result.get("bigfive"):
        parts += ["![rubric and Big Five](judge.png)", ""]
    usage = result.get("usage") or {}
    if usage or result.get("cache"):
        parts += ["## Requests", "", "| who | requests | prompt tokens | completion tokens | repairs | cost |",
                  "|---|---:|---:|---:|---:|---:|"]
        for who, u in usage.items():
            parts.append(f"| {who} | {u['requests']} | {u['prompt_tokens']} | {u['completion_tokens']} | "
                         f"{u['repairs']} | {_fmt(u.get('cost'), 4)} |")
        if result.get("cache"):
            c = result["cache"]
            parts += ["", f"Judge cache: {c['hits']} answers from the cache, {c['misses']} asked."]
        parts.append("")
    return "\n".join(parts) + "\n"
