"""`forge restyle`: rewrite the replies of good conversations into several voices, each rewrite checked.

In:  <run_dir>/best.jsonl (Dialogue records from `forge generate`) or --data FILE: any
     Synthetic-Persona-Chat-shaped JSONL(.gz) (corpora.load_conversations reads both); the style
     corpus (corpora/styles/styles.jsonl: few-shot examples and the style classifier's data).
Out: <run_dir>/restyle/: rewrites.jsonl (a Rewrite per reply and style, appended and flushed as each
     chunk is checked: the resume log), rejections.jsonl (a Rejection for every rewrite that failed a
     check, with its reason), <style>.jsonl per style (Dialogue records: the source conversations with
     each passed rewrite in place of its reply; a reply whose rewrite failed keeps its original text,
     and scores["restyle_kept"] is the share that passed, scores["critic"] the source's critic score
     (1 when unscored) times that share, so `forge curate --data restyle/<style>.jsonl` floors and
     weighs by it), classifier.json and classifier_confusion.png (the style classifier's held-out
     accuracy and confusion matrix); <run_dir>/restyle.manifest.json.

Checked, not trusted. A rewrite keeps its content when the NLI finds no contradiction between
original and rewrite in either direction, every persona fact of the speaker the original states
(entailment, fact as premise) the rewrite still states, and the sentence encoder puts the two within
`checks.similarity`; it carries its style when the style classifier (a logistic-regression head on
the encoder's embeddings, trained on the style corpus, persona_forge/styles.py) picks the target
style. `reason` is the first check failed: empty, contradiction, fact_dropped, drift, style_missed.
"""

from __future__ import annotations

import re
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .. import layout, ui
from ..backends import ChatBackend, ChatRequest
from ..config import RestyleConfig
from ..contract import StageContext, StageResult
from ..corpora import load_conversations
from ..errors import UserError
from ..nli.labels import CONTRADICTION, ENTAILMENT
from ..prompts import library
from ..schema import Dialogue, Provenance, Rejection, Rewrite, Turn, record_id
from ..store import JsonlStore, RunDir, atomic_write_json, atomic_write_jsonl, config_hash, file_sha256
from ..styles import by_style, confusion_chart, restyled_id, default_corpus, fitted_classifier, load_corpus, measured_chart

STAGE = "restyle"
FOLDER = layout.RESTYLE
INPUTS = (layout.BEST,)  # or restyle.data; and the style corpus
OUTPUTS = (FOLDER,)
PROMPT = "restyle/rewrite"
REASONS = ("empty", "contradiction", "fact_dropped", "drift", "style_missed")
FAILED = "failed (re-run to retry)"


@dataclass(frozen=True)
class Item:
    """One reply to rewrite into one style."""

    id: str
    dialogue: Dialogue
    position: int
    style: str

    @property
    def turn(self) -> Turn:
        return self.dialogue.turns[self.position]

    @property
    def persona(self) -> list[str]:
        return self.dialogue.user1_persona if self.turn.speaker == "user1" else self.dialogue.user2_persona


def rewrite_id(dialogue_id: str, position: int, style: str) -> str:
    return record_id(STAGE, dialogue_id, position, style)


def items_of(dialogues: Sequence[Dialogue], cfg: RestyleConfig) -> list[Item]:
    """Every reply of the chosen speaker(s) with some text, times every chosen style, in a stable order."""
    out = []
    for dialogue in dialogues:
        for position, turn in enumerate(dialogue.turns):
            if cfg.speaker not in ("both", turn.speaker) or not turn.text.strip():
                continue
            for style in cfg.styles:
                out.append(Item(rewrite_id(dialogue.id, position, style), dialogue, position, style))
    return out


# --- the request and its answer ------------------------------------------------------------------

