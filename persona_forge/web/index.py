"""Lazy, paged reading of a run's JSONL files for `forge view`.

A file is scanned once per version (size and modification time): each line's byte offset and a
small summary the list pages filter on (ids, scores, a lowercase text to search). A page then
reads only its own lines by offset. A file that grows (a stage still running) is indexed again.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

Summarise = Callable[[dict[str, Any]], Any]


@dataclass
class JsonlIndex:
    """Where each record of one version of a JSONL file starts, and a summary of it."""

    path: Path
    size: int
    mtime_ns: int
    offsets: list[int] = field(default_factory=list)
    lengths: list[int] = field(default_factory=list)
    rows: list[Any] = field(default_factory=list)
    bad_lines: int = 0

    def __len__(self) -> int:
        return len(self.offsets)

    def read(self, positions: list[int]) -> list[dict[str, Any]]:
        """The full records at these positions (one seek and read each)."""
        out = []
        with open(self.path, "rb") as fh:
            for i in positions:
                fh.seek(self.offsets[i])
                out.append(json.loads(fh.read(self.lengths[i])))
        return out


_cache: dict[tuple[str, str], JsonlIndex] = {}
_lock = threading.Lock()
generation = 0  # bumped by clear_cache, so caches derived from indexes are dropped too


def index(path: Path, summarise: Summarise, name: str) -> JsonlIndex | None:
    """The index of `path` built with `summarise` (cached per summary kind, size and mtime);
    None when the file is missing. A malformed line (a stage killed mid-write) is counted and skipped."""
    path = Path(path)
    try:
        stat = os.stat(path)
    except FileNotFoundError:
        return None
    key = (str(path.resolve()), name)
    with _lock:
        cached = _cache.get(key)
        if cached and cached.size == stat.st_size and cached.mtime_ns == stat.st_mtime_ns:
            return cached
        built = _build(path, stat.st_size, stat.st_mtime_ns, summarise)
        _cache[key] = built
        return built


def clear_cache() -> None:
    global generation
    with _lock:
        _cache.clear()
        generation += 1


def _build(path: Path, size: int, mtime_ns: int, summarise: Summarise) -> JsonlIndex:
    idx = JsonlIndex(path, size, mtime_ns)
    offset = 0
    with open(path, "rb") as fh:
        for line in fh:
            length = len(line)
            if line.strip():
                try:
                    obj = json.loads(line)
                except ValueError:
                    idx.bad_lines += 1
                else:
                    idx.offsets.append(offset)
                    idx.lengths.append(length)
                    idx.rows.append(summarise(obj))
            offset += length
    return idx


def ids_of(path: Path) -> set[str]:
    """The record ids in a JSONL file (empty when it is missing)."""
    idx = index(path, lambda obj: obj.get("id"), "ids")
    return set(idx.rows) if idx else set()
