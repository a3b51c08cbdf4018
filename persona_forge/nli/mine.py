"""Natural (persona sentence, utterance) pairs mined from Synthetic-Persona-Chat TRAIN conversations.

The critic asks the NLI whether a chat utterance expresses, contradicts or leaves alone one of its
speaker's persona sentences. Template pairs taught it the first only for near-restatements; real
chat paraphrases ("I work as a chef." / "I was in the restaurant kitchen until midnight"), and the
old model called such lines contradictions. Synthetic-Persona-Chat's speakers restate and
paraphrase their personas all the time, so the corpus itself supplies the pairs:

- entailment (`mined_restate`): a speaker's sentence that the packaged sentence encoder puts close
  to one of their own persona sentences (cosine >= ENTAIL_SIM), clearly closer to it than to any
  other of their sentences (margin), agreeing with it in negation, and not a question; the pair is
  (persona sentence, the whole utterance or that sentence);
- contradiction, with the same natural utterances:
  `mined_swap`: the utterance with its exclusive-slot value replaced (job, home, age, a count,
  marital status, a favourite): premise = the speaker's sentence, hypothesis = the changed line;
  `mined_rival`: a sentence of another persona that fills the same exclusive slot differently,
  against the utterance; (`mined_negated`: the persona sentence negated by the rules of
  data.contradictions_of, against the utterance, and `mined_chat_negation`: the utterance with its
  matched sentence negated by those rules, against the persona sentence, are built but left out
  of the build: see CONTRADICTION_SOURCES);
- neutral: the utterance against another sentence of the same persona it is far from
  (`mined_other`; a persona is consistent by construction); the speaker's lines on other topics
  (`mined_unrelated`); the speaker's pure questions (`mined_question`); the partner's lines
  (`mined_partner`), all far from the sentence in the encoder's space and sharing no content word.

Only the train split is read (a test asserts it). Deterministic for a seed on a given machine.
"""

from __future__ import annotations

import random
import re
from collections import defaultdict
from collections.abc import Callable

import numpy as np

from .data import (_PLACES, LABELS, NLIPair, _favorites, _known_place, _same_place, _take, chatify,
                   content_words, contradictions_of, load_spc, normalize)
from .frames import JOBS, NUMBER_WORDS

Embed = Callable[[list[str]], np.ndarray]

ENTAIL_SIM = 0.6        # least cosine between a persona sentence and a sentence that expresses it
ENTAIL_MARGIN = 0.08    # ... and by how much it must beat the speaker's other persona sentences
FAR_SIM = 0.3           # a line this far (or further) from a sentence, sharing no content word, is neutral to it
_NEGATION = re.compile(r"\b(not|no|never|nobody|nothing|none|cannot|can't|don't|doesn't|didn't|isn't|aren't|"
                       r"wasn't|won't|haven't|hasn't|nor|neither|dont|cant|wont|hate|dislike)\b|n't\b", re.I)
_PLACEHOLDER = re.compile(r"\[|participant_|user ?[12]", re.I)
_SENTENCE = re.compile(r"[^.!?]+[.!?]*")
_TOO = re.compile(r"\b(too|also|as well|either)\b", re.I)
_PARTNER = re.compile(r"\b(you|your|you're|youre|yours|u|ur)\b", re.I)
# Which contradiction makers feed the build. Measured in session 6 on 200 SPC train conversations:
# with all four, the critic rejected a third more faithful conversations (0.35 against 0.26). The
# negation makers teach that a chat line with a negation word contradicts ("I don't have much time
# since I work a lot"), and `negated` pairs a negated persona sentence with lines that are only on
# its topic; swaps and rivals change a value the line states, which is what a contradiction is.
CONTRADICTION_SOURCES = ("swap", "rival")

JOB_NOUNS = sorted({job for job, _, _ in JOBS} | {
    "waitress", "waiter", "bartender", "cop", "soldier", "carpenter", "engineer", "programmer", "writer",
    "photographer", "musician", "artist", "scientist", "pharmacist", "janitor", "baker", "hairdresser",
    "hair stylist", "construction worker", "social worker", "real estate agent", "vet", "paramedic",
    "surgeon", "painter", "singer", "actor", "actress", "dancer", "model", "student", "stay at home mom",
    "stay at home dad", "housewife", "secretary", "receptionist", "banker", "salesman", "architect",
    "designer", "editor", "author", "coach", "personal trainer", "fisherman", "butcher", "welder", "mailman",
    "police man", "policeman", "security guard", "flight attendant", "school teacher", "web developer",
    "computer programmer", "graphic designer", "lifeguard", "zookeeper", "psychologist", "therapist",
}, key=lambda s: (-len(s), s))
_MARITAL = ("married", "single", "divorced", "widowed")
_COUNT_NOUNS = ("kids", "children", "sons", "daughters", "brothers", "sisters", "siblings", "dogs", "cats", "pets",
                "horses", "cars", "grandchildren", "grandkids", "tattoos", "birds", "chickens", "kid", "child",
                "son", "daughter", "brother", "sister", "dog", "cat")