def request_for(item: Item, cfg: RestyleConfig, examples: dict[str, list[str]], prompts) -> ChatRequest:
    """The rewrite request: the voice, few-shot lines of it (seeded by the item), the speaker's persona,
    the other person's line before it, and the reply."""
    seed = int(item.id[:8], 16) ^ cfg.seed
    pool = examples.get(item.style, [])
    rng = np.random.default_rng(seed)
    shown = [pool[i] for i in sorted(rng.choice(len(pool), size=min(cfg.examples, len(pool)), replace=False))] \
        if pool and cfg.examples else []
    previous = item.dialogue.turns[item.position - 1].text if item.position > 0 else None
    rendered = prompts.render(PROMPT, style=item.style, description=cfg.descriptions[item.style], examples=shown,
                              persona=item.persona, previous=previous, text=item.turn.text)
    return ChatRequest.of(rendered.messages, max_tokens=cfg.max_tokens, temperature=cfg.temperature, seed=seed)


_PREFIX = re.compile(r"^(?:here(?:'s| is)[^:]*:|rewritten(?: line)?:|rewrite:|(?:the )?line:|answer:)\s*",
                     re.IGNORECASE)
_SPEAKER = re.compile(r"^(?:user ?[12]|person ?[12]|me|speaker)\s*:\s*", re.IGNORECASE)


def clean_rewrite(text: str | None) -> str | None:
    """The rewritten line out of a model's answer: the first line with text, without a "Rewritten:"
    or speaker label and without surrounding quotes; None when nothing is left."""
    for line in (text or "").splitlines():
        line = line.strip()
        line = _PREFIX.sub("", line).strip()
        line = _SPEAKER.sub("", line).strip()
        line = line.strip().strip('"“”').strip()
        if line and re.search(r"\w", line):
            return line
    return None


# --- the checks ----------------------------------------------------------------------------------

class Checks:
    """The content and style checks over a batch of rewrites: one NLI call, one encoder call, one
    classifier call."""

    def __init__(self, cfg: RestyleConfig, nli, embed: Callable[[Sequence[str]], np.ndarray], classifier):
        self.cfg, self.nli, self.embed, self.classifier = cfg, nli, embed, classifier

    def judge(self, items: Sequence[Item], texts: Sequence[str | None]) -> list[dict[str, Any]]:
        """For each (item, rewrite): checks (figures), content_ok, style_ok, passed, reason."""
        live = [k for k, t in enumerate(texts) if t]
        pairs: dict[tuple[str, str], None] = {}
        for k in live:
            original, rewrite = items[k].turn.text, texts[k]
            pairs[(original, rewrite)] = pairs[(rewrite, original)] = None
            for fact in items[k].persona:
                pairs[(fact, original)] = pairs[(fact, rewrite)] = None
        judged = dict(zip(pairs, self.nli.predict(list(pairs)))) if pairs else {}
        similarity: dict[int, float] = {}
        style_probs = np.zeros((0, 0))
        if live:
            originals = self.embed([items[k].turn.text for k in live])
            rewrites = self.embed([texts[k] for k in live])
            similarity = {k: float(np.dot(a, b)) for k, a, b in zip(live, originals, rewrites)}
            style_probs = self.classifier.predict_proba([texts[k] for k in live])
        out = []
        for k, (item, text) in enumerate(zip(items, texts)):
            if not text:
                out.append({"checks": {}, "content_ok": False, "style_ok": False, "passed": False, "reason": "empty"})
                continue
            out.append(self._one(item, text, judged, similarity[k], style_probs[live.index(k)]))
        return out

    def _one(self, item: Item, text: str, judged: dict, similarity: float, probs: np.ndarray) -> dict[str, Any]:
        cfg = self.cfg.checks
        original = item.turn.text
        forward = float(judged[(original, text)][CONTRADICTION])
        backward = float(judged[(text, original)][CONTRADICTION])
        stated = [f for f in item.persona if judged[(f, original)][ENTAILMENT] > cfg.entailment]
        dropped = [f for f in stated if judged[(f, text)][ENTAILMENT] <= cfg.entailment]
        styles = list(self.classifier.styles)
        best = int(np.argmax(probs))
        target = float(probs[styles.index(item.style)]) if item.style in styles else 0.0
        checks = {"contradiction_forward": round(forward, 4), "contradiction_backward": round(backward, 4),
                  "facts_stated": len(stated), "facts_dropped": dropped, "similarity": round(similarity, 4),
                  "style_predicted": styles[best], "style_probability": round(target, 4)}
        reason = None
        if max(forward, backward) > cfg.contradiction:
            reason = "contradiction"
        elif dropped:
            reason = "fact_dropped"
        elif similarity < cfg.similarity:
            reason = "drift"
        content_ok = reason is None
        style_ok = styles[best] == item.style and target >= cfg.style_probability
        if reason is None and not style_ok:
            reason = "style_missed"
        return {"checks": checks, "content_ok": content_ok, "style_ok": style_ok, "passed": reason is None,
                "reason": reason}


