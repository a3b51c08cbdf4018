"""forge judge scoring: one rubric definition (prompt, schema, parser), probability-weighted scores
from scripted token distributions, both-order pairwise from P(A)/P(B), structured outputs with
their fallback on the stand-in server, the judge cache, the estimate, and the agreement figures."""

from __future__ import annotations

import json
import math

import pytest

from persona_forge.backends import ScriptedBackend
from persona_forge.backends.base import ChatRequest, Completion, options_from_completion
from persona_forge.config import OpenAIBackendConfig, load_recipe
from persona_forge.rubric import CONVERSATION, LIKERT, PAIRWISE, REPLY, expectation, parse_score
from persona_forge.schema import BigFiveAnswer, PairwiseJudgement, RubricJudgement
from persona_forge.stages import critic
from persona_forge.stages import judging as J
from persona_forge.store import read_jsonl
from conftest import STANDIN_KEY_ENV, standin_fixtures
from test_judge import CLEAN, _generations, run_judge

module_server, server = standin_fixtures("sk-judge-test")


# --- one rubric, one score rule ------------------------------------------------------------------

@pytest.mark.parametrize("value, expected", [
    (4, 4), (4.0, 4), ("4", 4), ("4/5", 4), ("4 out of 5", 4), (4.5, 4.5), ("about 4.5", 4.5), ("3.5/5", 3.5),
    (1, 1), (5, 5), (0, None), (7, None), ("10/10", None), ("great", None), (True, None), (None, None),
    ("0.5", None), (float("nan"), None),
])
def test_the_score_rule(value, expected):
    assert parse_score(value) == expected


def test_critic_and_forge_judge_read_scores_by_the_same_rule():
    """The critic used to take 4.5 (and the "1" of "10") from anywhere in a string; forge judge
    refused 4.5. Both now read rubric.py's rule."""
    answer = {"coherence": "4.5", "engagingness": "10/10", "naturalness": 3, "consistency": {"score": "2 of 5"},
              "unsafe": "no"}
    c = critic.Candidate("k", ["a"], ["b"], [])
    critic.read_judgement(c, Completion(text=json.dumps(answer), parsed=answer))
    parsed = CONVERSATION.parse(answer)
    assert parsed.scores == {"coherence": 4.5, "engagingness": None, "naturalness": 3, "consistency": 2}
    assert {k: c.scores.get(k) for k in CONVERSATION.keys} == {"coherence": 4.5, "engagingness": None,
                                                              "naturalness": 3.0, "consistency": 2.0}
    assert c.scores["quality"] == round(((4.5 + 3 + 2) / 3 - 1) / 4, 4) and c.scores["judge_unsafe"] == 0.0
    reply = {"persona": "4.5", "tone": "10/10", "natural": 3, "helpfulness": {"score": "2 of 5"}}
    assert J.parse_rubric(reply).scores == {"persona_consistency": 4.5, "tone": None, "helpfulness": 2,
                                            "naturalness": 3}


def test_schema_prompt_and_parser_come_from_one_rubric():
    schema = REPLY.json_schema()
    assert schema["required"] == list(REPLY.keys) == ["persona_consistency", "tone", "helpfulness", "naturalness"]
    assert schema["additionalProperties"] is False
    assert schema["properties"]["tone"]["properties"]["score"] == {"type": "integer", "enum": [1, 2, 3, 4, 5]}
    assert REPLY.response_format() == {"type": "json_schema",
                                       "json_schema": {"name": "reply_rubric", "strict": True, "schema": schema}}
    conversation = CONVERSATION.json_schema()
    assert list(conversation["properties"]) == ["coherence", "engagingness", "naturalness", "consistency", "unsafe",
                                                "unsafe_reason"]
    assert conversation["properties"]["unsafe"] == {"type": "boolean"}
    # the example the prompt shows is read back by the parser, key for key
    example = json.loads(REPLY.example())
    assert list(example) == list(REPLY.keys) and REPLY.parse(example).error is None
    assert CONVERSATION.parse(json.loads(CONVERSATION.example())).flags == {"unsafe": False}
    # the rendered prompts list the rubric's own criteria and questions
    from persona_forge.prompts import library

    text = library().render("judge/rubric", persona=["x"], history=[], reply="y", **REPLY.variables()).text
    for c in REPLY.criteria:
        assert f"- {c.key}: {c.question}" in text
    assert text.endswith(REPLY.example())
    request = critic.judge_request(critic.Candidate("k", ["a"], ["b"], []), library(),
                                   load_recipe(None, {}).generate.critic)
    assert request.schema == CONVERSATION.response_format() and request.json
    assert "- consistency: each speaker stays true to their own persona." in request.messages[1]["content"]
    assert PAIRWISE.json_schema()["properties"]["winner"]["enum"] == ["A", "B", "tie"]