_NUMBER_VALUE = {w: i + 1 for i, w in enumerate(NUMBER_WORDS)} | {"a": 1, "an": 1, "seven": 7, "eight": 8,
                                                                     "nine": 9, "ten": 10}


def slot_of(sentence: str) -> tuple[str, str] | None:
    """(slot, value) when `sentence` fills an exclusive slot: one job, one home, one age, a count,
    one marital status, one favourite of a kind. Two persons' values of one slot cannot both hold
    of the same person."""
    low = sentence.lower().rstrip(" .!")
    if m := re.match(r"i (?:work as|am) (?:a|an) (.+?)(?: by (?:profession|trade))?$", low):
        if m.group(1) in JOB_NOUNS:
            return "job", m.group(1)
    if (m := re.match(r"i live in (.+)$", low)) and _known_place(m.group(1)):
        place = next(p for p in sorted(_PLACES, key=len, reverse=True) if m.group(1).startswith(p.lower()))
        return "place", place
    if m := re.match(r"i am (\d{1,2})(?: years old)?$", low):
        return "age", m.group(1)
    if m := re.match(r"i have (one|two|three|four|five|six|seven|eight|nine|ten|\d) (\w+)", low):
        if m.group(2) in _COUNT_NOUNS:
            return "count:" + m.group(2).rstrip("s"), m.group(1)
    if m := re.match(r"i am (married|single|divorced|widowed)\b", low):
        return "marital", m.group(1)
    if m := re.match(r"my favorite (\w+(?: \w+)?) is (.+)$", low):
        return "favorite:" + m.group(1), m.group(2)
    return None


def _rival_values(slot: str, value: str, values_by_slot: dict[str, list[str]]) -> list[str]:
    if slot == "place":
        return [p for p in _PLACES if p.lower() != value.lower() and not _same_place(p, value)]
    if slot == "age":
        n = int(value)
        return [str(k) for k in range(16, 90) if abs(k - n) >= 8]
    if slot.startswith("count:"):
        n = int(value) if value.isdigit() else _NUMBER_VALUE.get(value, 0)
        return [w for w in ("one", "two", "three", "four", "five", "six") if _NUMBER_VALUE[w] != n]
    if slot == "marital":
        return [v for v in _MARITAL if v != value]
    return [v for v in values_by_slot.get(slot, []) if v.lower() != value.lower()]


def swap_value(utterance: str, slot: str, value: str, new: str) -> str | None:
    """The utterance with the slot's value replaced by `new` (articles fixed), or None when the
    value is not said in it as a whole word."""
    pattern = re.compile(r"(?<![\w'])" + re.escape(value) + r"(?![\w'])", re.I)
    if not pattern.search(utterance) or re.search(r"(?<![\w'])" + re.escape(new) + r"(?![\w'])", utterance, re.I):
        return None
    if slot == "job":
        swapped = re.sub(r"\b(a|an) " + re.escape(value) + r"(?![\w'])",
                         lambda m: ("an " if new[0] in "aeiou" else "a ") + new
                         if m.group(1).islower() else ("An " if new[0] in "aeiou" else "A ") + new,
                         utterance, count=1, flags=re.I)
        if swapped == utterance:
            swapped = pattern.sub(new, utterance, count=1)
        return swapped
    if slot.startswith("count:") and value in ("a", "an"):
        return None
    return pattern.sub(lambda m: new.capitalize() if m.group(0)[:1].isupper() else new, utterance, count=1)


def sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE.findall(text) if s.strip()]


def _negated(text: str) -> bool:
    return bool(_NEGATION.search(text))


def _chat_noise(text: str, rng: random.Random) -> str:
    """Lower case, dropped apostrophes and final stops, as people type; applied to every label alike."""
    if rng.random() < 0.3:
        text = text.lower()
    if rng.random() < 0.15:
        text = re.sub(r"\b(I|i|don|can|won|didn|doesn|isn|it|that)'(m|t|s|ve|ll|d)\b", r"\1\2", text)
    if rng.random() < 0.3:
        text = text.rstrip(".")
    return text


