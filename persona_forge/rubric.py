"""Judge rubrics, each defined once: the criteria and their wording, the scale, and from them the
prompt variables, the JSON schema for structured outputs, the answer options for
probability-weighted scores, and the parser.

Used by `forge judge` (REPLY, PAIRWISE, LIKERT) and by the critic of `forge generate`
(CONVERSATION). A stage renders its template with `rubric.variables()`, sends
`rubric.response_format()` where the endpoint takes structured outputs, and reads the reply with
`rubric.parse()` (free text) or `rubric.expectation()` (a distribution over `rubric.options`).

The score rule (both users, one rule): a score is a number on the scale, given as a JSON number
or as a string whose first number it is ("4", "4/5", "4 out of 5", "about 4.5"). Decimals inside
the scale are kept as given (4.5 stays 4.5: the scores are averaged as an interval scale anyway,
and a probability-weighted score is a decimal too). Out of range (0, 7, "10/10"), no number,
or a boolean: unreadable (None), counted, never guessed.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .jsonparse import JsonParseError, parse_json

_FIRST_NUMBER = re.compile(r"(?<![\d.])(\d+(?:\.\d+)?)")


def key_of(name: Any) -> str:
    """A field name normalised: "Persona consistency" -> "persona_consistency"."""
    return re.sub(r"[^a-z]+", "_", str(name).lower()).strip("_")


def parse_score(value: Any, low: int = 1, high: int = 5) -> float | None:
    """The score rule of this module's docstring."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        number = float(value)
    else:
        match = _FIRST_NUMBER.search(str(value))
        if not match:
            return None
        number = float(match.group(1))
    if math.isnan(number) or not low <= number <= high:
        return None
    return int(number) if number == int(number) else number


def expectation(probs: Mapping[str, float]) -> tuple[float | None, float | None]:
    """(expected score, entropy in bits) of a distribution over numeric options ("1".."5")."""
    total = sum(probs.values())
    if not probs or total <= 0:
        return None, None
    p = {k: v / total for k, v in probs.items()}
    score = sum(float(k) * v for k, v in p.items())
    return round(score, 4), round(entropy(p), 4)


def entropy(probs: Mapping[str, float]) -> float:
    """Shannon entropy in bits (0: certain; log2(5) = 2.32 for five equal options)."""
    return -sum(v * math.log2(v) for v in probs.values() if v > 0)


@dataclass(frozen=True)
class Criterion:
    key: str
    question: str
    aliases: tuple[str, ...] = ()


