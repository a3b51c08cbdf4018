"""forge eval: each metric on hand-checked examples, the protocol's examples, the stage with fakes
(resume, aggregation, outputs), and an integration run on the packaged model with an adapter."""

from __future__ import annotations

import json
import math
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, forge_cmd, make_recipe, one_line_error
from persona_forge import metrics as M
from persona_forge.backends import ScriptedBackend
from persona_forge.config import load_recipe
from persona_forge.contract import StageContext
from persona_forge.errors import UserError
from persona_forge.samples import next_reply
from persona_forge.schema import EvalGeneration, Turn
from persona_forge.stages import evaluation as E
from persona_forge.store import read_jsonl

SPC_TEST = REPO / "corpora" / "spc" / "test.jsonl.gz"


# --- metrics, hand-checked ---------------------------------------------------------------------------

def test_sentence_bleu_hand_checked():
    # 6 tokens each; matches 1-4-grams: 5/6, 3/5, 2/4, 1/3; no brevity penalty:
    # (5/6 * 3/5 * 2/4 * 1/3) ** (1/4) = 0.53728...
    assert M.sentence_bleu("the cat sat on a mat", "the cat sat on the mat") == pytest.approx(53.7285, abs=1e-3)
    assert M.sentence_bleu("the cat sat on the mat", "the cat sat on the mat") == pytest.approx(100.0)
    assert M.sentence_bleu("", "the cat sat on the mat") == 0.0


def test_sentence_bleu_is_smoothed():
    # No 3- or 4-gram match: unsmoothed BLEU is 0; exp smoothing gives 1/2 and 1/4 counts instead.
    # hypothesis "the dog ran" vs "the dog sat": 2/3, 1/2, smoothed 3-gram 1/(2*1)=0.5 of total 1,
    # 4-gram: effective order 3 (hypothesis has no 4-grams) -> (2/3 * 1/2 * 1/2) ** (1/3) * BP(1)
    assert M.sentence_bleu("the dog ran", "the dog sat") == pytest.approx(100 * (2 / 3 * 1 / 2 * 1 / 2) ** (1 / 3),
                                                                          abs=1e-3)


def test_corpus_bleu_sums_statistics_like_sacrebleu():
    import sacrebleu

    hyps = ["the cat sat on a mat", "hello there", ""]
    refs = ["the cat sat on the mat", "hello there friend", "nothing at all"]
    expected = sacrebleu.corpus_bleu(hyps, [refs]).score
    assert M.corpus_bleu(hyps, refs) == pytest.approx(expected)
    # summed: matches 7/8, 4/6, 2/4, 1/3; lengths 8 vs 12 -> brevity penalty exp(1 - 12/8)
    assert expected == pytest.approx(100 * (7 / 8 * 4 / 6 * 2 / 4 * 1 / 3) ** 0.25 * math.exp(-0.5))
    stats = [M.bleu_stats(h, r) for h, r in zip(hyps, refs)]
    assert stats[0] == M.BleuStats(6, 6, (5, 3, 2, 1), (6, 5, 4, 3))
    assert M.BleuStats.from_list(stats[0].as_list()) == stats[0]


def test_rouge_hand_checked():
    scores = M.rouge("the cat sat on a mat", "the cat sat on the mat")
    assert scores["rouge1"] == pytest.approx(5 / 6)
    assert scores["rouge2"] == pytest.approx(3 / 5)
    assert scores["rougeL"] == pytest.approx(5 / 6)
    # Porter stemming: "dogs" / "dog" and "running" / "run" count as matches
    assert M.rouge("dogs running", "dog run")["rouge1"] == pytest.approx(1.0)
    assert M.rouge("", "anything") == {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}


