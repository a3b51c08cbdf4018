"""Training data for the embedded NLI: SICK plus persona-domain pairs we build.

Persona pairs come from three places:
- slot frames (frames.py): templated, checked pairs over pets, family, job, age, location, diet,
  habits, abilities, hobbies, preferences, education, possessions and health;
- Synthetic-Persona-Chat persona sentences: rule-based negations and value swaps (contradiction),
  meaning-keeping rewrites (entailment), attributes of one persona (neutral: a persona is
  consistent by construction), and their reverses;
- Synthetic-Persona-Chat utterances: a speaker's line that restates one of their attributes
  (entailment), the same line against another of their attributes (neutral) and against that
  attribute negated (contradiction), so the model learns to judge chat, not only attributes.
A chat-style rewrite (contractions, lowercase, fillers, a question back) is applied to
hypotheses of every label alike, so surface style never gives the label away.
"""

from __future__ import annotations

import random
import re
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError
from ..resources import data_dir
from ..store import iter_json_lines, read_jsonl
from .frames import CITIES, FAVORITE, JOBS, pick_frame, render_frame

US_STATES = ["Alabama", "Alaska", "Arizona", "Arkansas", "California", "Colorado", "Connecticut", "Delaware",
             "Florida", "Georgia", "Hawaii", "Idaho", "Illinois", "Indiana", "Iowa", "Kansas", "Kentucky",
             "Louisiana", "Maine", "Maryland", "Massachusetts", "Michigan", "Minnesota", "Mississippi", "Missouri",
             "Montana", "Nebraska", "Nevada", "New Hampshire", "New Jersey", "New Mexico", "New York",
             "North Carolina", "North Dakota", "Ohio", "Oklahoma", "Oregon", "Pennsylvania", "Rhode Island",
             "South Carolina", "South Dakota", "Tennessee", "Texas", "Utah", "Vermont", "Virginia", "Washington",
             "West Virginia", "Wisconsin", "Wyoming"]
# "United States" is left out: it would "contradict" every US city and state.
_PLACES = sorted(({c for city in CITIES for c in (city[0], city[2].replace("the ", ""))} | set(US_STATES))
                 - {"United States"})


def _known_place(text: str) -> bool:
    words = text.lower().strip(" .")
    return any(words == p.lower() or words.startswith(p.lower() + " ") or words.startswith(p.lower() + ",")
               for p in _PLACES)


def _same_place(candidate: str, text: str) -> bool:
    """A city and its state or country are not rival homes (Chicago, Illinois)."""
    low = text.lower()
    for city, region, country, _ in CITIES:
        names = {city.lower(), region.lower(), country.lower().replace("the ", "")}
        if candidate.lower() in names and any(n in low for n in names):
            return True
    return False

LABELS = ("entailment", "neutral", "contradiction")


@dataclass(frozen=True)
class NLIPair:
    premise: str
    hypothesis: str
    label: str
    source: str


# --- reading the corpora --------------------------------------------------------------------

def load_sick(files: Iterable[str] = ("SICK_train.txt", "SICK_trial.txt")) -> list[NLIPair]:
    folder = data_dir("corpora") / "nli" / "sick2014"
    pairs = []
    for name in files:
        with open(folder / name, encoding="utf-8-sig") as fh:
            header = fh.readline().rstrip("\n").split("\t")
            a, b, gold = header.index("sentence_A"), header.index("sentence_B"), header.index("entailment_judgment")
            for line in fh:
                cols = line.rstrip("\n").split("\t")
                if len(cols) > gold:
                    pairs.append(NLIPair(cols[a], cols[b], cols[gold].lower(), "sick"))
    return pairs


def load_spc(split: str = "train") -> list[dict]:
    return read_jsonl(data_dir("corpora") / "spc" / f"{split}.jsonl.gz")


_FIXES = [(r" ([,.!?;:])", r"\1"), (r"\bi m\b", "i'm"), (r"\b(don|can|won|didn|doesn|isn|wasn|aren|haven|hasn|couldn|wouldn|shouldn) t\b", r"\1't"),
          (r"\bi ve\b", "i've"), (r"\bi ll\b", "i'll"), (r"\bi d\b", "i'd"), (r"\b(it|that|what|there|he|she) s\b", r"\1's"),
          (r"\b(\w+) s\b(?= (?:house|car|dog|name|basement|mom|dad))", r"\1's"), (r"\s+", " ")]


