"""The NLI training pairs mined from Synthetic-Persona-Chat train conversations (nli/mine.py).

A bag-of-words stand-in replaces the sentence encoder: the miner's rules are what is tested here,
not the encoder (no model is loaded)."""

from __future__ import annotations

import json
import random
import re
import zlib

import numpy as np
import pytest

from persona_forge.nli import mine
from persona_forge.nli.data import content_words, load_spc, normalize
from persona_forge.resources import data_dir


def bag_of_words(texts: list[str]) -> np.ndarray:
    out = np.zeros((len(texts), 512), np.float32)
    for i, text in enumerate(texts):
        for word in content_words(text):
            out[i, zlib.crc32(word.encode()) % 511] += 1
        out[i, 511] += 0.3
    return out / np.linalg.norm(out, axis=1, keepdims=True)


def _personas(conversations):
    return sorted({tuple(normalize(a) for a in c[k]) for c in conversations for k in ("user1_persona", "user2_persona")})


def _plain(text: str) -> str:
    return re.sub(r"[^a-z ]", "", text.lower()).strip()


@pytest.fixture(scope="module")
def train():
    return load_spc("train")


def test_a_known_train_utterance_is_mined_as_entailment_of_its_speakers_sentence(train):
    conversation = next(c for c in train if c["id"] == train[2]["id"])
    assert "I do volunteer work for human rights organizations." in conversation["user2_persona"] + \
        conversation["user1_persona"]
    pairs = mine.mine_pairs([conversation], 100, random.Random(0), _personas(train), bag_of_words)
    entailed = {(p.premise, _plain(p.hypothesis)) for p in pairs if p.label == "entailment"}
    assert ("I do volunteer work for human rights organizations.",
            "i do volunteer work for human rights organizations") in entailed
    assert all(p.source.startswith("mined:") for p in pairs)
    # a line asking the partner a question is never mined as an entailment
    assert not any(p.hypothesis.rstrip().endswith("?") and p.label == "entailment" and "." not in p.hypothesis
                   for p in pairs)


def test_the_miner_reads_only_the_train_split(monkeypatch, train):
    asked = []

    def loader(split="train"):
        asked.append(split)
        return train[:40]

    monkeypatch.setattr(mine, "load_spc", loader)
    pairs = mine.mined_pairs(0, 30, 50, embed=bag_of_words)
    assert asked == ["train"]
    assert {p.label for p in pairs} == {"entailment", "neutral", "contradiction"}


def test_no_mined_hypothesis_is_an_evaluation_hypothesis(train):
    pairs = mine.mine_pairs(random.Random(1).sample(train, 400), 10_000, random.Random(0), _personas(train),
                            bag_of_words)
    folder = data_dir("corpora") / "nli"
    held_out = set()
    for name in ("chat_dev.jsonl", "chat_test.jsonl", "persona_test.jsonl", "persona_dev.jsonl"):
        held_out |= {_plain(json.loads(line)["hypothesis"]) for line in (folder / name).read_text().splitlines()
                     if line.strip()}
    held_out |= {_plain(json.loads(line)["utterance"])
                 for line in (folder / "spc_test_injected.jsonl").read_text().splitlines() if line.strip()}
    mined = {_plain(p.hypothesis) for p in pairs}
    assert len(mined) > 1000
    assert not mined & held_out


@pytest.mark.parametrize("sentence, slot", [
    ("I work as a chef.", ("job", "chef")), ("I am a nurse.", ("job", "nurse")),
    ("I live in Ohio.", ("place", "Ohio")), ("I am 32.", ("age", "32")),
    ("I have two dogs.", ("count:dog", "two")), ("I am married.", ("marital", "married")),
    ("My favorite color is blue.", ("favorite:color", "blue")),
    ("I like to read.", None), ("I live in a condo.", None),
])
def test_exclusive_slots_are_read_from_persona_sentences(sentence, slot):
    assert mine.slot_of(sentence) == slot


def test_swapping_a_slot_value_in_an_utterance():
    assert mine.swap_value("I've been a chef at a diner for ten years lol", "job", "chef", "accountant") == \
        "I've been an accountant at a diner for ten years lol"
    assert mine.swap_value("yeah, two dogs keep me busy", "count:dog", "two", "four") == "yeah, four dogs keep me busy"
    assert mine.swap_value("Ohio winters are rough", "place", "Ohio", "Texas") == "Texas winters are rough"
    assert mine.swap_value("I cook for a living", "job", "chef", "nurse") is None  # the value is not said


