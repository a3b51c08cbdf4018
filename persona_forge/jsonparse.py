"""A tolerant reader for JSON that language models write.

Models wrap JSON in prose or code fences, leave trailing commas, use single quotes or Python
literals. We accept all that; what we cannot read raises JsonParseError with a short reason
(the caller then asks once for a repair, and records the error if that fails too).
"""

from __future__ import annotations

import ast
import json
import re
from typing import Any

_FENCE = re.compile(r"```(?:json|JSON)?\s*(.*?)```", re.DOTALL)
_TRAILING_COMMA = re.compile(r",\s*([}\]])")


class JsonParseError(ValueError):
    pass


def parse_json(text: str | None) -> Any:
    """The first JSON object or array in `text`."""
    if text is None or not text.strip():
        raise JsonParseError("empty reply")
    candidates = [m.group(1) for m in _FENCE.finditer(text)] + [text]
    last_error = "no JSON object or array found"
    for candidate in candidates:
        span = _balanced_span(candidate)
        if span is None:
            if _opens_json(candidate):
                last_error = "JSON is truncated (unbalanced brackets)"
            continue
        for attempt in (span, _TRAILING_COMMA.sub(r"\1", span)):
            try:
                return json.loads(attempt)
            except json.JSONDecodeError as exc:
                last_error = f"invalid JSON: {exc.msg} at char {exc.pos}"
        try:
            value = ast.literal_eval(_TRAILING_COMMA.sub(r"\1", span))
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            continue
        if isinstance(value, (dict, list)):
            return value
    raise JsonParseError(last_error)


def _opens_json(text: str) -> bool:
    return "{" in text or "[" in text


def _balanced_span(text: str) -> str | None:
    """The first {...} or [...] with balanced brackets, skipping brackets inside strings."""
    starts = [i for i in (text.find("{"), text.find("[")) if i >= 0]
    if not starts:
        return None
    start = min(starts)
    stack: list[str] = []
    quote: str | None = None
    escaped = False
    for pos in range(start, len(text)):
        ch = text[pos]
        if quote:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == quote:
                quote = None
            continue
        if ch in "\"'":
            # An apostrophe inside a bare word ("don't") is not a quote.
            if ch == "'" and pos > 0 and text[pos - 1].isalnum():
                continue
            quote = ch
        elif ch in "{[":
            stack.append("}" if ch == "{" else "]")
        elif ch in "}]":
            if not stack or stack.pop() != ch:
                return None
            if not stack:
                return text[start:pos + 1]
    return None
