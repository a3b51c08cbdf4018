"""forge restyle: rewrites through a scripted backend, checked by stub NLI, encoder and classifier."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest

from conftest import STANDIN_KEY_ENV, KeywordNLI, make_recipe, one_line_error, standin_fixtures
from persona_forge import layout
from persona_forge.backends import ScriptedBackend
from persona_forge.config import RestyleConfig
from persona_forge.contract import StageContext
from persona_forge.errors import UserError
from persona_forge.prompts import render
from persona_forge.schema import Dialogue, Rejection, Rewrite
from persona_forge.stages import restyle
from persona_forge.store import read_jsonl
from persona_forge.styles import StyleClassifier, StyleLine, default_corpus, load_corpus, split

ALICE = ["I have two dogs.", "I live in Ohio."]
BOB = ["I am a nurse.", "I like jazz."]


def conversation(i: int = 0) -> dict:
    return {"user1_persona": ALICE, "user2_persona": BOB, "turns": [
        {"speaker": "user1", "text": f"Hi! I have two dogs, number {i}."},
        {"speaker": "user2", "text": "Nice. I am a nurse."}]}


def write_data(path: Path, n: int = 1) -> Path:
    path.write_text("".join(json.dumps(conversation(i)) + "\n" for i in range(n)), encoding="utf-8")
    return path


def bag_of_words(texts):
    """A deterministic stand-in encoder: hashed word counts, normalised."""
    out = np.zeros((len(texts), 64), dtype=np.float32)
    for i, text in enumerate(texts):
        for word in re.findall(r"[a-z']+", text.lower()):
            out[i, int(hashlib.md5(word.encode()).hexdigest(), 16) % 64] += 1
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    return out / np.maximum(norms, 1e-9)


class KeywordStyles:
    """The target style when the line holds its marker word, else "direct"."""

    styles = ["direct", "warm", "witty"]
    heldout = {"n": 3, "accuracy": 1.0, "styles": styles, "confusion": [[1, 0, 0], [0, 1, 0], [0, 0, 1]]}
    markers = {"warm": "lovely", "witty": "ha"}

    def predict_proba(self, texts):
        out = np.full((len(texts), 3), 0.05)
        for i, text in enumerate(texts):
            words = set(re.findall(r"[a-z]+", text.lower()))
            hit = next((s for s, m in self.markers.items() if m in words), "direct")
            out[i, self.styles.index(hit)] = 0.9
        return out


def cfg(data: Path, **kw) -> RestyleConfig:
    return RestyleConfig(data=data, styles=kw.pop("styles", ["warm"]), speaker=kw.pop("speaker", "user1"), **kw)


def run(tmp_path: Path, config: RestyleConfig, backend, nli=None, **kw):
    return restyle.run(config, StageContext(tmp_path / "run", progress=False), backend, nli or KeywordNLI(),
                       embed=bag_of_words, classifier=kw.pop("classifier", KeywordStyles()), **kw)


def rewrites(tmp_path: Path) -> list[Rewrite]:
    return read_jsonl(tmp_path / "run" / layout.RESTYLE_REWRITES, Rewrite)


# --- the checks ----------------------------------------------------------------------------------

def test_a_rewrite_that_keeps_the_fact_passes(tmp_path):
    data = write_data(tmp_path / "data.jsonl")
    fake = ScriptedBackend(default='Rewritten: "Oh hi, how lovely, I have two dogs, number 0!"')
    result = run(tmp_path, cfg(data), fake)
    [record] = rewrites(tmp_path)
    assert record.passed and record.content_ok and record.style_ok and record.reason is None
    assert record.text == "Oh hi, how lovely, I have two dogs, number 0!"
    assert record.checks["facts_stated"] == 1 and record.checks["facts_dropped"] == []
    assert result.counts["passed"] == 1 and result.figures["pass_share"] == 1.0
    assert read_jsonl(tmp_path / "run" / layout.RESTYLE_REJECTIONS) == []
    [styled] = read_jsonl(tmp_path / "run" / layout.restyled("warm"), Dialogue)
    assert styled.turns[0].text == record.text and styled.turns[1].text == "Nice. I am a nurse."
    assert styled.scores["restyle_kept"] == 1.0 and styled.scores["critic"] == 1.0


def test_a_rewrite_that_drops_the_fact_is_rejected(tmp_path):
    data = write_data(tmp_path / "data.jsonl")
    run(tmp_path, cfg(data), ScriptedBackend(default="Hi there, how lovely to meet you, number 0!"))
    [record] = rewrites(tmp_path)
    assert not record.passed and record.reason == "fact_dropped"
    assert record.checks["facts_dropped"] == ["I have two dogs."]
    [rejection] = read_jsonl(tmp_path / "run" / layout.RESTYLE_REJECTIONS, Rejection)
    assert rejection.reason == "fact_dropped" and rejection.subject_id == record.id
    assert "I have two dogs." in rejection.detail["why"]
    [styled] = read_jsonl(tmp_path / "run" / layout.restyled("warm"), Dialogue)
    assert styled.turns[0].text == "Hi! I have two dogs, number 0."  # the failed rewrite left out
    assert styled.scores["restyle_kept"] == 0.0 and "restyle" in styled.reasons


def test_a_rewrite_that_contradicts_is_rejected(tmp_path):
    data = write_data(tmp_path / "data.jsonl")
    run(tmp_path, cfg(data), ScriptedBackend(default="Lovely, I have two cats, number 0, and no dogs."))
    [record] = rewrites(tmp_path)
    assert record.reason == "contradiction" and not record.content_ok
    assert record.checks["contradiction_forward"] > 0.8 or record.checks["contradiction_backward"] > 0.8


def test_a_rewrite_in_the_wrong_style_and_one_that_drifts_are_rejected(tmp_path):
    data = write_data(tmp_path / "data.jsonl")
    run(tmp_path, cfg(data, styles=["warm", "witty"]),
        ScriptedBackend(replies=["I have two dogs, number 0.",  # warm: kept content, no warm marker
                                 "Ha. Two dogs. Zebras, pianos, weather, bicycles, dogs"]))  # witty: drifted
    by_style = {r.style: r for r in rewrites(tmp_path)}
    assert by_style["warm"].reason == "style_missed" and by_style["warm"].content_ok
    assert by_style["warm"].checks["style_predicted"] == "direct"
    assert by_style["witty"].reason == "drift" and by_style["witty"].checks["similarity"] < 0.5


def test_an_empty_answer_is_kept_as_a_parse_error(tmp_path):
    data = write_data(tmp_path / "data.jsonl")
    run(tmp_path, cfg(data), ScriptedBackend(default='""'))
    [record] = rewrites(tmp_path)
    assert record.reason == "empty" and record.parse_error and record.text is None


def test_clean_rewrite():
    assert restyle.clean_rewrite('Here is the line: "Hello there."\nExtra.') == "Hello there."
    assert restyle.clean_rewrite("User 1: Hi!") == "Hi!"
    assert restyle.clean_rewrite("  \n...") is None


# --- the stage: resume, inputs, requests --------------------------------------------------------

def test_resume_makes_no_calls_and_a_larger_n_extends(tmp_path):
    data = write_data(tmp_path / "data.jsonl", n=3)
    fake = ScriptedBackend(default="Lovely, I have two dogs!")
    run(tmp_path, cfg(data, n=2, speaker="both", styles=["warm", "witty"]), fake)
    assert len(fake.seen) == 2 * 2 * 2  # conversations x replies x styles
    first = rewrites(tmp_path)
    again = ScriptedBackend(default="never asked")
    result = run(tmp_path, cfg(data, n=2, speaker="both", styles=["warm", "witty"]), again)
    assert again.seen == [] and rewrites(tmp_path) == first
    assert result.summary["status"].startswith("already done")
    more = ScriptedBackend(default="Lovely, I have two dogs!")
    run(tmp_path, cfg(data, n=3, speaker="both", styles=["warm", "witty"]), more)
    assert len(more.seen) == 4  # only the third conversation's replies
    assert len({r.id for r in rewrites(tmp_path)}) == len(rewrites(tmp_path)) == 12


def test_a_killed_run_resumes_without_duplicates(tmp_path):
    data = write_data(tmp_path / "data.jsonl", n=2)
    config = cfg(data, chunk=1)
    calls = {"n": 0}

    def dies_on_second(request):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return "Lovely, I have two dogs!"

    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, config, ScriptedBackend(default=dies_on_second))
    assert len(rewrites(tmp_path)) == 1
    fake = ScriptedBackend(default="Lovely, I have two dogs!")
    result = run(tmp_path, config, fake)
    assert len(fake.seen) == 1 and len(rewrites(tmp_path)) == 2 and result.counts["rewrites"] == 2


def test_another_input_or_config_is_refused_without_force(tmp_path):
    data = write_data(tmp_path / "data.jsonl")
    run(tmp_path, cfg(data), ScriptedBackend(default="Lovely, two dogs."))
    other = write_data(tmp_path / "other.jsonl", n=2)
    with pytest.raises(UserError, match="another input"):
        run(tmp_path, cfg(other), ScriptedBackend())
    with pytest.raises(UserError, match="another config"):
        run(tmp_path, cfg(data, examples=1), ScriptedBackend())
    forced = restyle.run(cfg(data, examples=1), StageContext(tmp_path / "run", force=True, progress=False),
                         ScriptedBackend(default="Lovely, two dogs."), KeywordNLI(), embed=bag_of_words,
                         classifier=KeywordStyles())
    assert forced.counts["rewrites"] == 1 and any((tmp_path / "run" / ".trash").iterdir())


def test_failed_requests_are_not_written_and_retried_next_run(tmp_path):
    data = write_data(tmp_path / "data.jsonl")

    class Failing(ScriptedBackend):
        async def _stream_raw(self, requests):
            from persona_forge.backends import Completion
            for index, request in enumerate(requests):
                self.seen.append(request)
                yield index, Completion(text=None, error="HTTP 500: down")

    result = run(tmp_path, cfg(data), Failing())
    assert result.failed == 1 and rewrites(tmp_path) == []
    again = ScriptedBackend(default="Lovely, I have two dogs!")
    assert run(tmp_path, cfg(data), again).failed == 0 and len(again.seen) == 1


def test_the_request_shows_the_voice_examples_persona_and_line(tmp_path):
    data = write_data(tmp_path / "data.jsonl")
    fake = ScriptedBackend(default="Lovely, I have two dogs!")
    run(tmp_path, cfg(data, speaker="user2", examples=2), fake)
    [request] = fake.seen
    system, user = request.messages
    assert "Voice: warm and encouraging" in system["content"]
    warm_lines = {line.text for line in load_corpus(default_corpus()) if line.style == "warm"}
    shown = [ln[2:] for ln in system["content"].splitlines() if ln.startswith("- ")]
    assert len(shown) == 2 and set(shown) <= warm_lines
    assert user["content"] == ('The speaker:\n- I am a nurse.\n- I like jazz.\n'
                               'The other person said: "Hi! I have two dogs, number 0."\n'
                               'Rewrite this line in the warm voice: "Nice. I am a nurse."')
    assert request.max_tokens == 64 and request.temperature == 0.7


def test_rewrite_prompt_renders_exactly():
    rendered = render("restyle/rewrite", style="calm", description="calm and grounding", examples=["Breathe."],
                      persona=[], previous=None, text="I am late.")
    assert [m["role"] for m in rendered.messages] == ["system", "user"]
    assert rendered.messages[0]["content"] == (
        "You rewrite one line of a chat in a given voice. Keep every fact, name, number and meaning of the line; "
        "change only its tone and wording. Do not add new facts. Reply with the rewritten line only.\n"
        "Voice: calm and grounding\nLines in this voice:\n- Breathe.")
    assert rendered.messages[1]["content"] == 'Rewrite this line in the calm voice: "I am late."'


def test_a_style_without_corpus_lines_is_refused(tmp_path):
    data = write_data(tmp_path / "data.jsonl")
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text('{"style": "warm", "text": "Lovely!"}\n{"style": "witty", "text": "Ha."}\n')
    config = RestyleConfig(data=data, corpus=corpus, styles=["calm"])
    with pytest.raises(UserError, match="no lines for style 'calm'"):
        run(tmp_path, config, ScriptedBackend())


# --- the style classifier -----------------------------------------------------------------------

def test_the_classifier_learns_separable_styles_and_reports_held_out_accuracy():
    words = {"warm": "lovely wonderful proud", "witty": "ha irony joke", "direct": "do it now"}
    topics = ["dogs", "work", "bread", "music", "rain", "school", "tea", "bikes", "books", "hills"]
    lines = [StyleLine(s, f"{w} {t}") for s, w in words.items() for t in topics]
    train, test = split(lines, 0.2, seed=0)
    assert len(test) == 6 and {ln.style for ln in test} == set(words)
    assert not {(ln.style, ln.text) for ln in test} & {(ln.style, ln.text) for ln in train}
    classifier = StyleClassifier(bag_of_words).fit(train, test)
    assert classifier.heldout["accuracy"] == 1.0 and classifier.heldout["n"] == 6
    assert sum(map(sum, classifier.heldout["confusion"])) == 6
    assert classifier.predict(["so lovely and wonderful"]) == ["warm"]


def test_the_packaged_corpus_has_five_styles_of_thirty():
    lines = load_corpus(default_corpus())
    counts = {s: sum(ln.style == s for ln in lines) for s in RestyleConfig().styles}
    assert counts == {"warm": 30, "witty": 30, "direct": 30, "socratic": 30, "calm": 30}


def test_the_stage_trains_the_classifier_and_writes_its_chart(tmp_path):
    data = write_data(tmp_path / "data.jsonl")
    result = run(tmp_path, cfg(data), ScriptedBackend(default="Lovely, two dogs!"), classifier=None)
    accuracy = result.figures["classifier_heldout_accuracy"]
    assert 0.0 <= accuracy <= 1.0 and result.figures["classifier_heldout_n"] == 30
    stored = json.loads((tmp_path / "run" / layout.RESTYLE_CLASSIFIER).read_text())
    assert stored["accuracy"] == accuracy and len(stored["confusion"]) == 5
    assert (tmp_path / "run" / layout.RESTYLE_CONFUSION).stat().st_size > 1000


# --- config and CLI -----------------------------------------------------------------------------

def test_an_unknown_style_in_the_recipe_names_the_close_one(tmp_path):
    with pytest.raises(UserError, match="did you mean 'warm'"):
        make_recipe(tmp_path, restyle={"styles": ["warn"]})


def test_cli_bad_input_is_one_line(forge, tmp_path):
    missing = one_line_error(forge("--run-dir", str(tmp_path / "r"), "restyle", "--data", str(tmp_path / "no.jsonl")))
    assert "no.jsonl: no such file" in missing
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"user1_persona": "not a list", "user2_persona": [], "turns": []}\n')
    line = one_line_error(forge("--run-dir", str(tmp_path / "r"), "restyle", "--data", str(bad)))
    assert "bad.jsonl:1" in line and "user1_persona" in line
    line = one_line_error(forge("--run-dir", str(tmp_path / "r"), "restyle", "--data", str(bad), "--styles", "warm,wity"))
    assert "--styles" in line and "did you mean 'witty'" in line


def test_cli_restyles_with_the_fake_backend(forge, tmp_path, monkeypatch):
    from persona_forge.nli import base

    monkeypatch.setattr(base, "load_nli", lambda *a, **k: KeywordNLI())
    monkeypatch.setattr("persona_forge.embeddings.Embedder.__call__", lambda self, texts: bag_of_words(texts))
    data = write_data(tmp_path / "data.jsonl")
    ran = forge("--run-dir", str(tmp_path / "r"), "-q", "restyle", "--data", str(data), "--styles", "warm,calm",
                "--speaker", "user1", "--set", "backend.kind=fake", "--set", "backend.default_reply=Lovely, two dogs.")
    assert ran.returncode == 0, ran.stderr
    records = read_jsonl(tmp_path / "r" / layout.RESTYLE_REWRITES, Rewrite)
    assert sorted(r.style for r in records) == ["calm", "warm"]
    assert (tmp_path / "r" / layout.restyled("calm")).is_file()


# --- the voices of style adapters ---------------------------------------------------------------

def test_voices_scores_each_style_adapter_and_draws_the_confusion(tmp_path):
    from persona_forge.schema import EvalGeneration

    replies = {"base": ["I do it now.", "I do it now."], "warm": ["How lovely!", "Do it now."],
               "witty": ["Ha, sure.", "Ha, right."]}
    rows = []
    for model, texts in replies.items():
        for i, text in enumerate(texts):
            rows.append(EvalGeneration(id=f"{model}{i}", example_id=str(i), source_id="s", model=model, model_digest="d",
                                       messages=[], persona=ALICE, reference="r", reply=text,
                                       metrics={"contradicts": float(model == "witty" and i == 0)}))
    path = tmp_path / "generations.jsonl"
    path.write_text("".join(r.model_dump_json() + "\n" for r in rows))
    result = restyle.evaluate_voices(RestyleConfig(), StageContext(tmp_path / "run", progress=False), path,
                                     classifier=KeywordStyles())
    report = result.data
    assert report["adapters"] == ["warm", "witty"] and report["style_accuracy"] == 0.75
    assert report["models"]["warm"]["style_accuracy"] == 0.5 and report["models"]["witty"]["style_accuracy"] == 1.0
    assert report["models"]["base"]["predicted"] == {"direct": 2, "warm": 0, "witty": 0}
    assert report["models"]["witty"]["contradiction_rate"] == 0.5
    assert report["confusion_rows"] == ["warm", "witty"] and report["confusion"] == [[1, 1, 0], [0, 0, 2]]
    assert (tmp_path / "run" / layout.VOICES_CONFUSION).stat().st_size > 1000
    assert "| warm | 2 | 0.50 | 0.00 | 1 | 1 | 0 |" in (tmp_path / "run" / layout.VOICES_TABLE).read_text()


def test_voices_without_generations_is_one_line(forge, tmp_path):
    line = one_line_error(forge("--run-dir", str(tmp_path / "r"), "voices"))
    assert "generations.jsonl: no generations" in line and "forge eval" in line


def test_a_styled_file_is_training_data_for_curate(tmp_path):
    """restyle/<style>.jsonl reads back as scored Dialogue records, and curate's sample targets the rewrite."""
    from persona_forge import corpora
    from persona_forge.config import CurateConfig
    from persona_forge.stages import curate

    data = write_data(tmp_path / "data.jsonl")
    run(tmp_path, cfg(data, speaker="user2"), ScriptedBackend(default="Lovely! I am a nurse, you know."))
    conv = corpora.load_conversations(tmp_path / "run" / layout.restyled("warm"))
    assert conv.scored and conv.dialogues[0].scores["critic"] == 1.0
    samples, _ = curate.build_samples(conv, CurateConfig(), "warm.jsonl")
    assert samples[0].messages[-1].content == "Lovely! I am a nurse, you know."


