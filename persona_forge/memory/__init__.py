"""User memory: a persona model that remembers who it is talking to.

Facts about a user come from what they say (memory.extract), live in one JSONL file per user
(memory.store) and go back into the persona system prompt as a memory block, either all of them
or the ones relevant to the message (memory.retrieve), within a token budget.

    memory = UserMemory("alice", MemoryConfig(), nli=..., encoder=...)
    lines = memory.block("what pet do I have?")      # third-person lines for the system prompt
    memory.observe("I have a turtle named Timothy.")  # remembered (or judged a duplicate)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from .extract import Changes, Encoder, SentenceEncoder, Thresholds, VectorCache, candidates, integrate
from .retrieve import TokenCounter, select, third_person, tokenizer_counter, word_count
from .store import MemoryFact, MemoryStore, default_dir

__all__ = ["UserMemory", "MemoryStore", "MemoryFact", "Changes", "Encoder", "SentenceEncoder", "Thresholds",
           "VectorCache", "candidates", "integrate", "select", "third_person", "tokenizer_counter", "word_count",
           "default_dir", "block_header"]


def block_header(prompts: Any = None) -> str:
    """The block's fixed text (its header line), counted against the budget."""
    from ..prompts import library

    return (prompts or library()).render("memory/block", facts=[]).messages[0]["content"]


class UserMemory:
    """One user's memory during a conversation: read at each turn, grown from each message.

    `nli` and `encoder` may be objects or zero-argument factories (loaded on first use: a
    `block` call in block mode needs neither, an `observe` call both).
    """

    def __init__(self, user: str, config: Any, nli: Any = None, encoder: Any = None,
                 extractor: Callable[[str], list[str]] | None = None, count: TokenCounter = word_count,
                 store: MemoryStore | None = None, prompts: Any = None):
        self.user = user
        self.config = config
        self.store = store or MemoryStore(config.dir)
        self.store.path(user)  # checks the id now, not at the first write
        self._nli, self._encoder = nli, encoder
        self.extractor = extractor
        self.extractor_name = "llm" if extractor is not None else "nli"
        self.count = count
        self.overhead = count(block_header(prompts))
        self.facts: list[MemoryFact] = self.store.load(user)
        self._vectors: VectorCache | None = None
        self.turn = max((f.source_turn or 0 for f in self.facts), default=-1) + 1

    def _resolved(self, name: str) -> Any:
        value = getattr(self, name)
        if callable(value) and not hasattr(value, "predict") and not hasattr(value, "encode"):
            value = value()
            setattr(self, name, value)
        return value

    @property
    def vectors(self) -> VectorCache:
        if self._vectors is None:
            self._vectors = VectorCache(self._resolved("_encoder"))
        return self._vectors

    def thresholds(self) -> Thresholds:
        c = self.config
        return Thresholds(c.dedup_cosine, c.entailment, c.contradiction, c.compare_top)

    def observe(self, text: str) -> Changes:
        """Remember what `text` (one message of the user) says about them; saves when anything changed."""
        found = self.extractor(text) if self.extractor is not None else \
            candidates(text, self.config.min_content_words, self.config.max_words)
        turn, self.turn = self.turn, self.turn + 1
        if not found:
            return Changes()
        self.facts, changes = integrate(self.facts, found, self.user, self._resolved("_nli"), self.vectors,
                                        self.thresholds(), turn, self.extractor_name)
        if changes:
            self.store.save(self.user, self.facts)
        return changes

    def selected(self, message: str | None = None, mode: str | None = None) -> list[MemoryFact]:
        mode = mode or self.config.mode
        return select(self.facts, mode, self.config.budget_tokens, self.count, self.overhead, message,
                      self.vectors.get if mode == "retrieve" else None, self.config.top_k, self.config.min_score)

    def block(self, message: str | None = None, mode: str | None = None) -> list[str]:
        """The memory block's lines (third person) for this message."""
        return [third_person(f.text) for f in self.selected(message, mode)]

    def active(self) -> Sequence[MemoryFact]:
        return [f for f in self.facts if f.status == "active"]
