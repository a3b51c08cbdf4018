"""Readers of the corpora every stage shares: Synthetic-Persona-Chat-shaped conversations and profiles.

In: JSONL(.gz) files. A Synthetic-Persona-Chat (SPC) record has user1_persona and user2_persona (lists
of sentences) and turns [{speaker: user1|user2, text}]; a Profile record has id, attribute_ids and
attributes; a Dialogue record comes from `forge generate`. Out: Profile and Dialogue records
(schema.py), personas normalised like the seed attributes ("i m" -> "I'm").

One reader per shape, so pairing, generate, curate and evaluation agree on what a file holds and
say the same thing about a malformed line.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import UserError
from .limits import blank_attribute_error
from .nli.data import normalize
from .resources import data_dir
from .schema import Dialogue, Preference, Profile, Turn, record_id
from .store import iter_json_lines, validate_record

PERSONA_KEYS = ("user1_persona", "user2_persona")


def spc_file(split: str) -> Path:
    """The packaged Synthetic-Persona-Chat split (train, valid or test)."""
    return data_dir("corpora") / "spc" / f"{split}.jsonl.gz"


def persona_sentences(row: Any, key: str, where: str) -> list[str]:
    """row[key] as a list of sentences, or one clear line saying what the record should hold."""
    persona = row.get(key) if isinstance(row, dict) else None
    if not isinstance(persona, list) or not all(isinstance(s, str) for s in persona):
        raise UserError(f"{where}: {key} must be a list of sentences (a Synthetic-Persona-Chat "
                        f"record has user1_persona, user2_persona and turns)")
    return persona


# --- profiles (Profile records or SPC-shaped) ---------------------------------------------------------------------

@dataclass
class ProfileSet:
    profiles: list[Profile]
    description: str  # what was read, for the summary


def load_profiles(path: Path) -> ProfileSet:
    """Profiles from a Profile JSONL or a Synthetic-Persona-Chat JSONL(.gz), detected from the first record."""
    rows = iter_json_lines(path)
    first = next(rows, None)
    if first is None:
        raise UserError(f"{path}: no profiles in it; pairing needs at least two")
    line_no, record = first
    if isinstance(record, dict) and "user1_persona" in record and "user2_persona" in record:
        return _spc_profiles(path, _chain(first, rows))
    if isinstance(record, dict) and "attributes" in record:
        return _profile_records(path, _chain(first, rows))
    raise UserError(f"{path}:{line_no}: neither a Profile record (id, attribute_ids, attributes) nor a "
                    f"Synthetic-Persona-Chat record (user1_persona, user2_persona)")


def _chain(first: tuple[int, Any], rest: Iterator[tuple[int, Any]]) -> Iterator[tuple[int, Any]]:
    yield first
    yield from rest


def _profile_records(path: Path, rows: Iterator[tuple[int, Any]]) -> ProfileSet:
    profiles: dict[str, Profile] = {}
    lines = 0
    for line_no, row in rows:
        lines += 1
        profile = validate_record(row, Profile, path, line_no)
        if profile.attributes:
            profiles.setdefault(profile.id, profile)
    skipped = lines - len(profiles)
    note = f" ({skipped:,} repeated or empty skipped)" if skipped else ""
    return ProfileSet(list(profiles.values()), f"Profile JSONL: {len(profiles):,} profiles{note}")


def _spc_profiles(path: Path, rows: Iterator[tuple[int, Any]]) -> ProfileSet:
    profiles: dict[str, Profile] = {}
    dialogues = personas = 0
    for line_no, row in rows:
        dialogues += 1
        for key in PERSONA_KEYS:
            sentences = [s for s in (normalize(x) for x in persona_sentences(row, key, f"{path}:{line_no}")) if s]
            unusable = blank_attribute_error(sentences)
            if unusable:
                raise UserError(f"{path}:{line_no}: {key}: {unusable}")
            if sentences:
                personas += 1
                pid = record_id(sentences)
                profiles.setdefault(pid, Profile(id=pid, attribute_ids=[record_id(s) for s in sentences],
                                                 attributes=sentences))
    return ProfileSet(list(profiles.values()),
                      f"Synthetic-Persona-Chat JSONL: {dialogues:,} dialogues, {personas:,} personas, "
                      f"{len(profiles):,} distinct profiles")


# --- conversations (Dialogue records or SPC-shaped) ------------------------------------------------------------------

@dataclass
class Conversations:
    dialogues: list[Dialogue]
    description: str
    scored: bool
    models: list[str] = field(default_factory=list)  # the generators' models, from provenance


_DIALOGUE_KEYS = set(Dialogue.model_fields)


def load_conversations(path: Path) -> Conversations:
    """Dialogue records (from forge generate) or Synthetic-Persona-Chat-shaped records, told apart
    by their keys: anything beyond a Dialogue's fields (e.g. SPC's `split`), or no `scores`, is read
    as SPC-shaped (personas normalised like the seed attributes: "I m" -> "I'm")."""
    dialogues: list[Dialogue] = []
    seen: set[str] = set()
    scored = False
    models: set[str] = set()
    skipped = 0
    for line_no, row in iter_json_lines(path):
        if not isinstance(row, dict):
            raise UserError(f"{path}:{line_no}: not a JSON object; expected a conversation with "
                            f"user1_persona, user2_persona and turns")
        if set(row) <= _DIALOGUE_KEYS and "scores" in row:
            dialogue = validate_record(row, Dialogue, path, line_no)
            scored = scored or bool(dialogue.scores)
            if dialogue.provenance is not None:
                models.add(dialogue.provenance.model)
        else:
            dialogue = spc_dialogue(row, f"{path}:{line_no}")
        if dialogue.id in seen:
            skipped += 1
            continue
        seen.add(dialogue.id)
        dialogues.append(dialogue)
    if not dialogues:
        raise UserError(f"{path}: no conversations in it")
    kind = "Dialogue records" if scored else "unscored conversations"
    note = f" ({skipped:,} repeated ids skipped)" if skipped else ""
    return Conversations(dialogues, f"{kind}: {len(dialogues):,} conversations{note}", scored, sorted(models))


def spc_dialogue(row: dict[str, Any], where: str) -> Dialogue:
    """A Synthetic-Persona-Chat-shaped record as an (unscored) Dialogue, personas normalised."""
    personas = {key: [s for s in (normalize(x) for x in persona_sentences(row, key, where)) if s]
                for key in PERSONA_KEYS}
    turns = row.get("turns")
    if not isinstance(turns, list):
        raise UserError(f"{where}: turns must be a list of {{speaker, text}}")
    parsed = []
    for i, turn in enumerate(turns):
        if not (isinstance(turn, dict) and turn.get("speaker") in ("user1", "user2")
                and isinstance(turn.get("text"), str)):
            raise UserError(f"{where}: turns[{i}] must be {{\"speaker\": \"user1\"|\"user2\", "
                            f"\"text\": \"...\"}}")
        parsed.append(Turn(speaker=turn["speaker"], text=turn["text"].strip()))
    did = row.get("id") if isinstance(row.get("id"), str) and row.get("id") else \
        record_id(personas["user1_persona"], personas["user2_persona"], [t.model_dump() for t in parsed])
    return Dialogue(id=did, user1_persona=personas["user1_persona"], user2_persona=personas["user2_persona"],
                    turns=parsed, pair_id=row.get("pair_id") if isinstance(row.get("pair_id"), str) else None)


def load_preferences(path: Path) -> list[Preference]:
    return [validate_record(row, Preference, path, line_no) for line_no, row in iter_json_lines(path)]
