"""The hand-written natural-chat NLI sets and the injected SPC contradictions: shape, balance, independence.

Unit and fast: no model is loaded. These files are what issue 16's figures are measured on, so a
leak (a hypothesis that also occurs in the SPC train split, a dev row repeated in test) or a broken
reference (a turn of the wrong speaker) would silently inflate or break the benchmark.
"""

from __future__ import annotations

import gzip
import json
import re
from collections import Counter
from functools import lru_cache

import pytest

from conftest import REPO

NLI = REPO / "corpora" / "nli"
SPC = REPO / "corpora" / "spc"
LABELS = {"entailment", "neutral", "contradiction"}
CHAT_FIELDS = {"premise", "hypothesis", "label", "slot", "phenomenon"}
INJECTED_FIELDS = {"conversation_id", "speaker", "turn", "persona_sentence", "utterance", "kind"}
PHENOMENA = {"paraphrase", "hedge", "typo", "lowercase", "question", "reaction", "partner", "quantity",
             "occupation", "location", "family", "pets", "hobbies", "food", "health", "negation",
             "episode", "multi"}


def key(text: str) -> str:
    """Lower case, punctuation and spacing dropped: "I'm 34!" and "i m 34" meet (SPC is tokenised)."""
    return " ".join(re.sub(r"[^a-z0-9]+", " ", text.lower()).split())


def read_jsonl(path) -> list[dict]:
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


@lru_cache(maxsize=None)
def chat(name: str) -> list[dict]:
    return read_jsonl(NLI / f"chat_{name}.jsonl")


@lru_cache(maxsize=None)
def injected() -> list[dict]:
    return read_jsonl(NLI / "spc_test_injected.jsonl")


@lru_cache(maxsize=None)
def spc(split: str) -> dict[str, dict]:
    with gzip.open(SPC / f"{split}.jsonl.gz", "rt", encoding="utf-8") as fh:
        return {c["id"]: c for c in map(json.loads, fh)}


@lru_cache(maxsize=None)
def train_texts() -> frozenset[str]:
    texts = set()
    for c in spc("train").values():
        texts.update(key(p) for p in c["user1_persona"] + c["user2_persona"])
        texts.update(key(t["text"]) for t in c["turns"])
    return frozenset(texts)


@pytest.mark.parametrize("name, least", [("dev", 50), ("test", 110)])
def test_chat_set_parses_with_exactly_balanced_labels(name, least):
    rows = chat(name)
    for row in rows:
        assert set(row) == CHAT_FIELDS, row
        assert row["label"] in LABELS, row
        assert all(isinstance(row[f], str) and row[f].strip() for f in CHAT_FIELDS), row
        assert row["phenomenon"] in PHENOMENA, row
    counts = Counter(row["label"] for row in rows)
    assert set(counts) == LABELS
    assert len(set(counts.values())) == 1, counts
    assert counts["entailment"] >= least


@pytest.mark.parametrize("name", ["dev", "test"])
def test_chat_set_has_no_duplicate_pair_or_hypothesis(name):
    rows = chat(name)
    pairs = Counter((key(r["premise"]), key(r["hypothesis"])) for r in rows)
    assert [p for p, n in pairs.items() if n > 1] == []
    hyps = Counter(key(r["hypothesis"]) for r in rows)
    assert [h for h, n in hyps.items() if n > 1] == []


def test_chat_test_covers_every_phenomenon_and_draws_half_its_premises_from_spc_test():
    rows = chat("test")
    phenomena = Counter(r["phenomenon"] for r in rows)
    assert set(phenomena) == PHENOMENA, set(phenomena) ^ PHENOMENA
    assert min(phenomena.values()) >= 4, phenomena
    premises = {r["premise"] for r in rows}
    test_personas = {p for c in spc("test").values() for p in c["user1_persona"] + c["user2_persona"]}
    from_spc = premises & test_personas
    assert 0.4 <= len(from_spc) / len(premises) <= 0.6, (len(from_spc), len(premises))


def test_dev_and_test_are_disjoint():
    dev, test = chat("dev"), chat("test")
    assert {key(r["hypothesis"]) for r in dev} & {key(r["hypothesis"]) for r in test} == set()
    dev_pairs = {(key(r["premise"]), key(r["hypothesis"])) for r in dev}
    assert dev_pairs & {(key(r["premise"]), key(r["hypothesis"])) for r in test} == set()


def test_no_hand_written_line_occurs_in_the_spc_train_split():
    seen = train_texts()
    assert len(seen) > 10_000  # the split really was read
    leaks = [r["hypothesis"] for name in ("dev", "test") for r in chat(name) if key(r["hypothesis"]) in seen]
    leaks += [r["utterance"] for r in injected() if key(r["utterance"]) in seen]
    assert leaks == []


def test_injected_rows_name_a_real_later_turn_and_persona_sentence_of_that_speaker():
    conversations = spc("test")
    rows = injected()
    for row in rows:
        assert set(row) == INJECTED_FIELDS, row
        assert row["speaker"] in ("user1", "user2"), row
        conv = conversations.get(row["conversation_id"])
        assert conv is not None, row
        assert row["persona_sentence"] in conv[f"{row['speaker']}_persona"], row
        own = [i for i, t in enumerate(conv["turns"]) if t["speaker"] == row["speaker"]]
        assert isinstance(row["turn"], int) and row["turn"] in own[1:], row
        assert row["utterance"].strip() and key(row["utterance"]) != key(conv["turns"][row["turn"]]["text"])
        assert row["kind"].strip()


def test_at_least_160_injected_rows_over_distinct_conversations_with_varied_kinds():
    rows = injected()
    assert len(rows) >= 160
    assert len({r["conversation_id"] for r in rows}) == len(rows)
    assert len({key(r["utterance"]) for r in rows}) == len(rows)
    assert len(Counter(r["kind"] for r in rows)) >= 5


def test_no_chat_hypothesis_is_in_the_hand_written_nli_training_data():
    path = NLI / "persona_train_handwritten.jsonl"
    train = {key(r["hypothesis"]) for r in read_jsonl(path)}
    assert train  # the training file really was read
    assert [r["hypothesis"] for name in ("dev", "test") for r in chat(name) if key(r["hypothesis"]) in train] == []
