"""From a user's facts to the memory block of the system prompt.

block mode: every active fact, the newest first when the budget runs out (shown in the order
they were learnt); retrieve mode: the top-k active facts by cosine to the message (a FAISS
inner-product index over normalised embeddings), the most relevant first. Either way the block
stays within `budget_tokens`, counted with the chat model's tokenizer where there is one, else
in words.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

import numpy as np

from .store import MemoryFact

TokenCounter = Callable[[str], int]

_SWAPS = [
    (r"\bI am\b", "they are"), (r"\bI'm\b", "they're"), (r"\bIm\b", "they're"), (r"\bI was\b", "they were"),
    (r"\bI've\b", "they've"), (r"\bI'd\b", "they'd"), (r"\bI'll\b", "they'll"), (r"\bI\b", "they"),
    (r"\bmyself\b", "themselves"), (r"\bmine\b", "theirs"), (r"\bmy\b", "their"), (r"\bme\b", "them"),
]


def third_person(text: str) -> str:
    """'I have a turtle.' -> 'They have a turtle.' ('they' takes the same verb forms as 'I', bar
    am/was), so the block cannot be read as the persona's own facts."""
    out = text
    for pattern, repl in _SWAPS:
        out = re.sub(pattern, repl, out, flags=re.IGNORECASE if repl != "they" else 0)
    return re.sub(r"(^|[.!?]\s+)([a-z])", lambda m: m.group(1) + m.group(2).upper(), out)


def word_count(text: str) -> int:
    return len(text.split())


def tokenizer_counter(tokenizer) -> TokenCounter:
    return lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"])


def pack(lines: Sequence[str], budget: int, count: TokenCounter = word_count, overhead: int = 0) -> list[int]:
    """Indices of the lines kept, in priority order, so that `overhead` plus the lines (each as
    '- line\\n') stays within `budget` tokens; a line that does not fit is skipped, a shorter
    later one may still fit."""
    used, kept = overhead, []
    for i, line in enumerate(lines):
        cost = count(f"- {line}\n")
        if used + cost <= budget:
            kept.append(i)
            used += cost
    return kept


class FactIndex:
    """A FAISS inner-product index over a user's active facts (cosine, as the vectors are normalised)."""

    def __init__(self, facts: Sequence[MemoryFact], vectors: np.ndarray):
        import faiss

        self.facts = list(facts)
        self.index = faiss.IndexFlatIP(int(vectors.shape[1]) if len(vectors) else 1)
        if len(self.facts):
            self.index.add(np.ascontiguousarray(vectors, dtype=np.float32))

    def search(self, query: np.ndarray, k: int) -> list[tuple[MemoryFact, float]]:
        if not self.facts or k <= 0:
            return []
        scores, ids = self.index.search(np.ascontiguousarray(query.reshape(1, -1), dtype=np.float32),
                                        min(k, len(self.facts)))
        return [(self.facts[i], float(s)) for s, i in zip(scores[0], ids[0]) if i >= 0]


def select(facts: Sequence[MemoryFact], mode: str, budget: int, count: TokenCounter = word_count,
           overhead: int = 0, message: str | None = None, vectors: Callable[[Sequence[str]], np.ndarray] | None = None,
           top_k: int = 3, min_score: float = -1.0) -> list[MemoryFact]:
    """The facts of the memory block, in the order they are shown."""
    active = [f for f in facts if f.status == "active"]
    if mode == "off" or not active:
        return []
    if mode == "block" or not message:
        newest = sorted(range(len(active)), key=lambda i: (active[i].created_at, i), reverse=True)
        kept = pack([third_person(active[i].text) for i in newest], budget, count, overhead)
        return [active[i] for i in sorted(newest[k] for k in kept)]
    if vectors is None:
        raise ValueError("retrieve mode needs the encoder")
    index = FactIndex(active, vectors([f.text for f in active]))
    hits = [f for f, score in index.search(vectors([message])[0], top_k) if score >= min_score]
    kept = pack([third_person(f.text) for f in hits], budget, count, overhead)
    return [hits[i] for i in kept]
