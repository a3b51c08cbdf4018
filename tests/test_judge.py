"""forge judge: reading clean, noisy and invalid judge replies; both-order pairwise logic; the Big
Five probes and their scoring; the stage end to end with scripted backends; prompt texts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from persona_forge.backends import ScriptedBackend
from persona_forge.config import load_recipe
from persona_forge.contract import StageContext
from persona_forge.errors import UserError
from persona_forge.prompts import library
from persona_forge.rubric import REPLY
from persona_forge.schema import BigFiveAnswer, ChatMessage, EvalGeneration, PairwiseJudgement, RubricJudgement
from persona_forge.stages import judging as J
from persona_forge.store import atomic_write_jsonl, read_jsonl

CLEAN = ('{"persona_consistency": {"score": 4, "reason": "fits"}, "tone": {"score": 5, "reason": "warm"}, '
         '"helpfulness": {"score": 3, "reason": "ok"}, "naturalness": {"score": 2, "reason": "stiff"}}')


# --- rubric parsing --------------------------------------------------------------------------------

def test_rubric_clean():
    out = J.parse_rubric(None, CLEAN)
    assert out.scores == {"persona_consistency": 4, "tone": 5, "helpfulness": 3, "naturalness": 2}
    assert out.reasons == {"persona_consistency": "fits", "tone": "warm", "helpfulness": "ok", "naturalness": "stiff"}
    assert out.error is None


def test_rubric_noisy():
    noisy = ("Sure! Here is my evaluation:\n```json\n{'Persona consistency': {'Score': '4/5', 'Reason': 'fits'},"
             " 'Tone': 5.0, 'tone_reason': 'warm', 'helpfulness': {'rating': '3 out of 5'}, "
             "'Naturalness': {'score': 2,},}\n```\nHope this helps.")
    out = J.parse_rubric(None, noisy)
    assert out.scores == {"persona_consistency": 4, "tone": 5, "helpfulness": 3, "naturalness": 2}
    assert out.reasons == {"persona_consistency": "fits", "tone": "warm"}
    assert out.error is None
    nested = J.parse_rubric({"scores": {"persona": 1, "tone": 1, "helpful": 2, "natural": 5}})
    assert nested.scores == {"persona_consistency": 1, "tone": 1, "helpfulness": 2, "naturalness": 5}


def test_rubric_invalid():
    # the score rule (rubric.py): decimals on the scale are kept, out of range is unreadable
    partial = J.parse_rubric({"persona_consistency": 7, "tone": 0, "helpfulness": 3.5, "naturalness": "4"})
    assert partial.scores == {"persona_consistency": None, "tone": None, "helpfulness": 3.5, "naturalness": 4}
    assert partial.error == "missing or out of range: persona_consistency, tone"
    assert J.parse_rubric(None, "I think it is a good reply.").error == \
        "unreadable: no JSON object or array found"
    assert J.parse_rubric(None, '{"tone": {"score": 4').error == "unreadable: JSON is truncated (unbalanced brackets)"
    assert J.parse_rubric([1, 2, 3]).error == "not a JSON object"
    assert J.parse_rubric({"verdict": "good"}).error == "no criterion scored 1-5"
    assert J.parse_rubric({"tone": True, "persona_consistency": None}).scores["tone"] is None


# --- pairwise parsing and both orders --------------------------------------------------------------

@pytest.mark.parametrize("reply, expected", [
    ('{"winner": "A", "reason": "more natural"}', ("A", "more natural", None)),
    ('The answer: {"Winner": "Reply B"}', ("B", None, None)),
    ("```json\n{'winner': 'b', 'explanation': 'x'}\n```", ("B", "x", None)),
    ('{"winner": "Tie", "reason": "same"}', ("tie", "same", None)),
    ('{"winner": "both"}', ("tie", None, None)),
    ('{"winner": "C"}', (None, None, "winner 'C' is not A, B or tie")),
    ("A is better", (None, None, "unreadable: no JSON object or array found")),
    ('["A"]', (None, None, "not a JSON object")),
])
def test_parse_winner(reply, expected):
    assert J.parse_winner(None, reply) == expected


def _pj(example, order, winner, adapter="sft"):
    a, b = ("base", adapter) if order == "base_first" else (adapter, "base")
    model = {"A": a, "B": b, "tie": "tie"}.get(winner) if winner else None
    return PairwiseJudgement(id=f"{example}-{order}", example_id=example, model_a=a, model_b=b, order=order,
                             winner=winner, winner_model=model)


def test_combine_orders():
    assert J.combine_orders(_pj("e", "base_first", "B"), _pj("e", "base_second", "A")) == "sft"
    assert J.combine_orders(_pj("e", "base_first", "A"), _pj("e", "base_second", "B")) == "base"
    assert J.combine_orders(_pj("e", "base_first", "tie"), _pj("e", "base_second", "tie")) == "tie"
    # always "A": the position, not the reply, decided
    assert J.combine_orders(_pj("e", "base_first", "A"), _pj("e", "base_second", "A")) == "inconsistent"
    assert J.combine_orders(_pj("e", "base_first", "A"), _pj("e", "base_second", None)) is None
    assert J.combine_orders(_pj("e", "base_first", "A"), None) is None


def test_summarize_pairwise_counts_agreement_and_position_bias():
    records = [
        _pj("e1", "base_first", "B"), _pj("e1", "base_second", "A"),      # sft both times
        _pj("e2", "base_first", "A"), _pj("e2", "base_second", "A"),      # position A both times
        _pj("e3", "base_first", "A"), _pj("e3", "base_second", "B"),      # base both times
        _pj("e4", "base_first", "tie"), _pj("e4", "base_second", "tie"),
        _pj("e5", "base_first", None), _pj("e5", "base_second", "B"),     # one unreadable
    ]
    out = J.summarize_pairwise(records)["sft"]
    assert out == {"examples": 5, "both_orders_read": 4, "adapter_wins": 1, "base_wins": 1, "ties": 1,
                   "inconsistent": 1, "unreadable": 1, "agreement": 0.75, "adapter_win_rate": 0.25,
                   "base_win_rate": 0.25, "position_a_rate": 4 / 7, "answers": {"B": 3, "A": 4, "tie": 2}}


# --- Big Five --------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("4 - I love parties!", (4, None)), ("I'd say 2.", (2, None)), ("Hmm, 5/5 for sure", (5, None)),
    ("That's moderately accurate for me", (4, None)), ("Very inaccurate, I hate crowds", (1, None)),
    ("This sentence describes me extremely inaccurately and not at all.", (1, None)),
    ("This answer describes me quite well and not inaccurately.", (4, None)),
    ("It describes me extremely well - it's not entirely incorrect", (5, None)),
    ("This sentence describes me extremely poorly", (1, None)), ("This describes me perfectly!", (5, None)),
    ("Somewhat inaccurate, though very accurate for my brother", (2, None)),
    ("I am 30 years old", (None, "no answer 1-5 found")), ("It is inaccurate", (None, "no answer 1-5 found")), ("10 out of 10", (None, "no answer 1-5 found")),
    ("2.5", (None, "no answer 1-5 found")), ("", (None, "empty reply")), (None, (None, "empty reply")),
])
def test_parse_likert(text, expected):
    assert J.parse_likert(text) == expected


def test_packaged_items_are_grouped_paraphrases():
    items = J.load_items(J.default_items())
    assert len(items) == 50
    by_trait = {t: [i for i in items if i.trait == t] for t in J.TRAITS}
    assert all(len(v) == 10 for v in by_trait.values())
    groups = {}
    for item in items:
        groups.setdefault(item.group, []).append(item)
    assert len(groups) == 25 and all(len(g) == 2 and len({i.keyed for i in g}) == 1 for g in groups.values())
    assert len({i.id for i in items}) == 50


def _answer(model, persona, item_id, trait, keyed, group, answer):
    return BigFiveAnswer(id=f"{model}{persona}{item_id}", model=model, model_digest="d", persona_id=persona,
                         persona=["x"], item_id=item_id, trait=trait, keyed=keyed, group=group, item="i",
                         answer=answer)


def test_summarize_bigfive_keys_and_consistency():
    answers = [
        _answer("base", "p1", "E1a", "extraversion", "+", "E1", 5),
        _answer("base", "p1", "E1b", "extraversion", "+", "E1", 4),
        _answer("base", "p1", "E4a", "extraversion", "-", "E4", 1),   # keyed 5
        _answer("base", "p1", "E4b", "extraversion", "-", "E4", 1),   # keyed 5
        _answer("base", "p2", "E1a", "extraversion", "+", "E1", 2),
        _answer("base", "p2", "E1b", "extraversion", "+", "E1", None),
    ]
    out = J.summarize_bigfive(answers)["base"]
    assert out["traits"]["extraversion"] == {"mean": pytest.approx((5 + 4 + 5 + 5 + 2) / 5), "scored": 5,
                                             "persona_sd": pytest.approx(abs(4.75 - 2) / 2)}
    assert out["traits"]["openness"] == {"mean": None, "scored": 0, "persona_sd": None}
    # groups with two answers: (p1, E1) |5-4| = 1, (p1, E4) 0; p2's E1 has one readable answer
    assert out["consistency"] == {"groups": 2, "mean_abs_diff": 0.5, "identical": 0.5}
    assert out["unreadable"] == 1 and out["answers"] == 6 and out["personas"] == 2


# --- prompts render exactly ------------------------------------------------------------------------

def test_prompts_render_exact_text():
    lib = library()
    pair = lib.render("judge/pairwise", persona=["I have a dog."], history=[{"speaker": "Them", "text": "Hi!"}],
                      reply_a="Hello", reply_b="Hey there")
    assert [m["role"] for m in pair.messages] == ["system", "user"]
    assert pair.messages[1]["content"] == (
        "The replying user has this persona:\n- I have a dog.\n\nThe conversation so far (the replying user is "
        "\"Me\"):\nThem: Hi!\n\nReply A:\nMe: Hello\n\nReply B:\nMe: Hey there\n\nWhich reply is better as the next "
        "message from this person: more consistent with the persona, more natural, more engaging? Answer \"tie\" "
        "only if they are equally good.\n\nAnswer with only this JSON object:\n"
        "{\"winner\": \"A\" or \"B\" or \"tie\", \"reason\": \"one sentence\"}")
    probe = lib.render("judge/bigfive", item="I am the life of the party.")
    assert probe.messages == ({"role": "user", "content": (
        "Quick personality quiz question! How accurately does this statement describe you?\n"
        "\"I am the life of the party.\"\nAnswer with a single number from 1 to 5 (1 = very inaccurate, "
        "2 = moderately inaccurate, 3 = neither accurate nor inaccurate, 4 = moderately accurate, "
        "5 = very accurate), then a few words why.")},)
    rubric = lib.render("judge/rubric", persona=["I have a dog."], history=[{"speaker": "Me", "text": "Yo"}],
                        reply="Dogs rule", **REPLY.variables())
    assert rubric.messages[1]["content"].startswith(
        "The replying user has this persona:\n- I have a dog.\n\nThe conversation so far (the replying user is "
        "\"Me\"):\nMe: Yo\n\nThe reply to judge:\nMe: Dogs rule\n\nScore the reply from 1 (very poor) to 5")
    assert rubric.messages[1]["content"].endswith('"naturalness": {"score": 1, "reason": "..."}}')


# --- the stage, with scripted backends --------------------------------------------------------------

def run_judge(recipe, **handed) -> dict:
    """The stage as forge judge calls it, handed the recipe's backend, NLI and eval's bootstrap and
    threshold; judge.json's content."""
    return J.run(recipe.judge, StageContext(recipe.run_dir, progress=False), chat=recipe.backend,
                 nli_config=recipe.nli, bootstrap=(recipe.eval.bootstrap, recipe.eval.seed),
                 contradiction=recipe.eval.contradiction, prompts_dir=recipe.prompts_dir, **handed).data


