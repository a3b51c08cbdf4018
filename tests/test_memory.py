"""User memory: extraction and dedup with a keyword NLI, newer facts winning, retrieval ranking,
the token budget, atomic writes, forget/edit, and the memory block in the system prompt."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
from datetime import datetime

import numpy as np
import pytest

from conftest import REPO, forge_cmd
from persona_forge.backends import ScriptedBackend
from persona_forge.config import MemoryConfig
from persona_forge.errors import UserError
from persona_forge.memory import MemoryStore, UserMemory, candidates, third_person
from persona_forge.memory.extract import LLMExtractor, content_words
from persona_forge.memory.retrieve import pack
from persona_forge.memory.store import MemoryFact
from persona_forge.samples import reply_messages
from persona_forge.schema import Turn

NEGATIONS = {"not", "no", "never", "don't", "anymore"}


class KeywordNLI:
    """Entailment when the hypothesis's content words are all in the premise; contradiction when
    the two share a content word and exactly one of them is negated; else neutral."""

    name = "keyword"

    def __init__(self):
        self.pairs: list[tuple[str, str]] = []

    def predict(self, pairs):
        self.pairs.extend(pairs)
        out = []
        for premise, hypothesis in pairs:
            p, h = set(content_words(premise)), set(content_words(hypothesis))
            neg_p = bool(NEGATIONS & set(premise.lower().replace(".", "").split()))
            neg_h = bool(NEGATIONS & set(hypothesis.lower().replace(".", "").split()))
            if p & h and neg_p != neg_h:
                out.append([0.05, 0.05, 0.9])
            elif h and h <= p and neg_p == neg_h:
                out.append([0.9, 0.05, 0.05])
            else:
                out.append([0.05, 0.9, 0.05])
        return np.array(out, dtype=np.float32)


class HashEncoder:
    """Bag of content words hashed into 64 dimensions, normalised: shared words, higher cosine."""

    def encode(self, texts):
        out = np.zeros((len(texts), 64), dtype=np.float32)
        for i, text in enumerate(texts):
            for word in content_words(text) or ["empty"]:
                out[i, int(hashlib.md5(word.encode()).hexdigest(), 16) % 64] += 1
        return out / np.linalg.norm(out, axis=1, keepdims=True)


def memory(tmp_path, user="alice", **config) -> UserMemory:
    cfg = MemoryConfig(dir=tmp_path, **config)
    return UserMemory(user, cfg, nli=KeywordNLI(), encoder=HashEncoder())


def test_candidates_keep_first_person_statements_only():
    text = ("Hi, I'm participant_1. What's your name? Oh, I have a turtle named Timothy! Do you like dogs. "
            "I'm doing well, thanks. My parents live in Bora Bora. You must be tired")
    assert candidates(text) == ["I have a turtle named Timothy!", "My parents live in Bora Bora."]


def test_observe_remembers_and_dedups_restatements(tmp_path):
    mem = memory(tmp_path)
    first = mem.observe("Hello! I have a dog named Max and a garden.")
    assert [f.text for f in first.added] == ["I have a dog named Max and a garden."]
    again = mem.observe("Yeah, I have a dog named Max.")       # entailed by the fact: a duplicate
    wider = mem.observe("I have a garden, a dog named Max and a bike.")  # entails the fact: a duplicate too
    assert again.duplicates == [("I have a dog named Max.", first.added[0].id)]
    assert len(wider.duplicates) == 1 and not wider.added
    assert [f.text for f in mem.active()] == ["I have a dog named Max and a garden."]
    stored = MemoryStore(tmp_path).load("alice")
    assert [(f.text, f.source_turn, f.status) for f in stored] == [("I have a dog named Max and a garden.", 0, "active")]


def test_cosine_duplicate_skips_the_nli(tmp_path):
    mem = memory(tmp_path, dedup_cosine=0.95)
    mem.observe("I work as a nurse in Leeds.")
    nli = mem._nli
    asked = len(nli.pairs)
    changes = mem.observe("I work as a nurse in Leeds!")
    assert len(changes.duplicates) == 1 and len(nli.pairs) == asked


def test_newer_fact_wins_and_both_are_kept_dated(tmp_path):
    mem = memory(tmp_path)
    old = mem.observe("I have a dog called Rex.").added[0]
    new = mem.observe("I do not have a dog anymore.").added[0]
    stored = {f.id: f for f in MemoryStore(tmp_path).load("alice")}
    assert set(stored) == {old.id, new.id}
    assert stored[old.id].status == "superseded" and stored[old.id].superseded_by == new.id
    assert stored[new.id].status == "active" and stored[new.id].supersedes == [old.id]
    for fact in stored.values():
        datetime.fromisoformat(fact.created_at)
    assert mem.block(mode="block") == ["They do not have a dog anymore."]


def test_retrieval_ranks_the_relevant_fact_first(tmp_path):
    mem = memory(tmp_path, top_k=2)
    for text in ("I work as a nurse in a hospital.", "I have a turtle named Timothy.", "I live in Leeds near the river."):
        mem.observe(text)
    assert mem.block("Do you remember my turtle Timothy?", "retrieve")[0] == "They have a turtle named Timothy."
    assert mem.block("Which hospital do I work in as a nurse?", "retrieve")[0] == \
        "They work as a nurse in a hospital."
    assert len(mem.block("Which hospital do I work in?", "retrieve")) == 2
    assert mem.block("anything", "off") == []


def test_block_keeps_the_newest_facts_within_the_token_budget(tmp_path):
    mem = memory(tmp_path, budget_tokens=30)
    texts = [f"I collect {thing} stamps from {place}." for thing, place in
             [("red", "Peru"), ("blue", "Chile"), ("green", "Ghana"), ("old", "Japan"), ("rare", "Nepal")]]
    for text in texts:
        mem.observe(text)
    lines = mem.block(mode="block")
    used = mem.overhead + sum(len(f"- {line}\n".split()) for line in lines)
    assert used <= 30 and mem.overhead > 0
    # The newest that fit, shown in the order they were learnt.
    assert lines == [third_person(t) for t in texts[-len(lines):]] and 0 < len(lines) < len(texts)


def test_pack_counts_with_the_tokenizer_and_skips_what_does_not_fit():
    chars = len  # a "tokenizer" that counts characters
    assert pack(["aaaa", "b" * 50, "cc"], budget=20, count=chars, overhead=4) == [0, 2]
    assert pack(["x"], budget=3, count=chars) == []


def test_third_person_rewrites_the_users_voice():
    assert third_person("I'm 30 and my mother is a nurse. I love it, it makes me happy.") == \
        "They're 30 and their mother is a nurse. They love it, it makes them happy."


def test_memory_block_goes_into_the_rendered_system_prompt():
    messages = reply_messages(["I like tea."], [Turn(speaker="user1", text="What pet do I have?")], "user2",
                              memory=["They have a turtle named Timothy."])
    assert messages[0].content == (
        "You are a person chatting with someone you have just met. Stay in character; this is who you are:\n"
        "- I like tea.\n"
        "Reply with one short, natural message, as this person would.\n\n"
        "What the person you are talking to told you before:\n"
        "- They have a turtle named Timothy.")
    plain = reply_messages(["I like tea."], [Turn(speaker="user1", text="hi")], "user2")
    assert plain[0].content.endswith("as this person would.")


def test_chat_with_memory_remembers_across_sessions(tmp_path):
    from io import StringIO

    from persona_forge.chat import converse

    seen = []

    def reply(messages, base):
        seen.append(messages)
        return "nice"

    converse(["I like tea."], reply, False, ["I have a turtle named Timothy."], StringIO(), False, False,
             memory(tmp_path, user="bob"))
    assert "Timothy" not in seen[0][0]["content"]  # nothing known before the first message
    out = StringIO()
    converse(["I like tea."], reply, False, ["What pet do I have?", "/memory"], out, False, False,
             memory(tmp_path, user="bob"))  # a new session: the memory comes from the file
    assert seen[1][0]["content"].endswith("- They have a turtle named Timothy.")
    assert "I have a turtle named Timothy." in out.getvalue()


def test_llm_extractor_reads_json_and_counts_unreadable_answers(tmp_path):
    backend = ScriptedBackend(['{"facts": ["I have two cats", "Do I?"]}', "no json here"])
    extractor = LLMExtractor(backend)
    cfg = MemoryConfig(dir=tmp_path)
    mem = UserMemory("carol", cfg, nli=KeywordNLI(), encoder=HashEncoder(), extractor=extractor)
    assert [f.text for f in mem.observe("Cats! I have two of them.").added] == ["I have two cats."]
    assert mem.facts[0].extractor == "llm"
    assert not mem.observe("hmm").added and extractor.parse_errors == 1
    assert "Cats! I have two of them." in backend.seen[0].messages[-1]["content"]


def test_forget_and_edit(tmp_path):
    mem = memory(tmp_path)
    old = mem.observe("I have a dog called Rex.").added[0]
    new = mem.observe("I do not have a dog anymore.").added[0]
    mem.observe("I live in Leeds near the river.")
    store = MemoryStore(tmp_path)
    edited = store.edit("alice", old.id[:6], "I have a dog called Rex the Third.")
    assert edited.text == "I have a dog called Rex the Third." and edited.edited_at
    assert store.forget("alice", new.id) == 1
    facts = {f.id: f for f in store.load("alice")}
    assert new.id not in facts and facts[old.id].status == "active" and facts[old.id].superseded_by is None
    with pytest.raises(UserError, match="no fact of user alice"):
        store.forget("alice", "ffffffffff")
    assert store.forget("alice") == 2
    assert store.load("alice") == [] and not store.path("alice").exists()
    with pytest.raises(UserError, match="not usable as a file name"):
        store.path("../etc")


def test_a_killed_write_leaves_the_old_file_whole(tmp_path):
    store = MemoryStore(tmp_path)
    facts = [MemoryFact(id=f"f{i}", user="alice", text=f"I have {i} cats.", created_at="2026-12-01T00:00:00+00:00")
             for i in range(3)]
    store.save("alice", facts)
    before = store.path("alice").read_bytes()
    # A process killed (SIGKILL) in the middle of rewriting the file: after the new content is
    # written to the temporary file, before it is renamed into place.
    script = textwrap.dedent(f"""
        import os, signal
        from persona_forge.memory.store import MemoryStore, MemoryFact
        os.fsync = lambda fd: os.kill(os.getpid(), signal.SIGKILL)
        MemoryStore({str(tmp_path)!r}).save("alice", [MemoryFact(id="x", user="alice", text="I have no cats.",
                                                         created_at="2026-12-01T00:00:01+00:00")])
    """)
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == -signal.SIGKILL
    assert store.path("alice").read_bytes() == before
    assert [f.id for f in store.load("alice")] == ["f0", "f1", "f2"]
    assert store.users() == ["alice"]


def _forge(*args, tmp_path):
    return subprocess.run(forge_cmd() + ["--set", f"memory.dir={tmp_path}", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=120)


def test_memory_cli_list_edit_forget(tmp_path):
    mem = memory(tmp_path)
    fact = mem.observe("I have a turtle named Timothy.").added[0]
    mem.observe("I live in Leeds near the river.")
    listed = _forge("memory", "list", "alice", "--json", tmp_path=tmp_path)
    assert listed.returncode == 0
    assert [json.loads(line)["text"] for line in listed.stdout.splitlines()] == \
        ["I have a turtle named Timothy.", "I live in Leeds near the river."]
    assert _forge("memory", "list", tmp_path=tmp_path).stdout.split() == ["alice"]
    edited = _forge("memory", "edit", "alice", "--fact", fact.id[:8], "--text", "I have two turtles.", tmp_path=tmp_path)
    assert edited.returncode == 0
    assert MemoryStore(tmp_path).load("alice")[0].text == "I have two turtles."
    missing = _forge("memory", "forget", "alice", "--fact", "zzzz", tmp_path=tmp_path)
    assert missing.returncode != 0 and len(missing.stderr.strip().splitlines()) == 1
    assert _forge("memory", "forget", "alice", "--fact", fact.id, tmp_path=tmp_path).returncode == 0
    assert [f.text for f in MemoryStore(tmp_path).load("alice")] == ["I live in Leeds near the river."]
    assert _forge("memory", "forget", "alice", tmp_path=tmp_path).returncode == 0
    assert not (tmp_path / "alice.jsonl").exists()


def test_chat_memory_flag_needs_a_user(tmp_path):
    persona = tmp_path / "p.txt"
    persona.write_text("I like tea.\n")
    result = _forge("chat", "--persona", str(persona), "--memory", "block", tmp_path=tmp_path)
    assert result.returncode != 0
    assert result.stderr.strip() == "forge: error: --memory needs --user ID: the user whose memory to use"


def test_extract_prompt_renders_exactly():
    from persona_forge.prompts import render

    rendered = render("memory/extract", message="I have two cats.")
    assert rendered.messages == (
        {"role": "system", "content":
            "You keep notes about the person you are chatting with. From their message, list the lasting facts it\n"
            "states about them: who they are, what they have, do, like or dislike, their family, work, places and\n"
            "plans. Write each fact as a short first-person sentence in their voice (\"I have a turtle named\n"
            "Timothy.\"). Leave out questions, greetings, opinions about you and passing small talk. Reply with JSON\n"
            "only: {\"facts\": [\"...\", \"...\"]}, or {\"facts\": []} when the message states none."},
        {"role": "user", "content": "I have two cats."})


@pytest.mark.integration
def test_real_nli_and_encoder_dedup_and_supersede(tmp_path, embedded_nli):
    """The embedded NLI and MiniLM: a restatement is a duplicate, a change of mind supersedes."""
    from persona_forge.config import NLIConfig
    from persona_forge.memory import SentenceEncoder
    from persona_forge.nli.base import load_nli

    mem = UserMemory("dana", MemoryConfig(dir=tmp_path), nli=load_nli(NLIConfig(), progress=False),
                     encoder=SentenceEncoder())
    first = mem.observe("I have a turtle named Timothy. I work as a nurse.")
    assert len(first.added) == 2
    again = mem.observe("Oh, my turtle is called Timothy.")
    assert not again.added and again.duplicates[0][1] == first.added[0].id
    changed = mem.observe("I don't work as a nurse anymore.")
    assert len(changed.superseded) == 1 and changed.superseded[0][0] == first.added[1].id
    assert mem.block("What pet do I have?", "retrieve")[0] == "They have a turtle named Timothy."