def why(record: Rewrite, cfg: RestyleConfig) -> str:
    c = record.checks
    if record.reason == "empty":
        return f"no rewritten line in the answer ({record.parse_error or 'empty'})"
    if record.reason == "contradiction":
        return (f"the NLI finds original and rewrite at odds (contradiction {c['contradiction_forward']:.2f} "
                f"forward, {c['contradiction_backward']:.2f} backward; threshold {cfg.checks.contradiction})")
    if record.reason == "fact_dropped":
        return f"the original states {c['facts_dropped']!r} of the persona, the rewrite no longer does"
    if record.reason == "drift":
        return f"similarity to the original {c['similarity']:.2f}, below {cfg.checks.similarity}"
    return (f"the style classifier reads {c['style_predicted']!r} (p({record.style}) = "
            f"{c['style_probability']:.2f}), not {record.style!r}")


# --- the stage -----------------------------------------------------------------------------------

def inputs_of(cfg: RestyleConfig, run_dir: RunDir) -> tuple[Path, Path]:
    data = Path(cfg.data) if cfg.data else run_dir.file(layout.BEST)
    if not data.is_file():
        what = "no such file" if cfg.data else "no conversations here yet (forge generate writes best.jsonl)"
        raise UserError(f"{data}: {what}; run forge generate first, or pass --data FILE (a Synthetic-Persona-Chat"
                        f"-shaped .jsonl/.jsonl.gz such as corpora/spc/test.jsonl.gz)")
    corpus = Path(cfg.corpus) if cfg.corpus else default_corpus()
    if not corpus.is_file():
        raise UserError(f"{corpus}: no such style corpus; give restyle.corpus a JSONL of {{\"style\", \"text\"}} lines")
    return data, corpus


def stage_config(cfg: RestyleConfig, backend: Any, nli: Any) -> dict[str, Any]:
    """What decides the records: the section, the chat backend, the NLI (its config or its name) and the prompt."""
    return {"restyle": cfg.identity(), "backend": backend, "nli": nli, "prompt": library().ref(PROMPT).hash}


def run(cfg: RestyleConfig, context: StageContext, backend: ChatBackend, nli: Any,
        embed: Callable[[Sequence[str]], np.ndarray] | None = None, classifier: Any = None,
        identity: dict[str, Any] | None = None) -> StageResult:
    """Restyle `cfg.data` (or best.jsonl) through `backend`; `nli` is an NLIModel or a function that
    loads one (called only when there are rewrites to check). `identity` names the backend and the NLI
    for the config hash ({"backend": BackendConfig.identity(), "nli": NLIConfig dump}; by default the
    backend's description and the NLI's). `embed` (texts -> normalised vectors) and `classifier` (with
    .styles, .predict_proba(texts), .heldout) may be given (tests)."""
    rows = _run(cfg, RunDir(context.run_dir), backend, nli, embed, classifier, context.force, identity or {})
    return StageResult.read(STAGE, rows, context.run_dir, OUTPUTS, failed=int(rows.get(FAILED) or 0))


