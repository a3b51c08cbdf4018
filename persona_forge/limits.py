"""Limits on user-given text, in one place (README "Limits"): huge or empty text is refused or
left out with one line, never passed on to a model.

A persona attribute is a sentence: Synthetic-Persona-Chat's longest of 89,068 is 170 characters.
"""

from __future__ import annotations

from pathlib import Path

from . import ui
from .errors import UserError

MAX_ATTRIBUTE_CHARS = 300      # one persona attribute (seed lines, profile attributes, forge chat)
MAX_PERSONA_ATTRIBUTES = 30    # attributes in the persona forge chat plays
MAX_PERSONA_FILE_BYTES = 64 * 1024
MAX_NLI_TEXT_CHARS = 2000      # each side of forge nli check


def check_file_size(path: Path, label: str, limit: int = MAX_PERSONA_FILE_BYTES) -> Path:
    """`path`, or a UserError when the file is larger than `limit` bytes."""
    path = Path(path)
    if path.is_file() and path.stat().st_size > limit:
        raise UserError(f"{label} {path}: {path.stat().st_size:,} bytes, more than the {limit:,} a persona may "
                        f"have; give a few sentences, one a line")
    return path


def check_persona(attributes: list[str], path: Path) -> list[str]:
    """A persona for forge chat: at most MAX_PERSONA_ATTRIBUTES attributes of at most MAX_ATTRIBUTE_CHARS."""
    if len(attributes) > MAX_PERSONA_ATTRIBUTES:
        raise UserError(f"{path}: {len(attributes)} persona attributes, more than {MAX_PERSONA_ATTRIBUTES}; "
                        f"a persona is a few sentences (about five)")
    for number, attribute in enumerate(attributes, 1):
        if len(attribute) > MAX_ATTRIBUTE_CHARS:
            raise UserError(f"{path}: attribute {number} is {len(attribute):,} characters, more than "
                            f"{MAX_ATTRIBUTE_CHARS}; one attribute is one sentence")
    return attributes


def check_text_length(text: str, label: str, limit: int = MAX_NLI_TEXT_CHARS) -> str:
    if len(text) > limit:
        raise UserError(f"{label} is {len(text):,} characters, more than {limit:,}; give a sentence or two")
    return text


def drop_long_attributes(texts: list[str], where: Path | str) -> list[str]:
    """`texts` without those longer than MAX_ATTRIBUTE_CHARS, with one warning line if any went."""
    kept = [t for t in texts if len(t) <= MAX_ATTRIBUTE_CHARS]
    if len(kept) < len(texts):
        longest = max(len(t) for t in texts)
        ui.info(f"[yellow]warning:[/yellow] {where}: left out {len(texts) - len(kept)} line(s) longer than "
                f"{MAX_ATTRIBUTE_CHARS} characters (the longest {longest:,}); an attribute is one sentence")
    return kept


def blank_attribute_error(attributes: list[str]) -> str | None:
    """Why a profile's attributes are unusable (an empty or blank one, or one too long), or None."""
    for number, attribute in enumerate(attributes, 1):
        if not attribute.strip():
            return f"attribute {number} is empty; every attribute is a sentence"
        if len(attribute) > MAX_ATTRIBUTE_CHARS:
            return f"attribute {number} is {len(attribute):,} characters, more than {MAX_ATTRIBUTE_CHARS}"
    return None