def _generations(path: Path, examples: int = 3) -> list[EvalGeneration]:
    rows = []
    for e in range(examples):
        for model, reply in (("base", f"base reply {e}"), ("sft", f"sft reply {e}")):
            rows.append(EvalGeneration(
                id=f"{model}-{e}", example_id=f"ex{e}", source_id=f"s{e}", model=model,
                model_digest=f"digest-{model}",
                messages=[ChatMessage(role="system", content="persona"), ChatMessage(role="user", content=f"hi {e}")],
                persona=[f"I am person {e % 2}."], reference="ref", reply=reply))
    atomic_write_jsonl(path, rows)
    return rows


def _judge_reply(request):
    text = request.messages[-1]["content"]
    if "Reply A:" in text:   # prefer the sft reply wherever it stands
        return '{"winner": "A", "reason": "a"}' if "Reply A:\nMe: sft" in text else '{"winner": "B", "reason": "b"}'
    if "base reply" in text:
        return CLEAN
    return "no idea"          # sft replies: unreadable, even after the repair request


def test_stage_end_to_end_with_scripted_backends(tmp_path):
    run = tmp_path / "run"
    _generations(run / "eval" / "generations.jsonl")
    recipe = load_recipe(None, {"run_dir": str(run), "backend.kind": "fake", "judge.personas": 2})
    judge = ScriptedBackend(default=_judge_reply)
    probes = {}

    def factory(config):
        if config.adapter is None and not probes.get("judge-made"):
            probes["judge-made"] = True
            return judge
        backend = ScriptedBackend(default=lambda r: "4 I think so" if "life of the party" in r.messages[-1]["content"] else "2")
        probes.setdefault("probe", []).append(backend)
        return backend

    result = run_judge(recipe, backend_factory=factory)
    folder = run / "judge"
    rubric = read_jsonl(folder / "judgements.jsonl", RubricJudgement)
    assert len(rubric) == 6
    base = [r for r in rubric if r.model == "base"]
    assert all(r.scores["tone"] == 5 and r.parse_error is None for r in base)
    assert all(r.parse_error and r.parse_error.startswith("unreadable") for r in rubric if r.model == "sft")
    assert result["rubric"]["base"]["tone"]["value"] == 5.0
    assert result["rubric"]["sft"]["parse_errors"] == 3 and result["rubric"]["sft"]["tone"]["value"] is None

    pairs = read_jsonl(folder / "pairwise.jsonl", PairwiseJudgement)
    assert len(pairs) == 6 and {p.order for p in pairs} == {"base_first", "base_second"}
    assert all(p.winner_model == "sft" for p in pairs)
    assert result["pairwise"]["sft"]["adapter_wins"] == 3 and result["pairwise"]["sft"]["agreement"] == 1.0
    assert result["pairwise"]["sft"]["position_a_rate"] == 0.5

    answers = read_jsonl(folder / "bigfive.jsonl", BigFiveAnswer)
    # no eval/metrics.json here: only the base model is probed; two distinct personas x 50 items
    assert len(answers) == 100 and {a.model for a in answers} == {"base"}
    probe_request = probes["probe"][0].seen[0]
    assert probe_request.messages[0]["role"] == "system" and "- I am person 0." in probe_request.messages[0]["content"]
    assert probe_request.messages[1]["role"] == "user" and "How accurately" in probe_request.messages[1]["content"]
    e1 = [a for a in answers if a.group == "E1"]
    assert {a.answer for a in e1} == {4, 2}   # "life of the party" 4, its paraphrase 2
    assert result["bigfive"]["base"]["consistency"]["mean_abs_diff"] == pytest.approx(
        # E1 differs by 2 for both personas; every other group answered 2 and 2
        2 * 2 / 50)
    for name in ("judge.json", "judge.png", "report.md"):
        assert (folder / name).stat().st_size > 0
    report = (folder / "report.md").read_text()
    assert "| sft | 3 | 3 | 0 | 0 | 0 | 0 | 1.00 | 0.50 |" in report

    # A re-run asks nothing again.
    asked = len(judge.seen)
    probes.clear()
    probes["judge-made"] = False
    run_judge(recipe, backend_factory=factory)
    assert len(judge.seen) == asked and "probe" not in probes


