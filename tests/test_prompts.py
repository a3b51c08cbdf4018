"""Prompt templates: exact rendering, strict variables, message sections, hashes."""

from __future__ import annotations

import pytest

from persona_forge.errors import UserError
from persona_forge.prompts import PromptLibrary, render, split_messages
from persona_forge.rubric import CONVERSATION


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


# --- the generator's templates (prompts/generate/*.j2), rendered exactly ------------------------------

EXAMPLE = "User 1: Hi!\nUser 2: Hello."


def test_generate_whole_prompt_renders_exactly():
    rendered = render("generate/whole", user1=["I have two dogs.", "I live in Ohio."], user2=["I am a nurse."],
                      topics=[("I have two dogs.", "I am a nurse.")], examples=[EXAMPLE], min_turns=4, max_turns=6)
    assert rendered.messages == (
        {"role": "system", "content": (
            "You write realistic conversations between two people who have just met. Each person speaks only from\n"
            "their own persona and never contradicts it. Write one line per turn, \"User 1: ...\" or \"User 2: ...\",\n"
            "the two taking turns, starting with User 1. Write nothing else.")},
        {"role": "user", "content": (
            "Example conversation 1:\nUser 1: Hi!\nUser 2: Hello.\n\n"
            "User 1's persona:\n- I have two dogs.\n- I live in Ohio.\n"
            "User 2's persona:\n- I am a nurse.\n"
            "Things they have in common to talk about:\n- \"I have two dogs.\" / \"I am a nurse.\"\n"
            "Write a conversation of 4 to 6 turns between User 1 and User 2 in which\n"
            "they get to know each other. Each brings up some of their persona naturally, in their own words, and\n"
            "responds to what the other says.")},
    )


def test_generate_turn_prompt_renders_exactly_opening_and_not():
    opening = render("generate/turn", persona=["I have two dogs.", "I live in Ohio."], topic="I am a nurse.",
                     example=EXAMPLE, opening=True)
    assert opening.messages == (
        {"role": "system", "content": (
            "You are a person chatting with someone you have just met. Stay in character; this is who you are:\n"
            "- I have two dogs.\n- I live in Ohio.\n"
            "Here is how a good conversation between two other people went:\nUser 1: Hi!\nUser 2: Hello.\n\n"
            "You may have this in common with them: \"I am a nurse.\"\n"
            "Reply with one or two short, natural sentences, as this person would. Ask a question sometimes.")},
        {"role": "user", "content": "(You meet someone new. Say hello and start the conversation.)"},
    )
    reply = render("generate/turn", persona=["I have two dogs."], topic=None, example=None, opening=False)
    assert reply.messages == (
        {"role": "system", "content": (
            "You are a person chatting with someone you have just met. Stay in character; this is who you are:\n"
            "- I have two dogs.\n"
            "Reply with one or two short, natural sentences, as this person would. Ask a question sometimes.")},
    )


def test_generate_judge_prompt_renders_exactly():
    # The scale, criteria and answer shape come from rubric.CONVERSATION, exactly as the critic passes them.
    rendered = render("generate/judge", user1=["I have two dogs."], user2=["I am a nurse."], transcript=EXAMPLE,
                      **CONVERSATION.variables())
    assert rendered.messages == (
        {"role": "system", "content": "You are a strict judge of conversations written for a chatbot training set. "
                                      "Answer only with a JSON object."},
        {"role": "user", "content": (
            "User 1's persona:\n- I have two dogs.\nUser 2's persona:\n- I am a nurse.\n\n"
            "Conversation:\nUser 1: Hi!\nUser 2: Hello.\n\n"
            "Rate the conversation from 1 (poor) to 5 (excellent) on each criterion, with a short reason:\n"
            "- coherence: each turn follows from what came before;\n"
            "- engagingness: the two are interested in each other and the talk goes somewhere;\n"
            "- naturalness: it reads like two real people chatting, not a script;\n"
            "- consistency: each speaker stays true to their own persona.\n"
            "Also say whether any turn is unsafe (insults, hate, harassment, sexual content, violence, self-harm).\n"
            "Answer with exactly this JSON shape:\n"
            '{"coherence": {"score": 1, "reason": "..."}, "engagingness": {"score": 1, "reason": "..."}, '
            '"naturalness": {"score": 1, "reason": "..."}, "consistency": {"score": 1, "reason": "..."}, '
            '"unsafe": false, "unsafe_reason": "..."}')},
    )


def test_generate_judge_prompt_refuses_missing_rubric_variables():
    with pytest.raises(UserError, match="'low' is undefined"):
        render("generate/judge", user1=["I have two dogs."], user2=["I am a nurse."], transcript=EXAMPLE)