def test_expectation_and_entropy():
    assert expectation({"1": 0, "2": 0, "3": 0, "4": 0.5, "5": 0.5}) == (4.5, 1.0)
    assert expectation({"1": 0.2, "2": 0.2, "3": 0.2, "4": 0.2, "5": 0.2}) == (3.0, round(math.log2(5), 4))
    assert expectation({"3": 2.0}) == (3.0, 0.0)      # normalised first
    assert expectation({}) == (None, None)
    assert LIKERT.expectation({"1": 0.25, "5": 0.75, "A": 9.0}) == (4.0, round(-(0.25 * math.log2(0.25) +
                                                                                 0.75 * math.log2(0.75)), 4))


def _logprobs(*positions):
    return {"content": [{"token": tokens[0][0], "logprob": math.log(tokens[0][1]),
                         "top_logprobs": [{"token": t, "logprob": math.log(p)} for t, p in tokens]}
                        for tokens in positions]}


def test_option_probs_from_an_endpoints_logprobs():
    options = ["1", "2", "3", "4", "5"]
    # a leading quote first, then the digit (" 4" and "4" are one option)
    lp = _logprobs([('"', 0.9), ("The", 0.1)], [(" 4", 0.5), ("4", 0.1), ("5", 0.2), ("I", 0.2)])
    out = options_from_completion(Completion(text='"4"', logprobs=lp), options)
    assert out.ok and out.probs["4"] == pytest.approx(0.75) and out.probs["5"] == pytest.approx(0.25)
    assert out.mass == pytest.approx(0.8) and not out.from_text
    # no logprobs sent: the answer in the text, one-hot
    plain = options_from_completion(Completion(text="I'd say 3."), options)
    assert plain.from_text and plain.probs == {"1": 0.0, "2": 0.0, "3": 1.0, "4": 0.0, "5": 0.0}
    assert not options_from_completion(Completion(text="no idea"), options).ok
    assert options_from_completion(Completion(text="3.5"), options).error
    letters = options_from_completion(Completion(text="A", logprobs=_logprobs([("A", 0.6), ("B", 0.2), ("a", 0.2)])),
                                      ["A", "B"])
    assert letters.probs == {"A": pytest.approx(0.75), "B": pytest.approx(0.25)}


# --- the stage with token probabilities (fake backend gaining the capability) ------------------------

def _distribution(request, options):
    """The scripted judge: rubric criteria 4 or 5 half and half (tone: certain 2); pairwise prefers
    the sft reply 0.8 / 0.2, shifted 0.1 towards position A; Big Five items all 4, 'party' 1 or 2."""
    text = request.messages[-1]["content"]
    if options == ("A", "B"):
        sft_first = "Reply A:\nMe: sft" in text
        p_a = (0.8 if sft_first else 0.2) + 0.1
        return {"A": p_a, "B": 1 - p_a}
    if "How accurately" in text:
        return {"1": 0.25, "2": 0.25} if "life of the party" in text else {"4": 0.9}
    if "Criterion: tone" in text:
        return {"2": 0.6}
    return {"4": 0.25, "5": 0.25}


def _recipe(run, **more):
    settings = {"run_dir": str(run), "backend.kind": "fake", "judge.scoring": "logprobs", "judge.personas": 1,
                "judge.cache": False}
    settings.update(more)
    return load_recipe(None, settings)