def default_embed() -> Embed:
    """The packaged sentence encoder, unit-normalised vectors."""
    from ..models import sentence_transformer

    model = sentence_transformer("packaged:minilm-l6")

    def embed(texts: list[str]) -> np.ndarray:
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        vectors = model.encode([texts[i] for i in order], batch_size=128, normalize_embeddings=True,
                               convert_to_numpy=True, show_progress_bar=False)
        out = np.zeros_like(vectors)
        out[order] = vectors
        return out

    return embed


def mined_pairs(seed: int, conversations: int, per_label: int, embed: Embed | None = None) -> list[NLIPair]:
    """`per_label` pairs of each label mined from `conversations` train conversations drawn with `seed`."""
    pool = load_spc("train")
    rng = random.Random(seed)
    chosen = rng.sample(pool, min(conversations, len(pool)))
    personas = sorted({tuple(normalize(a) for a in c[k]) for c in pool for k in ("user1_persona", "user2_persona")})
    return mine_pairs(chosen, per_label, rng, personas, embed or default_embed())


def mine_pairs(conversations: list[dict], per_label: int, rng: random.Random,
               personas: list[tuple[str, ...]], embed: Embed) -> list[NLIPair]:
    favorites = _favorites(personas)
    values_by_slot: dict[str, set[str]] = defaultdict(set)
    rivals_by_slot: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for sentence in sorted({a for persona in personas for a in persona}):
        if found := slot_of(sentence):
            values_by_slot[found[0]].add(found[1])
            rivals_by_slot[found[0]].append((found[1], sentence))
    values = {k: sorted(v) for k, v in values_by_slot.items()}

    speakers = []  # (persona, own lines, partner lines)
    for conversation in conversations:
        turns = [(t["speaker"], normalize(t["text"])) for t in conversation["turns"]]
        turns = [(s, x) for s, x in turns if x and not _PLACEHOLDER.search(x) and len(x.split()) <= 45]
        for speaker in ("user1", "user2"):
            persona = [normalize(a) for a in conversation[f"{speaker}_persona"]]
            speakers.append((persona, [x for s, x in turns if s == speaker], [x for s, x in turns if s != speaker]))
    texts = sorted({t for persona, own, other in speakers for t in persona}
                   | {s for _, own, other in speakers for line in own + other for s in sentences(line)})
    index = {t: k for k, t in enumerate(texts)}
    vectors = embed(texts)

    by_label: dict[str, list[NLIPair]] = defaultdict(list)

    def add(premise: str, hypothesis: str, label: str, source: str) -> None:
        if label == "contradiction" and source not in CONTRADICTION_SOURCES:
            return
        by_label[label].append(NLIPair(premise, _chat_noise(hypothesis, rng), label, "mined:" + source))

    for persona, own, other in speakers:
        if not own or len(persona) < 2:
            continue
        p_vec = vectors[[index[a] for a in persona]]

        def line_sims(lines: list[str]) -> np.ndarray:  # (sentences of persona) x lines: best sentence
            return np.stack([(p_vec @ vectors[[index[s] for s in sentences(x)]].T).max(axis=1) for x in lines],
                            axis=1)

        own_sims = line_sims(own)
        # entailments: the best-matching declarative sentence per persona sentence
        mined: list[tuple[int, str, str]] = []
        for i, attribute in enumerate(persona):
            best = None
            for x in own:
                for s in sentences(x):
                    if s.endswith("?") or len(s.split()) < 3 or _PARTNER.search(s):
                        continue  # a question, too short, or about the partner ("you're a great teacher")
                    sims = p_vec @ vectors[index[s]]
                    rest = np.delete(sims, i).max()
                    if sims[i] >= ENTAIL_SIM and sims[i] - rest >= ENTAIL_MARGIN \
                            and _negated(s) == _negated(attribute) and (best is None or sims[i] > best[0]):
                        best = (float(sims[i]), x, s)
            if best:
                mined.append((i, best[1], best[2]))
        for i, line, sentence in mined:
            attribute = persona[i]
            hypothesis = line if rng.random() < 0.7 else sentence
            add(attribute, hypothesis, "entailment", "restate")
            shared = content_words(attribute) & content_words(sentence)
            specific = len(shared) >= max(1, min(2, len(content_words(attribute))))
            found = slot_of(attribute)
            if found and found[0].startswith("favorite:") and not re.search(r"favou?rite", line, re.I):
                found = None  # "I love jazz" does not exclude "My favorite music is rock"
            if found:
                slot, value = found
                rivals = _rival_values(slot, value, values)
                if rivals:
                    swapped = swap_value(line, slot, value, rng.choice(rivals))
                    if swapped:
                        add(attribute, swapped, "contradiction", "swap")
                        others = [s for v, s in rivals_by_slot[slot] if v.lower() in {r.lower() for r in rivals}]
                        if others:
                            add(rng.choice(others), line, "contradiction", "rival")
            if specific:
                negations = [t for r, t in contradictions_of(attribute, rng, favorites)
                             if r in ("negate_am", "negate_have", "antonym", "unnegate", "negate_can")]
                if negations:
                    add(negations[0], line, "contradiction", "negated")
                if sentence.startswith(("I ", "I'm ")):
                    flipped = [t for r, t in contradictions_of(sentence.replace("I'm ", "I am ", 1), rng, favorites)
                               if r in ("negate_am", "negate_have", "antonym", "negate_can", "negate_verb",
                                        "negate_perfect")]
                    if flipped:
                        said = re.sub(r",? (too|also)\b", "", flipped[0].rstrip("."))
                        said = _contract(said + (sentence[-1] if sentence[-1] in "!." else "."), rng)
                        # the line's other sentences stay unless they too say the fact ("I'm a huge gamer")
                        rest = [x if x != sentence else said for x in sentences(line)
                                if x == sentence or (float(p_vec[i] @ vectors[index[x]]) < FAR_SIM
                                                     and not content_words(attribute) & content_words(x))]
                        add(attribute, " ".join(rest), "contradiction", "chat_negation")
            far = [j for j in range(len(persona)) if j != i and own_sims[j, own.index(line)] < FAR_SIM
                   and not content_words(persona[j]) & content_words(line)]
            if far:
                add(persona[rng.choice(far)], line, "neutral", "other")
        # neutrals: the speaker's other lines, questions, the partner's lines
        i = rng.randrange(len(persona))
        attribute = persona[i]
        words = content_words(attribute)
        unrelated = [x for k, x in enumerate(own) if own_sims[i, k] < FAR_SIM and not words & content_words(x)
                     and not x.endswith("?")]
        if unrelated:
            add(attribute, rng.choice(unrelated), "neutral", "unrelated")
        questions = [x for x in own if all(s.endswith("?") for s in sentences(x)) and not _TOO.search(x)]
        if questions:
            add(rng.choice(persona), rng.choice(questions), "neutral", "question")
        if other:
            other_sims = line_sims(other)
            far_partner = [x for k, x in enumerate(other) if other_sims[i, k] < FAR_SIM and not words & content_words(x)]
            if far_partner:
                add(attribute, rng.choice(far_partner), "neutral", "partner")
            about = [(j, x) for k, x in enumerate(other) for j in range(len(persona))
                     if other_sims[j, k] >= 0.5 and re.search(r"\byou('re|r)?\b", x, re.I)
                     and not re.search(r"\b(i|i'm|im|my|me|mine|we|our)\b", x, re.I)]
            if about:
                j, x = rng.choice(about)
                add(persona[j], x, "neutral", "partner_about")
    return [p for label in LABELS for p in _take(by_label[label], per_label, rng)]


