"""Human judgement of a run: the annotation queue, the answers file, and the export.

In:  dialogues.jsonl + best.jsonl (candidates of one pair of personas; kept conversations),
     eval/generations.jsonl (base and adapter replies to one held-out example), judge/pairwise.jsonl
     and judge/judgements.jsonl (the LLM judge, for agreement), the recipe's `annotate:` section.
Out: <run_dir>/annotations.jsonl (one line per answer, appended and flushed as it is given: who,
     when, task, item, answer, the A/B order shown); `forge annotate --export` writes
     <run_dir>/annotations/preferences.jsonl (Preference records, the shape generate writes, for
     curate's DPO export), annotations/reply_preferences.jsonl (TRL prompt/chosen/rejected from
     base-vs-adapter replies) and annotations/summary.json + summary.md (agreement).

Pairwise items come in a canonical order (first, second): for candidates, the critic's best and
its lowest-scored readable sibling; for replies, base then adapter. Each annotator sees an item
as A/B or B/A by a seeded coin (seed, annotator, item), so position balances over items and
annotators; the answer records the order and the winner's id, so nothing depends on position.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import threading
from collections import Counter, defaultdict
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..config import AnnotateConfig
from ..schema import Preference, record_id
from ..store import atomic_write_json, atomic_write_jsonl, atomic_write_text
from . import index as jidx

TASKS = ("pairwise", "likert", "tags")
ANNOTATIONS = "annotations.jsonl"
EXPORT_DIR = "annotations"
CHOICES = ("A", "B", "tie")


class AnswerError(ValueError):
    """An answer the server refuses (HTTP 400)."""


@dataclass(frozen=True)
class Item:
    id: str
    task: str
    kind: str  # "dialogues" / "replies" (pairwise), "dialogue" / "reply" (likert, tags)
    refs: tuple[str, ...]  # record ids: (first, second) for pairwise, (one,) otherwise
    group: str  # the pair id or example id

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "refs": list(self.refs), "group": self.group}


def _dialogue_summary(obj: dict[str, Any]) -> tuple[str, str | None, float, bool, int]:
    usable = not obj.get("parse_error") and bool(obj.get("turns"))
    critic = (obj.get("scores") or {}).get("critic")
    return (str(obj.get("id")), obj.get("pair_id"), float(critic) if critic is not None else 0.0, usable,
            int(obj.get("candidate") or 0))


def _generation_summary(obj: dict[str, Any]) -> tuple[str, str, str, bool]:
    return str(obj.get("id")), str(obj.get("example_id")), str(obj.get("model")), \
        not obj.get("error") and bool(obj.get("reply"))


class Queue:
    """The items of one task, built from the run's files, and their records read on demand."""

    def __init__(self, run_dir: Path, task: str, cfg: AnnotateConfig):
        if task not in TASKS:
            raise AnswerError(f"unknown task {task!r}; choose from {', '.join(TASKS)}")
        self.run_dir, self.task, self.cfg = Path(run_dir), task, cfg
        self.dialogues = jidx.index(self.run_dir / "dialogues.jsonl", _dialogue_summary, "annotate-dialogue")
        self.generations = jidx.index(self.run_dir / "eval" / "generations.jsonl", _generation_summary,
                                      "annotate-generation")
        self._where: dict[str, tuple[jidx.JsonlIndex, int]] = {}
        for idx in (self.dialogues, self.generations):
            for i, row in enumerate(idx.rows if idx else []):
                self._where[row[0]] = (idx, i)
        items = self._pairwise() if task == "pairwise" else self._singles()
        items.sort(key=lambda it: record_id(cfg.seed, it.id))
        self.items = items[:cfg.max_items]
        self.by_id = {it.id: it for it in self.items}

    def _pairwise(self) -> list[Item]:
        items = []
        by_pair: dict[str, list[tuple]] = defaultdict(list)
        for row in self.dialogues.rows if self.dialogues else []:
            if row[3] and row[1] is not None:
                by_pair[row[1]].append(row)
        for pair_id, rows in by_pair.items():
            if len(rows) < 2:
                continue
            ranked = sorted(rows, key=lambda r: (-r[2], r[4]))
            first, second = ranked[0][0], ranked[-1][0]
            items.append(Item(record_id("pairwise", first, second), "pairwise", "dialogues", (first, second), pair_id))
        by_example: dict[str, dict[str, str]] = defaultdict(dict)
        for gen_id, example, model, usable in self.generations.rows if self.generations else []:
            if usable:
                by_example[example][model] = gen_id
        for example, models in by_example.items():
            base = models.get("base")
            for model, gen_id in sorted(models.items()):
                if base and model != "base":
                    items.append(Item(record_id("pairwise", base, gen_id), "pairwise", "replies", (base, gen_id),
                                      example))
        return items

    def _singles(self) -> list[Item]:
        kept = jidx.ids_of(self.run_dir / "best.jsonl")
        items = [Item(record_id(self.task, row[0]), self.task, "dialogue", (row[0],), str(row[1]))
                 for row in (self.dialogues.rows if self.dialogues else []) if row[0] in kept and row[3]]
        items += [Item(record_id(self.task, gen_id), self.task, "reply", (gen_id,), example)
                  for gen_id, example, _, usable in (self.generations.rows if self.generations else []) if usable]
        return items

    def record(self, ref: str) -> dict[str, Any]:
        idx, i = self._where[ref]
        return idx.read([i])[0]

    def swapped(self, annotator: str, item: Item) -> bool:
        """The seeded coin: does this annotator see the item's second record as A?"""
        return self.task == "pairwise" and int(record_id(self.cfg.seed, annotator, item.id), 16) % 2 == 1

    def shown(self, annotator: str, item: Item) -> dict[str, str]:
        if item.task != "pairwise":
            return {}
        first, second = item.refs
        return {"A": second, "B": first} if self.swapped(annotator, item) else {"A": first, "B": second}

    def validate(self, form: dict[str, Any]) -> tuple[Item, dict[str, Any]]:
        """(item, answer) from a submitted form, or AnswerError saying what is wrong."""
        item = self.by_id.get(str(form.get("item_id", "")))
        if item is None:
            raise AnswerError("unknown item_id: not in this run's queue")
        if self.task == "pairwise":
            choice = form.get("choice")
            if choice not in CHOICES:
                raise AnswerError(f"choice must be one of {', '.join(CHOICES)}")
            return item, {"choice": choice}
        if self.task == "likert":
            ratings = {}
            for trait in self.cfg.traits:
                raw = form.get(f"rating_{trait}")
                try:
                    value = int(str(raw))
                except ValueError:
                    raise AnswerError(f"{trait}: give a whole number from {self.cfg.scale_min} to "
                                      f"{self.cfg.scale_max}") from None
                if not self.cfg.scale_min <= value <= self.cfg.scale_max:
                    raise AnswerError(f"{trait}: {value} is outside {self.cfg.scale_min}..{self.cfg.scale_max}")
                ratings[trait] = value
            return item, {"ratings": ratings}
        tags = form.get("tags") or []
        tags = [tags] if isinstance(tags, str) else list(tags)
        unknown = [t for t in tags if t not in self.cfg.tags]
        if unknown:
            raise AnswerError(f"unknown tag {unknown[0]!r}; the tags are {', '.join(self.cfg.tags)}")
        return item, {"tags": sorted(set(tags), key=self.cfg.tags.index)}