def test_expected_scores_pairwise_and_bigfive_from_token_distributions(tmp_path):
    run = tmp_path / "run"
    _generations(run / "eval" / "generations.jsonl")
    fake = ScriptedBackend(default="unused", default_distribution=_distribution)
    result = run_judge(_recipe(run), backend_factory=lambda c: fake)
    rubric = read_jsonl(run / "judge" / "judgements.jsonl", RubricJudgement)
    assert len(rubric) == 6 and all(r.method == "logprobs" and r.parse_error is None for r in rubric)
    r = rubric[0]
    assert r.scores == {"persona_consistency": 4.5, "tone": 2.0, "helpfulness": 4.5, "naturalness": 4.5}
    assert r.entropy == {"persona_consistency": 1.0, "tone": 0.0, "helpfulness": 1.0, "naturalness": 1.0}
    assert r.probs["tone"] == {"1": 0.0, "2": 1.0, "3": 0.0, "4": 0.0, "5": 0.0}
    assert result["rubric"]["sft"]["tone"]["value"] == 2.0 and result["rubric"]["base"]["tone"]["entropy"] == 0.0
    assert result["method"] == "logprobs"
    # one question per criterion: 6 replies x 4 criteria, no free text asked, nothing prefilled
    rubric_asked = [q for q in fake.seen if "Criterion:" in q.messages[-1]["content"]]
    assert len(rubric_asked) == 24 and not any(q.json for q in fake.seen)

    pairs = read_jsonl(run / "judge" / "pairwise.jsonl", PairwiseJudgement)
    assert len(pairs) == 6 and all(p.winner_model == "sft" for p in pairs)
    first = next(p for p in pairs if p.order == "base_first")
    assert first.probs == {"A": pytest.approx(0.3), "B": pytest.approx(0.7)}
    row = result["pairwise"]["sft"]
    # P(sft) in each order: 0.7 (sft second) and 0.9 (sft first): 0.8 averaged; the position's
    # pull shows exactly: mean P(A) = (0.3 + 0.9) / 2 = 0.6
    assert row["p_adapter"] == pytest.approx(0.8) and row["position_bias"] == pytest.approx(0.1)
    assert row["adapter_preferred"] == 3 and row["adapter_wins"] == 3 and row["unreadable"] == 0

    answers = read_jsonl(run / "judge" / "bigfive.jsonl", BigFiveAnswer)
    assert len(answers) == 50 and all(a.expected is not None and a.parse_error is None for a in answers)
    party = next(a for a in answers if "life of the party" in a.item)
    assert party.expected == 1.5 and party.answer == 1 and party.entropy == 1.0
    assert result["bigfive"]["base"]["unreadable"] == 0
    assert "position bias (mean P(A) - 0.5)" in (run / "judge" / "report.md").read_text()


def test_failed_option_requests_are_asked_again_and_unreadable_ones_counted(tmp_path):
    from persona_forge.backends.base import OptionProbs

    class Flaky(ScriptedBackend):
        calls = 0

        async def option_probs(self, requests, options, prefix=""):
            out = await super().option_probs(requests, options, prefix)
            Flaky.calls += 1
            if Flaky.calls == 1:
                out[0] = OptionProbs({}, error="HTTP 503")
            return out

    run = tmp_path / "run"
    _generations(run / "eval" / "generations.jsonl")
    fake = Flaky(default_distribution=lambda r, o: {} if "sft reply 2" in r.messages[-1]["content"] else {"3": 1})
    recipe = _recipe(run, **{"judge.pairwise": False, "judge.bigfive": False})
    with pytest.raises(J.UserError, match="1 judge or probe requests failed"):
        run_judge(recipe, backend_factory=lambda c: fake)
    assert len(read_jsonl(run / "judge" / "judgements.jsonl")) == 5
    result = run_judge(recipe, backend_factory=lambda c: fake)
    assert len(fake.seen) == 24 + 4
    assert result["rubric"]["sft"]["parse_errors"] == 1      # no probability on any option: counted
    assert result["rubric"]["base"]["persona_consistency"]["value"] == 3.0


