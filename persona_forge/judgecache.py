"""A cache of judge answers in the user cache directory, so that a re-run, a second run directory
or a second report asks the judge nothing it was asked before.

One sqlite file (default <cache>/judge/answers.sqlite; ~/.cache/persona_forge/judge/...). A key is
the hash of what decides the answer: the judge backend's identity (kind, model, base URL, sampling,
adapter digest), the kind of question (text or option probabilities, with the options and the
answer prefix), and the request (messages, so the prompt; max tokens, temperature, top_p, seed,
JSON mode and schema). Only answers that came back (no transport error) are kept.

Used by `forge judge` through `ask_text` / `ask_options`, which send only the misses.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .backends.base import ChatRequest, Completion, OptionProbs


def default_path() -> Path:
    from .models import cache_dir

    return cache_dir() / "judge" / "answers.sqlite"


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0

    def as_dict(self) -> dict[str, int]:
        return {"hits": self.hits, "misses": self.misses}


class JudgeCache:
    """key -> JSON answer, in sqlite (safe for several processes: each write is one transaction)."""

    def __init__(self, path: Path | None = None):
        self.path = Path(path) if path else default_path()
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None   # opened on first use: a run that asks nothing touches nothing
        self.stats = CacheStats()

    @property
    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._conn = sqlite3.connect(str(self.path), timeout=30, check_same_thread=False)
            with self._conn:
                self._conn.execute("CREATE TABLE IF NOT EXISTS answers (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        return self._conn

    def get(self, key: str) -> Any | None:
        with self._lock:
            row = self._db.execute("SELECT value FROM answers WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else None

    def put_many(self, items: Sequence[tuple[str, Any]]) -> None:
        if not items:
            return
        with self._lock, self._db:
            self._db.executemany("INSERT OR REPLACE INTO answers (key, value) VALUES (?, ?)",
                                 [(k, json.dumps(v, ensure_ascii=False)) for k, v in items])

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def request_key(identity: dict[str, Any], kind: str, request: ChatRequest, **extra: Any) -> str:
    blob = json.dumps({"judge": identity, "kind": kind, "messages": list(request.messages),
                       "max_tokens": request.max_tokens, "temperature": request.temperature, "top_p": request.top_p,
                       "seed": request.seed, "json": request.json, "schema": request.schema, "stop": list(request.stop),
                       **extra}, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def _usable(cache: JudgeCache | None, backend) -> bool:
    return cache is not None and getattr(backend, "deterministic", True)


def ask_text(backend, requests: Sequence[ChatRequest], identity: dict[str, Any], cache: JudgeCache | None,
             send: Callable[[list[ChatRequest]], list[Completion]]) -> list[Completion]:
    """Completions for `requests`: cached ones from the cache, the rest from `send` (then cached)."""
    if not _usable(cache, backend):
        return send(list(requests)) if requests else []
    keys = [request_key(identity, "text", r) for r in requests]

    def stored(completion: Completion) -> dict[str, Any] | None:
        if not completion.ok:
            return None
        return {"text": completion.text, "finish_reason": completion.finish_reason,
                "parsed": completion.parsed, "parse_error": completion.parse_error}

    return _through_cache(cache, requests, keys, send, Completion, stored)


def ask_options(backend, requests: Sequence[ChatRequest], options: Sequence[str], prefix: str,
                identity: dict[str, Any], cache: JudgeCache | None,
                send: Callable[[list[ChatRequest]], list[OptionProbs]]) -> list[OptionProbs]:
    """OptionProbs for `requests`, from the cache where it has them."""
    if not _usable(cache, backend):
        return send(list(requests)) if requests else []
    keys = [request_key(identity, "options", r, options=list(options), prefix=prefix) for r in requests]
    return _through_cache(cache, requests, keys, send, OptionProbs,
                          lambda answer: asdict(answer) if answer.error is None or answer.probs else None)


def _through_cache(cache: JudgeCache, requests: Sequence[ChatRequest], keys: list[str], send: Callable[[list], list],
                   kind: type, stored: Callable[[Any], dict[str, Any] | None]) -> list:
    """One answer per request (key): a hit is rebuilt as `kind` at no token cost, the misses go to `send`
    in one call, and each answer `stored` makes a dict of (None: not worth keeping) is cached."""
    out: list[Any] = []
    for key in keys:
        hit = cache.get(key)
        out.append(kind(**{**hit, "prompt_tokens": 0, "completion_tokens": 0}) if hit else None)
    todo = [i for i, c in enumerate(out) if c is None]
    cache.stats.hits += len(requests) - len(todo)
    cache.stats.misses += len(todo)
    if todo:
        answers = send([requests[i] for i in todo])
        keep = []
        for i, answer in zip(todo, answers):
            out[i] = answer
            value = stored(answer)
            if value is not None:
                keep.append((keys[i], value))
        cache.put_many(keep)
    return out
