"""Persona expansion (the paper's "User Generation", first half): seed attributes in, new ones out.

In:  a seed file: text (one attribute a line), JSONL (strings, or objects with the attribute under
     `column`), CSV (with a header row and the attribute in `column`), or a Synthetic-Persona-Chat
     JSONL(.gz) (its user1_persona / user2_persona sentences).
Out, in the run directory:
  attributes.jsonl          Attribute: every seed first (source=seed, with its topic), then each
                            expanded attribute as its reply arrives (source=expanded; topic, question
                            and provenance: backend, model, prompt name + hash, sampling, examples).
  personas_questions.jsonl  TopicQuestions: the questions induced for each topic, so a re-run never
                            asks again.
  personas_replies.jsonl    ExpansionReply: one per finished expansion request, with the raw reply and
                            any parse error; its ids are the requests a re-run skips.
  rejections.jsonl          Rejection: exact and near duplicates, lines that are not a first-person
                            attribute, replies with nothing usable in them.

Method (Jandaghi et al. 2023): seeds are grouped into topics by k-means over sentence embeddings;
for each topic the LLM is shown its most central seeds and asked which questions they answer ("What
pets do you have?"); then, per (topic, question, sample), it is shown a few seed examples as answers
and asked for more. A new attribute is dropped when its normalised text was already seen (exact) or
its embedding is within `near_duplicate` cosine similarity of anything already seen (near).
"""

from __future__ import annotations

import csv
import gzip
import random
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..embeddings import Embed
from ..limits import drop_long_attributes
from ..errors import UserError
from ..jsonparse import JsonParseError, parse_json
from ..schema import Provenance, Record, record_id
from ..store import iter_json_lines


FALLBACK_QUESTION = "What else would you tell someone about yourself?"


# --- side-file records ------------------------------------------------------------------------

class TopicQuestions(Record):
    """The questions one topic's attributes answer, as the LLM induced them."""

    topic: int
    questions: list[str]
    fallback: bool = False
    reply: str | None = None
    parse_error: str | None = None
    provenance: Provenance | None = None


class ExpansionReply(Record):
    """One finished expansion request (id: its request id) and what became of its reply."""

    topic: int
    question: str
    sample: int
    reply: str | None
    accepted: int = 0
    parse_error: str | None = None
    provenance: Provenance | None = None


# --- seed files -------------------------------------------------------------------------------

def dedup_key(text: str) -> str:
    """What two attributes share when they are the same text: case, punctuation and spacing aside."""
    return re.sub(r"\s+", " ", re.sub(r"[^\w\s']", " ", text.lower())).strip()


def clean_attribute(text: str) -> str:
    """Corpus tokenisation undone ("I m" -> "I'm"), capitalised, ending in a full stop."""
    from ..nli.data import normalize

    text = normalize(re.sub(r"\s+", " ", text))
    if text and text[-1] not in ".!":
        text = text.rstrip(",;:- ") + "."
    return text