def _run(cfg: RestyleConfig, run_dir: RunDir, backend: ChatBackend, nli: Any, embed, classifier,
         force: bool, identity: dict[str, Any]) -> dict[str, Any]:
    started = time.time()
    data, corpus_path = inputs_of(cfg, run_dir)
    inputs = [data, corpus_path]
    conv = load_conversations(data)
    dialogues = conv.dialogues[:cfg.n] if cfg.n else conv.dialogues
    corpus = load_corpus(corpus_path)
    examples = by_style(corpus)
    missing = [s for s in cfg.styles if s not in examples]
    if missing:
        raise UserError(f"{corpus_path}: no lines for style {missing[0]!r}; the few-shot examples and the style "
                        f"classifier need some (write {{\"style\": \"{missing[0]}\", \"text\": ...}} lines), or leave "
                        f"it out of --styles")
    model_nli = nli if hasattr(nli, "predict") else None
    config = stage_config(cfg, identity.get("backend") or backend.describe(),
                          identity.get("nli") or (model_nli.describe() if hasattr(model_nli, "describe") else "given"))
    done = already_done(run_dir, config, inputs, len(dialogues))
    if done is not None:
        return done
    stage = run_dir.begin(STAGE, config, inputs=inputs, outputs=OUTPUTS, force=force)
    stage.record_model("chat", str(backend.describe()))
    stage.record_model("embedding", cfg.model if embed is None else "injected")
    stage.record_prompt(PROMPT, library().ref(PROMPT).hash)

    if embed is None:
        from ..embeddings import Embedder

        embed = Embedder(cfg.model, cfg.batch_size, cfg.threads)
    t = time.time()
    if classifier is None:
        classifier = fitted_classifier(corpus, embed, cfg.heldout, cfg.classifier_c, cfg.seed)
    classifier_s = time.time() - t
    folder = run_dir.file(FOLDER)
    folder.mkdir(parents=True, exist_ok=True)
    heldout = dict(getattr(classifier, "heldout", {}) or {})
    atomic_write_json(run_dir.file(layout.RESTYLE_CLASSIFIER),
                      {"corpus": str(corpus_path), "heldout_share": cfg.heldout, "c": cfg.classifier_c,
                       "encoder": cfg.model, **heldout})
    if heldout.get("confusion"):
        measured_chart(heldout, run_dir.file(layout.RESTYLE_CONFUSION), "style classifier, held-out corpus lines")

    store = JsonlStore(run_dir.file(layout.RESTYLE_REWRITES), Rewrite)
    have = store.ids()
    items = items_of(dialogues, cfg)
    todo = [item for item in items if item.id not in have]
    failed = 0
    t = time.time()
    if todo:
        checks = Checks(cfg, nli if model_nli is not None else nli(), embed, classifier)
        prompts = library()
        everything = [request_for(item, cfg, examples, prompts) for item in todo]
        # One stream for every pending rewrite: a chunk is checked (NLI, encoder, classifier) and
        # written while the requests of the chunks after it are in flight.
        with backend.session() as session, store.appender() as out, \
                ui.progress("restyling", total=len(todo)) as advance:
            for start, completions in session.chunks(everything, cfg.chunk):
                chunk = todo[start:start + cfg.chunk]
                requests = everything[start:start + cfg.chunk]
                answered = [(item, req, c) for item, req, c in zip(chunk, requests, completions) if c.ok]
                failed += len(chunk) - len(answered)
                texts = [clean_rewrite(c.text) for _, _, c in answered]
                verdicts = checks.judge([item for item, _, _ in answered], texts)
                for (item, request, completion), text, verdict in zip(answered, texts, verdicts):
                    out.write(Rewrite(
                        id=item.id, dialogue_id=item.dialogue.id, position=item.position, speaker=item.turn.speaker,
                        style=item.style, original=item.turn.text, text=text, raw=completion.text,
                        parse_error=None if text else "no rewritten line in the answer", **verdict,
                        provenance=Provenance(backend=backend.name, model=backend.model, prompt=PROMPT,
                                              prompt_hash=prompts.ref(PROMPT).hash,
                                              params=backend.resolve(request).params())))
                advance(len(chunk))
    rewrite_s = time.time() - t

    wanted = {item.id for item in items}
    records = [r for r in store.read() if r.id in wanted]
    rejections = [Rejection(id=record_id(STAGE, r.id), stage=STAGE, subject_id=r.id, reason=r.reason,
                            detail={"why": why(r, cfg), "style": r.style, "dialogue_id": r.dialogue_id,
                                    "position": r.position, "original": r.original, "rewrite": r.text})
                  for r in records if not r.passed]
    atomic_write_jsonl(run_dir.file(layout.RESTYLE_REJECTIONS), rejections)
    written = write_styled(run_dir, cfg, dialogues, records)
    figures = measures(cfg, records, heldout)
    counts = {"conversations": len(dialogues), "rewrites_asked": len(items), "rewrites": len(records),
              "passed": figures["passed"], "rejections": len(rejections), "failed_this_run": failed,
              **{f"dialogues_{s}": n for s, n in written.items()},
              **{f"rejected_{k}": v for k, v in figures["reasons"].items()}}
    for key, value in counts.items():
        stage.set_count(key, value)
    rows = summary_rows(cfg, conv.description, data, run_dir, figures, len(dialogues), len(items), len(have),
                        failed, backend, classifier_s, rewrite_s, time.time() - started)
    final = {**figures, "n": len(dialogues), "usage": backend.usage.as_dict(), "summary": rows,
             "seconds": {"classifier": round(classifier_s, 2), "rewrite_and_check": round(rewrite_s, 2)}}
    if failed:
        stage.manifest.figures.update(final)
        stage.save()
    else:
        stage.finish(**final)
    return rows


