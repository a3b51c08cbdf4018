"""Conversations as text and back: "User 1: ..." / "User 2: ..." transcripts.

The generator's `whole` mode asks for a transcript and parses the reply here; few-shot examples,
the judge's prompt and DPO rows show conversations in the same form.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from .jsonparse import parse_json
from .schema import Turn

SPEAKER_NAMES = {"user1": "User 1", "user2": "User 2"}

# "User 1:", "**User 2:**", "Person A -", "Speaker 1:", "A:", "[User 1]:", "1:"
_LINE = re.compile(
    r"""^\s*(?:[-*>\d.]+\s+)?[*_\[(]*\s*
        (?:(?:user|person|speaker|participant)[\s_-]*(?P<num>[12ab])|(?P<bare>[ab12]))
        \s*[*_\])]*\s*[:\-–—]\s*[*_]*\s*(?P<text>.*)$""",
    re.IGNORECASE | re.VERBOSE)
_WHO = {"1": "user1", "a": "user1", "2": "user2", "b": "user2"}


def format_transcript(turns: Sequence[Turn]) -> str:
    return "\n".join(f"{SPEAKER_NAMES[t.speaker]}: {t.text}" for t in turns)


class ParseError(ValueError):
    pass


def parse_transcript(text: str) -> list[Turn]:
    """Turns from a model's reply: speaker-labelled lines, or JSON ({"turns": [...]} or a list of
    {"speaker", "text"}). Unlabelled lines continue the turn before them; text before the first
    label (a preamble such as "Sure, here is...") is dropped. Raises ParseError when no turns are
    found."""
    stripped = text.strip()
    if stripped.startswith(("{", "[")):
        turns = _json_turns(stripped)
        if turns:
            return turns
    turns: list[Turn] = []
    for line in stripped.splitlines():
        match = _LINE.match(line)
        if match:
            who = _WHO[(match.group("num") or match.group("bare")).lower()]
            body = _clean(match.group("text"))
            if body:
                turns.append(Turn(speaker=who, text=body))
        elif turns and line.strip():
            turns[-1] = Turn(speaker=turns[-1].speaker, text=f"{turns[-1].text} {_clean(line)}".strip())
    if not turns:
        raise ParseError("no 'User 1:' / 'User 2:' lines and no JSON turns in the reply")
    return turns


def _json_turns(text: str) -> list[Turn]:
    try:
        data = parse_json(text)
    except ValueError:
        return []
    if isinstance(data, dict):
        data = data.get("turns") or data.get("conversation") or data.get("dialogue") or []
    turns = []
    for item in data if isinstance(data, list) else []:
        if not isinstance(item, dict):
            continue
        who = str(item.get("speaker", item.get("role", ""))).lower().replace(" ", "")
        body = _clean(str(item.get("text", item.get("content", ""))))
        speaker = {"user1": "user1", "usera": "user1", "1": "user1", "user2": "user2", "userb": "user2",
                   "2": "user2"}.get(who)
        if speaker and body:
            turns.append(Turn(speaker=speaker, text=body))
    return turns


def _clean(text: str) -> str:
    text = text.strip().strip("*_").strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        text = text[1:-1].strip()
    return text


# A persona agent's reply sometimes runs on into the other person's line or a stage direction.
_RUN_ON = re.compile(r"\n|\b(?:user|person|speaker)\s*[12ab]\s*:|\(\s*(?:user|person)\b", re.IGNORECASE)
_OWN_LABEL = re.compile(r"^\s*(?:(?:user|person|speaker)\s*[12ab]|me|you)\s*:\s*", re.IGNORECASE)


def clean_reply(text: str, max_sentences: int = 3, truncated: bool = False) -> str:
    """One persona agent's turn: its own label removed, cut where it starts writing the other
    person's line, at most `max_sentences` sentences. A reply cut off by the token limit
    (`truncated`) loses its unfinished last sentence when a finished one comes before it."""
    text = _OWN_LABEL.sub("", text.strip())
    cut = _RUN_ON.search(text)
    if cut:
        text = text[: cut.start()]
        truncated = False
    sentences = [s for s in re.split(r"(?<=[.!?])\s+", _clean(text)) if s]
    if truncated and len(sentences) > 1 and not sentences[-1].endswith((".", "!", "?")):
        sentences.pop()
    return " ".join(sentences[:max_sentences]).strip()
