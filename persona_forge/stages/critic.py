"""The critic of `forge generate`: several experts score each candidate conversation, and one
weighted score with hard filters picks the best (the paper's "Critic" as a mixture of experts).

Experts, each score stored on the candidate:
- faithfulness (NLI): every utterance against each sentence of its own speaker's persona
  (premise = persona sentence, hypothesis = utterance, the direction the embedded NLI was trained
  in). `contradiction` is the worst utterance's contradiction probability, `contradicted` how many
  utterances exceed the threshold; `coverage` the share of each speaker's sentences entailed by
  something that speaker says, averaged over the two speakers. An alarm on an utterance that
  restates another of the speaker's sentences is not counted when the NLI finds those two
  sentences at odds as well (`persona_conflicts`: the persona's conflict, not the conversation's),
  and an alarm on an utterance of several sentences counts only when one of its sentences
  contradicts too (`replyscore.confirm_by_sentence`, with `by_sentence`).
- quality (LLM judge): the rubric in prompts/generate/judge.j2, four 1-5 scores.
- safety: the judge's "unsafe" answer, and an offline word-list backstop that works without it.
- form: turn count, alternation, distinct bigrams, repeated turns, and the bigram overlap with the
  pair's other candidates (a generator that writes one conversation three times is not sampling).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

from .. import replyscore
from ..config import CriticConfig
from ..errors import UserError
from ..nli.labels import CONTRADICTION, ENTAILMENT
from ..resources import data_dir
from ..rubric import CONVERSATION
from ..schema import Turn
from ..transcript import format_transcript

RUBRIC = CONVERSATION.keys
JUDGE_PROMPT = "generate/judge"


@dataclass
class Candidate:
    """A conversation being judged: its speakers' personas and turns, and the scores so far."""

    key: str
    user1: list[str]
    user2: list[str]
    turns: list[Turn]
    scores: dict[str, float | None] = field(default_factory=dict)
    reasons: dict[str, str] = field(default_factory=dict)

    def persona(self, speaker: str) -> list[str]:
        return self.user1 if speaker == "user1" else self.user2


# --- faithfulness and coverage (NLI) ---------------------------------------------------------

def nli_pairs(candidate: Candidate) -> list[tuple[int, int, str, str]]:
    """(turn index, persona sentence index, sentence, utterance) for every utterance and every
    sentence of its own speaker's persona."""
    pairs = []
    for t, turn in enumerate(candidate.turns):
        for a, attribute in enumerate(candidate.persona(turn.speaker)):
            pairs.append((t, a, attribute, turn.text))
    return pairs


def score_faithfulness(candidates: Sequence[Candidate], nli, cfg: CriticConfig,
                       embed: Callable[[list[str]], np.ndarray] | None = None) -> dict[str, int]:
    """Fill contradiction, contradicted and coverage for every candidate; one NLI batch for all.

    With `cfg.prefilter` > 0, pairs whose sentence and utterance embed further apart than that are
    not sent to the NLI and count as neutral (a retrieve-then-check speed-up; its cost in missed
    contradictions is measured in bench/generate.py). Returns how many pairs were checked/skipped,
    and how many distinct pairs the NLI judged.
    """
    per_candidate = [nli_pairs(c) for c in candidates]
    flat = [(i, t, a, premise, hypothesis) for i, pairs in enumerate(per_candidate)
            for t, a, premise, hypothesis in pairs]
    keep = np.ones(len(flat), dtype=bool)
    if cfg.prefilter > 0 and flat and embed is not None:
        keep = _related(flat, embed, cfg.prefilter)
    probs = np.zeros((len(flat), 3), dtype=np.float32)
    probs[:, 1] = 1.0  # skipped pairs: neutral
    chosen = np.flatnonzero(keep)
    # Each distinct (attribute, utterance) pair is judged once: a pair's candidates share their
    # personas, and greetings and stock replies recur across them.
    distinct = {(flat[j][3], flat[j][4]): None for j in chosen}
    checked_by_sentence = 0
    if distinct:
        judged = dict(zip(distinct, nli.predict(list(distinct))))
        if cfg.by_sentence:
            checked_by_sentence = replyscore.confirm_by_sentence(judged, nli, cfg.contradiction)
        for j in chosen:
            probs[j] = judged[(flat[j][3], flat[j][4])]
    bounds = np.cumsum([0] + [len(pairs) for pairs in per_candidate])
    blocks = [probs[bounds[i]:bounds[i + 1]] for i in range(len(per_candidate))]
    alarms = [list(_restating_alarms(pairs, block, cfg)) for pairs, block in zip(per_candidate, blocks)]
    persona_odds = _persona_odds(alarms, nli)
    for candidate, pairs, block, found in zip(candidates, per_candidate, blocks, alarms):
        excused: dict[int, str] = {}
        for k, attribute, other in found:
            if k not in excused and persona_odds[(attribute, other)] > cfg.contradiction:
                excused[k] = other
        _fill_faithfulness(candidate, pairs, block, cfg, excused)
    return {"nli_pairs": int(keep.sum()), "nli_pairs_skipped": int((~keep).sum()), "nli_pairs_judged": len(distinct),
            "persona_pairs_judged": len(persona_odds), "sentence_pairs_judged": checked_by_sentence}


