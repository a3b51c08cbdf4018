"""forge generate: transcript parsing, the critic's experts, selection, rounds and resumption (fake LLM)."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest

from conftest import REPO, KeywordNLI, forge_cmd, make_recipe
from persona_forge.backends import ScriptedBackend
from persona_forge.backends.base import Completion
from persona_forge.config import CriticConfig, GenerateConfig
from persona_forge.contract import StageContext
from persona_forge.schema import Dialogue, Pair, Profile, SharedTopic, Turn
from persona_forge.stages import critic
from persona_forge.stages import generate as stage
from persona_forge.stages.critic import Candidate
from persona_forge.store import read_jsonl
from persona_forge.transcript import ParseError, clean_reply, format_transcript, parse_transcript

ALICE = ["I have two dogs.", "I live in Ohio."]
BOB = ["I am a nurse.", "I like jazz."]


def conversation(first_line: str = "Hi, I have two dogs.") -> str:
    return "\n".join([f"User 1: {first_line}", "User 2: Nice, I am a nurse.", "User 1: I live in Ohio.",
                      "User 2: I like jazz."])


# --- transcripts --------------------------------------------------------------------------

def test_parse_transcript_labels_preamble_continuations_and_markdown():
    text = "Sure! Here it is:\n**User 1:** Hi there\nUser 2: Hello, I like dogs.\nAnd cats.\nPerson 1 - \"great\""
    assert parse_transcript(text) == [Turn(speaker="user1", text="Hi there"),
                                      Turn(speaker="user2", text="Hello, I like dogs. And cats."),
                                      Turn(speaker="user1", text="great")]


def test_parse_transcript_json_and_failure():
    assert parse_transcript('{"turns": [{"speaker": "User 2", "text": "yo"}]}') == [Turn(speaker="user2", text="yo")]
    with pytest.raises(ParseError):
        parse_transcript("The two users talked about their dogs and then said goodbye.")


def test_clean_reply_cuts_run_on_lines_and_unfinished_sentences():
    assert clean_reply("User 2: Hi! I love hiking. Do you? What else. User 1: no") == "Hi! I love hiking. Do you?"
    assert clean_reply("I love jazz.\nUser 1: me too") == "I love jazz."
    assert clean_reply("I love jazz. And I also play the saxo", truncated=True) == "I love jazz."
    assert clean_reply("I love jazz and I also play the saxo", truncated=True) == "I love jazz and I also play the saxo"


# --- critic experts -------------------------------------------------------------------------

def candidate(lines: list[tuple[str, str]]) -> Candidate:
    return Candidate("c", list(ALICE), list(BOB), [Turn(speaker=s, text=t) for s, t in lines])


def test_faithfulness_checks_each_utterance_against_its_own_speaker_only():
    c = candidate([("user1", "I have no dogs at all."), ("user2", "I am a nurse, no dogs here."),
                   ("user1", "Ohio is home."), ("user2", "Jazz!")])
    nli = KeywordNLI()
    counts = critic.score_faithfulness([c], nli, CriticConfig())
    assert counts == {"nli_pairs": 8, "nli_pairs_skipped": 0, "nli_pairs_judged": 8, "persona_pairs_judged": 0,
                      "sentence_pairs_judged": 0}
    # user2's "no dogs" is not checked against Alice's dogs: only user1's first line contradicts
    assert c.scores["contradiction"] == 0.9 and c.scores["contradicted"] == 1.0
    # Alice: Ohio covered, dogs not (1/2); Bob: nurse and jazz covered (2/2)
    assert c.scores["coverage"] == 0.75
    assert "I have no dogs at all." in c.reasons["contradiction"]


def test_prefilter_skips_unrelated_pairs_as_neutral():
    c = candidate([("user1", "I have no dogs at all."), ("user2", "Jazz!")])

    def embed(texts):  # dog sentences along one axis, everything else along another
        return np.array([[1.0, 0.0] if "dog" in t else [0.0, 1.0] for t in texts], dtype=np.float32)

    counts = critic.score_faithfulness([c], KeywordNLI(), CriticConfig(prefilter=0.5), embed)
    assert counts == {"nli_pairs": 3, "nli_pairs_skipped": 1, "nli_pairs_judged": 3,
                      "persona_pairs_judged": 0, "sentence_pairs_judged": 0}  # only user1's line vs
    # "I live in Ohio." skipped
    assert c.scores["contradicted"] == 1.0


def test_each_distinct_pair_is_judged_once_and_its_scores_reach_every_candidate():
    class Recording(KeywordNLI):
        def predict(self, pairs):
            self.seen = list(pairs)
            return super().predict(pairs)

    first = candidate([("user1", "Hi there."), ("user2", "Hello."), ("user1", "I have no dogs at all.")])
    second = candidate([("user1", "Hi there."), ("user2", "Hello."), ("user1", "Ohio is home.")])
    nli = Recording()
    counts = critic.score_faithfulness([first, second], nli, CriticConfig())
    # 2 attributes x (2 user1 lines) + 2 x 1 user2 line per candidate; the greetings repeat
    assert counts == {"nli_pairs": 12, "nli_pairs_skipped": 0, "nli_pairs_judged": 8, "persona_pairs_judged": 0,
                      "sentence_pairs_judged": 0}
    assert len(nli.seen) == len(set(nli.seen)) == 8
    assert first.scores["contradicted"] == 1.0 and second.scores["contradicted"] == 0.0
    assert first.scores["coverage"] == 0.0 and second.scores["coverage"] == 0.25  # Ohio: half of Alice


class TableNLI:
    """Probabilities looked up by (premise, hypothesis); neutral for anything not in the table."""

    def __init__(self, table):
        self.table = table
        self.seen = []

    def predict(self, pairs):
        self.seen.append(list(pairs))
        rows = {"E": [0.9, 0.08, 0.02], "C": [0.02, 0.08, 0.9], "N": [0.1, 0.85, 0.05]}
        return np.array([rows[self.table.get(pair, "N")] for pair in pairs], dtype=np.float32)


@pytest.mark.parametrize("persona_at_odds, contradicted", [(True, 0.0), (False, 1.0)])
def test_an_alarm_the_persona_itself_explains_is_not_held_against_the_conversation(persona_at_odds, contradicted):
    """Alice's line restates "I live in Ohio."; the NLI also calls it a contradiction of "I have two
    dogs.". If the NLI finds those two sentences of her own persona at odds, the alarm is the
    persona's (excused); if not, the line says something new and the alarm stands."""
    line = "Honestly, I live in Ohio."
    table = {("I live in Ohio.", line): "E", ("I have two dogs.", line): "C"}
    if persona_at_odds:
        table[("I have two dogs.", "I live in Ohio.")] = "C"
    nli = TableNLI(table)
    c = candidate([("user1", line), ("user2", "Hi.")])
    counts = critic.score_faithfulness([c], nli, CriticConfig())
    assert nli.seen[1] == [("I have two dogs.", "I live in Ohio.")]  # only the sentences in question
    assert counts["persona_pairs_judged"] == 1
    assert c.scores["contradicted"] == contradicted
    if persona_at_odds:
        assert c.scores["persona_conflicts"] == 1.0 and c.scores["contradiction"] < 0.8
        assert "not counted" in c.reasons["persona_conflict"] and "contradiction" not in c.reasons
    else:
        assert "persona_conflicts" not in c.scores and line in c.reasons["contradiction"]


