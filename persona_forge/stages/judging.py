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
A judge reply that cannot be read is kept with its parse error and counted, never fatal.
"""

from __future__ import annotations

import json
import re
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .. import metrics as M
from .. import layout, plots, ui
from ..config import BackendConfig, Recipe
from ..errors import UserError
from ..jsonparse import JsonParseError, parse_json
from ..prompts import library
from ..resources import data_dir
from ..samples import reply_messages
from ..schema import (BASE, BigFiveAnswer, EvalGeneration, PairwiseJudgement, Provenance, RubricJudgement, Turn,
                      record_id)
from ..store import JsonlStore, RunDir, atomic_write_json, atomic_write_text, iter_json_lines

STAGE = "judge"
FOLDER = layout.JUDGE
INPUTS = (layout.EVAL_GENERATIONS,)  # or judge.input; eval's metrics.json beside it names the adapters
OUTPUTS = (FOLDER,)
CRITERIA = ("persona_consistency", "tone", "helpfulness", "naturalness")
TRAITS = ("openness", "conscientiousness", "extraversion", "agreeableness", "neuroticism")
RUBRIC, PAIRWISE, BIGFIVE = "judge/rubric", "judge/pairwise", "judge/bigfive"


# --- reading judge replies -------------------------------------------------------------------------

@dataclass
class RubricParse:
    scores: dict[str, int | None]
    reasons: dict[str, str]
    error: str | None


def _key(name: str) -> str:
    return re.sub(r"[^a-z]+", "_", str(name).lower()).strip("_")


_ALIASES = {"persona": "persona_consistency", "consistency": "persona_consistency",
            "persona_consistent": "persona_consistency", "natural": "naturalness", "helpful": "helpfulness",
            "engagement": "helpfulness"}


def _score(value: Any) -> int | None:
    """1-5 from 4, 4.0, "4", "4/5", "4 out of 5"; None otherwise (out of range included)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        number = float(value)
    else:
        match = re.match(r"\s*(\d+(?:\.\d+)?)", str(value))
        if not match:
            return None
        number = float(match.group(1))
    if number != int(number) or not 1 <= number <= 5:
        return None
    return int(number)


def parse_rubric(parsed: Any, text: str | None = None) -> RubricParse:
    """Scores for each criterion from a judge reply: nested {"tone": {"score": 4, "reason": ..}},
    flat {"tone": 4, "tone_reason": ..}, any key spelling ("Persona consistency"), scores as
    numbers or strings. Missing or out-of-range criteria are None and named in the error."""
    if parsed is None and text is not None:
        try:
            parsed = parse_json(text)
        except JsonParseError as exc:
            return RubricParse({c: None for c in CRITERIA}, {}, f"unreadable: {exc}")
    if isinstance(parsed, dict) and isinstance(parsed.get("scores"), dict):
        parsed = {**parsed["scores"], **{k: v for k, v in parsed.items() if k != "scores"}}
    if not isinstance(parsed, dict):
        return RubricParse({c: None for c in CRITERIA}, {}, "not a JSON object")
    normal = {}
    for key, value in parsed.items():
        k = _key(key)
        normal[_ALIASES.get(k, k)] = value
    scores: dict[str, int | None] = {}
    reasons: dict[str, str] = {}
    for criterion in CRITERIA:
        value = normal.get(criterion)
        if isinstance(value, dict):
            inner = {_key(k): v for k, v in value.items()}
            reason = inner.get("reason") or inner.get("explanation") or inner.get("rationale")
            value = inner.get("score", inner.get("rating"))
        else:
            reason = normal.get(f"{criterion}_reason")
        scores[criterion] = _score(value)
        if reason:
            reasons[criterion] = str(reason)
    bad = [c for c in CRITERIA if scores[c] is None]
    error = None
    if len(bad) == len(CRITERIA):
        error = "no criterion scored 1-5"
    elif bad:
        error = "missing or out of range: " + ", ".join(bad)
    return RubricParse(scores, reasons, error)


def parse_winner(parsed: Any, text: str | None = None) -> tuple[str | None, str | None, str | None]:
    """("A" | "B" | "tie" | None, reason, parse error) from a pairwise reply."""
    if parsed is None and text is not None:
        try:
            parsed = parse_json(text)
        except JsonParseError as exc:
            return None, None, f"unreadable: {exc}"
    if not isinstance(parsed, dict):
        return None, None, "not a JSON object"
    fields = {_key(k): v for k, v in parsed.items()}
    raw = fields.get("winner", fields.get("better", fields.get("choice", fields.get("preferred"))))
    reason = fields.get("reason") or fields.get("explanation")
    value = _key(raw) if raw is not None else ""
    value = re.sub(r"^(reply|response|answer|option)_", "", value)
    if value in ("a", "b"):
        return value.upper(), reason and str(reason), None
    if value in ("tie", "draw", "equal", "both", "neither", "none", "same"):
        return "tie", reason and str(reason), None
    return None, reason and str(reason), f"winner {raw!r} is not A, B or tie"