def read_seed_file(path: Path, column: str = "text") -> list[str]:
    """The raw attribute texts of a seed file; anything wrong is one UserError line."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: seed file not found; give a text file (one attribute a line), "
                        f"a JSONL or a CSV (--seeds FILE)")
    try:
        texts = _read_by_kind(path, column)
    except UnicodeDecodeError:
        raise UserError(f"{path}: not UTF-8 text; save the seed file as UTF-8") from None
    except OSError as exc:
        raise UserError(f"{path}: cannot read the seed file ({exc.strerror or exc})") from None
    texts = [t.strip() for t in texts if isinstance(t, str) and t.strip()]
    if not texts:
        raise UserError(f"{path}: no seed attributes in it; write one attribute a line "
                        f"(or a JSONL/CSV with a '{column}' field)")
    return texts


def _read_by_kind(path: Path, column: str) -> list[str]:
    name = path.name.lower().removesuffix(".gz")
    if name.endswith((".jsonl", ".json", ".ndjson")):
        return _read_jsonl(path, column)
    if name.endswith((".csv", ".tsv")):
        return _read_csv(path, column, "\t" if name.endswith(".tsv") else ",")
    return _open_text(path).read().splitlines()


def _open_text(path: Path):
    if path.name.endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8")
    return open(path, encoding="utf-8-sig")


def _read_jsonl(path: Path, column: str) -> list[str]:
    texts: list[str] = []
    for line_no, row in iter_json_lines(path):
        texts += _texts_of_row(row, column, f"{path}:{line_no}")
    return texts


def _texts_of_row(row: Any, column: str, where: str) -> list[str]:
    if isinstance(row, str):
        return [row]
    if isinstance(row, dict) and ("user1_persona" in row or "user2_persona" in row):
        # A Synthetic-Persona-Chat conversation: its two personas are the attributes.
        return [t for key in ("user1_persona", "user2_persona") for t in row.get(key) or []]
    if isinstance(row, dict) and isinstance(row.get(column), str):
        return [row[column]]
    keys = ", ".join(row) if isinstance(row, dict) else type(row).__name__
    raise UserError(f"{where}: no '{column}' string in this row (it has: {keys}); "
                    f"pass --column NAME or write one JSON string a line")


def _read_csv(path: Path, column: str, delimiter: str) -> list[str]:
    with _open_text(path) as fh:
        reader = csv.DictReader(fh, delimiter=delimiter)
        fields = [f for f in (reader.fieldnames or []) if f is not None]
        if column not in fields:
            shown = ", ".join(repr(f) for f in fields) or "none"
            raise UserError(f"{path}: no column '{column}' (columns: {shown}); pass --column NAME")
        return [row.get(column) or "" for row in reader]


def load_seed_texts(path: Path, column: str, max_seeds: int, seed: int) -> list[str]:
    """Seed attributes cleaned and de-duplicated (file order kept); `max_seeds` > 0 samples them."""
    texts: list[str] = []
    seen: set[str] = set()
    for raw in read_seed_file(path, column):
        text = clean_attribute(raw)
        key = dedup_key(text)
        if key and key not in seen:
            seen.add(key)
            texts.append(text)
    texts = drop_long_attributes(texts, path)
    if max_seeds and len(texts) > max_seeds:
        keep = sorted(random.Random(seed).sample(range(len(texts)), max_seeds))
        texts = [texts[i] for i in keep]
    return texts


# --- reading replies --------------------------------------------------------------------------

_BULLET = re.compile(r"^\s*(?:[-*•·>]+|\(?\d{1,2}\s*[.):]|\(?[a-eA-E][.)](?=\s))\s*")
_LABEL = re.compile(r"^(?:answer|fact|attribute|persona|response|question|q|a)\s*\d*\s*[:\-]\s+", re.IGNORECASE)
_INLINE_NUMBER = re.compile(r"\s+(?=\(?\d{1,2}[.)]\s+\S)")
_PAREN = re.compile(r"\s*\([^()]*\)")
_QUOTES = "\"'“”‘’`"
_FIRST_PERSON = re.compile(r"^(?:I|I'm|I've|I'd|I'll|My|Me|Mine)\b")
_QUESTION_START = re.compile(
    r"^(?:what|what's|which|who|whom|whose|where|when|why|how|do|does|did|are|is|was|were|have|has|can|"
    r"could|would|will|should)\b", re.IGNORECASE)
_SECOND_PERSON = re.compile(r"\byou(?:r|rs|rself)?\b", re.IGNORECASE)
_JUNK = re.compile(r"https?:|www\.|[\[\]{}<>#|@]")


@dataclass
class ParsedReply:
    """What one reply yielded: usable items, the lines dropped (with why), a parse error if nothing."""

    items: list[str] = field(default_factory=list)
    dropped: list[tuple[str, str]] = field(default_factory=list)
    error: str | None = None


def reply_lines(text: str | None) -> list[str]:
    """The candidate lines of a reply: a JSON list/object's strings, else its lines."""
    if not text or not text.strip():
        return []
    try:
        strings = _strings_in(parse_json(text))
    except JsonParseError:
        strings = []
    if strings:
        return strings
    lines: list[str] = []
    for line in text.splitlines():
        # "1. I cook. 2. I bake." written on one line is two items.
        lines += [part for part in _INLINE_NUMBER.split(line) if part.strip()]
    return lines