def test_bertscore_on_packaged_minilm_survives_empty_strings():
    scorer = M.load_bertscore(6)
    out = scorer(["I love dogs.", "", "I love dogs.", "hello"], ["I love dogs.", "hi there", "I hate cats.", ""])
    assert out[0] == pytest.approx((1.0, 1.0, 1.0), abs=1e-5)
    assert out[1] == (0.0, 0.0, 0.0)
    assert out[3] == (0.0, 0.0, 0.0)
    p, r, f = out[2]
    assert 0.3 < f < 0.95 and f == pytest.approx(2 * p * r / (p + r), abs=1e-5)
    assert "layer 6" in scorer.describe() and "no baseline rescaling" in scorer.describe()


class FakeNLI:
    """Contradiction 0.9 when the reply says "hate", else 0.2."""

    def __init__(self):
        self.seen = []

    def predict(self, pairs, progress=None):
        self.seen.extend(pairs)
        return np.array([[0.05, 0.05, 0.9] if "hate" in h else [0.4, 0.4, 0.2] for _, h in pairs])


def test_max_contradiction_over_attributes_and_empty_reply():
    nli = FakeNLI()
    out = M.max_contradiction(nli, [["I love dogs.", "I am tall."], ["I sing."]], ["I hate dogs", "   "])
    assert out == [pytest.approx(0.9), None]
    assert nli.seen == [("I love dogs.", "I hate dogs"), ("I am tall.", "I hate dogs")]


class UniformLM:
    """Uniform logits over V tokens: every token's NLL is log V, so perplexity is exactly V."""

    def __init__(self, vocab: int):
        import torch

        self.vocab = vocab
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.calls = []

    def parameters(self):
        return iter([self.weight])

    def __call__(self, input_ids, attention_mask):
        import torch

        self.calls.append(input_ids.shape)

        class Out:
            logits = torch.zeros((*input_ids.shape, self.vocab))
        return Out()


class CharTokenizer:
    pad_token_id = 0

    def apply_chat_template(self, messages, add_generation_prompt, tokenize, return_dict):
        text = "".join(m["content"] for m in messages) + ("|" if add_generation_prompt else "")
        return [ord(c) % 50 + 1 for c in text]

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [ord(c) % 50 + 1 for c in text]}


def test_reference_nll_counts_reference_tokens_only():
    lm = UniformLM(vocab=64)
    prompts = [[{"role": "user", "content": "hi"}], [{"role": "user", "content": "a much longer prompt"}]]
    out = M.reference_nll(lm, CharTokenizer(), prompts, ["abc", "de"], batch_size=2)
    assert [t for _, t in out] == [3, 2]
    for nll, tokens in out:
        assert nll == pytest.approx(tokens * math.log(64), rel=1e-5)
        assert M.perplexity(nll, tokens) == pytest.approx(64.0, rel=1e-5)
    assert lm.calls == [(2, len("a much longer prompt|de"))]   # one batch, padded to the longest


def test_bootstrap_is_seeded_percentile_and_paired():
    values = [0.0, 1.0] * 50
    idx = M.bootstrap_indices(100, 1000, seed=7)
    assert np.array_equal(idx, M.bootstrap_indices(100, 1000, seed=7))
    out = M.interval(M.mean_of(values), idx, 100)
    assert out["value"] == 0.5
    assert 0.38 < out["low"] < 0.45 and 0.55 < out["high"] < 0.62
    constant = M.interval(M.mean_of([0.3] * 10), M.bootstrap_indices(10, 200, 0), 10)
    assert constant == {"value": pytest.approx(0.3), "low": pytest.approx(0.3), "high": pytest.approx(0.3)}
    assert M.interval(M.mean_of([None, 1.0]), M.bootstrap_indices(2, 50, 0), 2)["value"] == 1.0


def test_corpus_perplexity_weights_tokens():
    stat = M.corpus_perplexity_of([2.0, 8.0], [1, 4])
    assert stat(np.array([0, 1])) == pytest.approx(math.exp(10 / 5))


# --- protocol ----------------------------------------------------------------------------------------

def _recipe(tmp_path: Path, **eval_cfg):
    return make_recipe(tmp_path / "run", backend={"kind": "fake"}, eval=eval_cfg)