def write_styled(run_dir: RunDir, cfg: RestyleConfig, dialogues: Sequence[Dialogue],
                 records: Sequence[Rewrite]) -> dict[str, int]:
    """restyle/<style>.jsonl: each source conversation with its passed rewrites in place."""
    by_key = {(r.dialogue_id, r.position, r.style): r for r in records}
    counts = {}
    for style in cfg.styles:
        out = []
        for dialogue in dialogues:
            asked = [p for p, t in enumerate(dialogue.turns)
                     if cfg.speaker in ("both", t.speaker) and t.text.strip()]
            done = [by_key.get((dialogue.id, p, style)) for p in asked]
            if not asked or any(r is None for r in done):
                continue  # not every reply of it rewritten yet (failed requests): left out until a re-run
            kept = {r.position: r.text for r in done if r.passed}
            turns = [Turn(speaker=t.speaker, text=kept.get(p, t.text)) for p, t in enumerate(dialogue.turns)]
            share = len(kept) / len(asked)
            source = dialogue.scores.get("critic")
            scores = {**dialogue.scores, "restyle_kept": round(share, 4),
                      "critic": round((1.0 if source is None else float(source)) * share, 4)}
            unstyled = [p for p in asked if p not in kept]
            reasons = {**dialogue.reasons, **({"restyle": f"replies at {unstyled} kept their original text "
                                                          f"(the rewrite failed a check)"} if unstyled else {})}
            out.append(Dialogue(id=restyled_id(dialogue.id, style), pair_id=dialogue.pair_id,
                                user1_persona=dialogue.user1_persona, user2_persona=dialogue.user2_persona,
                                turns=turns, round=dialogue.round, candidate=dialogue.candidate,
                                provenance=dialogue.provenance, scores=scores, reasons=reasons))
        atomic_write_jsonl(run_dir.file(layout.restyled(style)), out)
        counts[style] = len(out)
    return counts


def measures(cfg: RestyleConfig, records: Sequence[Rewrite], heldout: dict[str, Any]) -> dict[str, Any]:
    n = len(records)

    def share(values: list[bool]) -> float | None:
        return round(sum(values) / len(values), 4) if values else None

    per_style = {s: {"rewrites": sum(r.style == s for r in records),
                     "passed": share([r.passed for r in records if r.style == s]),
                     "content_ok": share([r.content_ok for r in records if r.style == s]),
                     "style_ok": share([r.style_ok for r in records if r.style == s])} for s in cfg.styles}
    reasons = Counter(r.reason for r in records if r.reason)
    return {"rewrites": n, "passed": sum(r.passed for r in records), "pass_share": share([r.passed for r in records]),
            "content_ok_share": share([r.content_ok for r in records]),
            "style_ok_share": share([r.style_ok for r in records]),
            "per_style": per_style, "reasons": {k: reasons[k] for k in REASONS if reasons[k]},
            "classifier_heldout_accuracy": heldout.get("accuracy"), "classifier_heldout_n": heldout.get("n")}