# The scale's words, as small models write them instead of a number ("describes me extremely
# inaccurately", "quite well"); the earliest phrase in the reply wins.
_LIKERT_WORDS = (
    (re.compile(r"\b(very|extremely|completely|totally|highly)\s+(inaccurate(ly)?|poorly)\b"), 1),
    (re.compile(r"\b(moderately|somewhat|slightly|fairly|rather|a bit)\s+inaccurate(ly)?\b"), 2),
    (re.compile(r"\bneither\b"), 3),
    (re.compile(r"\b(moderately|somewhat|fairly|quite|pretty|reasonably)\s+(accurate(ly)?|well)\b"), 4),
    (re.compile(r"\b(very|extremely|completely|perfectly|really|highly)\s+(accurate(ly)?|well)\b"), 5),
    (re.compile(r"\bdescribes? me perfectly\b"), 5),
)


def parse_likert(text: str | None) -> tuple[int | None, str | None]:
    """The answer 1-5 of a Big Five probe: the first digit 1-5 standing alone, else the scale's words."""
    if not text or not text.strip():
        return None, "empty reply"
    match = re.search(r"(?<![\d.])([1-5])(?!\d|\.\d)", text)
    if match:
        return int(match.group(1)), None
    low = text.lower()
    found = [(m.start(), value) for pattern, value in _LIKERT_WORDS for m in [pattern.search(low)] if m]
    if found:
        return min(found)[1], None
    return None, "no answer 1-5 found"


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


def probe_models(recipe: Recipe, generations: Sequence[EvalGeneration], metrics_path: Path) -> list[ProbeModel]:
    """The models under test: eval's (with their adapters) when metrics.json says, else the base."""
    if metrics_path.is_file():
        models = json.loads(metrics_path.read_text())["models"]
        return [ProbeModel(name, Path(row["adapter"]) if row.get("adapter") else None, row["digest"])
                for name, row in models.items()]
    digests = {g.model: g.model_digest for g in generations}
    return [ProbeModel(BASE, None, digests.get(BASE, record_id(recipe.backend.model)))]


def judge_backend_config(recipe: Recipe) -> BackendConfig:
    return recipe.judge.backend or recipe.backend.model_copy(update={"adapter": None})


BackendFactory = Callable[[BackendConfig], Any]


# --- the stage -------------------------------------------------------------------------------------

def stage_config(recipe: Recipe) -> dict[str, Any]:
    cfg = recipe.judge
    ident = cfg.identity()
    ident["backend"] = judge_backend_config(recipe).identity()
    ident["probe_backend"] = {k: v for k, v in recipe.backend.identity().items() if k != "adapter"}
    return {"judge": ident}


