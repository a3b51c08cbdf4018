"""The retrieval baseline of the study's Table 1 (Persona-Chat's IR row, Zhang et al. 2018): answer
with the training reply whose prompt is most like this one.

Every reply to the other user's turn in a training corpus (Synthetic-Persona-Chat shaped, or
Dialogue records) is indexed by that turn's sentence embedding; a query (the other user's last
turn of an eval example) gets the reply of its nearest indexed turn, by cosine similarity. A reply
from the query's own conversation is never returned, so a dev split carved from the same train
file cannot read its own reference. No model is trained: it shows how far plain lookup gets on
the eval's metrics (perplexity and Hits@1 do not apply: it has no likelihood).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .corpora import load_conversations
from .samples import reply_positions
from .store import atomic_open

Embed = Callable[[list[str]], np.ndarray]


@dataclass
class RetrievalIndex:
    prompts: list[str]        # the other user's turn that each training reply answered
    replies: list[str]
    sources: list[str]        # the conversation each pair comes from
    vectors: np.ndarray       # unit-normalised embeddings of `prompts`, one row each

    @classmethod
    def from_pairs(cls, pairs: Sequence[tuple[str, str, str]], embed: Embed) -> "RetrievalIndex":
        """From (source id, prompt turn, reply) triples."""
        if not pairs:
            raise ValueError("a retrieval index needs at least one (prompt, reply) pair")
        sources, prompts, replies = (list(column) for column in zip(*pairs))
        return cls(prompts, replies, sources, _unit(embed(prompts)))

    @classmethod
    def cached(cls, pairs: Sequence[tuple[str, str, str]], embed: Embed, path: Path) -> "RetrievalIndex":
        """from_pairs, with the prompt vectors kept in `path` (.npy; one file per corpus and encoder)."""
        if path.is_file():
            vectors = np.load(path)
            if len(vectors) == len(pairs):   # else a stale or foreign file: embed again
                sources, prompts, replies = (list(column) for column in zip(*pairs))
                return cls(prompts, replies, sources, vectors)
        index = cls.from_pairs(pairs, embed)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_open(path, "wb") as fh:
            np.save(fh, index.vectors)
        return index

    def answer(self, queries: Sequence[str], sources: Sequence[str], embed: Embed) -> list[tuple[str, float]]:
        """(reply, similarity) for each query, never from the query's own source conversation."""
        sims = _unit(embed(list(queries))) @ self.vectors.T
        own = np.asarray(self.sources)
        out = []
        for row, source in zip(sims, sources):
            allowed = np.where(own == source, -np.inf, row)
            best = int(np.argmax(allowed))   # the first of equals, as a stable sort would give
            out.append(("", 0.0) if allowed[best] == -np.inf else (self.replies[best], float(row[best])))
        return out


def training_pairs(path: Path) -> list[tuple[str, str, str]]:
    """(conversation id, other user's turn, reply) for every reply to the other user in `path`."""
    pairs = []
    for dialogue in load_conversations(path).dialogues:
        turns = dialogue.turns
        for p in reply_positions(turns, "all", 0):
            if turns[p - 1].text.strip():
                pairs.append((dialogue.id, turns[p - 1].text, turns[p].text))
    return pairs


def _unit(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.where(norms == 0, 1.0, norms)