@pytest.mark.parametrize("second_sentence, by_sentence, contradicted, sentence_pairs",
                         [("I work at a hospital.", True, 0.0, 2),   # neither sentence contradicts: not counted
                          ("I hate dogs.", True, 1.0, 2),            # one sentence does: the alarm stands
                          ("I work at a hospital.", False, 1.0, 0)])  # the rule off: the whole line decides
def test_an_alarm_on_a_line_of_several_sentences_needs_one_of_them_to_contradict(second_sentence, by_sentence,
                                                                                 contradicted, sentence_pairs):
    line = "I'm a nurse. " + second_sentence
    table = {("I have two dogs.", line): "C", ("I have two dogs.", "I hate dogs."): "C"}
    nli = TableNLI(table)
    c = candidate([("user1", line)])
    counts = critic.score_faithfulness([c], nli, CriticConfig(by_sentence=by_sentence))
    assert counts["sentence_pairs_judged"] == sentence_pairs
    if sentence_pairs:
        assert sorted(nli.seen[1]) == sorted([("I have two dogs.", "I'm a nurse."),
                                              ("I have two dogs.", second_sentence)])
    assert c.scores["contradicted"] == contradicted
    assert (c.scores["contradiction"] > 0.8) == bool(contradicted)


def test_turn_selection_confirms_alarms_sentence_by_sentence():
    from persona_forge import replyscore

    long_line = "I'm a nurse. I work nights."
    nli = TableNLI({("I have two dogs.", long_line): "C", ("I have two dogs.", "No dogs for me."): "C"})
    replies = [replyscore.Reply(["I have two dogs."], long_line), replyscore.Reply(["I have two dogs."], "No dogs for me.")]
    unchecked, _ = replyscore.score_replies(replies, nli, 40)
    checked, judged = replyscore.score_replies(replies, TableNLI(nli.table), 40, threshold=0.8)
    assert [s.contradiction for s in unchecked] == [0.9, 0.9]
    assert checked[0].contradiction == 0.05 and checked[1].contradiction == 0.9  # the one-sentence line is not split
    assert judged == 2 + 2 and replyscore.preferred(checked, 0.8) == 0


