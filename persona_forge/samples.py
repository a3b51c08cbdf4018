"""The one shape of a persona-chat exchange as chat messages: the replying user's persona as the
system prompt, the conversation so far as alternating turns (the replier's own turns as
`assistant`, the other user's as `user`), ending on the other user's turn.

Training samples (forge curate), evaluation prompts (forge eval), the generator's `turns` mode and
`forge chat` all build their messages here, so a model is trained and tested on the same form.
`turn_messages` is the persona agent's request in `turns` mode (prompts/generate/turn.j2 then the
conversation): forge generate sends it, and `forge train --method generator` trains on it.
"""

from __future__ import annotations

from collections.abc import Sequence

from .prompts import PromptLibrary, library
from .schema import ChatMessage, Turn, record_id
from .transcript import format_transcript

SYSTEM_PROMPT = "samples/persona_system"
MEMORY_BLOCK = "memory/block"
TURN_PROMPT = "generate/turn"


def persona_system(persona: Sequence[str], prompts: PromptLibrary | None = None,
                   memory: Sequence[str] = ()) -> ChatMessage:
    """The persona system prompt; with `memory` (lines about the other user, see persona_forge.memory)
    the memory block follows it, after a blank line. Without memory it is exactly the training form."""
    prompts = prompts or library()
    message = dict(prompts.render(SYSTEM_PROMPT, persona=list(persona)).messages[0])
    if memory:
        block = prompts.render(MEMORY_BLOCK, facts=list(memory)).messages[0]["content"]
        message["content"] = f"{message['content']}\n\n{block}"
    return ChatMessage(**message)


def reply_messages(persona: Sequence[str], history: Sequence[Turn], replier: str,
                   prompts: PromptLibrary | None = None, memory: Sequence[str] = ()) -> list[ChatMessage]:
    """Messages asking `replier` ("user1" or "user2") for their next turn after `history`.

    Consecutive turns by one speaker (a parse artefact) are joined, so roles always alternate.
    `memory`: lines of the memory block placed in the system prompt (none by default).
    """
    return [persona_system(persona, prompts, memory), *history_messages(history, replier)]


def history_messages(history: Sequence[Turn], replier: str) -> list[ChatMessage]:
    """The conversation so far as chat turns: `replier`'s own lines as assistant, the other user's as
    user; consecutive lines of one speaker joined by a newline."""
    messages: list[ChatMessage] = []
    for turn in history:
        role = "assistant" if turn.speaker == replier else "user"
        if messages and messages[-1].role == role:
            messages[-1] = ChatMessage(role=role, content=f"{messages[-1].content}\n{turn.text}")
        else:
            messages.append(ChatMessage(role=role, content=turn.text))
    return messages


def turn_messages(persona: Sequence[str], history: Sequence[Turn], speaker: str, topic: str | None = None,
                  example: Sequence[Turn] | None = None,
                  prompts: PromptLibrary | None = None) -> list[dict[str, str]]:
    """The persona agent's request in generate's `turns` mode: prompts/generate/turn.j2 (its persona,
    the `topic` it may share with the other user, an `example` conversation, already cut to length;
    user1 is told to open), then the conversation so far. `forge train --method generator` builds its
    samples here too, so the generator adapter learns exactly the requests it will be sent."""
    prompts = prompts or library()
    rendered = prompts.render(TURN_PROMPT, persona=list(persona), topic=topic,
                              example=format_transcript(example) if example else None,
                              opening=speaker == "user1")
    return [*rendered.messages, *(m.model_dump() for m in history_messages(history, speaker))]


def next_reply(persona: Sequence[str], turns: Sequence[Turn], position: int, context: int = 6,
               prompts: PromptLibrary | None = None) -> tuple[list[ChatMessage], str] | None:
    """(messages, target) for the reply at turns[position], with up to `context` earlier turns and
    the other user's turn before it as the prompt. The study's sample is position 7 (0-based) with
    context 6: turns 1-6 as context, turn 7 as the prompt, turn 8 as the target.

    None when there is no such sample (too early, the turn before is by the same speaker, or the
    target is empty).
    """
    if position < 1 or position >= len(turns):
        return None
    target, prompt_turn = turns[position], turns[position - 1]
    if prompt_turn.speaker == target.speaker or not target.text.strip():
        return None
    start = max(0, position - 1 - context)
    history = list(turns[start:position])
    return reply_messages(persona, history, target.speaker, prompts), target.text


def sample_id(dialogue_id: str, kind: str, position: int) -> str:
    """A training sample's stable id: the dialogue, the kind and the target's position determine it
    (forge curate's Sample ids and forge score's records share it, so a score finds its sample)."""
    return record_id("sample", dialogue_id, kind, position)


def reply_positions(turns: Sequence[Turn], positions: str, position: int) -> list[int]:
    """Which replies of a conversation are next-reply samples: every reply to the other user's turn
    ("all"), or ("study") the one at `position`, or the last such reply before it when the
    conversation is shorter (see forge curate's docs for why one per conversation)."""
    valid = [p for p in range(1, len(turns)) if turns[p].speaker != turns[p - 1].speaker and turns[p].text.strip()]
    if positions == "all":
        return valid
    upto = [p for p in valid if p <= position]
    return [upto[-1]] if upto else []