def summary_rows(cfg: RestyleConfig, description: str, data: Path, run_dir: RunDir, figures: dict[str, Any],
                 conversations: int, asked: int, before: int, failed: int, backend: ChatBackend,
                 classifier_s: float, rewrite_s: float, seconds: float) -> dict[str, Any]:
    def pct(x: float | None) -> str:
        return "n/a" if x is None else f"{100 * x:.1f}%"

    accuracy = figures["classifier_heldout_accuracy"]
    return {
        "read": f"{data}: {description}",
        "conversations": conversations,
        "styles": ", ".join(cfg.styles),
        "rewrites": f"{figures['rewrites']:,} of {asked:,} ({before:,} from an earlier run)",
        "passed both checks": f"{figures['passed']:,} ({pct(figures['pass_share'])}); content kept "
                              f"{pct(figures['content_ok_share'])}, style carried {pct(figures['style_ok_share'])}",
        "per style (passed)": " | ".join(f"{s} {pct(v['passed'])}" for s, v in figures["per_style"].items()),
        "rejected": ", ".join(f"{k} {v:,}" for k, v in figures["reasons"].items()) or "none",
        "style classifier (held-out accuracy)": "n/a" if accuracy is None else
        f"{accuracy:.3f} on {figures['classifier_heldout_n']} corpus lines",
        FAILED: failed,
        "seconds (classifier / rewrite+check)": f"{classifier_s:.1f} / {rewrite_s:.1f}",
        "completion tokens": backend.usage.completion_tokens,
        "output": str(run_dir.file(FOLDER)),
        "seconds": round(seconds, 1),
    }


def already_done(run_dir: RunDir, config: dict[str, Any], inputs: list[Path], n: int) -> dict[str, Any] | None:
    """The last summary, if this stage finished here with this config, these inputs and this many
    conversations, and its outputs are still there: nothing to load or ask."""
    previous = run_dir.manifest(STAGE)
    if previous is None or previous.status != "done" or previous.config_hash != config_hash(config):
        return None
    if set(previous.inputs) != {str(p) for p in inputs} or previous.figures.get("n") != n:
        return None
    if any(previous.inputs[str(p)] != file_sha256(p) for p in inputs):
        return None
    styles = previous.config.get("restyle", {}).get("styles", [])
    if not all(run_dir.file(name).is_file() for name in
               [layout.RESTYLE_REWRITES, layout.RESTYLE_REJECTIONS, *(layout.restyled(s) for s in styles)]):
        return None
    return {"status": "already done with this config and input: nothing to do",
            **dict(previous.figures.get("summary", {}))}


# --- the voices of style adapters ----------------------------------------------------------------