def test_examples_follow_the_study_protocol(tmp_path):
    recipe = _recipe(tmp_path, limit=3)
    examples, skipped = E.load_examples(SPC_TEST, recipe.eval)
    assert len(examples) == 3 and skipped == 0
    first = json.loads(__import__("gzip").open(SPC_TEST, "rt").readline())
    turns = [Turn(**t) for t in first["turns"]]
    assert turns[7].speaker == "user2"
    messages, reference = next_reply(first["user2_persona"], turns, 7, 6)
    assert examples[0].messages == messages and examples[0].reference == reference == turns[7].text
    assert examples[0].persona == first["user2_persona"]
    assert examples[0].source_id == "spc-test-00001"
    # system + turns 1..7 (6 context turns + the prompt); the last one is the other user's turn 7
    assert [m.role for m in messages] == ["system"] + ["user", "assistant"] * 3 + ["user"]
    assert messages[-1].content == turns[6].text


def test_examples_bad_input_is_one_clear_error(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"user1_persona": [], "user2_persona": [], "turns": "no"}\n')
    with pytest.raises(UserError, match=r"bad.jsonl:1: not a conversation"):
        E.load_examples(bad, _recipe(tmp_path).eval)
    short = tmp_path / "short.jsonl"
    short.write_text(json.dumps({"user1_persona": ["a"], "user2_persona": ["b"],
                                 "turns": [{"speaker": "user1", "text": "hi"}]}) + "\n")
    with pytest.raises(UserError, match="no conversation has a reply at turn 8"):
        E.load_examples(short, _recipe(tmp_path).eval)


def test_adapter_options():
    assert E.parse_adapter_options(["sft=runs/x/train/sft/adapter"]) == {"sft": Path("runs/x/train/sft/adapter")}
    assert E.parse_adapter_options(["runs/x/train/dpo/adapter"]) == {"dpo": Path("runs/x/train/dpo/adapter")}
    with pytest.raises(UserError, match="given twice"):
        E.parse_adapter_options(["a=x", "a=y"])


# --- the stage with fakes ----------------------------------------------------------------------------

def _fake_adapter(folder: Path, content: bytes = b"weights") -> Path:
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text("{}")
    (folder / "adapter_model.safetensors").write_bytes(content)
    return folder


class FakeGenerators:
    """base repeats the reference's words exactly for the first example, else says "ok";
    the adapter always says it hates things (contradiction under FakeNLI)."""

    def __init__(self, examples):
        self.by_prompt = {e.messages[-1].content: e.reference for e in examples}
        self.backends = {}

    def __call__(self, cfg, chat, model, progress):
        if model.name == "base":
            first = next(iter(self.by_prompt))
            reply = lambda r: self.by_prompt[first] if r.messages[-1]["content"] == first else "ok"  # noqa: E731
        else:
            reply = "I hate everything"
        backend = self.backends.setdefault(model.name, ScriptedBackend(default=reply))
        return E.Generator(backend, None, f"fake {model.name}")


def run_eval(recipe, **handed) -> dict:
    """The stage as forge eval calls it, handed the recipe's backend and NLI sections; metrics.json's content."""
    return E.run(recipe.eval, StageContext(recipe.run_dir, progress=False), chat=recipe.backend, nli_config=recipe.nli,
                 **handed).data


def _fake_scorers():
    def bert(c, r):
        return [(0.0, 0.0, 0.0) if not x.strip() else ((1.0,) * 3 if x == y else (0.5,) * 3) for x, y in zip(c, r)]

    return E.Scorers(lambda: bert, FakeNLI)