@dataclass
class RubricParse:
    scores: dict[str, float | None]
    reasons: dict[str, str]
    error: str | None
    flags: dict[str, bool] = field(default_factory=dict)
    flag_reasons: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Rubric:
    """Criteria scored low..high, plus optional yes/no flags (the critic's "unsafe")."""

    name: str
    criteria: tuple[Criterion, ...]
    low: int = 1
    high: int = 5
    low_label: str = "very poor"
    high_label: str = "excellent"
    flags: tuple[str, ...] = ()

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(c.key for c in self.criteria)

    @property
    def options(self) -> tuple[str, ...]:
        """The answer tokens of a one-criterion question: "1".."5"."""
        return tuple(str(v) for v in range(self.low, self.high + 1))

    def criterion(self, key: str) -> Criterion:
        return next(c for c in self.criteria if c.key == key)

    # --- prompt, schema -----------------------------------------------------------------------

    def example(self) -> str:
        """The JSON shape the prompt shows (one line)."""
        parts = [f'"{c.key}": {{"score": {self.low}, "reason": "..."}}' for c in self.criteria]
        parts += [f'"{f}": false, "{f}_reason": "..."' for f in self.flags]
        return "{" + ", ".join(parts) + "}"

    def variables(self) -> dict[str, Any]:
        """What the rubric templates render: criteria (key, question), scale, example JSON."""
        return {"criteria": [{"key": c.key, "question": c.question} for c in self.criteria],
                "low": self.low, "high": self.high, "low_label": self.low_label, "high_label": self.high_label,
                "example": self.example()}

    def json_schema(self) -> dict[str, Any]:
        """A strict JSON schema of the whole answer (OpenAI, vLLM and llama.cpp server take it)."""
        score = {"type": "object", "properties": {
            "score": {"type": "integer", "enum": list(range(self.low, self.high + 1))},
            "reason": {"type": "string"}}, "required": ["score", "reason"], "additionalProperties": False}
        properties: dict[str, Any] = {c.key: score for c in self.criteria}
        for flag in self.flags:
            properties[flag] = {"type": "boolean"}
            properties[f"{flag}_reason"] = {"type": "string"}
        return {"type": "object", "properties": properties, "required": list(properties),
                "additionalProperties": False}

    def response_format(self) -> dict[str, Any]:
        return {"type": "json_schema", "json_schema": {"name": self.name, "strict": True, "schema": self.json_schema()}}

    # --- reading answers ---------------------------------------------------------------------------

    def _aliases(self) -> dict[str, str]:
        out = {}
        for c in self.criteria:
            for alias in c.aliases:
                out[alias] = c.key
        return out

    def parse(self, parsed: Any, text: str | None = None) -> RubricParse:
        """Scores from a judge reply: nested {"tone": {"score": 4, "reason": ..}}, flat {"tone": 4,
        "tone_reason": ..}, under "scores", any key spelling, scores as numbers or strings (the
        score rule). Missing or out-of-range criteria are None and named in the error."""
        none = {c: None for c in self.keys}
        if parsed is None and text is not None:
            try:
                parsed = parse_json(text)
            except JsonParseError as exc:
                return RubricParse(dict(none), {}, f"unreadable: {exc}")
        if isinstance(parsed, dict) and isinstance(parsed.get("scores"), dict):
            parsed = {**parsed["scores"], **{k: v for k, v in parsed.items() if k != "scores"}}
        if not isinstance(parsed, dict):
            return RubricParse(dict(none), {}, "not a JSON object")
        aliases = self._aliases()
        normal = {}
        for key, value in parsed.items():
            k = key_of(key)
            normal[aliases.get(k, k)] = value
        scores: dict[str, float | None] = {}
        reasons: dict[str, str] = {}
        for criterion in self.keys:
            value = normal.get(criterion)
            if isinstance(value, dict):
                inner = {key_of(k): v for k, v in value.items()}
                reason = inner.get("reason") or inner.get("explanation") or inner.get("rationale")
                value = inner.get("score", inner.get("rating"))
            else:
                reason = normal.get(f"{criterion}_reason")
            scores[criterion] = parse_score(value, self.low, self.high)
            if reason and scores[criterion] is not None:
                reasons[criterion] = str(reason)
        flags, flag_reasons = {}, {}
        for flag in self.flags:
            truth = truthy(normal.get(flag))
            if truth is not None:
                flags[flag] = truth
                if truth and normal.get(f"{flag}_reason"):
                    flag_reasons[flag] = str(normal[f"{flag}_reason"])
        bad = [c for c in self.keys if scores[c] is None]
        error = None
        if len(bad) == len(self.keys):
            error = f"no criterion scored {self.low}-{self.high}"
        elif bad:
            error = "missing or out of range: " + ", ".join(bad)
        return RubricParse(scores, reasons, error, flags, flag_reasons)

    def expectation(self, probs: Mapping[str, float]) -> tuple[float | None, float | None]:
        return expectation({k: v for k, v in probs.items() if k in self.options})


def truthy(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "yes", "false", "no"):
        return value.strip().lower() in ("true", "yes")
    return None


# --- the rubrics ---------------------------------------------------------------------------------

REPLY = Rubric("reply_rubric", (
    Criterion("persona_consistency", "does it fit the persona, and never contradict it?",
              ("persona", "consistency", "persona_consistent")),
    Criterion("tone", "is its tone fitting for a friendly chat with someone just met?"),
    Criterion("helpfulness", "does it engage with what the other person said and move the conversation on?",
              ("helpful", "engagement")),
    Criterion("naturalness", "does it read like a real person's chat message (fluent, not robotic, not repetitive)?",
              ("natural",)),
))
"""`forge judge`: one reply of a model under test (prompts/judge/rubric.j2, judge/criterion.j2)."""