# --- through an OpenAI-compatible endpoint (the stand-in) ---------------------------------------

STANDIN_SECRET = "sk-test-restyle-5c2e"
module_server, server = standin_fixtures(STANDIN_SECRET)


def opening_phrase(style: str) -> str:
    """The first sentence of the style corpus's first line of `style` ("Oh, that sounds wonderful!")."""
    first = next(line.text for line in load_corpus(default_corpus()) if line.style == style)
    return re.match(r".*?[.!?]", first).group(0)


class PhraseStyles:
    """A stand-in classifier that reads a style in a line holding that style's corpus phrase, else "direct"."""

    styles = ["calm", "direct", "warm", "witty"]
    heldout = {}

    def __init__(self):
        self.phrases = {s: opening_phrase(s) for s in ("calm", "warm", "witty")}

    def predict_proba(self, texts):
        out = np.full((len(texts), len(self.styles)), 0.05)
        for i, text in enumerate(texts):
            hit = next((s for s, p in self.phrases.items() if p in text), "direct")
            out[i, self.styles.index(hit)] = 0.85
        return out


def test_forge_restyle_through_an_openai_endpoint(forge, server, tmp_path, monkeypatch):
    """forge restyle with backend.kind openai: one request per (reply, style) with the reply and the voice in
    it; the stand-in answers warm and witty rewrites with a phrase of their style and calm ones without any,
    so 4 rewrites pass and the 2 calm ones miss their style."""
    from persona_forge.nli import base

    monkeypatch.setattr(base, "load_nli", lambda *a, **k: KeywordNLI())
    monkeypatch.setattr("persona_forge.embeddings.Embedder.__call__", lambda self, texts: bag_of_words(texts))
    monkeypatch.setattr(restyle, "fitted_classifier", lambda *a, **k: PhraseStyles())
    phrases = {s: opening_phrase(s) for s in ("warm", "witty")}
    server.reset(default="restyle", phrases=phrases)
    data = write_data(tmp_path / "data.jsonl", n=2)
    ran = forge("--run-dir", str(tmp_path / "r"), "-q", "restyle", "--data", str(data), "--styles", "warm,witty,calm",
                "--speaker", "user1", "--set", "backend.kind=openai", "--set", f"backend.base_url={server.url}",
                "--set", "backend.model=standin-model", "--set", f"backend.api_key_env={STANDIN_KEY_ENV}")
    assert ran.returncode == 0, ran.stderr

    stats = server.stats()
    assert stats["chat"] == 6 and stats["by_model"] == {"standin-model": 6}  # 2 replies x 3 styles, no retries
    descriptions = RestyleConfig().descriptions
    asked = []
    for request in stats["recent"]:
        system, user = request["messages"]
        style = re.search(r"in the (\w+) voice", user["content"]).group(1)
        assert f"Voice: {descriptions[style]}" in system["content"]
        original = re.search(r'voice: "(.*)"$', user["content"]).group(1)
        assert "- I have two dogs.\n- I live in Ohio." in user["content"]  # the speaker's persona
        asked.append((style, original))
    assert sorted(asked) == sorted((s, f"Hi! I have two dogs, number {i}.") for s in ("warm", "witty", "calm")
                                   for i in range(2))

    records = {(r.style, r.original): r for r in read_jsonl(tmp_path / "r" / layout.RESTYLE_REWRITES, Rewrite)}
    assert records[("warm", "Hi! I have two dogs, number 0.")].text == \
        f"{phrases['warm']} Hi! I have two dogs, number 0."
    assert sorted((s, r.passed, r.reason) for (s, _), r in records.items()) == [
        ("calm", False, "style_missed"), ("calm", False, "style_missed"),
        ("warm", True, None), ("warm", True, None), ("witty", True, None), ("witty", True, None)]
    manifest = json.loads((tmp_path / "r" / "restyle.manifest.json").read_text())
    assert manifest["counts"]["passed"] == 4 and manifest["counts"]["rejections"] == 2
    assert manifest["counts"]["rejected_style_missed"] == 2
    assert len(read_jsonl(tmp_path / "r" / layout.RESTYLE_REJECTIONS, Rejection)) == 2
    assert manifest["models"]["chat"].startswith("openai") or "standin-model" in manifest["models"]["chat"]