def normalize(text: str) -> str:
    """Undo the corpus's tokenisation ("I m", "don t", " ,") and capitalise the I."""
    text = text.strip()
    for pattern, repl in _FIXES:
        text = re.sub(pattern, repl, text, flags=re.IGNORECASE)
    text = re.sub(r"\bi\b", "I", text)
    text = re.sub(r"\bi'(m|ve|ll|d)\b", r"I'\1", text)
    return text[:1].upper() + text[1:]


# --- rules on real persona sentences --------------------------------------------------------
_NUMBERS = {"one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8, "nine": 9, "ten": 10}
_COUNTABLE = r"(kids|children|sons|daughters|brothers|sisters|siblings|dogs|cats|pets|horses|cars|grandchildren|grandkids|jobs|tattoos|birds|fish|chickens)"
_PRESENT_VERBS = ("work", "live", "play", "drive", "own", "eat", "drink", "go", "listen", "read", "watch", "write",
                  "sing", "cook", "run", "swim", "ride", "collect", "speak", "teach", "study", "volunteer", "smoke",
                  "grow", "make", "spend", "paint", "dance", "wear", "attend", "believe", "need", "know", "take",
                  "travel", "bake", "sew", "knit", "fish", "hunt", "surf", "ski", "skate", "draw", "build", "use")
_STATIVE = ("live", "own", "work", "need", "know", "believe", "wear", "attend", "use", "speak")


def contradictions_of(sentence: str, rng: random.Random, favorites: dict[str, list[str]]) -> list[tuple[str, str]]:
    """Statements that cannot be true together with `sentence`, with the rule that made each."""
    s = sentence.rstrip(".!")
    low = s.lower()
    out: list[tuple[str, str]] = []

    def add(rule: str, text: str) -> None:
        out.append((rule, text[:1].upper() + text[1:] + "."))

    if m := re.match(r"i am not (.+)", low):
        add("unnegate", "I am " + s[len("I am not "):])
    elif m := re.match(r"i am (\d+)( years old)?$", low):
        age = int(m.group(1))
        other = age + rng.choice([-1, 1]) * rng.randint(10, 30)
        add("age", f"I am {other if other > 12 else age + 20} years old")
    elif re.match(r"i am (a|an) ", low):
        add("negate_am", "I am not " + s[len("I am "):])
    elif re.match(r"i am ", low) and not re.match(r"i am (going|trying|thinking|hoping|planning|looking|always|very|so|really)", low):
        add("negate_am", "I am not " + s[len("I am "):])
    if m := re.match(r"i have never (.+)", low):
        add("unnegate", "I have " + s[len("I have never "):])
    elif re.match(r"i have (been|had|lived|worked|traveled|visited|seen|won|met|owned|played|read) ", low):
        add("negate_perfect", "I have never " + s[len("I have "):])
    elif m := re.match(r"i have (a|an|one|two|three|four|five|six|seven|eight|nine|ten|\d+) (.+)", low):
        qty = m.group(1)
        rest = s[len("I have ") + len(qty) + 1:]
        if qty in ("a", "an"):
            add("negate_have", f"I do not have {qty} {rest}")
        else:
            add("negate_have", f"I do not have any {rest}")
            n = _NUMBERS.get(qty) or int(qty) if qty.isdigit() or qty in _NUMBERS else None
            if n and re.match(_COUNTABLE, rest.lower()):
                other = rng.choice([k for k in range(1, 8) if k != n])
                add("count", f"I have {other} {rest}")
    if m := re.match(r"i (do not|don't|never|cannot|can't|can not) (\w+)(.*)", low):
        neg = m.group(1)
        rest = s[len("I ") + len(neg) + 1:]
        add("unnegate", ("I can " if neg in ("cannot", "can't", "can not") else "I ") + rest)
    elif re.match(r"i can ", low):
        add("negate_can", "I cannot " + s[len("I can "):])
    elif m := re.match(r"i (like|love|enjoy|adore) (.+)", low):
        thing = s[len("I ") + len(m.group(1)) + 1:]
        add("antonym", f"I {rng.choice(['hate', 'do not like', 'can not stand'])} {thing}")
    elif m := re.match(r"i (hate|dislike|detest|despise) (.+)", low):
        thing = s[len("I ") + len(m.group(1)) + 1:]
        add("antonym", f"I {rng.choice(['love', 'really like', 'enjoy'])} {thing}")
    elif m := re.match(r"i (\w+) (.+)", low):
        if m.group(1) in _PRESENT_VERBS:
            # "never" reads wrong with states ("I never live in Ohio"); "do not" fits both.
            stative = m.group(1) in _STATIVE
            add("negate_verb", f"I {'do not' if stative else rng.choice(['do not', 'never'])} " + s[len("I "):])
    if m := re.match(r"my favorite (\w+(?: \w+)?) is (.+)", low):
        kind, value = m.group(1), s[len("My favorite ") + len(m.group(1)) + 4:]
        pool = [v for v in favorites.get(kind, []) if v.lower() != value.lower()]
        if pool:
            add("favorite_swap", f"My favorite {kind} is {rng.choice(pool)}")
        add("favorite_dislike", f"I do not like {value}")
    if (m := re.match(r"i live in (.+)", low)) and _known_place(m.group(1)):
        # Only a named place excludes another ("in a condo" and "in London" can both hold).
        place = rng.choice([c for c in _PLACES if c.lower() not in low and not _same_place(c, m.group(1))])
        add("place_swap", f"I live in {place}")
    return out


def entailments_of(sentence: str, rng: random.Random) -> list[tuple[str, str]]:
    """Statements that `sentence` makes true (weaker or reworded), with the rule."""
    s = sentence.rstrip(".!")
    low = s.lower()
    out = []
    if m := re.match(r"i (love|adore) (.+)", low):
        out.append(("weaken_love", f"I like {s[len('I ') + len(m.group(1)) + 1:]}."))
    if m := re.match(r"my favorite (\w+(?: \w+)?) is (.+)", low):
        out.append(("favorite_like", f"I like {s[len('My favorite ') + len(m.group(1)) + 4:]}."))
    if re.match(r"i have (two|three|four|five|\d+) (dogs|cats|horses|pets)", low):
        out.append(("hypernym", "I have pets."))
    if re.match(r"i have (two|three|four|five|six|\d+) (kids|children|sons|daughters)", low):
        out.append(("hypernym", "I am a parent."))
    if re.match(r"i have (a|an|one|two|three|\d+) (brother|sister|brothers|sisters)", low):
        out.append(("hypernym", "I have siblings."))
    if re.match(r"i work as (a|an) ", low) or any(re.match(rf"i am (a|an) {job}$", low) for job, _, _ in JOBS):
        out.append(("hypernym", "I have a job."))
    return out


def neutral_reverses(sentence: str) -> list[tuple[str, str]]:
    """(premise, hypothesis) that are neutral: the weaker statement does not give the stronger."""
    s = sentence.rstrip(".!")
    low = s.lower()
    if m := re.match(r"i (love|adore) (.+)", low):
        return [(f"I like {s[len('I ') + len(m.group(1)) + 1:]}.", sentence)]
    return []


# --- chat-style rewriting -------------------------------------------------------------------
_CONTRACTIONS = [(r"\bI am\b", "I'm"), (r"\bdo not\b", "don't"), (r"\bcannot\b|\bcan not\b", "can't"),
                 (r"\bdoes not\b", "doesn't"), (r"\bis not\b", "isn't"), (r"\bI have been\b", "I've been"),
                 (r"\bI would\b", "I'd"), (r"\bI will\b", "I'll"), (r"\bhave not\b", "haven't")]
_PREFIXES = ["yeah ", "haha ", "well, ", "honestly ", "oh ", "lol ", "actually ", "to be honest, ", "oh yeah, ",
             "hmm ", "well ", "ha, ", "so ", "i mean, "]
_SUFFIXES = [" lol", " haha", "!", " what about you?", " how about you?", " :)", "!!", " do you?", " you?",
             " what do you do for fun?", ", it's great", " tbh", " lol what about you"]


def chatify(text: str, rng: random.Random) -> str:
    """A casual chat version of an attribute sentence, same meaning."""
    out = text
    for pattern, repl in _CONTRACTIONS:
        if rng.random() < 0.7:
            out = re.sub(pattern, repl, out)
    out = out.rstrip(".")
    if rng.random() < 0.5:
        out = out.lower()
    if rng.random() < 0.5:
        out = rng.choice(_PREFIXES) + (out[:1].lower() + out[1:] if out[:2] != "I " and not out.startswith("I'") else out)
    if rng.random() < 0.6:
        out += rng.choice(_SUFFIXES)
    return out


# --- utterances that express an attribute ---------------------------------------------------
_STOP = set("""a an the i i'm im me my mine we our you your he she it its they them their is am are was were be been
being have has had do does did not no nor and or but if so to of in on at by for with about as into from up down out
over under again then once here there when where why how all any both each few more most other some such only own
same than too very can will just don't should now also really like love lot lots get got go going one would could
what who whom this that these those yes yeah oh well much many""".split())


def content_words(text: str) -> set[str]:
    return {w for w in re.findall(r"[a-z']+", text.lower()) if len(w) > 2 and w not in _STOP}


def grounded_utterances(conversation: dict, min_overlap: float = 0.6) -> list[tuple[int, str, str]]:
    """(persona index, attribute, utterance) where the speaker's own line restates the attribute."""
    found = []
    for speaker, key in (("user1", "user1_persona"), ("user2", "user2_persona")):
        lines = [normalize(t["text"]) for t in conversation["turns"] if t["speaker"] == speaker]
        lines = [ln for ln in lines if "?" not in ln and 3 <= len(ln.split()) <= 30 and "participant_" not in ln]
        for index, attribute in enumerate(conversation[key]):
            words = content_words(attribute)
            if len(words) < 2:
                continue
            best = max(lines, key=lambda ln: len(words & content_words(ln)), default=None)
            if best and len(words & content_words(best)) >= max(2, min_overlap * len(words)):
                found.append((index, normalize(attribute), best))
    return found


# --- assembling the training set ------------------------------------------------------------

def frame_pairs(per_label: int, rng: random.Random, chat_rate: float = 0.35) -> list[NLIPair]:
    pairs = []
    for label in LABELS:
        for _ in range(per_label):
            frame = pick_frame(rng)
            premise, hypothesis = render_frame(frame, rng, label)
            if rng.random() < chat_rate and not hypothesis[:1].islower():
                hypothesis = chatify(hypothesis, rng)
            pairs.append(NLIPair(premise, hypothesis, label, f"frame:{frame.slot}"))
    return pairs


def corpus_pairs(conversations: list[dict], per_label: int, rng: random.Random,
                 chat_rate: float = 0.35, unrelated: int = 0) -> list[NLIPair]:
    personas = sorted({tuple(normalize(a) for a in c[k]) for c in conversations for k in ("user1_persona", "user2_persona")})
    favorites = _favorites(personas)
    by_label: dict[str, list[NLIPair]] = defaultdict(list)

    def add(premise: str, hypothesis: str, label: str, source: str) -> None:
        if rng.random() < chat_rate:
            hypothesis = chatify(hypothesis, rng)
        by_label[label].append(NLIPair(premise, hypothesis, label, source))

    for persona in personas:
        for i, attribute in enumerate(persona):
            for rule, text in contradictions_of(attribute, rng, favorites):
                premise, hypothesis = (attribute, text) if rng.random() < 0.7 else (text, attribute)
                add(premise, hypothesis, "contradiction", f"spc:{rule}")
            for rule, text in entailments_of(attribute, rng):
                add(attribute, text, "entailment", f"spc:{rule}")
            add(attribute, attribute, "entailment", "spc:restate")
            for premise, hypothesis in neutral_reverses(attribute):
                add(premise, hypothesis, "neutral", "spc:weaker")
            others = [a for j, a in enumerate(persona) if j != i]
            if others:
                add(attribute, rng.choice(others), "neutral", "spc:same_persona")
    for conversation in rng.sample(conversations, min(len(conversations), 8000)):
        persona_of = {"user1_persona": [normalize(a) for a in conversation["user1_persona"]],
                      "user2_persona": [normalize(a) for a in conversation["user2_persona"]]}
        for index, attribute, utterance in grounded_utterances(conversation):
            by_label["entailment"].append(NLIPair(attribute, utterance, "entailment", "spc:utterance"))
            key = "user1_persona" if attribute in persona_of["user1_persona"] else "user2_persona"
            others = [a for a in persona_of[key] if a != attribute]
            if others:
                by_label["neutral"].append(NLIPair(rng.choice(others), utterance, "neutral", "spc:utterance_other"))
            negations = [t for r, t in contradictions_of(attribute, rng, favorites)
                         if r.startswith(("negate", "unnegate", "antonym"))]
            if negations:
                by_label["contradiction"].append(NLIPair(negations[0], utterance, "contradiction", "spc:utterance_negated"))
    chosen = [p for label in LABELS for p in _take(by_label[label], per_label, rng)]
    return chosen + unrelated_pairs(personas, unrelated, rng, chat_rate)


def unrelated_pairs(personas: list[tuple[str, ...]], n: int, rng: random.Random,
                    chat_rate: float = 0.35) -> list[NLIPair]:
    """Attributes of two different people: almost always compatible. Without many of these the
    model learns that any two "I am ..." sentences clash, and flags unrelated attributes as
    contradictions when it builds profiles (seen at 11% of random attribute pairs)."""
    pairs = []
    for _ in range(n):
        a, b = rng.sample(personas, 2)
        hypothesis = rng.choice(b)
        if rng.random() < chat_rate:
            hypothesis = chatify(hypothesis, rng)
        pairs.append(NLIPair(rng.choice(a), hypothesis, "neutral", "spc:unrelated"))
    return pairs


def ungrounded_pairs(conversations: list[dict], n: int, rng: random.Random) -> list[NLIPair]:
    """A speaker's own persona sentence against one of their lines that shares no content word
    with it (greetings, questions, talk about other things): neutral. Without these the model saw
    utterances only when they restated or negated an attribute, and called 64% of real
    Synthetic-Persona-Chat test conversations unfaithful ("I'll have to give it a try." vs "I only
    have one leg.": 0.98 contradiction)."""
    pairs: list[NLIPair] = []
    while len(pairs) < n:
        conversation = rng.choice(conversations)
        speaker = rng.choice(("user1", "user2"))
        lines = [normalize(t["text"]) for t in conversation["turns"] if t["speaker"] == speaker]
        attribute = normalize(rng.choice(conversation[f"{speaker}_persona"]))
        lines = [ln for ln in lines if ln and not content_words(attribute) & content_words(ln) and len(ln.split()) <= 40]
        if lines:
            pairs.append(NLIPair(attribute, rng.choice(lines), "neutral", "spc:utterance_ungrounded"))
    return pairs


# Interjections a speaker opens a reply with, reacting to the other person. Some sound negative
# ("oh no", "no kidding") but negate nothing. The stand-in server's fillers ("No way!", "Funny you
# ask,", "Let me think...") are deliberately absent: bench/nli_chat.py measures them as unseen.
_REACTIONS = ["oh no, ", "no kidding! ", "no joke, ", "not gonna lie, ", "wow! ", "oh wow, ", "cool! ", "nice! ",
              "oh cool. ", "really? ", "that's awesome! ", "ha! ", "hah, ", "hmm, ", "good question. ",
              "okay so ", "oh really? ", "that's funny, ", "aw, ", "hey, ", "sounds fun! ", "ooh, ",
              "oh, that's nice. ", "wait, really? ", "lucky you! ", "i hear you. ", "fair enough. ", "omg, "]
_CODAS = ["", "", " what about you?", " and you?", " it's a big deal to me.", " that's just who i am.",
          " anyway, enough about me.", " how about yourself?", " you know?", " it keeps me going."]


def reaction_pairs(personas: list[tuple[str, ...]], n: int, rng: random.Random) -> list[NLIPair]:
    """A reply that opens with an interjection and states one of the speaker's attributes, against
    that attribute (entailment), another attribute of the same persona (neutral: a persona is
    consistent by construction) or the attribute negated (contradiction), a third each. Without
    these the model read "No way! I love to ride horses." as contradicting "I love to ride horses."
    (0.98), and "I just had surgery." as contradicting "I never finished high school." (0.99)."""
    favorites = _favorites(personas)
    pairs: list[NLIPair] = []
    while len(pairs) < n:
        persona = rng.choice(personas)
        if len(persona) < 2:
            continue
        attribute, other = rng.sample(persona, 2)

        def reply(text: str) -> str:
            said = chatify(text, rng) if rng.random() < 0.5 else text.rstrip(".").lower()
            said = said if said.startswith(("I ", "I'", "i ", "i'")) else said[:1].lower() + said[1:]
            return (rng.choice(_REACTIONS) + said + rng.choice(_CODAS)).capitalize()

        kind = len(pairs) % 3
        if kind == 0:
            pairs.append(NLIPair(attribute, reply(attribute), "entailment", "spc:reaction_restate"))
        elif kind == 1:
            pairs.append(NLIPair(attribute, reply(other), "neutral", "spc:reaction_other"))
        else:
            negations = [t for r, t in contradictions_of(attribute, rng, favorites)]
            if negations:
                pairs.append(NLIPair(attribute, reply(rng.choice(negations)), "contradiction", "spc:reaction_negated"))
    return pairs


def _take(pairs: list[NLIPair], n: int, rng: random.Random) -> list[NLIPair]:
    """n pairs, spreading the budget over sources so no one rule dominates."""
    by_source: dict[str, list[NLIPair]] = defaultdict(list)
    for p in pairs:
        by_source[p.source].append(p)
    for group in by_source.values():
        rng.shuffle(group)
    chosen: list[NLIPair] = []
    sources = sorted(by_source)
    while len(chosen) < n and any(by_source.values()):
        for source in sources:
            if by_source[source] and len(chosen) < n:
                chosen.append(by_source[source].pop())
    return chosen


def _favorites(personas: list[tuple[str, ...]]) -> dict[str, list[str]]:
    found: dict[str, set[str]] = defaultdict(set)
    for persona in personas:
        for attribute in persona:
            if m := re.match(r"my favorite (\w+(?: \w+)?) is (.+?)\.?$", attribute, flags=re.IGNORECASE):
                found[m.group(1).lower()].add(m.group(2))
    for kind, values in FAVORITE.items():
        found[kind].update(values)
    return {k: sorted(v) for k, v in found.items() if len(v) > 1}


def handwritten_pairs() -> list[NLIPair]:
    """Persona pairs written by hand for training (corpora/nli/persona_train_handwritten.jsonl):
    world-knowledge entailments, positively stated contradictions and hard neutrals that no
    rule produces. Written apart from, and checked against, the evaluation sets."""
    return read_labelled(data_dir("corpora") / "nli" / "persona_train_handwritten.jsonl", source="handwritten")


def chat_handwritten_pairs() -> list[NLIPair]:
    """Persona facts said indirectly in chat, written by hand for training
    (corpora/nli/chat_train_handwritten.jsonl; premises from SPC train personas): an episode, a
    consequence, slang or a rival value in place of the fact's own words. Template and mined pairs
    taught that a line on the fact's topic in other words contradicts it."""
    return read_labelled(data_dir("corpora") / "nli" / "chat_train_handwritten.jsonl", source="chat_handwritten")


def spc_personas(split: str = "train") -> list[tuple[str, ...]]:
    """Every distinct persona of a split, sentences normalised."""
    return sorted({tuple(normalize(a) for a in c[k]) for c in load_spc(split) for k in ("user1_persona", "user2_persona")})


def build_training_pairs(seed: int = 0, frame_per_label: int = 1500, corpus_per_label: int = 1500,
                         sick: bool = True, handwritten_repeats: int = 2, unrelated: int = 0,
                         ungrounded: int = 0, reactions: int = 0) -> list[NLIPair]:
    """The embedded NLI's whole training set, deterministic for a seed."""
    rng = random.Random(seed)
    pairs = frame_pairs(frame_per_label, rng)
    conversations = load_spc("train")
    pairs += corpus_pairs(conversations, corpus_per_label, rng, unrelated=unrelated)
    pairs += ungrounded_pairs(conversations, ungrounded, random.Random(seed + 1))  # own rng: the rest unchanged
    personas = sorted({tuple(normalize(a) for a in c[k]) for c in conversations for k in ("user1_persona", "user2_persona")})
    pairs += reaction_pairs(personas, reactions, random.Random(seed + 2))
    pairs += handwritten_pairs() * handwritten_repeats
    if sick:
        pairs += load_sick()
    rng.shuffle(pairs)
    return pairs


def read_labelled(path: Path, source: str | None = None) -> list[NLIPair]:
    """Rows {"premise", "hypothesis", "label"} from a JSONL evaluation file."""
    pairs = []
    for line_no, row in iter_json_lines(path):
        if not isinstance(row, dict) or not all(isinstance(row.get(k), str) for k in ("premise", "hypothesis", "label")):
            raise UserError(f"{path}:{line_no}: each row needs string fields \"premise\", \"hypothesis\" and \"label\"")
        label = row["label"].strip().lower()
        if label not in LABELS:
            raise UserError(f"{path}:{line_no}: label {row['label']!r} is not one of entailment, neutral, contradiction")
        pairs.append(NLIPair(row["premise"], row["hypothesis"], label, source or str(row.get("slot", path.name))))
    if not pairs:
        raise UserError(f"{path}: no rows; write one JSON object per line with premise, hypothesis and label")
    return pairs