def valid_annotator(name: str) -> bool:
    return 0 < len(name) <= 64 and all(c.isalnum() or c in "_.-@" for c in name)


class AnnotationStore:
    """<run_dir>/annotations.jsonl: one answer a line, appended, flushed and synced as given."""

    _lock = threading.Lock()

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / ANNOTATIONS

    def append(self, row: dict[str, Any]) -> None:
        line = json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n"
        with self._lock, open(self.path, "a", encoding="utf-8") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)  # another forge process on the same run
            try:
                fh.write(line)
                fh.flush()
                os.fsync(fh.fileno())
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def rows(self) -> list[dict[str, Any]]:
        """Every readable answer (a torn last line, from a killed process, is skipped)."""
        if not self.path.is_file():
            return []
        out = []
        with open(self.path, encoding="utf-8") as fh:
            for line in fh:
                try:
                    out.append(json.loads(line))
                except ValueError:
                    continue
        return out

    def answered(self, annotator: str, task: str) -> set[str]:
        return {r.get("item_id") for r in self.rows() if r.get("annotator") == annotator and r.get("task") == task}


def answer_row(queue: Queue, annotator: str, item: Item, answer: dict[str, Any], order: str | None) -> dict[str, Any]:
    """The line appended for one answer; `order` is what the page said it showed (checked)."""
    shown = queue.shown(annotator, item)
    expected = ("BA" if queue.swapped(annotator, item) else "AB") if shown else None
    if shown and order != expected:
        raise AnswerError(f"order {order!r} is not what this annotator was shown ({expected}); reload the page")
    now = datetime.now(timezone.utc)
    row: dict[str, Any] = {"id": record_id(annotator, item.id, now.isoformat()), "annotator": annotator,
                           "time": now.isoformat(timespec="milliseconds"), "task": item.task,
                           "item_id": item.id, "item": item.describe(), "answer": answer}
    if shown:
        row["order"] = expected
        row["shown"] = shown
        row["winner"] = "tie" if answer["choice"] == "tie" else shown[answer["choice"]]
    return row