def test_stage_generates_scores_aggregates_and_resumes(tmp_path):
    recipe = _recipe(tmp_path, limit=4, bootstrap=200)
    examples, _ = E.load_examples(SPC_TEST, recipe.eval)
    adapter = _fake_adapter(tmp_path / "train" / "sft" / "adapter")
    fakes = FakeGenerators(examples)
    result = run_eval(recipe, adapters={"sft": adapter}, scorers=_fake_scorers(), generator_factory=fakes)

    folder = tmp_path / "run" / "eval"
    records = read_jsonl(folder / "generations.jsonl", EvalGeneration)
    assert len(records) == 8 and {r.model for r in records} == {"base", "sft"}
    assert len(fakes.backends["base"].seen) == 4 and len(fakes.backends["sft"].seen) == 4
    request = fakes.backends["base"].seen[0]
    assert request.temperature == 0.0 and request.max_tokens == 64      # greedy, ~64 new tokens
    base = result["models"]["base"]["metrics"]
    # one exact reply (sentence BLEU 100, ROUGE 1, BERTScore 1) and three "ok" (0, 0, 0.5)
    assert base["bleu_sentence"]["value"] == pytest.approx(25.0)
    assert base["rouge1"]["value"] == pytest.approx(0.25)
    assert base["bertscore_f1"]["value"] == pytest.approx((1 + 0.5 * 3) / 4)
    assert base["contradiction_rate"]["value"] == 0.0
    assert base["perplexity"]["value"] is None                          # no logits from this backend
    # ConvAI2 F1: the exact reply scores 1, "ok" shares no token with the references -> 1/4
    assert base["f1"]["value"] == pytest.approx(0.25)
    assert base["hits_at_1"]["value"] is None                           # off by default
    # FakeNLI's "ok" rows [0.4, 0.4, 0.2] read as entailment (argmax, first of the tie) -> +1 each
    assert base["c_score"]["value"] == 1.0
    sft = result["models"]["sft"]
    assert sft["metrics"]["contradiction_rate"]["value"] == 1.0
    assert sft["delta_vs_base"]["contradiction_rate"]["value"] == 1.0
    assert sft["delta_vs_base"]["contradiction_rate"]["low"] == 1.0
    # "I hate everything" x4: 12 unigrams, 3 distinct; 8 bigrams, 2 distinct; no interval (a set property)
    assert sft["metrics"]["distinct1"] == {"value": 0.25, "low": None, "high": None}
    assert sft["metrics"]["distinct2"]["value"] == 0.25
    assert sft["metrics"]["c_score"]["value"] == -1.0                   # contradicted, nothing entailed
    assert sft["delta_vs_base"]["c_score"]["value"] == -2.0
    sft_f1 = np.mean([M.unigram_f1("I hate everything", e.reference) for e in examples])  # "i" overlaps
    assert sft["metrics"]["f1"]["value"] == pytest.approx(sft_f1)
    assert sft["delta_vs_base"]["f1"]["value"] == pytest.approx(sft_f1 - 0.25)
    assert sft["adapter"] == str(adapter)
    for name in ("metrics.json", "table.md", "eval.png", "report.md"):
        assert (folder / name).stat().st_size > 0
    table = (folder / "table.md").read_text()
    assert table.splitlines()[2].startswith("| base | ") and "| sft | " in table
    assert "n/a" in table.splitlines()[2]
    assert "![metrics with intervals](eval.png)" in (folder / "report.md").read_text()
    assert json.loads((folder / "metrics.json").read_text())["examples"] == 4

    # A re-run, even with a larger limit, generates only what is missing.
    again = _recipe(tmp_path, limit=5, bootstrap=200)
    run_eval(again, adapters={"sft": adapter}, scorers=_fake_scorers(), generator_factory=fakes)
    assert len(fakes.backends["base"].seen) == 5 and len(fakes.backends["sft"].seen) == 5
    assert len(read_jsonl(folder / "generations.jsonl")) == 10


def test_stage_refuses_a_changed_config(tmp_path):
    recipe = _recipe(tmp_path, limit=2, bootstrap=50)
    examples, _ = E.load_examples(SPC_TEST, recipe.eval)
    run_eval(recipe, scorers=_fake_scorers(), generator_factory=FakeGenerators(examples))
    changed = _recipe(tmp_path, limit=2, bootstrap=50, max_new_tokens=32)
    with pytest.raises(UserError, match="pass --force"):
        run_eval(changed, scorers=_fake_scorers(), generator_factory=FakeGenerators(examples))