CONVERSATION = Rubric("conversation_rubric", (
    Criterion("coherence", "each turn follows from what came before"),
    Criterion("engagingness", "the two are interested in each other and the talk goes somewhere"),
    Criterion("naturalness", "it reads like two real people chatting, not a script"),
    Criterion("consistency", "each speaker stays true to their own persona"),
), low_label="poor", flags=("unsafe",))
"""The critic of `forge generate`: a whole candidate conversation (prompts/generate/judge.j2)."""


@dataclass(frozen=True)
class Choice:
    """A pairwise question: A or B (or a tie, in free text)."""

    name: str = "pairwise"
    options: tuple[str, ...] = ("A", "B")
    ties: tuple[str, ...] = ("tie", "draw", "equal", "both", "neither", "none", "same")

    def json_schema(self) -> dict[str, Any]:
        return {"type": "object", "properties": {"winner": {"type": "string", "enum": [*self.options, "tie"]},
                                                 "reason": {"type": "string"}},
                "required": ["winner", "reason"], "additionalProperties": False}

    def response_format(self) -> dict[str, Any]:
        return {"type": "json_schema", "json_schema": {"name": self.name, "strict": True, "schema": self.json_schema()}}

    def parse(self, parsed: Any, text: str | None = None) -> tuple[str | None, str | None, str | None]:
        """("A" | "B" | "tie" | None, reason, parse error) from a free-text pairwise reply."""
        if parsed is None and text is not None:
            try:
                parsed = parse_json(text)
            except JsonParseError as exc:
                return None, None, f"unreadable: {exc}"
        if not isinstance(parsed, dict):
            return None, None, "not a JSON object"
        fields = {key_of(k): v for k, v in parsed.items()}
        raw = fields.get("winner", fields.get("better", fields.get("choice", fields.get("preferred"))))
        reason = fields.get("reason") or fields.get("explanation")
        value = key_of(raw) if raw is not None else ""
        value = re.sub(r"^(reply|response|answer|option)_", "", value)
        if value.upper() in self.options:
            return value.upper(), reason and str(reason), None
        if value in self.ties:
            return "tie", reason and str(reason), None
        return None, reason and str(reason), f"winner {raw!r} is not A, B or tie"


PAIRWISE = Choice()


# The scale's words, as small models write them instead of a number ("describes me extremely
# inaccurately", "quite well"); the earliest phrase in the reply wins.
_LIKERT_WORDS = (
    (re.compile(r"\b(very|extremely|completely|totally|highly)\s+(inaccurate(ly)?|poorly)\b"), 1),
    (re.compile(r"\b(moderately|somewhat|slightly|fairly|rather|a bit)\s+inaccurate(ly)?\b"), 2),
    (re.compile(r"\bneither\b"), 3),
    (re.compile(r"\b(moderately|somewhat|fairly|quite|pretty|reasonably)\s+(accurate(ly)?|well)\b"), 4),
    (re.compile(r"\b(very|extremely|completely|perfectly|really|highly)\s+(accurate(ly)?|well)\b"), 5),
    (re.compile(r"\bdescribes? me perfectly\b"), 5),
)


@dataclass(frozen=True)
class Likert:
    """A Big Five item answered 1 (very inaccurate) .. 5 (very accurate), in persona."""

    options: tuple[str, ...] = ("1", "2", "3", "4", "5")

    def parse(self, text: str | None) -> tuple[int | None, str | None]:
        """The first digit 1-5 standing alone, else the scale's words. A free-text chat answer is
        not a score field, so the score rule's decimals do not apply: "2.5" is unreadable."""
        if not text or not text.strip():
            return None, "empty reply"
        match = re.search(r"(?<![\d.])([1-5])(?!\d|\.\d)", text)
        if match:
            return int(match.group(1)), None
        low = text.lower()
        found = [(m.start(), value) for pattern, value in _LIKERT_WORDS for m in [pattern.search(low)] if m]
        if found:
            return min(found)[1], None
        return None, "no answer 1-5 found"

    def expectation(self, probs: Mapping[str, float]) -> tuple[float | None, float | None]:
        return expectation({k: v for k, v in probs.items() if k in self.options})


LIKERT = Likert()