def evaluate_voices(cfg: RestyleConfig, context: StageContext, generations: Path | None = None,
                    embed: Callable[[Sequence[str]], np.ndarray] | None = None, classifier: Any = None) -> StageResult:
    """Style accuracy of style adapters' replies: `forge eval`'s generations (one model per adapter, an
    adapter named after its style, e.g. train --name warm), each reply classified by the style
    classifier. Writes voices/voices.json (per model: replies, predicted styles, style accuracy, the
    eval's contradiction rate), voices/table.md and voices/confusion.png (adapters' style x predicted)."""
    from ..schema import BASE, EvalGeneration
    from ..store import iter_jsonl

    run_dir = RunDir(context.run_dir)
    path = Path(generations) if generations else run_dir.file(layout.EVAL_GENERATIONS)
    if not path.is_file():
        raise UserError(f"{path}: no generations; run forge eval with an adapter per style first (forge eval --adapter "
                        f"warm=runs/x/train/warm/adapter ...), or give --generations FILE")
    records = [r for r in iter_jsonl(path, EvalGeneration) if not r.error]
    if not records:
        raise UserError(f"{path}: no usable generations in it (every one failed or the file is empty)")
    corpus_path = Path(cfg.corpus) if cfg.corpus else default_corpus()
    if classifier is None:
        if embed is None:
            from ..embeddings import Embedder

            embed = Embedder(cfg.model, cfg.batch_size, cfg.threads)
        classifier = fitted_classifier(load_corpus(corpus_path), embed, cfg.heldout, cfg.classifier_c, cfg.seed)
    styles = list(classifier.styles)
    models = sorted({r.model for r in records}, key=lambda m: (m != BASE, m))
    per_model: dict[str, Any] = {}
    truth: list[str] = []
    predicted_all: list[str] = []
    for model in models:
        mine = [r for r in records if r.model == model]
        texts = [r.reply if r.reply.strip() else " " for r in mine]
        predicted = [styles[i] for i in np.asarray(classifier.predict_proba(texts)).argmax(axis=1)]
        contradicts = [r.metrics.get("contradicts") for r in mine if r.metrics.get("contradicts") is not None]
        row = {"replies": len(mine), "predicted": {s: predicted.count(s) for s in styles},
               "contradiction_rate": round(float(np.mean(contradicts)), 4) if contradicts else None,
               "style": model if model in styles else None}
        if model in styles:
            row["style_accuracy"] = round(predicted.count(model) / len(predicted), 4)
            truth += [model] * len(predicted)
            predicted_all += predicted
        per_model[model] = row
    adapters = [m for m in models if m in styles]
    confusion_rows = [s for s in styles if s in adapters]
    matrix = [[sum(1 for t, p in zip(truth, predicted_all) if t == s and p == q) for q in styles]
              for s in confusion_rows]
    accuracy = round(sum(t == p for t, p in zip(truth, predicted_all)) / len(truth), 4) if truth else None
    report = {"generations": str(path), "styles": styles, "adapters": adapters, "style_accuracy": accuracy,
              "chance": round(1 / len(styles), 4), "confusion_rows": confusion_rows, "confusion": matrix,
              "models": per_model, "classifier_heldout": dict(getattr(classifier, "heldout", {}) or {})}
    atomic_write_json(run_dir.file(layout.VOICES_REPORT), report)
    from ..store import atomic_write_text

    atomic_write_text(run_dir.file(layout.VOICES_TABLE), voices_table(report))
    if adapters:
        confusion_chart(report["confusion"], [f"adapter {r}" for r in report["confusion_rows"]], report["styles"],
                        run_dir.file(layout.VOICES_CONFUSION),
                        f"voices of the style adapters (accuracy {report['style_accuracy']:.2f}, "
                        f"chance {report['chance']:.2f})", row_label="", col_label="style the classifier reads in its replies")
    summary = {"generations": str(path), "models": ", ".join(models),
               "style adapters": ", ".join(adapters) or "none (name adapters after their style)",
               "style accuracy": "n/a" if accuracy is None else f"{accuracy:.3f} (chance {report['chance']:.2f})",
               **{f"{m}: contradiction rate": v["contradiction_rate"] for m, v in per_model.items()},
               "outputs": str(run_dir.file(layout.VOICES))}
    return StageResult(stage="voices", summary=summary, figures=report,
                       outputs=[run_dir.file(layout.VOICES_REPORT), run_dir.file(layout.VOICES_TABLE)], data=report)


def voices_table(report: dict[str, Any]) -> str:
    styles = report["styles"]
    head = "| model | replies | style accuracy | contradiction rate | " + " | ".join(f"as {s}" for s in styles) + " |"
    lines = [head, "|" + "---|" * (4 + len(styles))]
    for model, row in report["models"].items():
        acc = row.get("style_accuracy")
        rate = row["contradiction_rate"]
        lines.append(f"| {model} | {row['replies']} | {'' if acc is None else f'{acc:.2f}'} | "
                     f"{'' if rate is None else f'{rate:.2f}'} | "
                     + " | ".join(str(row["predicted"][s]) for s in styles) + " |")
    acc = report["style_accuracy"]
    lines.append("")
    lines.append(f"Style accuracy over the style adapters: {'n/a' if acc is None else f'{acc:.3f}'} "
                 f"(chance {report['chance']:.2f}); each reply classified by the style classifier "
                 f"(held-out accuracy on the corpus: {report['classifier_heldout'].get('accuracy', 'n/a')}).")
    return "\n".join(lines) + "\n"