def test_retrained_adapter_is_generated_anew(tmp_path):
    recipe = _recipe(tmp_path, limit=2, bootstrap=50)
    examples, _ = E.load_examples(SPC_TEST, recipe.eval)
    adapter = _fake_adapter(tmp_path / "a" / "adapter")
    fakes = FakeGenerators(examples)
    run_eval(recipe, adapters={"a": adapter}, scorers=_fake_scorers(), generator_factory=fakes)
    (adapter / "adapter_model.safetensors").write_bytes(b"retrained")
    run_eval(recipe, adapters={"a": adapter}, scorers=_fake_scorers(), generator_factory=fakes)
    assert len(fakes.backends["a"].seen) == 4 and len(fakes.backends["base"].seen) == 2


def test_hits_candidates_are_seeded_and_from_other_conversations(tmp_path):
    recipe = _recipe(tmp_path, limit=3)
    examples, _ = E.load_examples(SPC_TEST, recipe.eval)
    pool = E.distractor_pool(SPC_TEST)
    own = {text for source, text in pool if source == examples[0].source_id}
    first = E.hits_candidates(examples[0], pool, 20, seed=0)
    assert len(first) == 20 and first[0] == examples[0].reference
    assert not own & set(first[1:]) and len(set(first)) == 20
    assert first == E.hits_candidates(examples[0], pool, 20, seed=0)
    assert first != E.hits_candidates(examples[0], pool, 20, seed=1)
    assert E.hits_candidates(examples[1], pool, 20, seed=0)[1:] != first[1:]


def test_hits_at_1_of_20_on_the_tiny_model_and_with_a_fake_scorer(tmp_path):
    from transformers import AutoModelForCausalLM

    from tiny_lm import make_tiny_model, tiny_tokenizer

    folder = make_tiny_model(tmp_path / "tiny")
    lm = (AutoModelForCausalLM.from_pretrained(folder).eval(), tiny_tokenizer())
    ranked = []

    class Recording(E.Generator):
        def candidate_scores(self, examples, candidates, batch_size):
            out = super().candidate_scores(examples, candidates, batch_size)
            ranked.extend(out)
            return out

    factory = lambda cfg, chat, model, progress: Recording(ScriptedBackend(default="ok"), lm, "tiny")  # noqa: E731
    recipe = _recipe(tmp_path, limit=2, context=1, hits_candidates=20, bootstrap=20, batch_size=20)
    result = run_eval(recipe, scorers=_fake_scorers(), generator_factory=factory)
    records = read_jsonl(tmp_path / "run" / "eval" / "generations.jsonl", EvalGeneration)
    assert len(ranked) == 2 and all(len(r) == 20 and all(s < 0 for s in r) for r in ranked)
    assert [r.metrics["hits_at_1"] for r in records] == [M.hits_at_1(r, 0) for r in ranked]
    hits = result["models"]["base"]["metrics"]["hits_at_1"]["value"]
    assert 0.0 <= hits <= 1.0
    assert result["settings"]["hits"].startswith("Hits@1 of 20")

    class ReferenceFirst(E.Generator):
        """A scorer under which the reference (candidate 0) always has the highest log-likelihood."""

        def candidate_scores(self, examples, candidates, batch_size):
            return [[0.0] + [-1.0 - j for j in range(len(c) - 1)] for c in candidates]

    fake = lambda cfg, chat, model, progress: ReferenceFirst(ScriptedBackend(default="ok"), None, "fake")  # noqa: E731
    again = _recipe(tmp_path / "b", limit=3, hits_candidates=20, bootstrap=20)
    result = run_eval(again, scorers=_fake_scorers(), generator_factory=fake)
    assert result["models"]["base"]["metrics"]["hits_at_1"] == {"value": 1.0, "low": 1.0, "high": 1.0}