def test_an_alarm_on_a_line_that_restates_nothing_needs_no_second_look():
    nli = TableNLI({("I have two dogs.", "I hate dogs."): "C"})
    c = candidate([("user1", "I hate dogs.")])
    counts = critic.score_faithfulness([c], nli, CriticConfig())
    assert len(nli.seen) == 1 and counts["persona_pairs_judged"] == 0
    assert c.scores["contradicted"] == 1.0


@pytest.mark.parametrize("reply, quality, unsafe", [
    ('{"coherence": {"score": 5, "reason": "ok"}, "engagingness": {"score": 3, "reason": "meh"}, '
     '"naturalness": {"score": 4}, "consistency": {"score": 4}, "unsafe": false}', 0.75, 0.0),
    ('{"coherence": 5, "engagingness": "3/5", "naturalness": 4, "consistency": 4, "unsafe": "yes"}', 0.75, 1.0),
    ('{"coherence": 9, "engagingness": "great"}', None, None),
])
def test_judge_answers_clean_noisy_and_invalid(reply, quality, unsafe):
    from persona_forge.jsonparse import parse_json

    c = candidate([("user1", "hi")])
    critic.read_judgement(c, Completion(text=reply, parsed=parse_json(reply), finish_reason="stop"))
    assert c.scores["quality"] == quality
    assert c.scores.get("judge_unsafe") == unsafe
    if quality is None:
        assert "unreadable" in c.reasons["quality"]


def test_judge_answer_that_is_not_json_leaves_quality_unset():
    c = candidate([("user1", "hi")])
    critic.read_judgement(c, Completion(text="It is fine.", parse_error="no JSON object or array found"))
    assert c.scores["quality"] is None
    assert c.reasons["quality"] == "judge answer unreadable: no JSON object or array found"


def test_blocklist_backstop_matches_words_not_substrings():
    pattern = critic.blocklist(None)
    bad = candidate([("user1", "I will KILL you"), ("user2", "what the fucking hell")])
    critic.score_safety(bad, pattern)
    assert bad.scores["unsafe"] == 1.0 and bad.reasons["blocklist"] == "fucking, i will kill you"
    fine = candidate([("user1", "I love skills and shitake mushrooms, said Dickens")])
    critic.score_safety(fine, pattern)
    assert fine.scores["unsafe"] == 0.0


def test_form_rewards_alternation_and_penalises_copies():
    good = candidate([("user1", "hi there friend"), ("user2", "hello to you"), ("user1", "how are you"),
                      ("user2", "fine thanks")])
    copy = candidate([(t.speaker, t.text) for t in good.turns])
    stutter = candidate([("user1", "hi"), ("user1", "hi"), ("user1", "hi"), ("user1", "hi")])
    critic.score_form(good, [good], 4, 8)
    assert good.scores["form"] == 1.0 and good.scores["alternation"] == 1.0
    critic.score_form(copy, [copy, good], 4, 8)
    assert copy.scores["sibling_overlap"] == 1.0 and copy.scores["form"] == 0.8
    critic.score_form(stutter, [stutter], 4, 8)
    assert stutter.scores["alternation"] == 0.0 and stutter.scores["repeated"] == 0.75


def test_combined_score_renormalises_over_experts_that_answered():
    c = candidate([("user1", "hi")])
    c.scores.update(contradiction=0.2, coverage=0.5, quality=None, form=1.0)
    critic.combine(c, CriticConfig())
    assert c.scores["critic"] == round((0.35 * 0.8 + 0.15 * 0.5 + 0.2 * 1.0) / 0.7, 4)


