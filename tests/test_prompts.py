"""Prompt templates: exact rendering, strict variables, message sections, hashes."""

from __future__ import annotations

import pytest

from persona_forge.errors import UserError
from persona_forge.prompts import PromptLibrary, render, split_messages


def test_nli_judge_prompt_renders_exactly():
    rendered = render("nli/judge", premise="I have two dogs.", hypothesis="I have no pets.")
    assert rendered.messages == (
        {"role": "system", "content": "You judge natural language inference between two statements made by the "
                                      "same person. Answer with one JSON object and nothing else."},
        {"role": "user", "content": (
            "Premise (known to be true of the person): I have two dogs.\n"
            "Hypothesis (something the same person says or is said to be): I have no pets.\n\n"
            "Does the premise make the hypothesis true (entailment), make it impossible for the same person at "
            "the same time (contradiction), or neither (neutral)?\n"
            'Reply as JSON: {"label": "entailment" | "neutral" | "contradiction", "confidence": a number from 0 to 1}')},
    )
    assert rendered.ref.name == "nli/judge" and len(rendered.ref.hash) == 16


def test_missing_variable_is_a_clear_error():
    with pytest.raises(UserError, match="prompt 'nli/judge'.*'hypothesis' is undefined"):
        render("nli/judge", premise="x")


def test_unknown_prompt_names_where_it_looked():
    with pytest.raises(UserError, match="prompt 'nope/none' not found"):
        render("nope/none")


def test_user_folder_overrides_builtin_and_changes_the_hash(tmp_path):
    (tmp_path / "nli").mkdir()
    (tmp_path / "nli" / "judge.j2").write_text("Is {{ premise }} -> {{ hypothesis }}?")
    mine = PromptLibrary(tmp_path).render("nli/judge", premise="a", hypothesis="b")
    assert mine.messages == ({"role": "user", "content": "Is a -> b?"},)
    assert mine.ref.hash != render("nli/judge", premise="a", hypothesis="b").ref.hash


def test_sections_split_into_messages_and_text_before_them_is_refused():
    assert split_messages("### system\nS\n### user\nU\n### assistant\nA") == (
        {"role": "system", "content": "S"}, {"role": "user", "content": "U"}, {"role": "assistant", "content": "A"})
    with pytest.raises(UserError):
        split_messages("stray\n### user\nU")