def test_hits_candidates_config():
    from persona_forge.config import EvalConfig

    assert "hits_candidates" not in EvalConfig().identity()      # old runs keep their config hash
    assert EvalConfig(hits_candidates=20).identity()["hits_candidates"] == 20
    with pytest.raises(ValueError, match="at least 2"):
        EvalConfig(hits_candidates=1)


def test_cli_rejects_a_folder_that_is_not_an_adapter(tmp_path, forge):
    proc = forge("--run-dir", str(tmp_path / "run"), "eval", "--limit", "2", "--adapter", f"x={tmp_path}", cwd=tmp_path)
    assert [one_line_error(proc)] == [
        f"forge: error: {tmp_path}: not a LoRA adapter folder (no adapter_config.json); give the `adapter` "
        "folder that `forge train` wrote"]


# --- integration: the packaged model, with and without an adapter ---------------------------------------

@pytest.mark.integration
def test_forge_eval_limit_5_with_and_without_adapter(tmp_path):
    import torch
    from peft import LoraConfig, get_peft_model

    from persona_forge.lm import load_chat_model

    torch.manual_seed(0)
    model, _ = load_chat_model("packaged:smollm2-135m-instruct", progress=False)
    lora = get_peft_model(model, LoraConfig(r=8, lora_alpha=64, target_modules=["q_proj", "v_proj"],
                                            init_lora_weights=False))
    adapter = tmp_path / "train" / "rand" / "adapter"
    lora.save_pretrained(str(adapter))
    del lora, model

    env = {**os.environ, "PYTHONPATH": str(REPO)}
    run_dir = tmp_path / "run"
    cmd = [*forge_cmd(), "--run-dir", str(run_dir), "--set", "backend.threads=2", "--set", "eval.bootstrap=200",
           "--set", "eval.max_new_tokens=24",
           "eval", "--limit", "5", "--json"]
    base = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO)
    assert base.returncode == 0, base.stderr
    base_only = json.loads(base.stdout)
    assert list(base_only["models"]) == ["base"]
    ppl = base_only["models"]["base"]["metrics"]["perplexity"]
    assert 1.0 < ppl["low"] <= ppl["value"] <= ppl["high"] < 1000

    both = subprocess.run([*cmd, "--adapter", str(adapter)], capture_output=True, text=True, env=env, cwd=REPO)
    assert both.returncode == 0, both.stderr
    result = json.loads(both.stdout)
    assert list(result["models"]) == ["base", "rand"]
    records = read_jsonl(run_dir / "eval" / "generations.jsonl", EvalGeneration)
    assert len(records) == 10
    by = {(r.model, r.example_id): r for r in records}
    ids = sorted({r.example_id for r in records})
    assert all(by["base", i].reference_tokens == by["rand", i].reference_tokens > 0 for i in ids)
    assert any(by["base", i].reference_nll != pytest.approx(by["rand", i].reference_nll) for i in ids)
    assert result["models"]["base"]["metrics"]["perplexity"] == base_only["models"]["base"]["metrics"]["perplexity"]
    assert all(isinstance(r.metrics["bertscore_f1"], float) for r in records)
    assert all(r.metrics["max_contradiction"] is not None or not r.reply for r in records)
    manifest = json.loads((run_dir / "eval.manifest.json").read_text())
    assert manifest["counts"]["generated_this_run"] == 5   # the base's five were not made again