# --- selection -----------------------------------------------------------------------------

def dialogue(index: int, critic_score: float, contradicted: float = 0.0, unsafe: float = 0.0, turns: int = 8,
             parse_error: str | None = None) -> Dialogue:
    return Dialogue(id=f"d{index}", pair_id="p", user1_persona=ALICE, user2_persona=BOB, candidate=index,
                    turns=[Turn(speaker="user1" if i % 2 == 0 else "user2", text=f"t{i}") for i in range(turns)],
                    scores={"critic": critic_score, "contradicted": contradicted, "unsafe": unsafe},
                    parse_error=parse_error)


def test_hard_filter_beats_a_higher_score_and_preferences_pair_best_with_worst():
    cfg = GenerateConfig(candidates=4)
    dialogues = [dialogue(0, 0.9, contradicted=1), dialogue(1, 0.7), dialogue(2, 0.6), dialogue(3, 0.2, unsafe=1)]
    pair = Pair(id="p", user1="a", user2="b", similarity=0.6)
    results = stage.select({"p": dialogues}, [pair], cfg)
    assert [d.id for d in results.best] == ["d1"]
    assert {(r.subject_id, r.reason) for r in results.rejections} == {("d0", "contradiction"), ("d3", "unsafe")}
    [preference] = results.preferences
    assert (preference.chosen_id, preference.rejected_id) == ("d1", "d3")
    assert preference.chosen_score - preference.rejected_score == pytest.approx(0.5)


def test_pair_without_acceptable_candidate_is_rejected_and_small_margins_make_no_preference():
    cfg = GenerateConfig(candidates=2)
    pair = Pair(id="p", user1="a", user2="b", similarity=0.6)
    none_ok = stage.select({"p": [dialogue(0, 0.5, turns=3), dialogue(1, 0.5, parse_error="x")]}, [pair], cfg)
    assert none_ok.best == [] and none_ok.rejections[-1].reason == "no_acceptable_candidate"
    close = stage.select({"p": [dialogue(0, 0.50), dialogue(1, 0.52)]}, [pair], cfg)
    assert [d.id for d in close.best] == ["d1"] and close.preferences == []


# --- the loop, end to end with a fake LLM ---------------------------------------------------

def write_inputs(tmp_path, n_pairs: int = 4):
    profiles, pairs = [], []
    for i in range(n_pairs):
        a = Profile(id=f"a{i}", attribute_ids=["x", "y"], attributes=ALICE)
        b = Profile(id=f"b{i}", attribute_ids=["z", "w"], attributes=BOB)
        profiles += [a, b]
        pairs.append(Pair(id=f"p{i}", user1=a.id, user2=b.id, similarity=0.6,
                          shared_topics=[SharedTopic(user1_attribute=ALICE[0], user2_attribute=BOB[0],
                                                     similarity=0.5)]))
    (tmp_path / "profiles.jsonl").write_text("".join(p.model_dump_json() + "\n" for p in profiles))
    (tmp_path / "pairs.jsonl").write_text("".join(p.model_dump_json() + "\n" for p in pairs))


def run_generate(rec, backend, nli, **handed) -> dict:
    """The stage as forge generate calls it, handed the recipe's backend and NLI sections; its summary rows."""
    return stage.run(rec.generate, StageContext(rec.run_dir, progress=False), backend, nli, chat=rec.backend,
                     nli_config=rec.nli, prompts_dir=rec.prompts_dir, **handed).summary


def recipe(tmp_path, **generate):
    return make_recipe(tmp_path, backend={"kind": "fake"},
                       generate={"min_turns": 4, "max_turns": 4, "candidates": 2, "rounds": 2, "examples": 1,
                                 "example_pool": 1, **generate})


