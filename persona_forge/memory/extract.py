"""From what a user says to facts about them.

Two ways to find candidate facts in a message:
  sentences (the embedded default): the message split into sentences, keeping first-person
      statements ("I have a turtle named Timothy.") that are not questions and carry at least
      `min_content_words` content words (greetings and small talk carry none);
  llm: the chat backend asked for the facts (prompts/memory/extract.j2, JSON {"facts": [...]}),
      for a capable backend.
Either way each candidate is then judged against the user's active facts (`integrate`): a duplicate
when the NLI finds entailment in either direction or the embeddings' cosine reaches
`dedup_cosine`; when it contradicts an active fact the newer wins: it is added, the old one is
marked superseded (both kept, dated, linked both ways); otherwise it is added.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from .store import MemoryFact, fact_id, now

SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+")
WORD = re.compile(r"[A-Za-z][A-Za-z'_-]*")
FIRST_PERSON = re.compile(r"\b(i|i'm|im|i've|i'd|i'll|my|me|mine|myself)\b", re.IGNORECASE)
QUESTION_WORDS = {"what", "who", "whom", "whose", "where", "when", "why", "how", "which"}
AUXILIARIES = {"do", "does", "did", "are", "is", "am", "was", "were", "can", "could", "would", "will", "should",
               "have", "has", "shall", "may", "might"}
SUBJECTS = {"you", "i", "we", "they", "he", "she", "it", "there", "your", "that", "this"}
# Interjections a sentence often opens with ("Oh, I love dogs."): cut before judging it.
OPENERS = re.compile(r"^(?:(?:oh|ah|wow|well|yes|yeah|yep|no|nope|haha|lol|hmm|um|so|hey|hi|hello|"
                     r"sure|cool|great|nice|awesome|really|okay|ok|me too|that's (?:cool|great|awesome|"
                     r"nice|interesting))\b[,!.]*\s*)+", re.IGNORECASE)
# Function words and small-talk words: a fact needs words outside this list.
STOP = set("""
a an the and or but if then so as of at by for with about against between into through during before after
above below to from up down in out on off over under again further once here there all any both each few more
most other some such only own same than too very can will just don't should now i me my myself we our ours
you your yours he him his she her it its they them their what which who whom this that these those am is are
was were be been being have has had having do does did doing would could i'm i've i'd i'll im it's that's
not no nor yes yeah oh wow well really also lot lots much many thing things something anything
hi hello hey thanks thank nice meet meeting glad good great fine cool awesome interesting sounds sound fun
sure agree know think guess mean see hope feel feeling doing going get got like love lol haha okay ok
too either way pretty kind sort bit actually probably maybe definitely totally always never sometimes
participant name names
""".split())


def sentences(text: str) -> list[str]:
    return [s.strip() for s in SENTENCE_END.split(text or "") if s and s.strip()]


def content_words(sentence: str) -> list[str]:
    return [w for w in (m.group(0).lower().strip("'") for m in WORD.finditer(sentence))
            if len(w) >= 3 and w not in STOP and not w.startswith("participant")]


def is_question(sentence: str) -> bool:
    if sentence.rstrip().endswith("?"):
        return True
    words = [w.lower() for w in WORD.findall(sentence)[:2]]
    if not words:
        return False
    return words[0] in QUESTION_WORDS or (words[0] in AUXILIARIES and len(words) > 1 and words[1] in SUBJECTS)


def candidates(text: str, min_content_words: int = 2, max_words: int = 40) -> list[str]:
    """First-person statements in `text` worth remembering, in order, each a clean sentence."""
    out: list[str] = []
    for raw in sentences(text):
        sentence = OPENERS.sub("", raw).strip(" ,;:-")
        if not sentence or is_question(sentence):
            continue
        if not FIRST_PERSON.search(sentence):
            continue
        n_words = len(sentence.split())
        if n_words < 3 or n_words > max_words or len(content_words(sentence)) < min_content_words:
            continue
        sentence = sentence[0].upper() + sentence[1:]
        if sentence[-1] not in ".!":
            sentence += "."
        if sentence not in out:
            out.append(sentence)
    return out


class Encoder(Protocol):
    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """(n, d) float32, each row L2-normalised."""


class SentenceEncoder:
    """A sentence-transformers model (packaged:minilm-l6 by default), normalised embeddings."""

    def __init__(self, spec: str = "packaged:minilm-l6"):
        from ..models import sentence_transformer

        self.model = sentence_transformer(spec)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.model.get_sentence_embedding_dimension()), dtype=np.float32)
        return np.asarray(self.model.encode(list(texts), batch_size=64, normalize_embeddings=True,
                                            show_progress_bar=False), dtype=np.float32)


@dataclass
class Thresholds:
    dedup_cosine: float = 0.9
    entailment: float = 0.6
    contradiction: float = 0.6
    compare_top: int = 8


@dataclass
class Changes:
    added: list[MemoryFact] = field(default_factory=list)
    duplicates: list[tuple[str, str]] = field(default_factory=list)  # (candidate, id of the fact it repeats)
    superseded: list[tuple[str, str]] = field(default_factory=list)  # (old id, new id)

    def __bool__(self) -> bool:
        return bool(self.added or self.superseded)


class VectorCache:
    """Embeddings of fact texts, computed once per text."""

    def __init__(self, encoder: Encoder):
        self.encoder = encoder
        self.vectors: dict[str, np.ndarray] = {}

    def get(self, texts: Sequence[str]) -> np.ndarray:
        missing = [t for t in dict.fromkeys(texts) if t not in self.vectors]
        if missing:
            for text, vector in zip(missing, self.encoder.encode(missing)):
                self.vectors[text] = np.asarray(vector, dtype=np.float32)
        if not texts:
            return np.zeros((0, 1), dtype=np.float32)
        return np.stack([self.vectors[t] for t in texts])


def integrate(facts: list[MemoryFact], found: Sequence[str], user: str, nli: Any, vectors: VectorCache,
              thresholds: Thresholds, source_turn: int | None = None, extractor: str = "nli",
              clock: Callable[[], str] = now) -> tuple[list[MemoryFact], Changes]:
    """`facts` with the candidates in `found` judged against the active ones, in order (a
    candidate accepted earlier in `found` counts as known for the later ones)."""
    from ..nli.labels import LABELS

    ent_i, con_i = LABELS.index("entailment"), LABELS.index("contradiction")
    facts = list(facts)
    changes = Changes()
    for candidate in found:
        active = [f for f in facts if f.status == "active"]
        verdict, hits = "new", []
        if active:
            sims = vectors.get([f.text for f in active]) @ vectors.get([candidate])[0]
            order = np.argsort(-sims)[: thresholds.compare_top]
            if sims[order[0]] >= thresholds.dedup_cosine:
                verdict, hits = "duplicate", [active[order[0]]]
            else:
                near = [active[i] for i in order]
                pairs = [(f.text, candidate) for f in near] + [(candidate, f.text) for f in near]
                probs = np.asarray(nli.predict(pairs))
                both = probs.reshape(2, len(near), -1)
                entail = both[:, :, ent_i].max(axis=0)
                contra = both[:, :, con_i].max(axis=0)
                if entail.max() >= thresholds.entailment:
                    verdict, hits = "duplicate", [near[int(entail.argmax())]]
                else:
                    hits = [f for f, c in zip(near, contra) if c >= thresholds.contradiction]
                    verdict = "contradicts" if hits else "new"
        if verdict == "duplicate":
            changes.duplicates.append((candidate, hits[0].id))
            continue
        created = clock()
        new = MemoryFact(id=fact_id(user, candidate, created), user=user, text=candidate, source_turn=source_turn,
                         created_at=created, supersedes=[f.id for f in hits], extractor=extractor)
        for old in hits:
            facts[facts.index(old)] = old.model_copy(update={"status": "superseded", "superseded_by": new.id})
            changes.superseded.append((old.id, new.id))
        facts.append(new)
        changes.added.append(new)
    return facts, changes


class LLMExtractor:
    """The chat backend lists the facts in a message (prompts/memory/extract.j2).

    An unreadable answer gives no facts and is counted in `parse_errors`, never fatal.
    """

    prompt = "memory/extract"

    def __init__(self, backend: Any, prompts: Any = None, max_tokens: int = 200):
        from ..prompts import library

        self.backend = backend
        self.prompts = prompts or library()
        self.max_tokens = max_tokens
        self.parse_errors = 0
        self._held = None   # one session (loop and client) for every message, opened on the first

    def close(self) -> None:
        """Close the backend's session (and its client)."""
        if self._held is not None:
            self._held.close()
            self._held = None

    def __call__(self, text: str) -> list[str]:
        from ..backends import ChatRequest

        rendered = self.prompts.render(self.prompt, message=text)
        request = ChatRequest.of(rendered.messages, json=True, temperature=0.0, max_tokens=self.max_tokens)
        from ..backends.session import held

        self._held = held(self, self.backend, self._held)
        [completion] = self._held.session.complete([request])
        parsed = completion.parsed if completion.ok else None
        facts = parsed.get("facts") if isinstance(parsed, dict) else None
        if not isinstance(facts, list):
            self.parse_errors += 1
            return []
        out = []
        for item in facts:
            if isinstance(item, str) and item.strip() and not is_question(item):
                sentence = item.strip()
                out.append(sentence if sentence[-1] in ".!" else sentence + ".")
        return list(dict.fromkeys(out))