def test_openai_backend_generates_through_the_endpoint_and_skips_perplexity(tmp_path, monkeypatch):
    from standin_server import standin

    monkeypatch.setenv("PF_TEST_OPENAI_KEY", "sk-test")
    with standin() as server:
        recipe = load_recipe(None, {"run_dir": str(tmp_path / "run"), "backend.kind": "openai",
                                    "backend.base_url": server.url, "backend.model": "standin-model",
                                    "backend.api_key_env": "PF_TEST_OPENAI_KEY", "eval.limit": 3,
                                    "eval.bootstrap": 50})
        result = run_eval(recipe, scorers=_fake_scorers())
        assert server.stats()["by_model"] == {"standin-model": 3}
        with pytest.raises(UserError, match="adapters need a local model"):
            run_eval(recipe, adapters={"sft": _fake_adapter(tmp_path / "sft" / "adapter")}, scorers=_fake_scorers())
    records = read_jsonl(tmp_path / "run" / "eval" / "generations.jsonl", EvalGeneration)
    examples, _ = E.load_examples(SPC_TEST, recipe.eval)
    assert [r.reply for r in records] == [f"echo: {e.messages[-1].content}" for e in examples]
    assert all(r.reference_nll is None and "perplexity" not in r.metrics for r in records)
    assert result["models"]["base"]["metrics"]["perplexity"] == {"value": None, "low": None, "high": None}
    assert result["settings"]["perplexity"].startswith("not available: the openai backend")


def test_failed_replies_are_not_written_and_are_retried(tmp_path):
    from persona_forge.backends.base import Completion

    class Flaky(ScriptedBackend):
        """The first request of the first call fails."""

        def __init__(self):
            super().__init__(default="fine")
            self.calls = 0

        async def _stream_raw(self, requests):
            self.calls += 1
            async for index, completion in super()._stream_raw(requests):
                if self.calls == 1 and index == 0:
                    completion = Completion(text=None, error="HTTP 500 after 6 retries")
                yield index, completion

    backend = Flaky()
    factory = lambda cfg, chat, model, progress: E.Generator(backend, None, "flaky")  # noqa: E731
    recipe = _recipe(tmp_path, limit=3, bootstrap=50)
    with pytest.raises(UserError, match=r"1 replies failed after retries \(first: base: HTTP 500 after 6 retries\)"):
        run_eval(recipe, scorers=_fake_scorers(), generator_factory=factory)
    assert len(read_jsonl(tmp_path / "run" / "eval" / "generations.jsonl")) == 2
    result = run_eval(recipe, scorers=_fake_scorers(), generator_factory=factory)
    assert len(backend.seen) == 4 and result["models"]["base"]["n"] == 3


# --- the retrieval baseline ------------------------------------------------------------------------------

def _bag_of_words(texts):
    """A stand-in sentence encoder: one dimension per word (hashed), so shared words mean similarity."""
    out = np.zeros((len(texts), 64), dtype=np.float32)
    for row, text in enumerate(texts):
        for word in text.lower().replace("?", "").replace(".", "").split():
            out[row, sum(map(ord, word)) % 64] += 1.0
    return out


def _retrieval_corpus(path: Path) -> Path:
    def conversation(cid, turns):
        return {"id": cid, "user1_persona": ["I like tea."], "user2_persona": ["I have a cat."],
                "turns": [{"speaker": "user1" if i % 2 == 0 else "user2", "text": t} for i, t in enumerate(turns)]}

    rows = [conversation("train-a", ["do you have any pets?", "yes a cat named tom.", "nice",
                                     "what do you drink in the morning?", "green tea always."]),
            conversation("train-b", ["do you have any pets at home?", "no, I am allergic.", "what a pity"])]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_retrieval_answers_with_the_nearest_prompts_reply_never_from_its_own_conversation(tmp_path):
    from persona_forge.retrieval import RetrievalIndex, training_pairs

    pairs = training_pairs(_retrieval_corpus(tmp_path / "train.jsonl"))
    # every reply to the other user's turn: 4 in conversation a, 2 in b
    assert [(s, p) for s, p, _ in pairs][:2] == [("train-a", "do you have any pets?"),
                                                ("train-a", "yes a cat named tom.")]
    assert len(pairs) == 6
    index = RetrievalIndex.from_pairs(pairs, _bag_of_words)
    answers = index.answer(["do you have any pets?", "what do you drink in the morning?"], ["test-1", "test-1"],
                           _bag_of_words)
    assert [reply for reply, _ in answers] == ["yes a cat named tom.", "green tea always."]
    assert answers[0][1] == pytest.approx(1.0)
    # the same query from conversation a itself gets b's reply to the nearest other prompt
    (reply, similarity), = index.answer(["do you have any pets?"], ["train-a"], _bag_of_words)
    assert reply == "no, I am allergic." and 0.5 < similarity < 1.0