# --- agreement ---

def cohen_kappa(a: list[Any], b: list[Any]) -> float | None:
    """Cohen's kappa of two raters' labels on the same items; None when undefined (no items, or
    both raters used one and the same label throughout)."""
    if len(a) != len(b) or not a:
        return None
    n = len(a)
    observed = sum(x == y for x, y in zip(a, b)) / n
    ca, cb = Counter(a), Counter(b)
    expected = sum(ca[k] * cb[k] for k in set(ca) | set(cb)) / (n * n)
    if expected >= 1.0:
        return None
    return (observed - expected) / (1 - expected)


def krippendorff_alpha(units: list[list[Any]], metric: str = "nominal") -> float | None:
    """Krippendorff's alpha over units (each the values its raters gave; missing ones left out).
    Units with fewer than two values are not pairable and are ignored. metric: nominal or interval."""
    units = [u for u in units if len(u) >= 2]
    if not units:
        return None
    delta = (lambda x, y: float(x != y)) if metric == "nominal" else (lambda x, y: (float(x) - float(y)) ** 2)
    coincidence: Counter = Counter()
    for values in units:
        m = len(values)
        for i, x in enumerate(values):
            for j, y in enumerate(values):
                if i != j:
                    coincidence[(x, y)] += 1.0 / (m - 1)
    totals: Counter = Counter()
    for (x, _), w in coincidence.items():
        totals[x] += w
    n = sum(totals.values())
    observed = sum(w * delta(x, y) for (x, y), w in coincidence.items()) / n
    expected = sum(totals[x] * totals[y] * delta(x, y) for x in totals for y in totals) / (n * (n - 1))
    if expected == 0:
        return None
    return 1.0 - observed / expected


def spearman(x: list[float], y: list[float]) -> float | None:
    if len(x) != len(y) or len(x) < 3:
        return None
    rx, ry = _ranks(x), _ranks(y)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    vx = math.sqrt(sum((a - mx) ** 2 for a in rx))
    vy = math.sqrt(sum((b - my) ** 2 for b in ry))
    return None if vx == 0 or vy == 0 else cov / (vx * vy)


def _ranks(values: list[float]) -> list[float]:
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def _agreement(labels: dict[str, dict[str, Any]], metric: str) -> dict[str, Any]:
    """labels: item -> annotator -> value. Kappa when exactly two annotators share items, alpha always."""
    shared = {item: by for item, by in labels.items() if len(by) >= 2}
    annotators = sorted({a for by in shared.values() for a in by})
    out: dict[str, Any] = {"annotators": annotators, "shared_items": len(shared)}
    if len(annotators) == 2:
        a, b = annotators
        out["cohen_kappa"] = _round(cohen_kappa([by[a] for by in shared.values()], [by[b] for by in shared.values()]))
    if len(annotators) >= 2:
        out["krippendorff_alpha"] = _round(krippendorff_alpha([list(by.values()) for by in shared.values()], metric))
        out["alpha_metric"] = metric
    return out


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 4)


# --- export ---

def latest_answers(rows: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, dict[str, Any]]]:
    """(task, item id) -> annotator -> their last answer (a changed mind replaces the first)."""
    out: dict[tuple[str, str], dict[str, dict[str, Any]]] = defaultdict(dict)
    for row in rows:
        out[(row.get("task"), row.get("item_id"))][row.get("annotator")] = row
    return out