def _strings_in(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings_in(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings_in(v)]
    return []


def _strip_decoration(line: str) -> str:
    # Emoji and other pictographs are decoration, not part of an attribute.
    line = "".join(ch for ch in line if unicodedata.category(ch) not in ("So", "Sk", "Cs", "Cf")
                   and ch != "\ufe0f")
    line = line.replace("**", "").replace("__", "").strip()
    for _ in range(2):  # "1. - I ..." or "- Answer: I ..."
        line = _BULLET.sub("", line)
        line = _LABEL.sub("", line)
    line = line.strip().strip(_QUOTES).strip().rstrip(",;").strip(_QUOTES).strip()
    return re.sub(r"\s+", " ", _PAREN.sub("", line)).strip()


def _first_sentence(line: str) -> str:
    first = re.split(r"(?<=[.!])[\"'”’]?\s+(?=[A-Z\"'“])", line, maxsplit=1)[0]
    return first.strip().strip(_QUOTES).strip()


def attribute_from_line(line: str, max_words: int) -> tuple[str | None, str]:
    """(the cleaned attribute, "") or (None, why the line is not one)."""
    text = _first_sentence(_strip_decoration(line))
    if not text:
        return None, "empty"
    if "?" in text:
        return None, "a question"
    if _JUNK.search(text):
        return None, "markup or a link"
    text = clean_attribute(text)
    if not _FIRST_PERSON.match(text):
        return None, "not first person"
    words = len(text.split())
    if words < 3 or words > max_words:
        return None, f"{words} words (3-{max_words} allowed)"
    return text, ""


def parse_attributes(text: str | None, max_words: int = 20, truncated: bool = False) -> ParsedReply:
    """First-person attributes from a reply, however it is shaped; never raises."""
    lines = reply_lines(text)
    if truncated and lines and not lines[-1].rstrip().endswith((".", "!", '"', "'")):
        lines = lines[:-1]  # cut off by the token limit mid-sentence
    parsed = ParsedReply()
    for line in lines:
        if not line.strip():
            continue
        attribute, why = attribute_from_line(line, max_words)
        if attribute is None:
            parsed.dropped.append((line.strip(), why))
        elif attribute not in parsed.items:
            parsed.items.append(attribute)
    if not parsed.items:
        parsed.error = "empty reply" if not (text or "").strip() else "no first-person attribute in the reply"
    return parsed


def parse_questions(text: str | None, limit: int) -> ParsedReply:
    """Up to `limit` distinct short questions to the user ("What pets do you have?"); never raises."""
    parsed = ParsedReply()
    keys: set[str] = set()
    for line in reply_lines(text):
        question = _strip_decoration(line)
        cut = question.find("?")
        if cut < 0:
            continue
        question = question[:cut + 1].strip()
        question = question[:1].upper() + question[1:]
        words = len(question.split())
        # Asked of the user ("What pets do you have?"), so answers come in the first person;
        # "Where are they now?" has lost its topic.
        if not _QUESTION_START.match(question) or not 3 <= words <= 15 or _JUNK.search(question) \
                or not _SECOND_PERSON.search(question):
            parsed.dropped.append((line.strip(), "not a short question to the user"))
            continue
        if dedup_key(question) not in keys:
            keys.add(dedup_key(question))
            parsed.items.append(question)
    parsed.items = parsed.items[:limit]
    if not parsed.items:
        parsed.error = "empty reply" if not (text or "").strip() else "no question in the reply"
    return parsed


# --- embeddings, topics, measures -------------------------------------------------------------

def cluster_topics(emb: np.ndarray, topics: int, seed: int, threads: int | None = None) -> list[int]:
    """A topic per row: spherical k-means (FAISS, seeded); topic 0 is the largest."""
    import faiss

    if threads:
        faiss.omp_set_num_threads(threads)
    k = max(1, min(topics, len(emb)))
    if k == 1:
        return [0] * len(emb)
    kmeans = faiss.Kmeans(emb.shape[1], k, niter=25, seed=seed, spherical=True, verbose=False,
                          min_points_per_centroid=1)
    kmeans.train(emb)
    _, assigned = kmeans.index.search(emb, 1)
    raw = assigned[:, 0].tolist()
    # Renumber by size (then first appearance) so topic numbers read the same on every machine.
    sizes: dict[int, int] = {}
    for label in raw:
        sizes[label] = sizes.get(label, 0) + 1
    order = sorted(sizes, key=lambda label: (-sizes[label], raw.index(label)))
    renumber = {label: new for new, label in enumerate(order)}
    return [renumber[label] for label in raw]


def central_members(emb: np.ndarray, members: list[int], n: int, distinct_below: float = 0.9) -> list[int]:
    """The `n` members nearest the topic's centre, skipping near-copies of one already chosen."""
    centre = emb[members].mean(axis=0)
    order = sorted(members, key=lambda i: -float(emb[i] @ centre))
    chosen: list[int] = []
    for i in order:
        if all(float(emb[i] @ emb[j]) < distinct_below for j in chosen):
            chosen.append(i)
        if len(chosen) == n:
            break
    return chosen


CLUSTER_DEFINITION = ("clusters: greedy leader clustering of the sentence embeddings - in order (seeds, then "
                      "expanded attributes as made), an attribute joins the most similar cluster leader if their "
                      "cosine similarity is at least {similarity}, else it starts a new cluster; inter-cluster "
                      "distance: mean cosine distance between the clusters' mean embeddings")


def leader_clusters(emb: np.ndarray, similarity: float, block: int = 256) -> np.ndarray:
    """A cluster label per row (see CLUSTER_DEFINITION). A prefix's clusters are the same whatever
    follows it, so seeds-then-expanded counts only grow: new clusters are new regions covered."""
    n = len(emb)
    labels = np.zeros(n, dtype=np.int64)
    leaders = np.zeros_like(emb)
    count = 0
    for start in range(0, n, block):
        chunk = emb[start:start + block]
        before = count
        if before:
            sims = chunk @ leaders[:before].T
            best, best_sim = sims.argmax(axis=1), sims.max(axis=1)
        for r, vector in enumerate(chunk):
            label, score = (int(best[r]), float(best_sim[r])) if before else (-1, -2.0)
            if count > before:  # leaders founded inside this block
                fresh = leaders[before:count] @ vector
                j = int(fresh.argmax())
                if fresh[j] > score:
                    label, score = before + j, float(fresh[j])
            if score >= similarity:
                labels[start + r] = label
            else:
                leaders[count] = vector
                labels[start + r] = count
                count += 1
    return labels


def diversity(emb: np.ndarray, texts: Sequence[str], similarity: float) -> dict[str, float | int]:
    """The paper's measures: attributes, clusters, mean inter-cluster distance, mean length (words)."""
    if not len(texts):
        return {"attributes": 0, "clusters": 0, "inter_cluster_distance": 0.0, "mean_length": 0.0}
    labels = leader_clusters(emb, similarity)
    count = int(labels.max()) + 1
    centroids = np.zeros((count, emb.shape[1]), dtype=np.float64)
    np.add.at(centroids, labels, emb.astype(np.float64))
    centroids /= np.maximum(np.linalg.norm(centroids, axis=1, keepdims=True), 1e-12)
    # Mean pairwise cosine of unit vectors without the L x L matrix: (|sum|^2 - L) / (L (L - 1)).
    total = centroids.sum(axis=0)
    mean_cos = (float(total @ total) - count) / (count * (count - 1)) if count > 1 else 1.0
    return {"attributes": len(texts), "clusters": count, "inter_cluster_distance": round(1.0 - mean_cos, 4),
            "mean_length": round(float(np.mean([len(t.split()) for t in texts])), 3)}


# --- the seen pool: exact and near duplicates -------------------------------------------------

class SeenPool:
    """Every attribute seen so far: normalised texts for exact matches, a FAISS inner-product
    index of embeddings for near ones."""

    def __init__(self, dim: int):
        import faiss

        self.index = faiss.IndexFlatIP(dim)
        self.keys: set[str] = set()
        self.texts: list[str] = []

    def add(self, texts: Sequence[str], emb: np.ndarray) -> None:
        if len(texts):
            self.index.add(np.ascontiguousarray(emb, dtype=np.float32))
            self.texts += list(texts)
            self.keys.update(dedup_key(t) for t in texts)

    def nearest(self, vector: np.ndarray) -> tuple[float, str | None]:
        if self.index.ntotal == 0:
            return -1.0, None
        sims, ids = self.index.search(vector.reshape(1, -1).astype(np.float32), 1)
        return float(sims[0, 0]), self.texts[int(ids[0, 0])]


# --- asking the LLM ---------------------------------------------------------------------------

QUESTIONS_PROMPT = "personas/questions"
EXPAND_PROMPT = "personas/expand"


@dataclass(frozen=True)
class ExpansionRequest:
    """One expansion request; its id is a hash of what determines it, never of the reply."""

    id: str
    topic: int
    question: str
    sample: int
    examples: tuple[str, ...]
    request: Any  # ChatRequest
    provenance: Provenance


@dataclass
class ExpansionCounts:
    questions_failed: int = 0
    requests: int = 0
    already_done: int = 0
    failed: int = 0


@dataclass
class Expander:
    """Asks the chat backend for each topic's questions, then for new attributes, resumably.

    `topics` maps a topic to the indices of its seeds in `seeds`; `seed_emb` are their embeddings.
    """

    cfg: Any  # PersonasConfig
    backend: Any  # ChatBackend
    prompts: Any  # PromptLibrary
    seed_set: str
    seeds: list[Any]  # Attribute
    seed_emb: np.ndarray
    topics: dict[int, list[int]]
    embed: Embed
    stores: dict[str, Any]  # attributes, questions, replies, rejections: JsonlStore
    counts: ExpansionCounts = field(default_factory=ExpansionCounts)

    # -- questions --
    def questions(self) -> dict[int, TopicQuestions]:
        """Each topic's questions: from the side file, asking the LLM only for topics it lacks."""
        have = {r.topic: r for r in self.stores["questions"].read()}
        todo = [t for t in sorted(self.topics) if t not in have]
        if not todo:
            return have
        ref = self.prompts.ref(QUESTIONS_PROMPT)
        requests = []
        for topic in todo:
            central = central_members(self.seed_emb, self.topics[topic], self.cfg.question_examples)
            rendered = self.prompts.render(QUESTIONS_PROMPT, attributes=[self.seeds[i].text for i in central],
                                           n=self.cfg.questions_per_topic)
            rid = record_id("questions", self.seed_set, topic, self.cfg.seed)
            request = self._chat_request(rendered.messages, rid, self.cfg.questions_temperature)
            requests.append((rid, topic, request))
        self._ask_questions(requests, ref, have)
        return have

    def _ask_questions(self, requests, ref, have: dict[int, TopicQuestions]) -> None:
        from .. import ui

        with self.backend.session() as session, self.stores["questions"].appender() as out, \
                ui.progress("inducing questions", total=len(requests)) as advance:
            for index, completion in session.stream([r for _, _, r in requests]):
                advance()
                rid, topic, request = requests[index]
                if not completion.ok:
                    self.counts.questions_failed += 1
                    ui.debug(f"questions for topic {topic} failed: {completion.error}")
                    continue
                parsed = parse_questions(completion.text, self.cfg.questions_per_topic)
                record = TopicQuestions(
                    id=rid, topic=topic, questions=parsed.items or [FALLBACK_QUESTION],
                    fallback=not parsed.items, reply=completion.text, parse_error=parsed.error,
                    provenance=self._provenance(ref, request))
                out.write(record)
                have[topic] = record

    # -- expansion --
    def requests(self, questions: dict[int, TopicQuestions]) -> list[ExpansionRequest]:
        """Every (topic, question, sample) request, each with its own seeded few-shot examples."""
        ref = self.prompts.ref(EXPAND_PROMPT)
        qref = self.prompts.ref(QUESTIONS_PROMPT)
        out = []
        for topic in sorted(self.topics):
            if topic not in questions:
                continue  # its question request failed: a re-run asks again
            for question in questions[topic].questions:
                for sample in range(self.cfg.requests_per_question):
                    rid = record_id("expand", self.seed_set, topic, question, sample, self.cfg.seed)
                    members = self.topics[topic]
                    rng = random.Random(int(rid, 16))
                    picked = rng.sample(members, min(self.cfg.examples, len(members)))
                    examples = tuple(self.seeds[i].text for i in picked)
                    rendered = self.prompts.render(EXPAND_PROMPT, question=question, examples=list(examples),
                                                   n=self.cfg.per_request)
                    request = self._chat_request(rendered.messages, rid, self.cfg.temperature)
                    provenance = self._provenance(ref, request, questions_prompt=qref.name,
                                                  questions_prompt_hash=qref.hash, examples=list(examples),
                                                  request_id=rid)
                    out.append(ExpansionRequest(rid, topic, question, sample, examples, request, provenance))
        return out

    def expand(self, requests: list[ExpansionRequest], pool: SeenPool) -> None:
        """Send the requests not yet done; keep what is new, log what is dropped."""
        done = self.stores["replies"].ids()
        todo = [r for r in requests if r.id not in done]
        self.counts.requests = len(requests)
        self.counts.already_done = len(requests) - len(todo)
        if todo:
            self._expand_all(todo, pool)

    def _expand_all(self, todo: list[ExpansionRequest], pool: SeenPool) -> None:
        import contextlib

        from .. import ui

        have_attr = self.stores["attributes"].ids()
        have_rej = self.stores["rejections"].ids()
        with contextlib.ExitStack() as stack:
            session = stack.enter_context(self.backend.session())
            attrs = stack.enter_context(self.stores["attributes"].appender())
            rejections = stack.enter_context(self.stores["rejections"].appender())
            replies = stack.enter_context(self.stores["replies"].appender())
            advance = stack.enter_context(ui.progress("expanding attributes", total=len(todo)))
            # The replies are read (parsed, embedded, deduplicated) here while the requests after
            # them are still in flight on the session's loop.
            for index, completion in session.stream([r.request for r in todo]):
                advance()
                req = todo[index]
                if not completion.ok:
                    self.counts.failed += 1
                    ui.debug(f"expansion request {req.id} failed: {completion.error}")
                    continue
                sinks = _Sinks(attrs, rejections, have_attr, have_rej)
                accepted, parsed = self._take(req, completion, pool, sinks)
                # The reply record goes last: it marks the request done only once its
                # attributes and rejections are on disk.
                replies.write(ExpansionReply(
                    id=req.id, topic=req.topic, question=req.question, sample=req.sample,
                    reply=completion.text, accepted=accepted, parse_error=parsed.error,
                    provenance=req.provenance))

    def _take(self, req: ExpansionRequest, completion, pool: SeenPool, sinks: "_Sinks") -> tuple[int, ParsedReply]:
        from ..schema import Attribute

        parsed = parse_attributes(completion.text, self.cfg.max_words, completion.finish_reason == "length")
        for j, (line, why) in enumerate(parsed.dropped):
            sinks.reject(record_id("personas", req.id, "dropped", j), req.id, "not_attribute",
                         {"line": line, "why": why, "request_id": req.id})
        if parsed.error:
            sinks.reject(record_id("personas", req.id, "unparseable"), req.id, "unparseable",
                         {"reply": completion.text, "error": parsed.error, "request_id": req.id})
        accepted = 0
        todo: list[tuple[int, str, str]] = []
        for j, text in enumerate(parsed.items):
            aid = record_id("expanded", req.id, j)
            if aid in sinks.have_attributes:  # kept by an interrupted run before its reply was marked done
                accepted += 1
                continue
            if dedup_key(text) in pool.keys:
                sinks.reject(record_id("personas", req.id, "item", j), aid, "duplicate_exact",
                             {"text": text, "request_id": req.id})
                continue
            todo.append((j, text, aid))
        emb = self.embed([t for _, t, _ in todo]) if todo else np.zeros((0, 1), dtype=np.float32)
        for (j, text, aid), vector in zip(todo, emb):
            if dedup_key(text) in pool.keys:  # the same text earlier in this reply
                sinks.reject(record_id("personas", req.id, "item", j), aid, "duplicate_exact",
                             {"text": text, "request_id": req.id})
                continue
            similarity, nearest = pool.nearest(vector)
            if similarity >= self.cfg.near_duplicate:
                sinks.reject(record_id("personas", req.id, "item", j), aid, "duplicate_near",
                             {"text": text, "nearest": nearest, "similarity": round(similarity, 4),
                              "request_id": req.id})
                continue
            pool.add([text], vector.reshape(1, -1))
            sinks.attribute(Attribute(id=aid, text=text, source="expanded", topic=req.topic,
                                      question=req.question, provenance=req.provenance))
            accepted += 1
        return accepted, parsed

    # -- helpers --
    def _chat_request(self, messages, rid: str, temperature: float | None):
        from ..backends import ChatRequest

        return ChatRequest.of(messages, seed=int(rid, 16) % 2**31, max_tokens=self.cfg.max_tokens,
                              temperature=temperature)

    def _provenance(self, ref, request, **extra: Any) -> Provenance:
        params = {**self.backend.resolve(request).params(), **extra}
        return Provenance(backend=self.backend.name, model=self.backend.model, prompt=ref.name,
                          prompt_hash=ref.hash, params=params)


@dataclass
class _Sinks:
    """Writers for one reply's records; ids already on disk (a resumed request) are skipped."""

    attributes: Any
    rejections: Any
    have_attributes: set[str]
    have_rejections: set[str]

    def attribute(self, record) -> None:
        if record.id not in self.have_attributes:
            self.attributes.write(record)
            self.have_attributes.add(record.id)

    def reject(self, rid: str, subject: str, reason: str, detail: dict[str, Any]) -> None:
        from ..schema import Rejection

        if rid not in self.have_rejections:
            self.rejections.write(Rejection(id=rid, stage="personas", subject_id=subject, reason=reason,
                                            detail=detail))
            self.have_rejections.add(rid)
