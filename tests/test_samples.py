"""The shared next-reply sample shape (training, evaluation and chat all use it)."""

from persona_forge.samples import next_reply, reply_messages
from persona_forge.schema import Turn

PERSONA = ["I have two dogs.", "I live in Ohio."]
TURNS = [Turn(speaker="user1" if i % 2 == 0 else "user2", text=f"t{i + 1}") for i in range(10)]

SYSTEM = ("You are a person chatting with someone you have just met. Stay in character; this is who you are:\n"
          "- I have two dogs.\n- I live in Ohio.\nReply with one short, natural message, as this person would.")


def test_study_sample_is_turn_eight_after_six_of_context():
    messages, target = next_reply(PERSONA, TURNS, position=7, context=6)
    assert target == "t8"
    assert [(m.role, m.content) for m in messages] == [
        ("system", SYSTEM),
        ("user", "t1"), ("assistant", "t2"), ("user", "t3"), ("assistant", "t4"),
        ("user", "t5"), ("assistant", "t6"), ("user", "t7"),
    ]


def test_context_window_slides_and_replier_can_be_user1():
    messages, target = next_reply(PERSONA, TURNS, position=8, context=2)
    assert target == "t9"
    assert [(m.role, m.content) for m in messages[1:]] == [("user", "t6"), ("assistant", "t7"), ("user", "t8")]


def test_no_sample_without_a_prompt_turn_or_target():
    assert next_reply(PERSONA, TURNS, position=0) is None
    assert next_reply(PERSONA, TURNS, position=10) is None
    same = [Turn(speaker="user1", text="a"), Turn(speaker="user1", text="b")]
    assert next_reply(PERSONA, same, position=1) is None


def test_consecutive_turns_by_one_speaker_are_joined():
    history = [Turn(speaker="user1", text="a"), Turn(speaker="user1", text="b"), Turn(speaker="user2", text="c"),
               Turn(speaker="user1", text="d")]
    messages = reply_messages(PERSONA, history, "user2")
    assert [(m.role, m.content) for m in messages[1:]] == [("user", "a\nb"), ("assistant", "c"), ("user", "d")]
