"""`forge personas`: seed files, expansion parsing, duplicates, provenance, profiles, rejections, resume.

Unit tests fake all three models: the chat backend (ScriptedBackend), the sentence embeddings (a
bag of content words) and the NLI (explicit rules), so they run in seconds. Integration tests use
the real MiniLM and the real NLI (the embedded one, or the folder in PERSONA_FORGE_TEST_NLI).
"""

from __future__ import annotations

import hashlib
import json
import os
from functools import partial
from pathlib import Path

import numpy as np
import pytest

from persona_forge.backends import ScriptedBackend
from persona_forge.config import NLIConfig, Recipe
from persona_forge.contract import StageContext
from persona_forge.errors import UserError
from persona_forge.prompts import library
from persona_forge.stages import personas
from persona_forge.stages.persona_expand import (FALLBACK_QUESTION, dedup_key, parse_attributes, parse_questions,
                                                 load_seed_texts, read_seed_file)

from conftest import REPO, make_recipe, one_line_error, run_forge

SEEDS = [
    "I have two dogs.", "I do not have any pets.", "I have pets.", "My cat is called Tom.", "I love horses.",
    "I work as a nurse.", "I am a teacher.", "I hate my job.", "I drive a truck for a living.", "I am retired.",
    "I play the guitar.", "My favorite band is the Beatles.", "I sing in a choir.", "I listen to jazz.",
    "I eat pizza every day.", "I am a vegetarian.", "My favorite food is sushi.", "I bake bread on sundays.",
]
CONTRADICTIONS = {frozenset({"I have two dogs.", "I do not have any pets."}),
                  frozenset({"My cat is called Tom.", "I do not have any pets."}),
                  frozenset({"I eat pizza every day.", "I am a vegetarian."})}
ENTAILMENTS = {frozenset({"I have two dogs.", "I have pets."}), frozenset({"My cat is called Tom.", "I have pets."})}
QUESTIONS_REPLY = "1. What pets do you have?\n2. What do you do for fun?"
EXPANSION_REPLY = "1. I have a parrot named Polly.\n2. I walk my dog at dawn.\n3. I grow tomatoes in my garden."


class RuleNLI:
    """Contradiction or entailment for the listed pairs (either order), neutral otherwise."""

    name = "rules"

    def __init__(self, contradictions=CONTRADICTIONS, entailments=ENTAILMENTS):
        self.contradictions, self.entailments = contradictions, entailments
        self.calls = 0

    def predict(self, pairs, progress=None):
        self.calls += 1
        rows = []
        for premise, hypothesis in pairs:
            key = frozenset({premise, hypothesis})
            rows.append([0.02, 0.03, 0.95] if key in self.contradictions else
                        [0.95, 0.03, 0.02] if key in self.entailments else [0.05, 0.9, 0.05])
        if progress:
            progress(len(pairs))
        return np.array(rows, dtype=np.float32).reshape(-1, 3)

    def describe(self):
        return "rules"


_STOP = {"i", "my", "a", "an", "the", "have", "own", "am", "is", "to", "in", "of", "for", "do", "at", "and"}


def bow_embed(texts):
    """Unit vectors of content words: "I have two dogs." and "I own two dogs." are the same point."""
    out = np.zeros((len(texts), 4096), dtype=np.float32)
    for row, text in enumerate(texts):
        for word in dedup_key(text).split():
            if word not in _STOP:
                out[row, int(hashlib.md5(word.encode()).hexdigest(), 16) % 4096] += 1.0
        out[row] /= max(1e-9, float(np.linalg.norm(out[row])))
    return out


def scripted(expansion=EXPANSION_REPLY, questions=QUESTIONS_REPLY) -> ScriptedBackend:
    def reply(request):
        last = request.messages[-1]["content"]
        return questions if last.startswith("Which questions") else expansion
    return ScriptedBackend(default=reply)