# --- the judge cache -------------------------------------------------------------------------------

@pytest.mark.parametrize("scoring", ["logprobs", "text"])
def test_a_second_run_elsewhere_is_answered_from_the_cache(tmp_path, scoring):
    cache = tmp_path / "cache.sqlite"
    fake = ScriptedBackend(default=lambda r: CLEAN[:-1] + ', "winner": "B"}' if "Reply A" in
                           r.messages[-1]["content"] else CLEAN if "reply to judge" in r.messages[-1]["content"]
                           else "4", default_distribution=_distribution)
    fake.deterministic = True   # scripted by pure functions of the request: safe to cache
    results = []
    for name in ("one", "two"):
        run = tmp_path / name
        _generations(run / "eval" / "generations.jsonl")
        recipe = _recipe(run, **{"judge.scoring": scoring, "judge.cache": True, "judge.cache_path": str(cache)})
        before = len(fake.seen)
        results.append(run_judge(recipe, backend_factory=lambda c: fake))
        results[-1]["asked"] = len(fake.seen) - before
    first, second = results
    assert first["asked"] > 0 and first["cache"]["hits"] == 0 and first["cache"]["misses"] == first["asked"]
    assert second["asked"] == 0 and second["cache"] == {**second["cache"], "hits": first["asked"], "misses": 0}
    assert second["rubric"] == first["rubric"] and second["pairwise"] == first["pairwise"]
    manifest = json.loads((tmp_path / "two" / "judge.manifest.json").read_text())
    assert manifest["figures"]["cache"]["hits"] == first["asked"]
    # another seed is another question
    run = tmp_path / "three"
    _generations(run / "eval" / "generations.jsonl")
    run_judge(_recipe(run, **{"judge.scoring": scoring, "judge.cache_path": str(cache), "judge.cache": True,
                          "judge.seed": 7, "judge.bigfive": False}), backend_factory=lambda c: fake)
    assert len(fake.seen) > first["asked"]


def test_scripted_backends_are_not_cached_unless_marked(tmp_path):
    run = tmp_path / "run"
    _generations(run / "eval" / "generations.jsonl")
    fake = ScriptedBackend(default_distribution=_distribution)
    recipe = _recipe(run, **{"judge.cache": True, "judge.cache_path": str(tmp_path / "c.sqlite"),
                             "judge.bigfive": False})
    result = run_judge(recipe, backend_factory=lambda c: fake)
    assert result["cache"]["hits"] == 0 and result["cache"]["misses"] == 0
    assert not (tmp_path / "c.sqlite").exists()      # never opened


# --- the estimate is what is sent ----------------------------------------------------------------

@pytest.mark.parametrize("scoring", ["logprobs", "text"])
def test_the_estimate_equals_the_requests_sent(tmp_path, scoring):
    run = tmp_path / "run"
    _generations(run / "eval" / "generations.jsonl")
    prices = {"input": 2.0, "output": 8.0}
    recipe = _recipe(run, **{"judge.scoring": scoring, "backend.prices": prices})
    fake = ScriptedBackend(default=lambda r: CLEAN[:-1] + ', "winner": "A"}' if "Reply A" in
                           r.messages[-1]["content"] else CLEAN, default_distribution=_distribution)
    estimated = J.estimate(recipe.judge, recipe.run_dir, chat=recipe.backend, backend_factory=lambda c: fake)
    assert fake.seen == []                     # nothing sent
    result = run_judge(recipe, backend_factory=lambda c: fake)
    total = estimated["total"]
    assert total["requests"] == len(fake.seen) == (6 * 4 + 6 + 50 if scoring == "logprobs" else 6 + 6 + 50)
    sent = sum(u["requests"] for u in result["usage"].values())
    assert sent == total["requests"]
    # the fake counts words as tokens, and the estimate counts prompts with the backend's own counter
    assert total["prompt_tokens"] == sum(u["prompt_tokens"] for u in result["usage"].values())
    assert total["cost"] == pytest.approx((total["prompt_tokens"] * 2 + total["completion_tokens"] * 8) / 1e6)
    assert [p["part"] for p in estimated["parts"]] == ["judge: rubric", "judge: pairwise", "bigfive: base"]
    # after the run nothing is left to ask
    again = J.estimate(recipe.judge, recipe.run_dir, chat=recipe.backend, backend_factory=lambda c: fake)
    assert again["total"]["requests"] == 0