def test_stage_without_generations_is_one_clear_error(tmp_path):
    recipe = load_recipe(None, {"run_dir": str(tmp_path / "run"), "backend.kind": "fake"})
    with pytest.raises(UserError, match=r"eval/generations.jsonl: no generations to judge; run forge eval first"):
        run_judge(recipe)


def test_bad_items_file(tmp_path):
    bad = tmp_path / "items.jsonl"
    bad.write_text(json.dumps({"id": "x", "trait": "grumpiness", "keyed": "+", "group": "g", "text": "t"}) + "\n")
    with pytest.raises(UserError, match="items.jsonl:1: trait must be one of"):
        J.load_items(bad)


def test_cli_judge_with_the_fake_backend(tmp_path, forge):
    run = tmp_path / "run"
    _generations(run / "eval" / "generations.jsonl", examples=2)
    always_a = CLEAN[:-1] + ', "winner": "A"}'   # rubric fields, a pairwise answer, and a 4 for the probes
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"backend: {{kind: fake, default_reply: {json.dumps(always_a)}}}\njudge: {{personas: 1}}\n")
    proc = forge("--run-dir", str(run), "judge", "--recipe", str(recipe), "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["rubric"]["base"]["persona_consistency"]["value"] == 4.0
    assert out["rubric"]["sft"]["naturalness"]["value"] == 2.0
    # "A" in both orders: every verdict inconsistent, agreement 0, P(A) = 1
    assert out["pairwise"]["sft"] == {**out["pairwise"]["sft"], "inconsistent": 2, "agreement": 0.0,
                                      "position_a_rate": 1.0, "adapter_wins": 0, "base_wins": 0}
    # every probe answered 4: keyed + items 4, keyed - items 2
    traits = out["bigfive"]["base"]["traits"]
    assert traits["extraversion"]["mean"] == pytest.approx((6 * 4 + 4 * 2) / 10)
    assert out["bigfive"]["base"]["consistency"] == {"groups": 25, "mean_abs_diff": 0.0, "identical": 1.0}


@pytest.mark.integration
def test_judge_on_the_packaged_model(tmp_path):
    """The local default as judge and as the model under test: weak, but every rubric criterion,
    pairwise question and Big Five item gets a score from the token probabilities (none
    unreadable), both orders are asked, and the probes are answered in persona."""
    run = tmp_path / "run"
    _generations(run / "eval" / "generations.jsonl", examples=2)
    items = tmp_path / "items.jsonl"
    rows = [json.loads(line) for line in J.default_items().read_text().splitlines()]
    items.write_text("".join(json.dumps(r) + "\n" for r in rows if r["group"][1] == "1"))  # one group per trait
    recipe = load_recipe(None, {"run_dir": str(run), "backend.threads": 2, "judge.personas": 1,
                                "judge.items": str(items), "judge.cache": False})
    result = run_judge(recipe)
    assert result["method"] == "logprobs"
    rubric = read_jsonl(run / "judge" / "judgements.jsonl", RubricJudgement)
    assert len(rubric) == 4 and all(r.parse_error is None and r.method == "logprobs" for r in rubric)
    assert all(1 <= v <= 5 for r in rubric for v in r.scores.values())
    assert all(0 <= b <= 2.33 for r in rubric for b in r.entropy.values())
    assert sum(result["rubric"][m]["n"] for m in ("base", "sft")) == 4
    pairs = read_jsonl(run / "judge" / "pairwise.jsonl", PairwiseJudgement)
    assert sorted(p.order for p in pairs) == ["base_first", "base_first", "base_second", "base_second"]
    assert all(p.winner in ("A", "B") and p.probs["A"] + p.probs["B"] == pytest.approx(1, abs=1e-4) for p in pairs)
    assert result["pairwise"]["sft"]["unreadable"] == 0 and result["pairwise"]["sft"]["p_adapter"] is not None
    answers = read_jsonl(run / "judge" / "bigfive.jsonl", BigFiveAnswer)
    assert len(answers) == 10 and all(a.expected is not None and a.parse_error is None for a in answers)
    assert result["bigfive"]["base"]["answers"] == 10 and result["bigfive"]["base"]["unreadable"] == 0
    assert (run / "judge" / "report.md").read_text().startswith("# forge judge report")


@pytest.mark.integration
def test_local_option_probs_batched_equal_one_by_one():
    """Left padding and positions: a prompt's answer distribution does not depend on its batch."""
    from persona_forge.backends.base import ChatRequest
    from persona_forge.backends.local import LocalBackend
    from persona_forge.config import LocalBackendConfig

    backend = LocalBackend(LocalBackendConfig(threads=2, batch_size=4), progress=False)
    requests = [ChatRequest.of([{"role": "user", "content": text + " Answer with a single digit from 1 to 5."}])
                for text in ("Rate pizza.", "How much do you like long walks on the beach at sunset with friends?",
                             "Rate this reply: hello")]
    together = backend.option_probs_sync(requests, ("1", "2", "3", "4", "5"))
    alone = [backend.option_probs_sync([r], ("1", "2", "3", "4", "5"))[0] for r in requests]
    for t, a in zip(together, alone):
        assert t.ok and sum(t.probs.values()) == pytest.approx(1.0)
        assert 0 < t.mass <= 1
        for option in t.probs:
            assert t.probs[option] == pytest.approx(a.probs[option], abs=2e-3)
    assert backend.usage.requests == 6 and backend.usage.completion_tokens == 0


def test_failed_judge_requests_are_retried_on_rerun(tmp_path):
    from persona_forge.backends.base import Completion

    class Flaky(ScriptedBackend):
        def __init__(self):
            super().__init__(default=CLEAN)
            self.calls = 0

        async def _stream_raw(self, requests):
            self.calls += 1
            async for index, completion in super()._stream_raw(requests):
                yield index, (Completion(text=None, error="HTTP 503") if self.calls == 1 and index == 0 else completion)

    run = tmp_path / "run"
    _generations(run / "eval" / "generations.jsonl")
    recipe = load_recipe(None, {"run_dir": str(run), "backend.kind": "fake", "judge.pairwise": False,
                                "judge.bigfive": False})
    backend = Flaky()
    with pytest.raises(UserError, match=r"1 judge or probe requests failed after retries \(first: rubric: HTTP 503\)"):
        run_judge(recipe, backend_factory=lambda c: backend)
    assert len(read_jsonl(run / "judge" / "judgements.jsonl")) == 5
    result = run_judge(recipe, backend_factory=lambda c: backend)
    assert len(backend.seen) == 7 and result["rubric"]["base"]["n"] + result["rubric"]["sft"]["n"] == 6
