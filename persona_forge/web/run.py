"""What `forge view` shows of a run directory, read lazily and a page at a time.

In: <stage>.manifest.json, train/<name>/train.manifest.json, dialogues.jsonl (+ best.jsonl,
generate_rejections.jsonl for kept / rejected and why), curated/ (selected.jsonl, selection.json,
curate_rejections.jsonl), eval/generations.jsonl, the charts (*.png) and the markdown reports.
Out: plain dicts for the templates. Nothing here writes.
"""

from __future__ import annotations

import json
import math
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from . import index as jidx

IMAGE_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".gif": "image/gif",
               ".webp": "image/webp"}
STATUSES = ("kept", "rejected", "not_chosen")
STATUS_TEXT = {"kept": "kept", "rejected": "rejected", "not_chosen": "not chosen (a sibling scored higher, "
                                                                     "or the pair is unfinished)"}


@dataclass(frozen=True)
class DialogueRow:
    id: str
    pair_id: str | None
    round: int
    candidate: int
    scores: dict[str, float | None]
    parse_error: bool
    text: str  # lowercase personas and turns, for search


def _dialogue_row(obj: dict[str, Any]) -> DialogueRow:
    parts = [*obj.get("user1_persona", []), *obj.get("user2_persona", []),
             *(t.get("text", "") for t in obj.get("turns", []))]
    return DialogueRow(str(obj.get("id")), obj.get("pair_id"), int(obj.get("round") or 0),
                       int(obj.get("candidate") or 0), dict(obj.get("scores") or {}), bool(obj.get("parse_error")),
                       "\n".join(str(p) for p in parts).lower())


def _rejection_row(obj: dict[str, Any]) -> tuple[str, str, dict[str, Any]]:
    return str(obj.get("subject_id")), str(obj.get("reason")), dict(obj.get("detail") or {})


@dataclass
class _Derived:
    kept: set[str]
    rejected: dict[str, list[tuple[str, dict[str, Any]]]]
    statuses: list[str]
    reasons: list[frozenset[str]]
    facets: dict[str, Any]


@dataclass
class Page:
    items: list[Any]
    total: int
    page: int
    pages: int


def paginate(n: int, page: int, size: int) -> tuple[int, int, range]:
    pages = max(1, math.ceil(n / size))
    page = min(max(1, page), pages)
    start = (page - 1) * size
    return page, pages, range(start, min(n, start + size))