def export(run_dir: Path, cfg: AnnotateConfig) -> dict[str, Any]:
    """Write annotations/preferences.jsonl, reply_preferences.jsonl, summary.json and summary.md."""
    run_dir = Path(run_dir)
    rows = AnnotationStore(run_dir).rows()
    latest = latest_answers(rows)
    queues = {task: Queue(run_dir, task, cfg) for task in TASKS}
    out_dir = run_dir / EXPORT_DIR
    summary: dict[str, Any] = {"answers": len(rows), "annotators": sorted({r.get("annotator") for r in rows}),
                               "files": {}}
    preferences, reply_prefs, pairwise_summary = _export_pairwise(run_dir, queues["pairwise"], latest)
    summary["pairwise"] = pairwise_summary
    summary["likert"] = _likert_summary(run_dir, queues["likert"], latest, cfg)
    summary["tags"] = _tags_summary(latest, cfg)
    atomic_write_jsonl(out_dir / "preferences.jsonl", preferences)
    atomic_write_jsonl(out_dir / "reply_preferences.jsonl", reply_prefs)
    summary["files"] = {"preferences": f"{EXPORT_DIR}/preferences.jsonl",
                        "reply_preferences": f"{EXPORT_DIR}/reply_preferences.jsonl",
                        "summary": f"{EXPORT_DIR}/summary.json"}
    summary["counts"] = {"preferences": len(preferences), "reply_preferences": len(reply_prefs)}
    atomic_write_json(out_dir / "summary.json", summary)
    atomic_write_text(out_dir / "summary.md", summary_markdown(summary))
    return summary


def _canonical(row: dict[str, Any], item: Item) -> str:
    winner = row.get("winner")
    return "tie" if winner == "tie" else ("first" if winner == item.refs[0] else "second")


def _export_pairwise(run_dir: Path, queue: Queue, latest) -> tuple[list[Preference], list[dict], dict[str, Any]]:
    labels: dict[str, dict[str, str]] = {}
    preferences: list[Preference] = []
    reply_prefs: list[dict[str, Any]] = []
    critic_items = critic_agree = critic_answers = critic_answer_agree = 0
    judge = _judge_verdicts(run_dir)
    judge_items = judge_agree = 0
    for (task, item_id), by in latest.items():
        item = queue.by_id.get(item_id)
        if task != "pairwise" or item is None:
            continue
        votes = {a: _canonical(r, item) for a, r in by.items()}
        labels[item_id] = votes
        count = Counter(votes.values())
        majority = _majority(count)
        if item.kind == "dialogues":
            a, b = (queue.record(ref) for ref in item.refs)
            critic = "tie" if (a["scores"].get("critic") == b["scores"].get("critic")) else "first"
            for v in votes.values():
                if v != "tie":
                    critic_answers += 1
                    critic_answer_agree += v == critic
            if majority in ("first", "second"):
                critic_items += 1
                critic_agree += majority == critic
                chosen, rejected = (a, b) if majority == "first" else (b, a)
                n = len(votes)
                preferences.append(Preference(
                    id=record_id("annotate", item.id), pair_id=item.group, user1_persona=chosen["user1_persona"],
                    user2_persona=chosen["user2_persona"], round=int(chosen.get("round") or 0),
                    chosen_id=chosen["id"], rejected_id=rejected["id"], chosen_turns=chosen["turns"],
                    rejected_turns=rejected["turns"], chosen_score=count[majority] / n,
                    rejected_score=count["second" if majority == "first" else "first"] / n))
        else:
            base, other = (queue.record(ref) for ref in item.refs)
            verdict = judge.get((item.group, other["model"]))
            if verdict is not None and majority in ("first", "second", "tie"):
                judge_items += 1
                human = {"first": base["model"], "second": other["model"], "tie": "tie"}[majority]
                judge_agree += human == verdict
            if majority in ("first", "second"):
                chosen, rejected = (base, other) if majority == "first" else (other, base)
                reply_prefs.append({"id": record_id("annotate", item.id), "example_id": item.group,
                                    "prompt": chosen["messages"],
                                    "chosen": [{"role": "assistant", "content": chosen["reply"]}],
                                    "rejected": [{"role": "assistant", "content": rejected["reply"]}],
                                    "chosen_model": chosen["model"], "rejected_model": rejected["model"],
                                    "votes": dict(count)})
    summary: dict[str, Any] = {"items": len(labels), "answers": sum(len(v) for v in labels.values()),
                               "between_annotators": _agreement(labels, "nominal"),
                               "position": _position_stats(latest, queue)}
    summary["critic_vs_humans"] = {
        "items": critic_items, "agreement": _round(critic_agree / critic_items) if critic_items else None,
        "answers": critic_answers,
        "answer_agreement": _round(critic_answer_agree / critic_answers) if critic_answers else None,
        "note": "items with a human majority for one candidate; the critic prefers its higher-scored one"}
    summary["judge_vs_humans"] = {
        "items": judge_items, "agreement": _round(judge_agree / judge_items) if judge_items else None,
        "note": "base-vs-adapter replies where the LLM judge agreed with itself in both orders"
                if judge else "no judge/pairwise.jsonl in this run"}
    return preferences, reply_prefs, summary