# Work words: an "I am ..." sentence that says one of these speaks about having a job and may well
# exclude one ("I am retired" / "I work as a nurse"), so it is never a cross-slot neutral.
_WORKISH = re.compile(r"\b(work|works|worked|working|job|jobs|jobless|retired|retire|unemployed|employed|career|"
                      r"profession|business|boss|company|office|hired|fired|quit|student|school|college|"
                      r"university|intern|manager|owner|self employed|stay at home|full time|part time|"
                      r"living|paid|salary|shift|army|navy|military|marines?|air force|police|nursing|teaching)\b", re.I)
_ANY_JOB = re.compile(r"\b(?:" + "|".join(re.escape(j) for j in JOB_NOUNS) + r")s?\b", re.I)
_YOUNG = re.compile(r"\b(1[0-7]|[1-9]|ten|eleven|twelve|thirteen|fourteen|fifteen|sixteen|seventeen|teen|teenager|"
                    r"kid|child|high school|grade)\b", re.I)
# "I am a youtuber / blackjack dealer / baseball player": a job by another name, left out of the
# self-descriptions (a job may exclude another job).
_AGENT_NOUN = re.compile(r"\b(?:a|an)\b[\w ]*?\b(?!(?:lover|fan|believer|player of|mother|father|brother|sister|"
                         r"daughter|grandmother|grandfather|member|owner of)\b)\w+(?:er|or|ist|ant|ent|ee|ian|ic)\b[.!]?$",
                         re.I)
