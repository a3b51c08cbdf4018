"""Where a user's memory lives: one JSONL file per user under the memory directory.

Records are MemoryFact. Every change rewrites the user's file in one step
(store.atomic_write_jsonl), so a killed write leaves the previous file whole; a user's memory is
small (tens to hundreds of facts), so rewriting it is cheap.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from ..errors import UserError
from ..schema import record_id
from ..store import atomic_write_jsonl, read_jsonl

USER_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,127}$")


class MemoryFact(BaseModel):
    """One thing a user said about themselves, in their words."""

    model_config = ConfigDict(extra="forbid")

    id: str
    user: str
    text: str
    source_turn: int | None = Field(None, description="The user's message it came from (0-based), if known.")
    created_at: str
    status: Literal["active", "superseded"] = "active"
    supersedes: list[str] = Field(default_factory=list, description="Older facts this one contradicted.")
    superseded_by: str | None = None
    extractor: str = "nli"
    edited_at: str | None = None


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def fact_id(user: str, text: str, created_at: str) -> str:
    return record_id("memory", user, text.strip().lower(), created_at)


def default_dir() -> Path:
    """$XDG_DATA_HOME/persona_forge/memory (~/.local/share/persona_forge/memory)."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "persona_forge" / "memory"


def check_user(user: str) -> str:
    if not USER_ID.match(user or ""):
        raise UserError(f"user id {user!r} is not usable as a file name; use letters, digits, '_', '-', '.', '@' "
                        f"(up to 128, starting with a letter or digit)")
    return user


class MemoryStore:
    """The memory directory: `<dir>/<user>.jsonl`."""

    def __init__(self, directory: Path | None = None):
        self.dir = Path(directory).expanduser() if directory else default_dir()

    def path(self, user: str) -> Path:
        return self.dir / f"{check_user(user)}.jsonl"

    def users(self) -> list[str]:
        return sorted(p.stem for p in self.dir.glob("*.jsonl")) if self.dir.is_dir() else []

    def load(self, user: str) -> list[MemoryFact]:
        path = self.path(user)
        return read_jsonl(path, MemoryFact) if path.is_file() else []

    def save(self, user: str, facts: Iterable[MemoryFact]) -> int:
        return atomic_write_jsonl(self.path(user), list(facts))

    def forget(self, user: str, fact: str | None = None) -> int:
        """Delete one fact (and unlink it from the facts it superseded or was superseded by), or the
        user's whole memory; returns how many facts were deleted."""
        path = self.path(user)
        facts = self.load(user)
        if fact is None:
            if path.exists():
                path.unlink()
            return len(facts)
        target = _find(facts, fact, user)
        kept = []
        for f in facts:
            if f.id == target.id:
                continue
            update: dict = {}
            if target.id in f.supersedes:
                update["supersedes"] = [s for s in f.supersedes if s != target.id]
            if f.superseded_by == target.id:
                # What superseded it is gone: the older fact is the user's latest word again.
                update.update(superseded_by=None, status="active")
            kept.append(f.model_copy(update=update) if update else f)
        self.save(user, kept)
        return 1

    def edit(self, user: str, fact: str, text: str) -> MemoryFact:
        text = text.strip()
        if not text:
            raise UserError("--text is empty; give the fact's new wording, e.g. --text 'I have two cats.'")
        facts = self.load(user)
        target = _find(facts, fact, user)
        edited = target.model_copy(update={"text": text, "edited_at": now()})
        self.save(user, [edited if f.id == target.id else f for f in facts])
        return edited


def _find(facts: list[MemoryFact], fact: str, user: str) -> MemoryFact:
    matches = [f for f in facts if f.id.startswith(fact)] if fact else []
    if len(matches) != 1:
        known = ", ".join(f.id for f in facts[:5]) or "none"
        what = "no fact" if not matches else f"{len(matches)} facts"
        raise UserError(f"{what} of user {user} with id {fact!r} (known: {known}); see forge memory list {user}")
    return matches[0]