def test_whole_mode_writes_scored_candidates_best_preferences_and_hands_over_examples(tmp_path):
    write_inputs(tmp_path)
    rec = recipe(tmp_path, mode="whole")
    calls = {"n": 0}

    def reply(request):
        if request.json:
            return json.dumps({k: {"score": 4, "reason": "fine"} for k in critic.RUBRIC} | {"unsafe": False})
        calls["n"] += 1
        return conversation("I have no dogs." if calls["n"] % 2 == 1 else "Hi, I have two dogs.")

    backend = ScriptedBackend(default=reply)
    rows = run_generate(rec, backend, KeywordNLI())
    dialogues = read_jsonl(tmp_path / "dialogues.jsonl", Dialogue)
    assert len(dialogues) == 8 and len({d.id for d in dialogues}) == 8
    assert all(d.scores["quality"] == 0.75 for d in dialogues)
    bad = [d for d in dialogues if d.turns[0].text == "I have no dogs."]
    assert len(bad) == 4 and all(d.scores["contradicted"] == 1.0 for d in bad)
    best = read_jsonl(tmp_path / "best.jsonl", Dialogue)
    assert len(best) == 4 and all(d.turns[0].text == "Hi, I have two dogs." for d in best)
    assert len(read_jsonl(tmp_path / "preferences.jsonl")) == 4
    overall = json.loads((tmp_path / "generate.manifest.json").read_text())["figures"]["overall"]
    assert (overall["contradiction_rate_single_shot"], overall["contradiction_rate_selected"]) == (1.0, 0.0)
    assert "contradiction rate: single-shot -> selected" in rows
    # round 2's requests show round 1's best conversation as the example
    round1_best = format_transcript(best[0].turns)
    generator_prompts = [r.messages[-1]["content"] for r in backend.seen if not r.json]
    assert sum(round1_best in p for p in generator_prompts) == 4  # 2 pairs x 2 candidates in round 2
    manifest = json.loads((tmp_path / "generate.manifest.json").read_text())
    assert manifest["status"] == "done" and manifest["counts"]["best"] == 4
    assert [r["contradiction_rate_selected"] for r in manifest["figures"]["rounds"]] == [0.0, 0.0]


def test_turns_mode_agents_see_their_own_persona_and_the_conversation_so_far(tmp_path):
    write_inputs(tmp_path, n_pairs=1)
    rec = recipe(tmp_path, mode="turns", rounds=1, candidates=1, examples=0, critic={"judge": False})
    backend = ScriptedBackend(default=lambda r: f"line {len(r.messages)}.")
    run_generate(rec, backend, KeywordNLI())
    [d] = read_jsonl(tmp_path / "dialogues.jsonl", Dialogue)
    assert [(t.speaker, t.text) for t in d.turns] == [("user1", "line 2."), ("user2", "line 2."),
                                                      ("user1", "line 4."), ("user2", "line 4.")]
    third = backend.seen[2].messages  # user1's second turn
    assert "I have two dogs." in third[0]["content"] and "nurse" not in third[0]["content"]
    assert [m["role"] for m in third] == ["system", "user", "assistant", "user"]
    assert third[2]["content"] == "line 2." and third[3]["content"] == "line 2."
    assert "quality" not in d.scores and d.scores["critic"] > 0


def test_resume_generates_only_missing_candidates(tmp_path):
    write_inputs(tmp_path, n_pairs=2)
    rec = recipe(tmp_path, mode="whole", rounds=1, critic={"judge": False})

    class Failing(ScriptedBackend):
        async def _stream_raw(self, requests):
            for index, request in enumerate(requests):
                self.seen.append(request)
                if index == 0:
                    yield index, Completion(text=None, error="HTTP 500 after 6 retries")
                else:
                    yield index, Completion(text=conversation(), finish_reason="stop")

    first = Failing()
    rows = run_generate(rec, first, KeywordNLI())
    assert rows["failed (re-run to retry)"] == 1
    assert len(read_jsonl(tmp_path / "dialogues.jsonl", Dialogue)) == 3
    assert json.loads((tmp_path / "generate.manifest.json").read_text())["status"] != "done"
    second = ScriptedBackend(default=lambda r: conversation())
    rows = run_generate(rec, second, KeywordNLI())
    assert len(second.seen) == 1 and "failed (re-run to retry)" not in rows
    dialogues = read_jsonl(tmp_path / "dialogues.jsonl", Dialogue)
    assert len(dialogues) == 4 and len({d.id for d in dialogues}) == 4
    assert len(read_jsonl(tmp_path / "best.jsonl", Dialogue)) == 2


def test_unparseable_candidate_is_kept_with_its_raw_text_and_refused(tmp_path):
    write_inputs(tmp_path, n_pairs=1)
    rec = recipe(tmp_path, mode="whole", rounds=1, critic={"judge": False})
    backend = ScriptedBackend(["They chatted about dogs.", conversation()])
    run_generate(rec, backend, KeywordNLI())
    dialogues = {d.candidate: d for d in read_jsonl(tmp_path / "dialogues.jsonl", Dialogue)}
    assert dialogues[0].parse_error and dialogues[0].reasons["raw"] == "They chatted about dogs."
    rejections = read_jsonl(tmp_path / "generate_rejections.jsonl")
    assert [(r["subject_id"], r["reason"]) for r in rejections] == [(dialogues[0].id, "unparseable")]