def run(recipe: Recipe, force: bool = False, backend_factory: BackendFactory | None = None,
        progress: bool = True, bootstrap: tuple[int, int] = (1000, 0)) -> dict[str, Any]:
    """Judge eval's replies; `bootstrap` is (resamples, seed) of the rubric's intervals (the caller
    hands eval's, so both stages' intervals are drawn alike)."""
    from ..backends import build_backend

    cfg = recipe.judge
    run_dir = RunDir(recipe.run_dir)
    source = Path(cfg.input) if cfg.input else run_dir.file(layout.EVAL_GENERATIONS)
    generations = read_generations(source)
    items_path = Path(cfg.items) if cfg.items else default_items()
    items = load_items(items_path) if cfg.bigfive else []
    make = backend_factory or (lambda c: build_backend(c, progress=progress))
    stage = run_dir.begin(STAGE, stage_config(recipe), inputs=[items_path] if cfg.bigfive else [],
                          outputs=OUTPUTS, force=force)
    folder = run_dir.file(FOLDER)
    prompts = library(str(recipe.prompts_dir) if recipe.prompts_dir else None)
    for name in (RUBRIC, PAIRWISE, BIGFIVE):
        stage.record_prompt(name, prompts.ref(name).hash)

    examples = list(dict.fromkeys(g.example_id for g in generations))
    if cfg.limit:
        examples = examples[:cfg.limit]
    keep = set(examples)
    generations = [g for g in generations if g.example_id in keep]
    models = list(dict.fromkeys(g.model for g in generations))
    judge_cfg = judge_backend_config(recipe)
    judge = None

    def judge_backend():
        nonlocal judge
        if judge is None:
            judge = make(judge_cfg)
            stage.record_model("judge", json.dumps(judge.describe()))
        return judge

    failed: list[str] = []
    result: dict[str, Any] = {"judge": {"backend": judge_cfg.kind, "model": judge_cfg.model},
                              "source": str(source), "examples": len(examples), "models": models}
    if cfg.rubric:
        result["rubric"] = _rubric(recipe, generations, folder, prompts, judge_backend, failed, bootstrap)
    if cfg.pairwise:
        result["pairwise"] = _pairwise(recipe, generations, folder, prompts, judge_backend, failed)
    if cfg.bigfive:
        result["bigfive"] = _bigfive(recipe, generations, items, folder, prompts, make,
                                     probe_models(recipe, generations, source.parent / "metrics.json"), stage,
                                     failed)
    atomic_write_json(folder / "judge.json", result)
    save_chart(run_dir.file(layout.JUDGE_CHART), result)
    atomic_write_text(run_dir.file(layout.JUDGE_REPORT), report(result))
    stage.set_count("examples", len(examples))
    if failed:
        stage.set_count("failed", len(failed))
        stage.save()
        raise UserError(f"{len(failed)} judge or probe requests failed after retries (first: {failed[0]}); the "
                        f"report covers the rest; run the same command again to retry only those")
    stage.finish()
    return result


def _requests(prompts, name: str, variables: list[dict[str, Any]], cfg, json_mode: bool = True) -> list:
    from ..backends import ChatRequest

    out = []
    for v in variables:
        rendered = prompts.render(name, **v)
        out.append(ChatRequest.of(rendered.messages, json=json_mode, temperature=cfg.temperature,
                                  max_tokens=cfg.max_tokens, seed=cfg.seed))
    return out


def _ask(backend, requests: list, label: str) -> list:
    with ui.progress(label, total=len(requests)) as advance:
        return backend.complete_sync(requests, advance) if requests else []


def _provenance(backend, prompts, name: str, request) -> Provenance:
    return Provenance(backend=backend.name, model=str(backend.model), prompt=name,
                      prompt_hash=prompts.ref(name).hash, params=request.params())


def _rubric(recipe, generations, folder, prompts, judge_backend, failed: list[str],
            bootstrap: tuple[int, int]) -> dict[str, Any]:
    cfg = recipe.judge
    store = JsonlStore(folder / "judgements.jsonl", RubricJudgement)
    digest = prompts.ref(RUBRIC).hash
    ids = {g.id: record_id(g.id, digest) for g in generations}
    done = store.ids()
    todo = [g for g in generations if ids[g.id] not in done]
    if todo:
        backend = judge_backend()
        variables = [{"persona": g.persona, "history": history_of(g), "reply": g.reply} for g in todo]
        requests = _requests(prompts, RUBRIC, variables, cfg)
        with store.appender() as out:
            for g, request, completion in zip(todo, requests, _ask(backend, requests, "judge: rubric")):
                if not completion.ok:   # not written: a re-run asks again
                    failed.append(f"rubric: {completion.error}")
                    continue
                parsed = parse_rubric(completion.parsed, completion.text)
                out.write(RubricJudgement(id=ids[g.id], generation_id=g.id, example_id=g.example_id, model=g.model,
                                          scores=parsed.scores, reasons=parsed.reasons, raw=completion.text,
                                          parse_error=parsed.error,
                                          provenance=_provenance(backend, prompts, RUBRIC, request)))
    wanted = set(ids.values())
    records = [r for r in store.read() if r.id in wanted]
    return summarize_rubric(records, *bootstrap)


def summarize_rubric(records: Sequence[RubricJudgement], resamples: int = 1000, seed: int = 0) -> dict[str, Any]:
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
        out[model] = entry
    return out