def test_contradictions_built_from_a_mined_utterance():
    conversation = {
        "id": "x", "user1_persona": ["I work as a chef.", "I have a cat named Tom.", "I like jazz."],
        "user2_persona": ["I am a student.", "I live in Ohio.", "I ski."],
        "turns": [{"speaker": "user1", "text": "I work as a chef at a diner downtown."},
                  {"speaker": "user2", "text": "I live in Ohio and ski every winter."},
                  {"speaker": "user1", "text": "What do you study?"},
                  {"speaker": "user2", "text": "History, it is fun."}]}
    personas = [("I work as a chef.",), ("I am a nurse.",), ("I live in Texas.",)]
    pairs = mine.mine_pairs([conversation], 100, random.Random(0), personas, bag_of_words)
    found = {(p.source, p.premise, _plain(p.hypothesis)) for p in pairs}
    assert ("mined:restate", "I work as a chef.", "i work as a chef at a diner downtown") in found
    assert ("mined:swap", "I work as a chef.", "i work as a nurse at a diner downtown") in found
    assert ("mined:rival", "I am a nurse.", "i work as a chef at a diner downtown") in found
    assert not {source for source, _, _ in found} & {"mined:chat_negation", "mined:negated"}  # left out of the build
    assert any(p.source == "mined:question" and p.label == "neutral" for p in pairs)


def test_named_evaluation_sets_load_by_name():
    from persona_forge.nli.evaluate import named_set

    dev, test = named_set("chat-dev"), named_set("chat-test")
    assert len(dev) == 150 and len(test) >= 300
    assert {p.label for p in test} == {"entailment", "neutral", "contradiction"}
    assert not {(p.premise, p.hypothesis) for p in dev} & {(p.premise, p.hypothesis) for p in test}
    assert len(named_set("persona-test")) == 240
    assert named_set("corpora/nli/chat_test.jsonl") is None  # a path, read as such by the caller


def test_a_line_about_the_partner_is_not_mined_as_a_restatement():
    conversation = {
        "id": "y", "user1_persona": ["I work as a chef.", "I have a cat named Tom.", "I like jazz."],
        "user2_persona": ["I am a student.", "I live in Ohio.", "I ski."],
        "turns": [{"speaker": "user1", "text": "You work as a chef at a diner too?"},
                  {"speaker": "user1", "text": "I bet you work as a chef at a fancy diner."},
                  {"speaker": "user1", "text": "I have a cat named Tom, he is lazy."}]}
    pairs = mine.mine_pairs([conversation], 100, random.Random(0), [("I am a nurse.",)], bag_of_words)
    restated = {(p.premise, _plain(p.hypothesis)) for p in pairs if p.source == "mined:restate"}
    assert restated == {("I have a cat named Tom.", "i have a cat named tom he is lazy")}


def test_cross_slot_neutrals_pair_a_job_with_a_self_description_and_favourites_of_other_kinds():
    personas = [("I work as a nurse.", "I am a morning person.", "My favorite color is blue."),
                ("I am a deaf man.", "I am retired.", "My favorite food is pizza."),
                ("I am a youtuber.", "I am 15 years old.", "My favorite colour is red."),
                ("I am a democrat.", "My favorite dessert is pie.", "I like hiking.")]
    pairs = mine.cross_slot_pairs(personas, 60, random.Random(0))
    assert len(pairs) == 60 and {p.label for p in pairs} == {"neutral"}
    jobs = [p for p in pairs if p.source in ("mined:cross_slot_job", "mined:cross_slot_self")]
    said = {_plain(p.premise) for p in jobs} | {_plain(p.hypothesis) for p in jobs}
    text = " ".join(said)
    assert "morning person" in text and "deaf man" in text and "democrat" in text and "nurse" in text
    # a job by another name, a minor and a sentence about (not) working are never self-descriptions
    assert "youtuber" not in text and "15 years" not in text and "retired" not in text
    favourites = {(_plain(p.premise), _plain(p.hypothesis)) for p in pairs if p.source == "mined:cross_slot_favourite"}
    assert favourites
    for premise, hypothesis in favourites:
        kinds = {k for k in ("color", "colour", "food", "dessert") if k in premise or k in hypothesis}
        assert not {"color", "colour"} <= kinds and not {"food", "dessert"} <= kinds  # one kind: they would clash