def test_missing_pairs_file_is_one_clear_line(tmp_path):
    result = subprocess.run([*forge_cmd(), "--run-dir", str(tmp_path), "--set", "backend.kind=fake", "generate"],
                            capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"forge: error: {tmp_path / 'pairs.jsonl'}: not found; run `forge pair` first or give generate.pairs / "
        "generate.profiles"]


@pytest.mark.integration
def test_generate_on_the_packaged_model_end_to_end(tmp_path, embedded_nli):
    """One pair, two candidates of four turns each, persona agents on SmolLM2, the embedded NLI (each turn
    is one batch through SmolLM2, about 240 prompt tokens a request: one pair, not two, halves it)."""
    write_inputs(tmp_path, n_pairs=1)
    result = subprocess.run(
        [*forge_cmd(), "--run-dir", str(tmp_path), "--set", "generate.turns=4", "--set", "generate.min_turns=4",
         "--set", "generate.candidates=2", "--set", "generate.rounds=1", "--set", "backend.batch_size=4",
         "--set", "generate.turn_max_tokens=32", "-q", "generate", "--no-judge"],
        capture_output=True, text=True, cwd=REPO, timeout=600)
    assert result.returncode == 0, result.stderr
    dialogues = read_jsonl(tmp_path / "dialogues.jsonl", Dialogue)
    assert len(dialogues) == 2
    for d in dialogues:
        assert d.provenance.params["mode"] == "turns"
        if not d.parse_error:
            assert [t.speaker for t in d.turns] == ["user1", "user2", "user1", "user2"]
            assert all(t.text for t in d.turns)
            assert 0.0 <= d.scores["contradiction"] <= 1.0 and 0.0 <= d.scores["critic"] <= 1.0
    manifest = json.loads((tmp_path / "generate.manifest.json").read_text())
    assert manifest["status"] == "done" and manifest["models"]["nli"].startswith("embedded")


def test_profiles_come_from_generate_then_what_the_caller_hands_then_the_run_dir(tmp_path):
    """generate reads no other stage's config: the caller hands pairing's profiles file on."""
    write_inputs(tmp_path)
    other = tmp_path / "elsewhere.jsonl"
    other.write_text((tmp_path / "profiles.jsonl").read_text())
    assert stage.input_paths(recipe(tmp_path).generate, tmp_path)[1] == tmp_path / "profiles.jsonl"
    assert stage.input_paths(recipe(tmp_path).generate, tmp_path, default_profiles=other)[1] == other
    assert stage.input_paths(recipe(tmp_path, profiles=str(other)).generate, tmp_path,
                             default_profiles=tmp_path / "x")[1] == other


def test_one_event_loop_serves_every_chunk_and_turn_and_the_backend_is_closed_once(tmp_path):
    """The backend keeps one loop (and so one client and its connections) for the whole stage."""
    import asyncio

    write_inputs(tmp_path, n_pairs=2)
    rec = recipe(tmp_path, mode="turns", rounds=1, candidates=1, examples=0, chunk_pairs=1, critic={"judge": False})

    class Watching(ScriptedBackend):
        def __init__(self, **kw):
            super().__init__(**kw)
            self.loops, self.closed = [], 0

        async def stream(self, requests):
            self.loops.append(asyncio.get_running_loop())
            async for item in super().stream(requests):
                yield item

        async def aclose(self):
            self.closed += 1

    backend = Watching(default=lambda r: f"line {len(r.messages)}.")
    run_generate(rec, backend, KeywordNLI())
    assert len(backend.loops) == 2 * 4  # two chunks (one pair each) x four turns
    assert len(set(map(id, backend.loops))) == 1 and backend.closed == 1


# --- turn-level selection (turns mode, generate.turn_candidates) ---------------------------------

def _digest(rows) -> str:
    import hashlib

    return hashlib.sha256(json.dumps(rows, sort_keys=True).encode()).hexdigest()[:16]