def _pairwise(recipe, generations, folder, prompts, judge_backend, failed: list[str]) -> dict[str, Any]:
    cfg = recipe.judge
    store = JsonlStore(folder / "pairwise.jsonl", PairwiseJudgement)
    digest = prompts.ref(PAIRWISE).hash
    by = {(g.model, g.example_id): g for g in generations}
    adapters = [m for m in dict.fromkeys(g.model for g in generations) if m != BASE]
    questions = []   # (record id, example, a, b, order)
    for adapter in adapters:
        for example in dict.fromkeys(g.example_id for g in generations):
            base, other = by.get((BASE, example)), by.get((adapter, example))
            if base is None or other is None:
                continue
            for order, (a, b) in (("base_first", (base, other)), ("base_second", (other, base))):
                questions.append((record_id(a.id, b.id, order, digest), example, a, b, order))
    done = store.ids()
    todo = [q for q in questions if q[0] not in done]
    if todo:
        backend = judge_backend()
        variables = [{"persona": a.persona, "history": history_of(a), "reply_a": a.reply, "reply_b": b.reply}
                     for _, _, a, b, _ in todo]
        requests = _requests(prompts, PAIRWISE, variables, cfg)
        with store.appender() as out:
            for (rid, example, a, b, order), request, completion in zip(
                    todo, requests, _ask(backend, requests, "judge: pairwise")):
                if not completion.ok:
                    failed.append(f"pairwise: {completion.error}")
                    continue
                winner, reason, error = parse_winner(completion.parsed, completion.text)
                winner_model = {"A": a.model, "B": b.model, "tie": "tie"}.get(winner) if winner else None
                out.write(PairwiseJudgement(id=rid, example_id=example, model_a=a.model, model_b=b.model,
                                            order=order, winner=winner, winner_model=winner_model, reason=reason,
                                            raw=completion.text, parse_error=error,
                                            provenance=_provenance(backend, prompts, PAIRWISE, request)))
    wanted = {q[0] for q in questions}
    return summarize_pairwise([r for r in store.read() if r.id in wanted])


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
    return out


def _bigfive(recipe, generations, items, folder, prompts, make, models, stage,
             failed: list[str]) -> dict[str, Any]:
    cfg = recipe.judge
    store = JsonlStore(folder / "bigfive.jsonl", BigFiveAnswer)
    digest = prompts.ref(BIGFIVE).hash
    personas = list({record_id(g.persona): g.persona for g in generations}.items())[:cfg.personas]
    done = store.ids()
    wanted = set()
    for model in models:
        rows = [(record_id(model.name, model.digest, pid, item.id, digest), pid, persona, item)
                for pid, persona in personas for item in items]
        wanted.update(r[0] for r in rows)
        todo = [r for r in rows if r[0] not in done]
        if not todo:
            continue
        backend = make(recipe.backend.model_copy(update={"adapter": model.adapter}))
        stage.record_model(f"bigfive:{model.name}", json.dumps(backend.describe()))
        requests = []
        from ..backends import ChatRequest

        for _, _, persona, item in todo:
            question = prompts.render(BIGFIVE, item=item.text).messages[-1]["content"]
            messages = reply_messages(persona, [Turn(speaker="user2", text=question)], "user1", prompts)
            requests.append(ChatRequest.of([m.model_dump() for m in messages], temperature=0.0,
                                           max_tokens=cfg.probe_max_tokens, seed=cfg.seed))
        with store.appender() as out:
            for (rid, pid, persona, item), completion in zip(todo, _ask(backend, requests, f"bigfive: {model.name}")):
                if not completion.ok:
                    failed.append(f"bigfive {model.name}: {completion.error}")
                    continue
                answer, error = parse_likert(completion.text)
                out.write(BigFiveAnswer(id=rid, model=model.name, model_digest=model.digest, persona_id=pid,
                                        persona=persona, item_id=item.id, trait=item.trait, keyed=item.keyed,
                                        group=item.group, item=item.text, answer=answer, raw=completion.text,
                                        parse_error=error))
        del backend
    return summarize_bigfive([r for r in store.read() if r.id in wanted])


def keyed_score(answer: BigFiveAnswer) -> int | None:
    if answer.answer is None:
        return None
    return answer.answer if answer.keyed == "+" else 6 - answer.answer


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
        groups: dict[tuple[str, str], list[int]] = defaultdict(list)
        for a in rows:
            s = keyed_score(a)
            if s is not None:
                groups[(a.persona_id, a.group)].append(s)
        diffs, same = [], []
        for values in groups.values():
            if len(values) >= 2:
                pairs = [abs(x - y) for i, x in enumerate(values) for y in values[i + 1:]]
                diffs.append(float(np.mean(pairs)))
                same.append(float(len(set(values)) == 1))
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
    return "\n".join(lines) + "\n"


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
    if result.get("rubric"):
        parts += ["## Rubric", "", "Mean score 1-5 with 95% bootstrap intervals (prompts/judge/rubric.j2); "
                  "unreadable judge replies are left out of the means and counted.", "",
                  rubric_table(result["rubric"])]
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
    return "\n".join(parts) + "\n"