def _persona_odds(alarms: list[list[tuple[int, str, str]]], nli) -> dict[tuple[str, str], float]:
    """Contradiction between two sentences of one persona, for the alarms it could explain.

    An utterance that restates one of its speaker's own sentences (entails it) says nothing the
    persona does not: if it "contradicts" another of their sentences, the NLI finds the persona at
    odds with itself (a profile is checked consistent when it is built, so that is usually an NLI
    false alarm: "I am a homebody." vs "I do not like exercise."), not the conversation unfaithful.
    Only those (sentence, restated sentence) pairs are sent to the NLI, in one small batch.
    """
    wanted = list({(attribute, other): None for found in alarms for _, attribute, other in found})
    if not wanted:
        return {}
    return {key: float(row[CONTRADICTION]) for key, row in zip(wanted, nli.predict(wanted))}


def _restating_alarms(pairs: list[tuple[int, int, str, str]], probs: np.ndarray, cfg: CriticConfig):
    """(k, contradicted sentence, a sentence the same utterance restates) for every alarm k whose
    utterance entails another sentence of its speaker."""
    restates: dict[int, list[str]] = {}
    for (t, _, attribute, _), row in zip(pairs, probs):
        if row[ENTAILMENT] > cfg.entailment:
            restates.setdefault(t, []).append(attribute)
    for k, ((t, _, attribute, _), row) in enumerate(zip(pairs, probs)):
        if row[CONTRADICTION] > cfg.contradiction:
            for other in restates.get(t, []):
                if other != attribute:
                    yield k, attribute, other


def _related(flat: list[tuple], embed: Callable[[list[str]], np.ndarray], floor: float) -> np.ndarray:
    texts = sorted({row[3] for row in flat} | {row[4] for row in flat})
    index = {text: k for k, text in enumerate(texts)}
    vectors = embed(texts)
    left = vectors[[index[row[3]] for row in flat]]
    right = vectors[[index[row[4]] for row in flat]]
    return np.einsum("ij,ij->i", left, right) >= floor


def _fill_faithfulness(candidate: Candidate, pairs: list[tuple[int, int, str, str]], probs: np.ndarray,
                       cfg: CriticConfig, excused: dict[int, str]) -> None:
    """Scores from the NLI rows; `excused` (row -> the sentence its utterance restates) are alarms
    the persona itself explains, kept out of the contradiction scores."""
    worst_per_turn = np.zeros(len(candidate.turns), dtype=np.float32)
    covered = {"user1": np.zeros(len(candidate.user1), bool), "user2": np.zeros(len(candidate.user2), bool)}
    worst_pair = None
    for k, ((t, a, attribute, utterance), row) in enumerate(zip(pairs, probs)):
        contradiction = 0.0 if k in excused else row[CONTRADICTION]
        if contradiction > worst_per_turn[t]:
            worst_per_turn[t] = contradiction
            if worst_pair is None or contradiction > worst_pair[0]:
                worst_pair = (float(contradiction), attribute, utterance)
        if row[ENTAILMENT] > cfg.entailment:
            covered[candidate.turns[t].speaker][a] = True
    if excused:
        candidate.scores["persona_conflicts"] = float(len(excused))
        k = min(excused)
        candidate.reasons["persona_conflict"] = (f'"{pairs[k][3]}" restates "{excused[k]}", which the NLI finds at '
                                                 f'odds with "{pairs[k][2]}" in the same persona: not counted')
    candidate.scores["contradiction"] = round(float(worst_per_turn.max(initial=0.0)), 4)
    candidate.scores["contradicted"] = float((worst_per_turn > cfg.contradiction).sum())
    shares = [float(c.mean()) for c in covered.values() if len(c)]
    candidate.scores["coverage"] = round(float(np.mean(shares)), 4) if shares else 0.0
    if worst_pair and worst_pair[0] > cfg.contradiction:
        candidate.reasons["contradiction"] = f'"{worst_pair[2]}" vs persona "{worst_pair[1]}" ({worst_pair[0]:.2f})'


# --- quality and the safety question (LLM judge) -----------------------------------------------

def judge_request(candidate: Candidate, prompts, cfg: CriticConfig):
    """The quality question: the rubric of rubric.CONVERSATION, with its JSON schema for endpoints
    that take structured outputs."""
    from ..backends import ChatRequest

    rendered = prompts.render(JUDGE_PROMPT, user1=candidate.user1, user2=candidate.user2,
                              transcript=format_transcript(candidate.turns), **CONVERSATION.variables())
    return ChatRequest.of(rendered.messages, json=True, temperature=0.0, max_tokens=cfg.judge_max_tokens,
                          schema=CONVERSATION.response_format())