def test_eval_reports_the_retrieval_baseline_as_a_model_without_perplexity(tmp_path):
    from persona_forge.retrieval import RetrievalIndex, training_pairs

    corpus = _retrieval_corpus(tmp_path / "train.jsonl")
    recipe = _recipe(tmp_path, limit=3, bootstrap=50, retrieval=str(corpus))
    examples, _ = E.load_examples(SPC_TEST, recipe.eval)
    fakes = FakeGenerators(examples)
    index = RetrievalIndex.from_pairs(training_pairs(corpus), _bag_of_words)
    built = []

    def factory(cfg, chat, model, progress):
        if model.retrieval is None:
            return fakes(cfg, chat, model, progress)
        built.append(model)
        return E.RetrievalGenerator(index, _bag_of_words, "retrieval")

    result = run_eval(recipe, scorers=_fake_scorers(), generator_factory=factory)
    assert [m.name for m in built] == ["retrieval"] and built[0].retrieval == corpus
    records = [r for r in read_jsonl(tmp_path / "run" / "eval" / "generations.jsonl", EvalGeneration)
               if r.model == "retrieval"]
    replies = {reply for _, _, reply in training_pairs(corpus)}
    assert len(records) == 3 and all(r.reply in replies for r in records)
    assert all(r.provenance.backend == "retrieval" and r.reference_nll is None for r in records)
    row = result["models"]["retrieval"]
    assert row["metrics"]["perplexity"]["value"] is None and "delta_vs_base" in row
    # another corpus is another model: its replies are generated anew, the base's are kept
    (tmp_path / "other.jsonl").write_text(corpus.read_text().replace("green tea", "black coffee"))
    again = _recipe(tmp_path, limit=3, bootstrap=50, retrieval=str(tmp_path / "other.jsonl"))
    run_eval(again, scorers=_fake_scorers(), generator_factory=factory)
    assert len(built) == 2 and len(fakes.backends["base"].seen) == 3


def test_retrieval_needs_a_corpus_file_and_its_own_name(tmp_path):
    recipe = _recipe(tmp_path, retrieval=str(tmp_path / "missing.jsonl"))
    with pytest.raises(UserError, match=r"eval.retrieval: .*missing.jsonl is not a file"):
        E.models_under_test(recipe.backend, {}, recipe.eval.retrieval)
    corpus = _retrieval_corpus(tmp_path / "train.jsonl")
    recipe = _recipe(tmp_path, retrieval=str(corpus))
    with pytest.raises(UserError, match="retrieval baseline's"):
        E.models_under_test(recipe.backend, {"retrieval": _fake_adapter(tmp_path / "a")}, recipe.eval.retrieval)


def test_the_retrieval_index_is_embedded_once_per_corpus(tmp_path):
    from persona_forge.retrieval import RetrievalIndex, training_pairs

    pairs = training_pairs(_retrieval_corpus(tmp_path / "train.jsonl"))
    calls = []

    def embed(texts):
        calls.append(len(texts))
        return _bag_of_words(texts)

    path = tmp_path / "cache" / "index.npy"
    first = RetrievalIndex.cached(pairs, embed, path)
    second = RetrievalIndex.cached(pairs, embed, path)
    assert calls == [6] and np.array_equal(first.vectors, second.vectors) and second.replies == first.replies
    RetrievalIndex.cached(pairs[:4], embed, path)          # a file that does not fit is embedded again
    assert calls == [6, 4]