class RunView:
    """A run directory as `forge view` reads it."""

    def __init__(self, path: Path, page_size: int = 20):
        self.path = Path(path).resolve()
        self.page_size = page_size
        self._cache: tuple[tuple, _Derived] | None = None

    # --- files ---
    def safe_path(self, relative: str) -> Path | None:
        """`relative` inside the run directory, or None (absolute, `..`, a link out, missing)."""
        rel = PurePosixPath(relative)
        if rel.is_absolute() or ".." in rel.parts:
            return None
        target = (self.path / rel).resolve()
        if not target.is_relative_to(self.path) or not target.is_file():
            return None
        return target

    def charts(self) -> list[str]:
        """Every chart a stage drew (*.png up to two folders down), relative to the run directory."""
        found = []
        for pattern in ("*.png", "*/*.png", "*/*/*.png"):
            found += [p for p in self.path.glob(pattern) if ".trash" not in p.parts]
        return sorted(str(p.relative_to(self.path)) for p in found)

    def reports(self) -> list[str]:
        """Markdown reports the stages wrote (run report first)."""
        found = [p for pattern in ("*.md", "*/*.md", "*/*/*.md") for p in self.path.glob(pattern)
                 if ".trash" not in p.parts]
        rel = sorted(str(p.relative_to(self.path)) for p in found)
        return sorted(rel, key=lambda r: (r != "report.md", r))

    # --- overview ---
    def manifests(self) -> list[dict[str, Any]]:
        paths = sorted(self.path.glob("*.manifest.json"), key=_stage_order)
        paths += sorted(self.path.glob("train/*/train.manifest.json"))
        out = []
        for p in paths:
            try:
                m = json.loads(p.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                out.append({"name": str(p.relative_to(self.path)), "status": f"unreadable ({exc})", "counts": {},
                            "figures": [], "models": {}})
                continue
            name = m.get("stage", p.name.split(".")[0])
            if p.parent != self.path:
                name = f"{name} ({p.parent.name})"
            out.append({"name": name, "file": str(p.relative_to(self.path)), "status": m.get("status"),
                        "counts": m.get("counts") or {}, "figures": flatten(m.get("figures") or {}),
                        "models": m.get("models") or {}, "config_hash": m.get("config_hash")})
        return out

    # --- dialogues ---
    def dialogue_index(self) -> jidx.JsonlIndex | None:
        return jidx.index(self.path / "dialogues.jsonl", _dialogue_row, "dialogue")

    def verdicts(self) -> tuple[set[str], dict[str, list[tuple[str, dict[str, Any]]]]]:
        """(ids kept in best.jsonl, subject id -> [(reason, detail)] from generate_rejections.jsonl)."""
        derived = self._derived()
        return derived.kept, derived.rejected

    def _derived(self) -> "_Derived":
        """Per-row status and reasons and the filter facets, computed once per version of the three
        files (a list request then only filters precomputed lists)."""
        idx = self.dialogue_index()
        best = jidx.index(self.path / "best.jsonl", lambda obj: obj.get("id"), "ids")
        rej = jidx.index(self.path / "generate_rejections.jsonl", _rejection_row, "rejection")
        key = (jidx.generation, *((i.size, i.mtime_ns) if i else None for i in (idx, best, rej)))
        if self._cache is not None and self._cache[0] == key:
            return self._cache[1]
        kept = set(best.rows) if best else set()
        rejected: dict[str, list[tuple[str, dict[str, Any]]]] = defaultdict(list)
        for subject, reason, detail in rej.rows if rej else []:
            rejected[subject].append((reason, detail))
        rows = idx.rows if idx else []
        statuses = ["kept" if r.id in kept else "rejected" if r.id in rejected else "not_chosen" for r in rows]
        reasons = [frozenset(reason for reason, _ in rejected.get(r.id, ())) for r in rows]
        reason_counts: Counter = Counter()
        for found in reasons:
            reason_counts.update(found)
        score_names = sorted({name for r in rows for name in r.scores})
        facets = {"statuses": dict(Counter(statuses)), "reasons": dict(sorted(reason_counts.items())),
                  "score_names": score_names, "total": len(rows), "bad_lines": idx.bad_lines if idx else 0}
        derived = _Derived(kept, dict(rejected), statuses, reasons, facets)
        self._cache = (key, derived)
        return derived

    def status_of(self, dialogue_id: str) -> str:
        kept, rejected = self.verdicts()
        return "kept" if dialogue_id in kept else "rejected" if dialogue_id in rejected else "not_chosen"

    def dialogue_facets(self) -> dict[str, Any]:
        """Counts per status and per rejection reason, and the score names, for the filter form."""
        return self._derived().facets

    def dialogues(self, status: str = "", reason: str = "", score: str = "critic", lo: float | None = None,
                  hi: float | None = None, q: str = "", page: int = 1) -> Page:
        """One page of candidates matching the filters, each with its status and why."""
        idx = self.dialogue_index()
        if idx is None:
            return Page([], 0, 1, 1)
        d = self._derived()
        words = q.lower().split()
        matches: list[int] | range = range(len(idx.rows))
        if status:
            matches = [i for i in matches if d.statuses[i] == status]
        if reason:
            matches = [i for i in matches if reason in d.reasons[i]]
        if lo is not None or hi is not None:
            lo_, hi_ = (-math.inf if lo is None else lo), (math.inf if hi is None else hi)
            rows = idx.rows
            matches = [i for i in matches if (v := rows[i].scores.get(score)) is not None and lo_ <= v <= hi_]
        if words:
            rows = idx.rows
            matches = [i for i in matches if all(w in rows[i].text for w in words)]
        page, pages, window = paginate(len(matches), page, self.page_size)
        chosen = [matches[i] for i in window]
        items = []
        for pos, record in zip(chosen, idx.read(chosen)):
            items.append({"record": record, "status": d.statuses[pos],
                          "rejections": d.rejected.get(idx.rows[pos].id, []), "scores": score_rows(record)})
        return Page(items, len(matches), page, pages)

    def dialogue(self, dialogue_id: str) -> dict[str, Any] | None:
        idx = self.dialogue_index()
        if idx is None:
            return None
        for i, row in enumerate(idx.rows):
            if row.id == dialogue_id:
                return idx.read([i])[0]
        return None

    # --- curated ---
    def curated(self, page: int = 1) -> dict[str, Any]:
        folder = self.path / "curated"
        selection = _read_json(folder / "selection.json")
        idx = jidx.index(folder / "selected.jsonl", lambda obj: obj.get("id"), "ids")
        rej = jidx.index(folder / "curate_rejections.jsonl", _rejection_row, "rejection")
        items: list[dict[str, Any]] = []
        total, pages = 0, 1
        if idx is not None:
            total = len(idx)
            page, pages, window = paginate(total, page, self.page_size)
            items = idx.read(list(window))
        measures = (selection or {}).get("measures") or {}
        measure_names = sorted({k for m in measures.values() if isinstance(m, dict) for k in m})
        return {"exists": folder.is_dir(), "selection": selection, "measures": measures,
                "measure_names": measure_names, "notes": (selection or {}).get("notes") or {},
                "rejections": dict(Counter(r for _, r, _ in rej.rows)) if rej else {},
                "page": Page(items, total, page, pages),
                "card": "curated/README.md" if (folder / "README.md").is_file() else None}

    # --- eval ---
    def eval_examples(self, page: int = 1) -> dict[str, Any]:
        path = self.path / "eval" / "generations.jsonl"
        idx = jidx.index(path, lambda obj: (obj.get("example_id"), obj.get("model")), "eval")
        if idx is None:
            return {"exists": False, "page": Page([], 0, 1, 1), "models": [], "metrics": None}
        by_example: dict[str, list[int]] = {}
        models: list[str] = []
        for i, (example, model) in enumerate(idx.rows):
            by_example.setdefault(example, []).append(i)
            if model not in models:
                models.append(model)
        models.sort(key=lambda m: (m != "base", m))
        examples = list(by_example)
        page, pages, window = paginate(len(examples), page, self.page_size)
        items = []
        for e in (examples[i] for i in window):
            records = idx.read(by_example[e])
            replies = {r["model"]: r for r in records}
            first = records[0]
            items.append({"example_id": e, "persona": first.get("persona", []),
                          "context": [m for m in first.get("messages", []) if m.get("role") != "system"],
                          "reference": first.get("reference", ""),
                          "replies": [(m, replies.get(m)) for m in models]})
        return {"exists": True, "page": Page(items, len(examples), page, pages), "models": models,
                "table": "eval/table.md" if (self.path / "eval" / "table.md").is_file() else None}


def _stage_order(path: Path) -> int:
    order = ["personas", "pair", "generate", "curate", "train", "eval", "judge"]
    stage = path.name.split(".")[0]
    return order.index(stage) if stage in order else len(order)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def flatten(figures: dict[str, Any], prefix: str = "", depth: int = 0) -> list[tuple[str, Any]]:
    """Scalar figures as (dotted name, value), nested dicts two levels down; lists are left out
    (per-round tables live in the stage's own report)."""
    out: list[tuple[str, Any]] = []
    for key, value in figures.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and depth < 2:
            out += flatten(value, name + ".", depth + 1)
        elif isinstance(value, (int, float, str, bool)) or value is None:
            out.append((name, value))
    return out


def score_rows(record: dict[str, Any]) -> list[tuple[str, Any, str]]:
    """(score name, value, reason) for every critic score, then reasons that have no score."""
    scores = record.get("scores") or {}
    reasons = record.get("reasons") or {}
    rows = [(k, v, reasons.get(k, "")) for k, v in scores.items()]
    rows += [(k, None, r) for k, r in reasons.items() if k not in scores]
    return rows