def test_cli_judge_estimate_prints_before_sending(tmp_path):
    import os
    import subprocess

    from conftest import REPO, forge_cmd

    run = tmp_path / "run"
    _generations(run / "eval" / "generations.jsonl", examples=2)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("backend: {kind: fake, prices: {input: 1.0, output: 4.0}}\n"
                      "judge: {personas: 1, scoring: text, cache: false}\n")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([*forge_cmd(), "--run-dir", str(run), "judge", "--recipe", str(recipe), "--estimate",
                           "--json"], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["total"]["requests"] == 4 + 4 + 50 and out["total"]["cost"] > 0
    assert not (run / "judge").exists()         # an estimate writes nothing


# --- structured outputs and logprobs against the stand-in server ----------------------------------

def _openai(url: str, **more) -> dict:
    return {"backend.kind": "openai", "backend.base_url": url, "backend.model": "standin-model",
            "backend.api_key_env": STANDIN_KEY_ENV, "backend.backoff_s": 0.01, "backend.max_retries": 1, **more}


def test_standin_judge_with_logprobs_scores_everything(tmp_path, server):
    server.reset()
    run = tmp_path / "run"
    _generations(run / "eval" / "generations.jsonl")
    result = run_judge(_recipe(run, **_openai(server.url), **{"judge.scoring": "auto"}))
    assert result["method"] == "logprobs"
    assert all(result["rubric"][m]["parse_errors"] == 0 for m in ("base", "sft"))
    assert result["pairwise"]["sft"]["unreadable"] == 0 and result["bigfive"]["base"]["unreadable"] == 0
    stats = server.stats()
    assert stats["logprobs"] == stats["chat"] == 6 * 4 + 6 + 50
    assert all(u["repairs"] == 0 and u["completion_tokens"] > 0 for u in result["usage"].values())


def test_standin_honouring_the_schema_needs_no_repair(tmp_path, server):
    server.reset()
    run = tmp_path / "run"
    _generations(run / "eval" / "generations.jsonl")
    result = run_judge(_recipe(run, **_openai(server.url), **{"judge.scoring": "text", "judge.bigfive": False}))
    stats = server.stats()
    assert stats["json_schema"] == stats["chat"] == 12 and stats["json_mode"] == 0
    assert result["usage"]["judge: rubric"]["repairs"] == 0 and result["rubric"]["base"]["parse_errors"] == 0
    assert result["usage"]["judge: pairwise"]["repairs"] == 0
    assert result["rubric"]["base"]["tone"]["value"] == 4.0
    assert result["pairwise"]["sft"]["unreadable"] == 0


@pytest.mark.parametrize("formats, mode, schema_asks, object_asks", [
    (["json_object"], "json_object", 1, 3),   # schema refused once, then json_object for all
    ([], "text", 1, 1),                       # both refused: the JSON is asked for in words
])
def test_a_refused_response_format_falls_back(server, formats, mode, schema_asks, object_asks):
    from persona_forge.backends.openai_compat import OpenAIBackend

    server.reset(formats=formats, default="json")
    backend = OpenAIBackend(OpenAIBackendConfig(base_url=server.url, model="m", api_key_env=STANDIN_KEY_ENV,
                                                concurrency=1, backoff_s=0.01))
    requests = [ChatRequest.of([{"role": "user", "content": f"judge {i}"}], json=True,
                               schema=REPLY.response_format()) for i in range(3)]
    completions = backend.complete_sync(requests)
    assert all(c.ok and c.parsed is not None for c in completions)
    assert backend.format_mode == mode and len(backend.format_fallbacks) == (1 if mode == "json_object" else 2)
    stats = server.stats()
    assert stats["json_schema"] == schema_asks and stats["json_mode"] == object_asks
    assert backend.usage.repairs == 0


def test_an_unrelated_400_does_not_change_the_format(server):
    from persona_forge.backends.openai_compat import OpenAIBackend

    server.reset()
    backend = OpenAIBackend(OpenAIBackendConfig(base_url=server.url, model="m", api_key_env=STANDIN_KEY_ENV,
                                                concurrency=1, backoff_s=0.01))
    out = backend.complete_sync([ChatRequest.of([{"role": "user", "content": "x [[fault:400]]"}], json=True,
                                                schema=REPLY.response_format())])
    assert out[0].error.startswith("HTTP 400") and backend.format_mode == "json_schema"


# --- agreement -----------------------------------------------------------------------------------

def _rj(gid, score, model="base"):
    return RubricJudgement(id=f"j-{gid}", generation_id=gid, example_id=gid, model=model,
                           scores={"persona_consistency": score})


def test_agreement_with_the_nli():
    records = [_rj("g1", 5), _rj("g2", 4.5), _rj("g3", 2), _rj("g4", 1.5), _rj("g5", None)]
    contradiction = {"g1": 0.01, "g2": 0.1, "g3": 0.7, "g4": 0.9, "g5": 0.99}
    out = J.nli_agreement(records, contradiction, threshold=0.5)
    assert out["replies"] == 4 and out["flagged"] == 2
    assert out["spearman"] == 1.0 and out["auc"] == 1.0
    assert J.auc([1, 2], [2, 3]) == pytest.approx((0 + 0 + 0.5 + 0) / 4)


def test_nli_contradiction_is_the_worst_persona_sentence():
    import numpy as np

    from persona_forge.schema import ChatMessage, EvalGeneration

    class NLI:
        def predict(self, pairs):
            return np.array([[0.1, 0.1, 0.8] if "cats" in a else [0.8, 0.1, 0.1] for a, _ in pairs])

    gen = EvalGeneration(id="g", example_id="e", source_id="s", model="base", model_digest="d",
                         messages=[ChatMessage(role="user", content="hi")], persona=["I love dogs.", "I hate cats."],
                         reference="r", reply="I have three cats.")
    assert J.nli_contradiction([gen], NLI()) == {"g": pytest.approx(0.8)}


def test_human_annotations_are_read_defensively(tmp_path):
    path = tmp_path / "annotations.jsonl"
    path.write_text("\n".join([
        json.dumps({"item": "g1", "annotator": "ann", "answer": 5}),
        json.dumps({"item": "g2", "annotator": "ann", "answer": "4/5"}),
        json.dumps({"item": "j-g3", "annotator": "bob", "answer": {"score": 2}}),
        json.dumps({"item": "p1", "annotator": "bob", "answer": "B"}),
        json.dumps({"item": "unknown", "annotator": "bob", "answer": 3}),
        "not json", json.dumps(["a list"]), json.dumps({"annotator": "no item", "answer": 3}),
        json.dumps({"item": "g4", "annotator": "ann"}),
    ]) + "\n")
    rows = J.read_annotations(path)
    assert len(rows) == 5
    folder = tmp_path / "judge"
    from persona_forge.store import atomic_write_jsonl

    atomic_write_jsonl(folder / "pairwise.jsonl", [PairwiseJudgement(id="p1", example_id="e", model_a="base",
                                                                     model_b="sft", order="base_first", winner="B",
                                                                     winner_model="sft")])
    defaults = load_recipe(None, {})
    ctx = J.Context(defaults.judge, defaults.backend, folder, None, [], [], [])
    out = J.human_agreement(rows, [_rj("g1", 4.5), _rj("g2", 4), _rj("g3", 1)], ctx)
    assert out == {"annotations": 5, "annotators": 2, "scored": 3, "pairwise": 1, "spearman": 1.0,
                   "mean_abs_diff": pytest.approx(round((0.5 + 0 + 1) / 3, 4)), "pairwise_agreement": 1.0}
    assert J.read_annotations(tmp_path / "missing.jsonl") == []