def _majority(count: Counter) -> str | None:
    if not count:
        return None
    top = count.most_common()
    if len(top) > 1 and top[0][1] == top[1][1]:
        return None
    return top[0][0]


def _position_stats(latest, queue: Queue) -> dict[str, Any]:
    shown_a = picked_a = 0
    for (task, item_id), by in latest.items():
        if task != "pairwise" or item_id not in queue.by_id:
            continue
        for row in by.values():
            choice = (row.get("answer") or {}).get("choice")
            if choice in ("A", "B"):
                shown_a += 1
                picked_a += choice == "A"
    return {"decided_answers": shown_a, "share_picking_A": _round(picked_a / shown_a) if shown_a else None}


def _judge_verdicts(run_dir: Path) -> dict[tuple[str, str], str]:
    """(example id, adapter) -> the judge's verdict (a model name or 'tie') where both orders agree."""
    path = run_dir / "judge" / "pairwise.jsonl"
    if not path.is_file():
        return {}
    seen: dict[tuple[str, str], list[str | None]] = defaultdict(list)
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            r = json.loads(line)
        except ValueError:
            continue
        adapter = r["model_b"] if r.get("model_a") == "base" else r.get("model_a")
        verdict = "tie" if r.get("winner") == "tie" else r.get("winner_model")
        seen[(r.get("example_id"), adapter)].append(verdict)
    return {k: v[0] for k, v in seen.items() if len(v) >= 2 and v[0] is not None and all(x == v[0] for x in v)}


def _likert_summary(run_dir: Path, queue: Queue, latest, cfg: AnnotateConfig) -> dict[str, Any]:
    per_trait: dict[str, dict[str, dict[str, int]]] = {t: {} for t in cfg.traits}
    means: dict[str, dict[str, float]] = defaultdict(dict)
    for (task, item_id), by in latest.items():
        if task != "likert" or item_id not in queue.by_id:
            continue
        for trait in cfg.traits:
            values = {a: r["answer"]["ratings"][trait] for a, r in by.items()
                      if trait in (r.get("answer") or {}).get("ratings", {})}
            if values:
                per_trait[trait][item_id] = values
                means[item_id][trait] = sum(values.values()) / len(values)
    out: dict[str, Any] = {"items": len(means), "traits": {}}
    judge_scores = _judge_rubric(run_dir)
    for trait in cfg.traits:
        entry: dict[str, Any] = {"between_annotators": _agreement(per_trait[trait], "interval")}
        critic_x, critic_y, judge_x, judge_y = [], [], [], []
        for item_id, m in means.items():
            if trait not in m:
                continue
            item = queue.by_id[item_id]
            if item.kind == "dialogue":
                score = (queue.record(item.refs[0]).get("scores") or {}).get(trait)
                if score is not None:
                    critic_x.append(m[trait])
                    critic_y.append(score)
            else:
                score = judge_scores.get(item.refs[0], {}).get(trait)
                if score is not None:
                    judge_x.append(m[trait])
                    judge_y.append(score)
        entry["critic_spearman"] = {"items": len(critic_x), "rho": _round(spearman(critic_x, critic_y))}
        entry["judge_spearman"] = {"items": len(judge_x), "rho": _round(spearman(judge_x, judge_y))}
        out["traits"][trait] = entry
    overall_x, overall_y = [], []
    for item_id, m in means.items():
        item = queue.by_id[item_id]
        if item.kind == "dialogue":
            critic = (queue.record(item.refs[0]).get("scores") or {}).get("critic")
            if critic is not None:
                overall_x.append(sum(m.values()) / len(m))
                overall_y.append(critic)
    out["critic_overall_spearman"] = {"items": len(overall_x), "rho": _round(spearman(overall_x, overall_y)),
                                      "note": "mean human rating over the traits vs the critic's combined score"}
    return out


