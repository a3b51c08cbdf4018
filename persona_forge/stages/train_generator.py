"""`forge train --method generator`: the persona agent of generate's `turns` mode, learned from seed
conversations (LoRA SFT through train.py's SFT path).

In:  conversations in the Synthetic-Persona-Chat shape (user1_persona, user2_persona, turns), or
     Dialogue records such as a run's best.jsonl (train.data; default the packaged SPC train split).
Out: SFT rows {"prompt": messages, "completion": [the reply]}: for a turn of a conversation, the
     request generate sends its speaker (samples.turn_messages: prompts/generate/turn.j2 with the
     speaker's own persona, then the conversation so far), and the turn that speaker really said.

Which turns: those of the conversation's alternating opening stretch (user1 first, as generate's
agents speak) before `max_turns`, whose text holds no template placeholder ("[user 1's name]", "(user 2 name)");
`samples` of them drawn at random (seeded by train.seed) from the whole file. Like generate's
requests, a row shows its speaker the persona sentence that has most words in common with the other
user's persona (generate: pairing's shared topic), and with probability `example_share` another
conversation of the file, cut to `example_turns`, as the example (generate: one example whenever
generate.examples > 0).
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..config import GeneratorTrainSettings
from ..corpora import load_conversations, spc_file
from ..errors import UserError
from ..prompts import PromptLibrary
from ..samples import turn_messages
from ..schema import Dialogue, Turn, record_id

# "[user 1's name]", "(user 2 name)": SPC's writers left names as template slots
PLACEHOLDER = re.compile(r"\[[^\]]*\]|\([^)]*\b(?:user|name)\b[^)]*\)", re.IGNORECASE)
_STOP = {"i", "a", "an", "the", "am", "is", "are", "was", "my", "me", "to", "and", "of", "in", "on", "at", "for",
         "have", "has", "do", "not", "like", "love", "with", "it", "be", "very", "m", "s", "t", "don", "one"}


def default_data() -> Path:
    return spc_file("train")


@dataclass(frozen=True)
class GeneratorSample:
    """One training row and where it came from."""

    conversation: str
    position: int
    speaker: str
    topic: str | None
    example: str | None                  # the example conversation's id
    messages: list[dict[str, str]]       # what generate's turns mode sends the speaker
    target: str

    def row(self) -> dict[str, list[dict[str, str]]]:
        return {"prompt": self.messages, "completion": [{"role": "assistant", "content": self.target}]}


def alternating(turns: Sequence[Turn]) -> list[Turn]:
    """The opening stretch in which user1 and user2 take turns, user1 first (how generate's agents speak)."""
    out: list[Turn] = []
    for turn in turns:
        if turn.speaker != ("user1" if len(out) % 2 == 0 else "user2") or not turn.text.strip():
            break
        out.append(turn)
    return out


def _content(sentence: str) -> set[str]:
    return {w for w in re.findall(r"[a-z]+", sentence.lower()) if w not in _STOP and len(w) > 2}


def shared_topic(persona: Sequence[str], other: Sequence[str]) -> str | None:
    """The speaker's sentence with most content words in common with the other persona (ties: the
    first); None when no sentence shares one."""
    theirs = set().union(*(_content(s) for s in other)) if other else set()
    best, count = None, 0
    for sentence in persona:
        n = len(_content(sentence) & theirs)
        if n > count:
            best, count = sentence, n
    return best


def build_samples(dialogues: Sequence[Dialogue], settings: GeneratorTrainSettings, seed: int,
                  prompts: PromptLibrary | None = None) -> list[GeneratorSample]:
    """The generator's training rows (see the module docstring), in a seeded order."""
    usable = [(d, alternating(d.turns)) for d in dialogues]
    usable = [(d, turns) for d, turns in usable if turns]
    positions = [(i, t) for i, (_, turns) in enumerate(usable) for t in range(min(len(turns), settings.max_turns))
                 if not PLACEHOLDER.search(turns[t].text)]
    rng = random.Random(seed)
    if settings.samples and settings.samples < len(positions):
        positions = rng.sample(positions, settings.samples)
    else:
        rng.shuffle(positions)
    out = []
    for i, t in positions:
        dialogue, turns = usable[i]
        speaker = turns[t].speaker
        persona, other = ((dialogue.user1_persona, dialogue.user2_persona) if speaker == "user1"
                          else (dialogue.user2_persona, dialogue.user1_persona))
        topic = shared_topic(persona, other)
        pick = random.Random(record_id("generator-example", dialogue.id, t, seed))
        example, example_id = None, None
        if len(usable) > 1 and pick.random() < settings.example_share:
            j = pick.randrange(len(usable) - 1)
            j += j >= i  # never the conversation itself
            example_id = usable[j][0].id
            example = list(usable[j][0].turns[: settings.example_turns])
        messages = turn_messages(persona, turns[:t], speaker, topic, example, prompts)
        out.append(GeneratorSample(dialogue.id, t, speaker, topic, example_id, messages, turns[t].text))
    return out


def read_rows(path: Path, settings: GeneratorTrainSettings, seed: int,
              prompts: PromptLibrary | None = None) -> list[dict[str, list[dict[str, str]]]]:
    """train.py's SFT rows from a conversations file; a file with no usable turn is a UserError."""
    samples = build_samples(load_conversations(path).dialogues, settings, seed, prompts)
    if not samples:
        raise UserError(f"{path}: no usable turns for a generator (conversations whose turns alternate from "
                        "user1, without placeholders like [user 1's name]); give SPC-shaped conversations with --data")
    return [s.row() for s in samples]