def test_one_candidate_per_turn_generates_exactly_what_it_did_before_selection_existed(tmp_path):
    """turn_candidates: 1 (the default) sends the same requests and writes the same bytes as the code
    before turn-level selection (the digests below were taken from that code, commit d29184d)."""
    write_inputs(tmp_path, n_pairs=2)
    rec = recipe(tmp_path, mode="turns", rounds=1, candidates=2, examples=1, turns=4, critic={"judge": False})
    replies = ["Hi, I have two dogs.", "I am a nurse.", "I have no dogs.", "Jazz is great.", "Ohio is home."]
    backend = ScriptedBackend(default=lambda r: replies[(r.seed or 0) % len(replies)])
    run_generate(rec, backend, KeywordNLI())
    requests = [[list(r.messages), r.seed, r.max_tokens, list(r.stop)] for r in backend.seen]
    assert len(requests) == 16
    assert (_digest(requests), _digest((tmp_path / "dialogues.jsonl").read_text())) == ("e8d7a88acbfb5f0e", "2d36a784b68ce81d")


def test_turn_selection_keeps_the_grounded_reply_that_contradicts_nothing(tmp_path):
    """Three replies per turn; the kept one is grounded in its speaker's persona and not refused for
    contradiction or form (a copy of the turn before, too long, empty), wherever it stands."""
    from persona_forge.samples import turn_messages

    write_inputs(tmp_path, n_pairs=1)
    rec = recipe(tmp_path, mode="turns", rounds=1, candidates=1, examples=0, turns=4, turn_candidates=3,
                 turn_max_words=20, critic={"judge": False})
    long_reply = "My dogs " + "and I walk " * 12 + "a lot."
    script = [
        "I have no dogs at all.", "Hello there!", "Hi! My two dogs say hello.",          # user1: kept 2
        "Hi! My two dogs say hello.", "I work as a nurse.", "Nice to meet you.",         # user2: kept 1
        "I live in Ohio, love it here.", "Cats are better, I have cats.", long_reply,    # user1: kept 0
        "", "Do you like jazz? I love jazz.", "What a day.",                              # user2: kept 1
    ]
    backend = ScriptedBackend(script)
    rows = run_generate(rec, backend, KeywordNLI())
    [d] = read_jsonl(tmp_path / "dialogues.jsonl", Dialogue)
    assert [t.text for t in d.turns] == ["Hi! My two dogs say hello.", "I work as a nurse.",
                                         "I live in Ohio, love it here.", "Do you like jazz? I love jazz."]
    assert [(c.kept, c.of, c.grounding, c.contradiction, c.form) for c in d.turn_choices] == [(2, 3, 0.9, 0.05, None),
                                                                                             (1, 3, 0.9, 0.05, None),
                                                                                             (0, 3, 0.9, 0.05, None),
                                                                                             (1, 3, 0.9, 0.05, None)]
    assert d.provenance.params["turn_candidates"] == 3 and "parse_error" not in rows
    # Each turn's three requests carry the same rendered prompt, with seeds of their own; the first
    # reply's seed is the one a single reply would get.
    assert len(backend.seen) == 12
    for step in range(4):
        group = backend.seen[3 * step:3 * step + 3]
        assert all(r.messages == group[0].messages for r in group) and len({r.seed for r in group}) == 3
        speaker = "user1" if step % 2 == 0 else "user2"
        persona, topic = (ALICE, ALICE[0]) if speaker == "user1" else (BOB, BOB[0])
        assert list(group[0].messages) == turn_messages(persona, d.turns[:step], speaker, topic)
    assert backend.seen[3].messages == (
        {"role": "system", "content": "You are a person chatting with someone you have just met. Stay in character; "
                                      "this is who you are:\n- I am a nurse.\n- I like jazz.\nYou may have this in "
                                      "common with them: \"I am a nurse.\"\nReply with one or two short, natural "
                                      "sentences, as this person would. Ask a question sometimes."},
        {"role": "user", "content": "Hi! My two dogs say hello."})
    assert [m["role"] for m in backend.seen[6].messages] == ["system", "user", "assistant", "user"]
    assert backend.seen[6].messages[1]["content"] == "(You meet someone new. Say hello and start the conversation.)"
    figures = json.loads((tmp_path / "generate.manifest.json").read_text())["figures"]
    assert figures["nli_pairs"]["turn_selection_pairs_judged"] == 22  # 2 sentences x 11 non-empty replies
    assert not (tmp_path / "generate_progress.jsonl").exists()