# Favourite kinds that name the same thing: two values of one group do exclude each other.
_SAME_KIND = ({"color", "colour"}, {"music", "genre", "type of music", "music genre", "kind of music", "band",
                                    "group", "singer", "artist", "song"},
              {"food", "dish", "meal", "cuisine", "snack", "dessert", "treat"}, {"movie", "film", "show", "tv show"},
              {"sport", "sports", "team", "sports team"}, {"book", "novel", "author", "writer"},
              {"drink", "beverage"}, {"animal", "pet"}, {"season", "holiday", "time of year"})


def _plain(sentence: str) -> bool:
    """Says nothing a job or a favourite could exclude: no job, no work, no favourite, not a minor."""
    return not (slot_of(sentence) or _ANY_JOB.search(sentence) or _WORKISH.search(sentence)
                or _YOUNG.search(sentence) or re.search(r"favou?rite", sentence, re.I))


def _kinds_apart(kind1: str, kind2: str) -> bool:
    """Two favourite kinds whose values never exclude each other (ice cream / video game)."""
    a, b = kind1.lower(), kind2.lower()
    if a == b or a in b or b in a or set(a.split()) & set(b.split()):
        return False
    return not any(a in group and b in group for group in _SAME_KIND)


def cross_slot_pairs(personas: list[tuple[str, ...]], n: int, rng: random.Random) -> list[NLIPair]:
    """Neutrals in the surface form of a contradiction: two "I am a ..." sentences of which only
    one is a job ("I am a democrat." / "I'm a student at ..."; "I am a deaf man." / "I work as a
    software engineer."), and favourites of different kinds ("My favorite ice cream is pistachio."
    / "My favorite video game is ..."). Job and favourite rivals (mined_swap, mined_rival, frames)
    taught that any two such sentences clash; on real SPC conversations these were most of the
    critic's remaining false alarms. Half the hypotheses carry a second sentence of the same
    persona, as chat lines do ("I'm a nurse. I work at a hospital.")."""
    jobs, selves, favourites = [], [], []
    for persona in personas:
        for sentence in persona:
            found = slot_of(sentence)
            if found and found[0] == "job":
                jobs.append((persona, sentence))
            elif found and found[0].startswith("favorite:"):
                favourites.append((persona, sentence, found[0].split(":", 1)[1]))
            elif re.match(r"i(?: am|'m) (?:a |an |very |really |so )?\w+", sentence, re.I) and not found \
                    and not _WORKISH.search(sentence) and not _negated(sentence) \
                    and not _AGENT_NOUN.search(sentence) and _plain(sentence):
                selves.append((persona, sentence))
    pairs: list[NLIPair] = []
    if not (jobs and selves) and len(favourites) < 2:
        return pairs

    def line(persona: tuple[str, ...], sentence: str, avoid: str) -> str:
        extra = [a for a in persona if a not in (sentence, avoid) and _plain(a)]
        said = chatify(sentence, rng) if rng.random() < 0.6 else sentence
        if extra and rng.random() < 0.5:
            other = rng.choice(extra)
            said = f"{said} {other}" if rng.random() < 0.5 else f"{other} {said}"
        return _chat_noise(said, rng)

    while len(pairs) < n:
        if len(pairs) % 3 < 2 and jobs and selves:  # two thirds job against self-description
            (p_job, job), (p_self, self_) = rng.choice(jobs), rng.choice(selves)
            if rng.random() < 0.5:
                pairs.append(NLIPair(self_, line(p_job, job, self_), "neutral", "mined:cross_slot_job"))
            else:
                pairs.append(NLIPair(job, line(p_self, self_, job), "neutral", "mined:cross_slot_self"))
        elif len(favourites) >= 2:
            (_, first, kind1), (p2, second, kind2) = rng.sample(favourites, 2)
            if _kinds_apart(kind1, kind2):
                pairs.append(NLIPair(first, line(p2, second, first), "neutral", "mined:cross_slot_favourite"))
        else:
            break
    return pairs


def _contract(text: str, rng: random.Random) -> str:
    if rng.random() < 0.6:
        for pattern, repl in ((r"\bI am not\b", "I'm not"), (r"\bdo not\b", "don't"), (r"\bcannot\b", "can't"),
                              (r"\bhave never\b", "'ve never")):
            text = re.sub(pattern, repl, text)
        text = text.replace("I 've", "I've")
    return text