@pytest.fixture
def seed_file(tmp_path) -> Path:
    path = tmp_path / "seeds.txt"
    path.write_text("\n".join(SEEDS) + "\n")
    return path


def recipe_for(tmp_path, seed_file, **personas_overrides) -> Recipe:
    settings = dict(seeds=seed_file, topics=4, questions_per_topic=2, requests_per_question=1, per_request=3,
                    examples=3, n=8, k=3, baseline=8, threads=1)
    settings.update(personas_overrides)
    return make_recipe(tmp_path / "run", personas=settings)


def run_stage(recipe, backend=None, nli=None, force=False, fresh_backend=True):
    """The stage as forge personas calls it, handed the recipe's backend and NLI sections; its summary rows."""
    backend = backend or (scripted() if fresh_backend else None)
    return personas.run(recipe.personas, StageContext(recipe.run_dir, force, progress=False), backend,
                        nli or RuleNLI(), chat=recipe.backend, nli_config=recipe.nli, embed=bow_embed,
                        prompts_dir=recipe.prompts_dir).summary


def rows_of(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def manifest(recipe) -> dict:
    return json.loads((recipe.run_dir / "personas.manifest.json").read_text())


# --- prompts ----------------------------------------------------------------------------------

def test_questions_prompt_renders_exactly():
    rendered = library().render("personas/questions", attributes=["I have two dogs.", "My cat is called Tom."], n=3)
    assert rendered.messages == (
        {"role": "system", "content": "You write short questions about a person."},
        {"role": "user", "content": "Which questions do these facts about a person answer? Write 2 short "
                                    "questions, one per line.\nI am a nurse.\nI work night shifts.\n"
                                    "I love my job at the hospital."},
        {"role": "assistant", "content": "1. What is your job?\n2. When do you work?"},
        {"role": "user", "content": "Which questions do these facts about a person answer? Write 3 short "
                                    "questions, one per line.\nI have two dogs.\nMy cat is called Tom."},
    )


def test_expand_prompt_renders_exactly():
    rendered = library().render("personas/expand", question="What pets do you have?",
                                examples=["I have two dogs.", "My cat is called Tom.", "I love horses."], n=5)
    assert rendered.messages == (
        {"role": "system", "content": "You write short facts about yourself in the first person, one per line."},
        {"role": "user", "content": "What pets do you have? Give 3 answers."},
        {"role": "assistant", "content": "1. I have two dogs.\n2. My cat is called Tom.\n3. I love horses."},
        {"role": "user", "content": "Give 5 more answers to \"What pets do you have?\", each different from "
                                    "those. Start each with \"I\" or \"My\"."},
    )


# --- parsing, through the whole stage with the fake backend -----------------------------------

PARSE_CASES = {
    "clean": ("1. I have a parrot named Polly.\n2. I walk my dog at dawn.\n3. I grow tomatoes.",
              ["I have a parrot named Polly.", "I walk my dog at dawn.", "I grow tomatoes."], 0),
    "noisy": ("Sure! Here are some answers:\n\n- **I have a parrot named Polly** (she talks)\n"
              "* \"I walk my dog at dawn.\" It is fun. Really.\nWhat about you?\nA: i m a proud cat owner\n"
              "My neighbour has a big garden and she loves it and waters it daily and mows it and trims its "
              "hedges every single morning\n5. I grow tomatoes! 🍅🌱",
              ["I have a parrot named Polly.", "I walk my dog at dawn.", "I'm a proud cat owner.", "I grow tomatoes!"],
              0),
    "empty": ("", [], 1),
    "prose only": ("The world of cats can be magical and fulfilling for everyone.", [], 1),
    "json list": ('```json\n["I have a parrot named Polly.", "I walk my dog at dawn."]\n```',
                  ["I have a parrot named Polly.", "I walk my dog at dawn."], 0),
    "json object": ('{"answers": ["I have a parrot named Polly.", "I grow tomatoes."], "count": 2}',
                    ["I have a parrot named Polly.", "I grow tomatoes."], 0),
    "one-line list": ("1. I have a parrot named Polly. 2. I grow tomatoes. 3) I knit scarves.",
                      ["I have a parrot named Polly.", "I grow tomatoes.", "I knit scarves."], 0),
}


@pytest.mark.parametrize("case", list(PARSE_CASES))
def test_expansion_reply_shapes(tmp_path, seed_file, case):
    reply, expected, parse_errors = PARSE_CASES[case]
    # One topic, one question, one request: the one reply decides everything.
    recipe = recipe_for(tmp_path, seed_file, topics=1, questions_per_topic=1, n=2, k=2)
    backend = scripted(expansion=reply)
    run_stage(recipe, backend)
    expanded = [r["text"] for r in rows_of(recipe.run_dir / "attributes.jsonl") if r["source"] == "expanded"]
    assert expanded == expected
    counts = manifest(recipe)["counts"]
    assert counts["parse_errors"] == parse_errors
    assert counts["expanded"] == len(expected)
    replies = rows_of(recipe.run_dir / "personas_replies.jsonl")
    assert len(replies) == 1 and replies[0]["reply"] == reply and replies[0]["accepted"] == len(expected)
    reasons = {r["reason"] for r in rows_of(recipe.run_dir / "rejections.jsonl")}
    assert ("unparseable" in reasons) == bool(parse_errors)


def test_parse_attributes_says_why_lines_were_dropped():
    parsed = parse_attributes("Here you go:\n1. I sew.\n2. Do you like cats?\n3. I love https://x.org\n"
                              "4. I have a dog named Sam (a golden retriever) and a cat.")
    assert parsed.items == ["I have a dog named Sam and a cat."]
    assert [why for _, why in parsed.dropped] == ["not first person", "2 words (3-20 allowed)", "a question",
                                                  "markup or a link"]
    assert parsed.error is None


def test_truncated_last_line_is_dropped_only_when_the_reply_was_cut():
    assert parse_attributes("I grow tomatoes.\nI have a big", truncated=True).items == ["I grow tomatoes."]
    assert parse_attributes("I grow tomatoes.\nI have a big dog", truncated=False).items == \
        ["I grow tomatoes.", "I have a big dog."]


def test_parse_questions_keeps_short_distinct_questions():
    parsed = parse_questions("3. What's your favorite hobby, and what makes you happy?\n4. Do you have pets? Yes.\n"
                             "5. do you have pets?\nI like cats.\n6. Why?\n7. Where are they now?", limit=5)
    assert parsed.items == ["What's your favorite hobby, and what makes you happy?", "Do you have pets?"]
    assert parse_questions("no questions here", 3).error == "no question in the reply"


def test_a_topic_without_parseable_questions_falls_back_to_a_generic_question(tmp_path, seed_file):
    recipe = recipe_for(tmp_path, seed_file, topics=2, n=2, k=2)
    run_stage(recipe, scripted(questions="I cannot help with that."))
    questions = rows_of(recipe.run_dir / "personas_questions.jsonl")
    assert len(questions) == 2
    assert all(q["fallback"] and q["questions"] == [FALLBACK_QUESTION] for q in questions)
    assert all(q["parse_error"] == "no question in the reply" for q in questions)
    assert manifest(recipe)["counts"]["question_fallbacks"] == 2


# --- duplicates and provenance ----------------------------------------------------------------

def test_exact_and_near_duplicates_are_dropped_and_logged(tmp_path, seed_file):
    recipe = recipe_for(tmp_path, seed_file, topics=1, questions_per_topic=1, n=2, k=2)
    # "I HAVE two dogs!" is a seed up to case and punctuation; "I own two dogs." is one in meaning
    # (the fake embedding ignores have/own); the third line repeats the second's normalised text.
    reply = "1. I HAVE two dogs!\n2. I own two dogs.\n3. I collect old stamps.\n4. i collect old stamps"
    run_stage(recipe, scripted(expansion=reply))
    expanded = [r["text"] for r in rows_of(recipe.run_dir / "attributes.jsonl") if r["source"] == "expanded"]
    assert expanded == ["I collect old stamps."]
    rejected = {r["detail"].get("text"): r for r in rows_of(recipe.run_dir / "rejections.jsonl")
                if r["reason"].startswith("duplicate")}
    assert rejected["I HAVE two dogs!"]["reason"] == "duplicate_exact"
    assert rejected["I own two dogs."]["reason"] == "duplicate_near"
    assert rejected["I own two dogs."]["detail"]["nearest"] == "I have two dogs."
    assert rejected["I own two dogs."]["detail"]["similarity"] >= 0.9
    counts = manifest(recipe)["counts"]
    assert counts["rejected_duplicate_exact"] == 1 and counts["rejected_duplicate_near"] == 1


def test_duplicates_across_requests_are_dropped(tmp_path, seed_file):
    recipe = recipe_for(tmp_path, seed_file)  # 4 topics x 2 questions, all answered with the same reply
    run_stage(recipe)
    expanded = [r["text"] for r in rows_of(recipe.run_dir / "attributes.jsonl") if r["source"] == "expanded"]
    assert sorted(expanded) == sorted(EXPANSION_REPLY_TEXTS)
    assert manifest(recipe)["counts"]["rejected_duplicate_exact"] == 3 * (4 * 2 - 1)


EXPANSION_REPLY_TEXTS = ["I have a parrot named Polly.", "I walk my dog at dawn.", "I grow tomatoes in my garden."]


def test_expanded_attributes_carry_provenance(tmp_path, seed_file):
    recipe = recipe_for(tmp_path, seed_file)
    run_stage(recipe)
    attributes = rows_of(recipe.run_dir / "attributes.jsonl")
    seeds = {a["text"]: a for a in attributes if a["source"] == "seed"}
    assert list(seeds) == SEEDS and all(a["provenance"] is None for a in seeds.values())
    expanded = [a for a in attributes if a["source"] == "expanded"]
    assert expanded
    lib = library()
    for attribute in expanded:
        prov = attribute["provenance"]
        assert attribute["question"] in ("What pets do you have?", "What do you do for fun?")
        assert prov["backend"] == "fake" and prov["model"] == "scripted"
        assert (prov["prompt"], prov["prompt_hash"]) == ("personas/expand", lib.ref("personas/expand").hash)
        assert prov["params"]["questions_prompt_hash"] == lib.ref("personas/questions").hash
        assert len(prov["params"]["examples"]) == 3
        assert prov["params"]["temperature"] == 0.5 and prov["params"]["max_tokens"] == 96
        # The few-shot examples came from the attribute's own topic.
        assert {seeds[e]["topic"] for e in prov["params"]["examples"]} == {attribute["topic"]}
    assert manifest(recipe)["prompts"] == {"personas/expand": lib.ref("personas/expand").hash,
                                           "personas/questions": lib.ref("personas/questions").hash}


def test_measures_before_and_after_are_reported(tmp_path, seed_file):
    recipe = recipe_for(tmp_path, seed_file)
    rows = run_stage(recipe)
    measures = manifest(recipe)["figures"]["measures"]
    assert measures["seeds"]["attributes"] == len(SEEDS)
    assert measures["pool"]["attributes"] == len(SEEDS) + 3
    assert measures["pool"]["clusters"] >= measures["seeds"]["clusters"] > 1
    assert 0 < measures["seeds"]["inter_cluster_distance"] <= 2
    assert measures["seeds"]["mean_length"] == pytest.approx(np.mean([len(s.split()) for s in SEEDS]), abs=1e-3)
    assert rows["attributes: seeds -> pool"] == f"{len(SEEDS)} -> {len(SEEDS) + 3}"


# --- profiles and rejections ------------------------------------------------------------------

def test_profiles_have_k_distinct_attributes_from_distinct_topics(tmp_path, seed_file):
    recipe = recipe_for(tmp_path, seed_file, expand=False, n=12, k=4)
    run_stage(recipe)
    pool = {a["id"]: a for a in rows_of(recipe.run_dir / "attributes.jsonl")}
    profiles = rows_of(recipe.run_dir / "profiles.jsonl")
    assert len(profiles) == 12 and len({p["id"] for p in profiles}) == 12
    for profile in profiles:
        assert len(profile["attribute_ids"]) == 4 == len(set(profile["attribute_ids"]))
        assert profile["attributes"] == [pool[i]["text"] for i in profile["attribute_ids"]]
        # 4 topics, 4 attributes: one from each.
        assert len({pool[i]["topic"] for i in profile["attribute_ids"]}) == 4
        texts = set(profile["attributes"])
        assert not any(pair <= texts for pair in CONTRADICTIONS | ENTAILMENTS)
    assert manifest(recipe)["figures"]["topic_coverage"]["topics_used"] == 4


def test_every_rejection_is_logged_with_the_pair_and_scores(tmp_path, seed_file):
    # One topic: candidates come in random order, so the rule pairs meet often.
    recipe = recipe_for(tmp_path, seed_file, expand=False, topics=1, n=30, k=4)
    rows = run_stage(recipe)
    rejections = [r for r in rows_of(recipe.run_dir / "rejections.jsonl") if r["stage"] == "personas"]
    by_reason = {reason: [r for r in rejections if r["reason"] == reason] for reason in ("contradiction", "redundant")}
    assert by_reason["contradiction"] and by_reason["redundant"]
    attributes = {a["id"]: a["text"] for a in rows_of(recipe.run_dir / "attributes.jsonl")}
    for reason, rules in (("contradiction", CONTRADICTIONS), ("redundant", ENTAILMENTS)):
        for r in by_reason[reason]:
            detail = r["detail"]
            assert frozenset({detail["candidate"], detail["against"]}) in rules
            assert attributes[r["subject_id"]] == detail["candidate"]
            assert detail["probability"] == pytest.approx(0.95)
            assert len(detail["forward"]) == 3 and len(detail["backward"]) == 3
    counts = manifest(recipe)["counts"]
    assert counts["rejected_contradiction"] == len(by_reason["contradiction"])
    assert rows["candidates: accepted / contradiction / redundant"] == \
        f"120 / {len(by_reason['contradiction'])} / {len(by_reason['redundant'])}"


def test_contradiction_rates_built_and_random(tmp_path, seed_file):
    recipe = recipe_for(tmp_path, seed_file, expand=False, topics=1, n=30, k=4, baseline=30)
    rows = run_stage(recipe)
    figures = manifest(recipe)["figures"]
    assert figures["contradiction_rate_built"] == {"pairs": 180, "contradictions": 0, "rate": 0.0,
                                                   "entailments": 0, "entailment_rate": 0.0}
    random_rate = figures["contradiction_rate_random"]
    assert random_rate["pairs"] == 180 and random_rate["contradictions"] > 0
    assert "contradiction rate, built profiles" in rows  # the summary shows it (its figures are above)


def test_a_profile_that_cannot_be_completed_is_given_up_and_logged(tmp_path):
    seeds = tmp_path / "seeds.txt"
    seeds.write_text("I have two dogs.\nI do not have any pets.\nI have pets.\n")
    recipe = recipe_for(tmp_path, seeds, expand=False, topics=1, n=1, k=2)
    with pytest.raises(UserError, match="profiles could not reach 2 consistent attributes"):
        run_stage(recipe, nli=RuleNLI(contradictions={frozenset({a, b}) for a in SEEDS[:3] for b in SEEDS[:3]}))
    incomplete = [r for r in rows_of(recipe.run_dir / "rejections.jsonl") if r["reason"] == "incomplete"]
    assert len(incomplete) == 101 and incomplete[0]["detail"]["candidates_tried"] == 3


# --- resuming ---------------------------------------------------------------------------------

OUTPUTS = ("attributes.jsonl", "profiles.jsonl", "rejections.jsonl", "personas_questions.jsonl",
           "personas_replies.jsonl", "personas_checks.jsonl")


def snapshot(run_dir: Path) -> dict[str, str]:
    return {name: (run_dir / name).read_text() for name in OUTPUTS if (run_dir / name).exists()}


def test_rerun_makes_no_requests_and_changes_nothing(tmp_path, seed_file):
    recipe = recipe_for(tmp_path, seed_file)
    first_backend = scripted()
    first = run_stage(recipe, first_backend)
    assert len(first_backend.seen) == 4 + 4 * 2  # questions per topic, then one request per (topic, question)
    assert [r.temperature for r in first_backend.seen] == [0.2] * 4 + [0.5] * 8
    before = snapshot(recipe.run_dir)
    again = scripted()
    second = run_stage(recipe, again)
    assert again.seen == []
    assert snapshot(recipe.run_dir) == before
    assert {k: v for k, v in second.items() if k != "expansion requests"} == \
        {k: v for k, v in first.items() if k != "expansion requests"}
    assert second["expansion requests"] == "8 of 8 done (8 before this run)"


def test_interrupted_expansion_asks_only_for_what_is_missing(tmp_path, seed_file):
    recipe = recipe_for(tmp_path, seed_file)
    run_stage(recipe)
    full = snapshot(recipe.run_dir)
    replies = recipe.run_dir / "personas_replies.jsonl"
    lines = replies.read_text().splitlines(keepends=True)
    replies.write_text("".join(lines[:5]) + lines[5][:20])  # killed while writing the sixth
    (recipe.run_dir / "profiles.jsonl").unlink()
    (recipe.run_dir / "personas_checks.jsonl").unlink()
    again = scripted()
    run_stage(recipe, again)
    assert len(again.seen) == 3
    assert snapshot(recipe.run_dir)["attributes.jsonl"] == full["attributes.jsonl"]
    assert sorted(rows_of(replies), key=lambda r: r["id"]) == \
        sorted((json.loads(l) for l in full["personas_replies.jsonl"].splitlines()), key=lambda r: r["id"])


def test_partial_profiles_file_is_completed_without_duplicates(tmp_path, seed_file):
    recipe = recipe_for(tmp_path, seed_file, expand=False, topics=1, n=20, k=4)
    run_stage(recipe)
    full = snapshot(recipe.run_dir)
    profiles = recipe.run_dir / "profiles.jsonl"
    lines = full["profiles.jsonl"].splitlines(keepends=True)
    profiles.write_text("".join(lines[:6]) + lines[6][:30])  # a torn seventh line
    run_stage(recipe)
    after = rows_of(profiles)
    assert len(after) == 20 and len({p["id"] for p in after}) == 20
    assert sorted(after, key=lambda p: p["id"]) == \
        sorted((json.loads(l) for l in lines), key=lambda p: p["id"])
    rejections = rows_of(recipe.run_dir / "rejections.jsonl")
    assert len({r["id"] for r in rejections}) == len(rejections) == full["rejections.jsonl"].count("\n")


def test_a_larger_n_continues_the_same_profiles(tmp_path, seed_file):
    small = recipe_for(tmp_path, seed_file, expand=False, n=5)
    run_stage(small)
    first = rows_of(small.run_dir / "profiles.jsonl")
    run_stage(recipe_for(tmp_path, seed_file, expand=False, n=9))
    after = rows_of(small.run_dir / "profiles.jsonl")
    assert len(after) == 9 and after[:5] == first


def test_a_changed_config_needs_force(tmp_path, seed_file):
    run_stage(recipe_for(tmp_path, seed_file, expand=False))
    changed = recipe_for(tmp_path, seed_file, expand=False, k=4)
    with pytest.raises(UserError, match="personas.k: 3 -> 4.*--force"):
        run_stage(changed)
    run_stage(changed, force=True)
    assert all(len(p["attribute_ids"]) == 4 for p in rows_of(changed.run_dir / "profiles.jsonl"))


# --- seed files -------------------------------------------------------------------------------

def test_seed_files_in_every_shape(tmp_path):
    (tmp_path / "a.csv").write_text('id,attribute\n1,"I have two dogs."\n2,I am a nurse\n')
    (tmp_path / "b.jsonl").write_text('"I have two dogs."\n{"text": "I am a nurse."}\n\n'
                                      '{"user1_persona": ["I sing."], "user2_persona": ["I m tall."]}\n')
    assert read_seed_file(tmp_path / "a.csv", "attribute") == ["I have two dogs.", "I am a nurse"]
    assert read_seed_file(tmp_path / "b.jsonl") == ["I have two dogs.", "I am a nurse.", "I sing.", "I m tall."]


def test_the_packaged_seed_file_is_the_distinct_spc_persona_sentences():
    path = REPO / "corpora" / "personas" / "seed_attributes.txt"
    texts = path.read_text(encoding="utf-8").splitlines()
    assert texts == load_seed_texts(REPO / "corpora" / "spc" / "train.jsonl.gz", "text", 0, 0)
    assert len(texts) > 4000
    assert len({dedup_key(t) for t in texts}) == len(texts)
    assert all(t == t.strip() and t[-1] in ".!?" for t in texts)


forge = partial(run_forge, process=True)  # a fresh process: the models load there, not here


@pytest.mark.parametrize("name,content,column,message", [
    ("missing.txt", None, None, "missing.txt: seed file not found"),
    ("empty.txt", "\n  \n", None, "empty.txt: no seed attributes in it"),
    ("bad.csv", "id,persona\n1,I sing.\n", None, "bad.csv: no column 'text' (columns: 'id', 'persona'); "
                                                 "pass --column NAME"),
    ("bad.jsonl", '"I sing."\n{"text": \n', None, "bad.jsonl:2: not valid JSON"),
    ("keys.jsonl", '{"persona": "I sing."}\n', "attribute", "keys.jsonl:1: no 'attribute' string in this row "
                                                            "(it has: persona)"),
    ("latin1.txt", "I like caf\xe9s.\n".encode("latin-1"), None, "latin1.txt: not UTF-8 text"),
    ("few.txt", "I sing.\nI dance.\n", None, "few.txt: 2 distinct seed attributes, fewer than the 5 a profile needs"),
])
def test_bad_seed_files_are_one_clear_line(tmp_path, name, content, column, message):
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    args = ["--run-dir", str(tmp_path / "run"), "personas", "--no-expand", "--seeds", str(path)]
    if column:
        args += ["--column", column]
    result = forge(*args)
    assert result.returncode == 2
    assert message in one_line_error(result)


# --- the real models --------------------------------------------------------------------------

def real_nli():
    """The embedded NLI (what CI builds once); PERSONA_FORGE_TEST_NLI=FOLDER uses that checkpoint instead."""
    from persona_forge.nli.base import load_nli

    folder = os.environ.get("PERSONA_FORGE_TEST_NLI")
    config = NLIConfig(kind="hf", model=folder, threads=1) if folder else NLIConfig(threads=1)
    return load_nli(config, progress=False)


def nli_sets() -> list[str]:
    folder = os.environ.get("PERSONA_FORGE_TEST_NLI")
    return ["--set", "nli.kind=hf", "--set", f"nli.model={folder}"] if folder else []


@pytest.mark.integration
def test_the_real_nli_rejects_a_contradiction_and_a_redundancy(tmp_path):
    nli = real_nli()
    profile = ["I have two dogs."]
    assert personas.check_candidate(nli, profile, "I do not have any pets.")[0] == "contradiction"
    assert personas.check_candidate(nli, profile, "I own two dogs.")[0] == "redundant"
    # A more general restatement is rejected too; session 6's build calls the reverse direction ("I have
    # pets." -> "I have two dogs.") a contradiction (0.61) rather than neutral, so only the rejection is
    # asserted here (docs/generate.md lists this failure).
    assert personas.check_candidate(nli, profile, "I have pets.")[0] in ("redundant", "contradiction")
    assert personas.check_candidate(nli, profile, "My favorite color is blue.")[0] is None
    # And inside the stage: no profile holds both sides of a contradiction.
    seeds = tmp_path / "seeds.txt"
    seeds.write_text("I have two dogs.\nI do not have any pets.\nMy favorite color is blue.\nI work as a nurse.\n")
    # 12 profiles of 3 from 4: half of them draw both pet sentences (seeded), so the pair is judged.
    recipe = recipe_for(tmp_path, seeds, expand=False, topics=1, n=12, k=3, baseline=0)
    run_stage(recipe, None, nli, fresh_backend=False)
    for profile in rows_of(recipe.run_dir / "profiles.jsonl"):
        assert not {"I have two dogs.", "I do not have any pets."} <= set(profile["attributes"])
    contradictions = [r for r in rows_of(recipe.run_dir / "rejections.jsonl") if r["reason"] == "contradiction"]
    pets = {"I have two dogs.", "I do not have any pets."}
    assert any({r["detail"]["candidate"], r["detail"]["against"]} == pets for r in contradictions)
    assert all(r["detail"]["probability"] > 0.5 for r in contradictions)


@pytest.mark.integration
def test_forge_personas_end_to_end_with_real_embeddings(tmp_path):
    seeds = tmp_path / "seeds.csv"
    seeds.write_text("attribute\n" + "\n".join(f'"{s}"' for s in SEEDS) + "\n")
    env = {"OMP_NUM_THREADS": "1"}
    args = ["--run-dir", str(tmp_path / "run"), "--set", "backend.kind=fake",
            "--set", f"backend.default_reply={EXPANSION_REPLY}", "--set", "personas.topics=3",
            "--set", "personas.questions_per_topic=1", "--set", "personas.requests_per_question=1",
            "--set", "personas.threads=1", "--set", "nli.threads=1", *nli_sets(),
            "personas", "--n", "6", "--seeds", str(seeds), "--column", "attribute"]
    result = forge(*args, env=env)
    assert result.returncode == 0, result.stderr
    assert "forge personas" in result.stderr and "contradiction rate, built profiles" in result.stderr
    profiles = rows_of(tmp_path / "run" / "profiles.jsonl")
    assert len(profiles) == 6 and all(len(p["attributes"]) == 5 for p in profiles)
    expanded = [a for a in rows_of(tmp_path / "run" / "attributes.jsonl") if a["source"] == "expanded"]
    assert {a["text"] for a in expanded} <= set(EXPANSION_REPLY_TEXTS) and expanded
    again = forge(*args, env=env)
    assert again.returncode == 0, again.stderr
    assert len(rows_of(tmp_path / "run" / "profiles.jsonl")) == 6


def test_nli_identity_holds_precision_and_trace():
    """A resumed run must not mix bf16 and float32 (or traced and eager) judgements: both are in the
    identity that every NLI-using stage hashes into its config."""
    from persona_forge.nli.base import identity

    fp32, bf16 = identity(NLIConfig(kind="hf", model="m", precision="fp32")), identity(
        NLIConfig(kind="hf", model="m", precision="bf16"))
    assert (fp32["precision"], bf16["precision"]) == ("fp32", "bf16")
    eager = identity(NLIConfig(kind="hf", model="m", precision="fp32", trace=False))
    assert fp32["trace"] is True and eager["trace"] is False
    assert "precision" not in identity(NLIConfig(kind="llm"))
