"""Huge or empty text: refused, or left out, with one line (persona_forge/limits.py, README "Limits")."""

from __future__ import annotations

import json

import pytest

from persona_forge.errors import UserError
from persona_forge.limits import MAX_ATTRIBUTE_CHARS
from persona_forge.schema import Profile
from persona_forge.stages.complete import load_prompts
from persona_forge.stages.persona_expand import load_seed_texts
from persona_forge.store import read_jsonl
from test_cli import forge, one_line_error


@pytest.mark.parametrize("row, says", [
    ({"messages": []}, '"messages" is empty'),
    ({"messages": [{"role": "user", "content": "   "}]}, '"messages" is empty'),
    ({"id": None, "prompt": "hi"}, '"id" must be a non-empty string or a number, not null'),
    ({"id": "", "prompt": "hi"}, '"id" must be a non-empty string or a number, not ""'),
    ({"id": {"a": 1}, "prompt": "hi"}, '"id" must be a non-empty string or a number'),
])
def test_empty_messages_and_unusable_ids_are_refused(tmp_path, row, says):
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps(row) + "\n")
    with pytest.raises(UserError, match=f"p.jsonl:1: {says}".replace("(", r"\(").replace("{", r"\{")):
        load_prompts(path, 0)


def test_numeric_ids_are_kept_as_text(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"id": 7, "prompt": "hi"}\n')
    assert load_prompts(path, 0)[0][0] == "7"


def test_a_huge_seed_line_is_left_out_with_one_warning(tmp_path, capsys):
    seeds = tmp_path / "seeds.txt"
    seeds.write_text("I have two dogs.\n" + "x" * 1_000_000 + "\nI like tea.\n" + "y " * 400 + "\n")
    texts = load_seed_texts(seeds, "text", 0, 0)
    assert texts == ["I have two dogs.", "I like tea."]
    err = " ".join(capsys.readouterr().err.split())  # rich wraps at the test's 80 columns
    assert err.count("warning") == 1 and "left out 2 line(s) longer than 300 characters" in err


@pytest.mark.parametrize("attributes, says", [(["I have a dog.", ""], "attribute 2 is empty"),
                                              (["   ", "I have a dog."], "attribute 1 is empty"),
                                              (["z" * (MAX_ATTRIBUTE_CHARS + 1)], "more than 300")])
def test_profiles_with_blank_or_huge_attributes_are_refused_by_file_and_line(tmp_path, attributes, says):
    path = tmp_path / "profiles.jsonl"
    path.write_text(json.dumps({"id": "p1", "attribute_ids": ["a"] * len(attributes), "attributes": attributes})
                    + "\n")
    with pytest.raises(UserError, match=f"profiles.jsonl:1: not a Profile record: attributes: .*{says}"):
        read_jsonl(path, Profile)


def test_nli_check_of_empty_text_is_one_line():
    result = forge("nli", "check", "", "I have no pets.")
    assert result.returncode == 2
    assert one_line_error(result).startswith("forge: error: PREMISE is empty")
    huge = forge("nli", "check", "I have a dog.", "x" * 3000)
    assert huge.returncode == 2 and "HYPOTHESIS is 3,000 characters" in one_line_error(huge)


def test_chat_refuses_a_huge_persona_before_loading_a_model(tmp_path):
    big = tmp_path / "big.txt"
    big.write_text("I have a dog.\n" * 10_000)
    result = forge("chat", "--persona", str(big))
    assert result.returncode == 2 and "more than the 65,536 a persona may have" in one_line_error(result)
    many = tmp_path / "many.txt"
    many.write_text("".join(f"I have {i} dogs.\n" for i in range(40)))
    result = forge("chat", "--persona", str(many))
    assert result.returncode == 2 and "40 persona attributes, more than 30" in one_line_error(result)


def test_a_huge_sentence_in_a_spc_shaped_file_is_one_line_not_an_internal_error(tmp_path):
    from persona_forge.corpora import _spc_profiles

    row = {"user1_persona": ["I have a dog.", "x" * 1_000_000], "user2_persona": ["I like tea."], "turns": []}
    with pytest.raises(UserError, match=r"spc\.jsonl:1: user1_persona: attribute 2 is 1,000,000 characters"):
        _spc_profiles(tmp_path / "spc.jsonl", iter([(1, row)]))