def _judge_rubric(run_dir: Path) -> dict[str, dict[str, float]]:
    path = run_dir / "judge" / "judgements.jsonl"
    out: dict[str, dict[str, float]] = {}
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                r = json.loads(line)
            except ValueError:
                continue
            out[r.get("generation_id")] = {k: v for k, v in (r.get("scores") or {}).items() if v is not None}
    return out


def _tags_summary(latest, cfg: AnnotateConfig) -> dict[str, Any]:
    per_tag: dict[str, dict[str, dict[str, int]]] = {t: {} for t in cfg.tags}
    counts: Counter = Counter()
    items = 0
    for (task, item_id), by in latest.items():
        if task != "tags":
            continue
        items += 1
        for tag in cfg.tags:
            per_tag[tag][item_id] = {a: int(tag in (r.get("answer") or {}).get("tags", [])) for a, r in by.items()}
        for r in by.values():
            counts.update((r.get("answer") or {}).get("tags", []))
    return {"items": items, "tag_counts": {t: counts[t] for t in cfg.tags},
            "between_annotators": {t: _agreement(per_tag[t], "nominal") for t in cfg.tags}}


def summary_markdown(s: dict[str, Any]) -> str:
    p = s["pairwise"]
    lines = ["# Human annotations", "",
             f"{s['answers']} answers from {len(s['annotators'])} annotators ({', '.join(s['annotators']) or 'none'}).",
             "", "## Pairwise", "",
             f"{p['items']} items, {p['answers']} answers; exported {s['counts']['preferences']} conversation "
             f"preferences and {s['counts']['reply_preferences']} reply preferences (human majority, ties left out).",
             "", "| measure | value |", "|---|---|"]
    b = p["between_annotators"]
    lines += [f"| shared items | {b['shared_items']} |", f"| Cohen's kappa | {_fmt(b.get('cohen_kappa'))} |",
              f"| Krippendorff's alpha (nominal) | {_fmt(b.get('krippendorff_alpha'))} |",
              f"| critic agrees with the human majority | {_fmt(p['critic_vs_humans']['agreement'])} "
              f"({p['critic_vs_humans']['items']} items) |",
              f"| LLM judge agrees with the human majority | {_fmt(p['judge_vs_humans']['agreement'])} "
              f"({p['judge_vs_humans']['items']} items) |",
              f"| share of decided answers picking A (0.5: no position bias) | "
              f"{_fmt(p['position']['share_picking_A'])} |", "",
              "## Likert", "", f"{s['likert']['items']} items rated.", "",
              "| trait | shared items | kappa | alpha (interval) | critic rho | judge rho |", "|---|---|---|---|---|---|"]
    for trait, e in s["likert"]["traits"].items():
        ba = e["between_annotators"]
        lines.append(f"| {trait} | {ba['shared_items']} | {_fmt(ba.get('cohen_kappa'))} | "
                     f"{_fmt(ba.get('krippendorff_alpha'))} | {_fmt(e['critic_spearman']['rho'])} | "
                     f"{_fmt(e['judge_spearman']['rho'])} |")
    lines += ["", "## Tags", "", f"{s['tags']['items']} items tagged.", "", "| tag | times given | kappa | alpha |",
              "|---|---|---|---|"]
    for tag, n in s["tags"]["tag_counts"].items():
        ba = s["tags"]["between_annotators"][tag]
        lines.append(f"| {tag} | {n} | {_fmt(ba.get('cohen_kappa'))} | {_fmt(ba.get('krippendorff_alpha'))} |")
    return "\n".join(lines) + "\n"


def _fmt(x: Any) -> str:
    return "n/a" if x is None else (f"{x:.3f}" if isinstance(x, float) else str(x))