def read_judgement(candidate: Candidate, completion) -> None:
    """Rubric scores from the judge's JSON (rubric.CONVERSATION.parse: one score rule for every
    judge); a missing or unreadable answer leaves quality unset (the combined score then weighs
    the other experts), never a guessed number."""
    parsed = completion.parsed if completion is not None and completion.ok else None
    read = CONVERSATION.parse(parsed) if isinstance(parsed, dict) else None
    scores = []
    if read is not None:
        for name in RUBRIC:
            value = read.scores[name]
            if value is not None:
                candidate.scores[name] = float(value)
                scores.append(float(value))
                if read.reasons.get(name):
                    candidate.reasons[name] = read.reasons[name].strip()[:300]
        if "unsafe" in read.flags:
            candidate.scores["judge_unsafe"] = float(read.flags["unsafe"])
            if read.flag_reasons.get("unsafe"):
                candidate.reasons["unsafe"] = read.flag_reasons["unsafe"][:300]
    if scores:
        candidate.scores["quality"] = round((float(np.mean(scores)) - 1) / 4, 4)
    else:
        candidate.scores["quality"] = None
        error = completion.error or completion.parse_error if completion is not None else "not asked"
        candidate.reasons["quality"] = f"judge answer unreadable: {error or 'no rubric scores in it'}"[:300]


# --- safety backstop ------------------------------------------------------------------------

@lru_cache(maxsize=8)
def blocklist(extra: Path | None = None) -> re.Pattern:
    lines = _pattern_lines(data_dir("corpora") / "safety" / "blocklist.txt")
    if extra is not None:
        lines += _pattern_lines(Path(extra))
    parts = [re.escape(p).replace(r"\*", r"[a-z]*").replace(r"\ ", r"\s+") for p in lines]
    return re.compile(r"(?<![a-z])(?:" + "|".join(parts) + r")(?![a-z])", re.IGNORECASE)


def _pattern_lines(path: Path) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise UserError(f"{path}: cannot read the safety word list ({exc.strerror}); fix "
                        "generate.critic.blocklist") from None
    return [line.strip().lower() for line in text.splitlines() if line.strip() and not line.startswith("#")]


def score_safety(candidate: Candidate, pattern: re.Pattern) -> None:
    hits = sorted({m.group(0).lower() for t in candidate.turns for m in pattern.finditer(t.text)})
    candidate.scores["blocklist_hits"] = float(len(hits))
    if hits:
        candidate.reasons["blocklist"] = ", ".join(hits)[:200]
    unsafe = bool(hits) or candidate.scores.get("judge_unsafe") == 1.0
    candidate.scores["unsafe"] = float(unsafe)


# --- form -----------------------------------------------------------------------------------

def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9']+", text.lower())


def _bigrams(turns: Sequence[Turn]) -> set[tuple[str, str]]:
    grams = set()
    for turn in turns:
        words = _words(turn.text)
        grams.update(zip(words, words[1:]))
    return grams


def score_form(candidate: Candidate, siblings: Sequence[Candidate], min_turns: int, max_turns: int) -> None:
    turns = candidate.turns
    n = len(turns)
    switches = sum(a.speaker != b.speaker for a, b in zip(turns, turns[1:]))
    alternation = switches / (n - 1) if n > 1 else 0.0
    words = [w for t in turns for w in _words(t.text)]
    all_bigrams = list(zip(words, words[1:]))
    distinct2 = len(set(all_bigrams)) / len(all_bigrams) if all_bigrams else 0.0
    texts = [t.text.strip().lower() for t in turns]
    repeated = (len(texts) - len(set(texts))) / len(texts) if texts else 0.0
    mine = _bigrams(turns)
    overlap = max((_jaccard(mine, _bigrams(s.turns)) for s in siblings if s is not candidate), default=0.0)
    length_ok = float(min_turns <= n <= max_turns)
    candidate.scores.update(turns=float(n), alternation=round(alternation, 4), distinct2=round(distinct2, 4),
                            repeated=round(repeated, 4), sibling_overlap=round(overlap, 4))
    candidate.scores["form"] = round((length_ok + alternation + distinct2 + (1 - repeated) + (1 - overlap)) / 5, 4)


def _jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a | b else 0.0


# --- combined score and hard filters ----------------------------------------------------------

def combine(candidate: Candidate, cfg: CriticConfig) -> None:
    """The weighted score in [0, 1]; an expert with no score (the judge off or unreadable) is left
    out and the other weights renormalised."""
    w = cfg.weights
    parts = {"faithfulness": 1 - (candidate.scores.get("contradiction") or 0.0),
             "coverage": candidate.scores.get("coverage"), "quality": candidate.scores.get("quality"),
             "form": candidate.scores.get("form")}
    weights = {"faithfulness": w.faithfulness, "coverage": w.coverage, "quality": w.quality, "form": w.form}
    total = sum(weights[k] for k, v in parts.items() if v is not None)
    score = sum(weights[k] * v for k, v in parts.items() if v is not None) / total if total else 0.0
    candidate.scores["critic"] = round(score, 4)
