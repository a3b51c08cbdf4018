"""The typed records every stage reads and writes, one JSON object per JSONL line.

Each record's `id` is a hash of what determines it (its inputs, seed and sample index), never of
a model's output, so a re-run can tell which records it already has.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class Record(BaseModel):
    """Base of every stored record: strict on read, immutable once made."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str


def record_id(*parts: Any) -> str:
    """A stable 16-hex id from the parts that determine a record (JSON-encoded, order kept)."""
    blob = json.dumps(parts, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]


class Usage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    prompt_tokens: int = 0
    completion_tokens: int = 0


class Provenance(BaseModel):
    """Where a generated record came from: enough to reproduce or audit it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    backend: str
    model: str
    prompt: str | None = None
    prompt_hash: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)


class Attribute(Record):
    """One persona sentence ("I have two dogs."), seed or LLM-expanded."""

    text: str
    source: Literal["seed", "expanded"]
    topic: int | None = None
    question: str | None = None
    provenance: Provenance | None = None


class Profile(Record):
    """A user: about five mutually consistent, non-redundant attributes."""

    attribute_ids: list[str]
    attributes: list[str]

    @field_validator("attributes")
    @classmethod
    def _attributes_are_sentences(cls, attributes: list[str]) -> list[str]:
        from .limits import blank_attribute_error

        error = blank_attribute_error(attributes)
        if error:
            raise ValueError(error)
        return attributes


class SharedTopic(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    user1_attribute: str
    user2_attribute: str
    similarity: float


class Pair(Record):
    """Two users with something to talk about."""

    user1: str
    user2: str
    similarity: float
    shared_topics: list[SharedTopic] = Field(default_factory=list)


class Turn(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    speaker: Literal["user1", "user2"]
    text: str


class TurnChoice(BaseModel):
    """Turn-level selection (generate's `turns` mode with turn_candidates > 1): which of the replies
    sampled for a turn was kept, and its scores (persona_forge.replyscore)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kept: int
    of: int
    contradiction: float
    grounding: float
    form: str | None = None


def _unset(value: Any) -> bool:
    return value is None


class Dialogue(Record):
    """A conversation between the two users of a pair (a generated candidate or a corpus one)."""

    pair_id: str | None = None
    user1_persona: list[str]
    user2_persona: list[str]
    turns: list[Turn]
    round: int = 0
    candidate: int = 0
    provenance: Provenance | None = None
    parse_error: str | None = None
    scores: dict[str, float | None] = Field(default_factory=dict)
    reasons: dict[str, str] = Field(default_factory=dict)
    # One per turn, when turns were selected from several sampled replies; left out of the JSON
    # otherwise, so records without selection read and write exactly as before.
    turn_choices: list[TurnChoice] | None = Field(None, exclude_if=_unset)


class TurnProgress(Record):
    """One finished turn of a conversation still being generated (generate's `turns` mode): a killed
    run resumes the conversation from its last finished turn. id = record_id(candidate, step)."""

    candidate: str
    step: int
    turn: Turn
    choice: TurnChoice | None = Field(None, exclude_if=_unset)


class Rejection(Record):
    """Something a stage dropped, and why: nothing disappears without a trace."""

    stage: str
    subject_id: str
    reason: str
    detail: dict[str, Any] = Field(default_factory=dict)


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    role: Literal["system", "user", "assistant"]
    content: str


class CompletionRecord(Record):
    """One prompt sent to a chat backend by `forge complete`, and what came back."""

    messages: list[ChatMessage]
    text: str | None
    parsed: Any = None
    error: str | None = None
    parse_error: str | None = None
    usage: Usage = Field(default_factory=Usage)
    provenance: Provenance


class Preference(Record):
    """Two candidate conversations of one pair as the critic ranked them: a DPO pair.

    Both answer the same request (write a conversation between these two personas), so the
    preference is the critic's judgement at the level it judges: the whole conversation.
    """

    pair_id: str
    user1_persona: list[str]
    user2_persona: list[str]
    round: int
    chosen_id: str
    rejected_id: str
    chosen_turns: list[Turn]
    rejected_turns: list[Turn]
    chosen_score: float
    rejected_score: float


BASE = "base"  # the model under test without an adapter: eval names it so, judge compares adapters with it


class EvalGeneration(Record):
    """One model's reply to one held-out prompt in `forge eval`, with its per-example metrics.

    `id` hashes the example, the model's name and its digest (base model spec, or adapter
    weights), so a re-run skips what it has and a retrained adapter is generated anew.
    """

    example_id: str
    source_id: str
    model: str  # BASE, or an adapter's name
    model_digest: str
    messages: list[ChatMessage]
    persona: list[str]
    reference: str
    reply: str
    finish_reason: str | None = None
    error: str | None = None
    metrics: dict[str, float | None] = Field(default_factory=dict)
    bleu_stats: list[int] = Field(default_factory=list)
    reference_nll: float | None = None
    reference_tokens: int | None = None
    provenance: Provenance | None = None


class RubricJudgement(Record):
    """The judge's rubric scores (1-5) for one model's reply to one example: read from a JSON
    answer (method "text", with reasons), or the expectation of the judge's distribution over
    the answer tokens 1-5, one criterion at a time (method "logprobs", with each distribution and
    its entropy in bits as the judge's confidence)."""

    generation_id: str
    example_id: str
    model: str
    scores: dict[str, float | None] = Field(default_factory=dict)
    reasons: dict[str, str] = Field(default_factory=dict)
    raw: str | None = None
    parse_error: str | None = None
    provenance: Provenance | None = None
    method: Literal["text", "logprobs"] = "text"
    probs: dict[str, dict[str, float]] = Field(default_factory=dict)
    entropy: dict[str, float] = Field(default_factory=dict)


class PairwiseJudgement(Record):
    """One pairwise question: which of two replies (A, B) is better, in one presentation order."""

    example_id: str
    model_a: str
    model_b: str
    order: Literal["base_first", "base_second"]
    winner: Literal["A", "B", "tie"] | None = None
    winner_model: str | None = None
    reason: str | None = None
    raw: str | None = None
    parse_error: str | None = None
    provenance: Provenance | None = None
    probs: dict[str, float] | None = None   # P(A), P(B) at the answer position (method logprobs)


class BigFiveAnswer(Record):
    """A model's answer, in persona, to one IPIP-style item (1 very inaccurate .. 5 very accurate)."""

    model: str
    model_digest: str
    persona_id: str
    persona: list[str]
    item_id: str
    trait: str
    keyed: Literal["+", "-"]
    group: str
    item: str
    answer: int | None = None
    raw: str | None = None
    parse_error: str | None = None
    expected: float | None = None           # the expectation over the answer tokens 1-5 (logprobs)
    probs: dict[str, float] | None = None
    entropy: float | None = None


class Sample(Record):
    """One training sample built by `forge curate` from a conversation, in chat messages.

    kind "next_reply": the replier's persona as system prompt, earlier turns as context, the other
    user's turn as the last user message, the reply as the final assistant message (the study's
    format); kind "conversation": a whole conversation played from one persona's side, ending on
    that persona's last turn. `messages` always ends with the assistant target.
    """

    kind: Literal["next_reply", "conversation"]
    dialogue_id: str
    pair_id: str | None = None
    speaker: Literal["user1", "user2"]
    position: int  # index in the conversation's turns of the target (the last assistant turn)
    persona: list[str]
    messages: list[ChatMessage]
    quality: float | None = None  # the critic's combined score of the conversation; None: unscored
    scores: dict[str, float | None] = Field(default_factory=dict)
    source: str


class Rewrite(Record):
    """One reply of a conversation rewritten into one style by `forge restyle`, with its checks.

    `id` hashes the conversation, the reply's position and the style (never the rewrite). `checks`
    holds the figures (NLI contradiction both ways, persona facts stated before and after, encoder
    similarity, the style classifier's pick and probability); `reason` names the first check it
    failed, None when it passed both the content and the style checks.
    """

    dialogue_id: str
    position: int
    speaker: Literal["user1", "user2"]
    style: str
    original: str
    text: str | None = None
    raw: str | None = None
    parse_error: str | None = None
    checks: dict[str, Any] = Field(default_factory=dict)
    content_ok: bool = False
    style_ok: bool = False
    passed: bool = False
    reason: str | None = None
    provenance: Provenance | None = None


class ReplyScore(Record):
    """`forge score`'s signals for one next-reply sample (id: the sample's id, as forge curate makes it).

    Each signal is its own field, None when it could not be measured: `words` (whitespace words of the
    reply) and `words_z` (against the scored corpus's mean and spread); `loss_context` and `loss_alone`
    (mean token NLL of the reply under the base model, given its chat context, and given an empty user
    turn), `ifd` (their ratio: instruction-following difficulty, Li et al. 2023), `perplexity`
    (exp(loss_context)); `max_entailment`, `max_contradiction` (NLI, premise = each sentence of the
    replying persona, hypothesis = the reply) and `c_score` (+1 / -1 / 0, metrics.c_score).
    """

    dialogue_id: str
    position: int
    speaker: Literal["user1", "user2"]
    reply: str
    words: int
    words_z: float | None = None
    tokens: int | None = None
    loss_context: float | None = None
    loss_alone: float | None = None
    ifd: float | None = None
    perplexity: float | None = None
    max_entailment: float | None = None
    max_contradiction: float | None = None
    c_score: int | None = None
    model: str | None = None