class Stop(Exception):
    """Stands in for a kill: raised by the backend in the middle of a run."""


def _request_reply(request) -> str:
    """A reply that depends only on the request (its seed and history), as a seeded model's would."""
    pool = ["I have no dogs at all.", "Hello there!", "My two dogs say hi.", "I love Ohio.", "I am a nurse.",
            "Jazz is my thing.", "What do you do?"]
    return pool[((request.seed or 0) + len(request.messages)) % len(pool)]


@pytest.mark.parametrize("turn_candidates, stop_at", [(1, 9), (3, 3), (3, 9)])
def test_a_run_stopped_in_the_middle_of_a_conversation_resumes_to_the_same_records(tmp_path, turn_candidates,
                                                                                  stop_at):
    settings = dict(mode="turns", rounds=1, candidates=2, examples=0, turns=6, chunk_pairs=1,
                    turn_candidates=turn_candidates, critic={"judge": False})

    class Stopping(ScriptedBackend):
        calls = 0

        async def stream(self, requests):
            Stopping.calls += 1
            if Stopping.calls == stop_at:  # in the middle of a turn: its replies are lost with the run
                raise Stop
            async for item in super().stream(requests):
                yield item

    whole = tmp_path / "whole"
    whole.mkdir()
    write_inputs(whole, n_pairs=2)
    uninterrupted = ScriptedBackend(default=_request_reply)
    run_generate(recipe(whole, **settings), uninterrupted, KeywordNLI())

    run = tmp_path / "stopped"
    run.mkdir()
    write_inputs(run, n_pairs=2)
    first = Stopping(default=_request_reply)
    with pytest.raises(Stop):
        run_generate(recipe(run, **settings), first, KeywordNLI())
    progress = read_jsonl(run / "generate_progress.jsonl")
    assert len(progress) == len({r["id"] for r in progress}) > 0
    second = ScriptedBackend(default=_request_reply)
    run_generate(recipe(run, **settings), second, KeywordNLI())

    assert (run / "dialogues.jsonl").read_text() == (whole / "dialogues.jsonl").read_text()
    assert (run / "best.jsonl").read_text() == (whole / "best.jsonl").read_text()
    # No turn was asked for twice: the finished turns were not generated again.
    assert len(first.seen) + len(second.seen) == len(uninterrupted.seen)
    assert not (run / "generate_progress.jsonl").exists()
    assert json.loads((run / "generate.manifest.json").read_text())["status"] == "done"


def _fake_adapter(folder, weights: bytes = b"weights"):
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text("{}")
    (folder / "adapter_model.safetensors").write_bytes(weights)
    return folder


def test_a_generator_adapter_is_applied_hashed_into_the_config_and_recorded(tmp_path):
    import hashlib

    from persona_forge.errors import UserError

    write_inputs(tmp_path, n_pairs=1)
    adapter = _fake_adapter(tmp_path / "gen" / "adapter")
    rec = recipe(tmp_path, mode="turns", rounds=1, candidates=1, examples=0, turns=2, generator=str(tmp_path / "gen"),
                 critic={"judge": False})
    assert stage.backend_config(rec.generate, rec.backend).adapter == adapter and getattr(rec.backend, "adapter", None) is None
    run_generate(rec, ScriptedBackend(default="Hi, I have two dogs."), KeywordNLI())
    manifest = json.loads((tmp_path / "generate.manifest.json").read_text())
    digest = hashlib.sha256(b"weights").hexdigest()[:16]
    assert manifest["config"]["generator"] == digest and "generator" not in manifest["config"]["generate"]
    assert manifest["models"]["generator_adapter"] == f"{adapter} (sha256 {digest})"
    # Retrained weights at the same path are another generator: the run refuses to mix them.
    (adapter / "adapter_model.safetensors").write_bytes(b"other weights")
    with pytest.raises(UserError, match="another config"):
        run_generate(rec, ScriptedBackend(default="Hi."), KeywordNLI())
    with pytest.raises(UserError, match="no LoRA adapter there"):
        nowhere = recipe(tmp_path, generator=str(tmp_path / "nowhere"))
        stage.backend_config(nowhere.generate, nowhere.backend)
    openai = make_recipe(tmp_path, backend={"kind": "openai", "base_url": "http://127.0.0.1:9/v1"},
                         generate={"generator": str(adapter)})
    with pytest.raises(UserError, match="serve it"):
        stage.backend_config(openai.generate, openai.backend)
