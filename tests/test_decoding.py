"""decoding.generate_and_score, the batched path of forge eval: the same greedy replies as
transformers' generate run one prompt at a time, and the same continuation log-likelihoods as
metrics.reference_nll run one at a time, on a tiny random llama built in-process."""

from __future__ import annotations

import pytest

from persona_forge import decoding as D
from persona_forge import metrics as M

PROMPTS = [
    [{"role": "system", "content": "I like dogs."}, {"role": "user", "content": "hi"}],
    [{"role": "system", "content": "I am a teacher. I live by the sea."},
     {"role": "user", "content": "What do you do all day long?"}],
    [{"role": "user", "content": "ok"}],
    [{"role": "system", "content": "I hate mornings and I love coffee."}, {"role": "user", "content": "coffee?"},
     {"role": "assistant", "content": "yes please"}, {"role": "user", "content": "how many cups"}],
    [{"role": "user", "content": "tell me about your family, your pets and your job"}],
]
CONTINUATIONS = [
    ["I have a dog.", "no", "x", ""],
    ["I teach children.", "The sea is nice to live by, and cold."],
    ["ok", "fine thanks"],
    ["three cups", "I do not drink it", "a"],
    ["two cats", "a teacher"],
]


@pytest.fixture(scope="module")
def tiny():
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from tiny_lm import tiny_tokenizer

    torch.manual_seed(0)
    tokenizer = tiny_tokenizer()
    tokenizer.padding_side = "left"
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                         initializer_range=0.2, tie_word_embeddings=True, bos_token_id=1, eos_token_id=2,
                         pad_token_id=2)
    model = LlamaForCausalLM(config).eval()
    model.generation_config.pad_token_id = 2
    # Stop on the end token and on the token the random model writes most, so that rows finish at
    # different steps and leave the batch.
    ids = [D.prompt_ids(tokenizer, p) for p in PROMPTS]
    written = [t for r in D.generate_and_score(model, tokenizer, ids, max_new_tokens=20, batch_size=5) for t in r.tokens]
    model.generation_config.eos_token_id = [2, max(set(written), key=written.count)]
    return model, tokenizer


def _one_at_a_time_reply(model, tokenizer, ids: list[int], max_new_tokens: int, penalty: float) -> list[int]:
    import torch

    with torch.inference_mode():
        out = model.generate(input_ids=torch.tensor([ids]), attention_mask=torch.ones((1, len(ids)), dtype=torch.long),
                             max_new_tokens=max_new_tokens, do_sample=False, repetition_penalty=penalty,
                             pad_token_id=2)
    return out[0, len(ids):].tolist()


def test_greedy_replies_equal_generate_one_prompt_at_a_time(tiny):
    model, tokenizer = tiny
    ids = [D.prompt_ids(tokenizer, p) for p in PROMPTS]
    got = D.generate_and_score(model, tokenizer, ids, max_new_tokens=20, repetition_penalty=1.15, batch_size=3)
    expected = [_one_at_a_time_reply(model, tokenizer, i, 20, 1.15) for i in ids]
    assert [r.tokens for r in got] == expected
    stops = D.stop_ids(model, tokenizer)
    assert [r.stopped for r in got] == [bool(e) and e[-1] in stops for e in expected]
    assert any(r.stopped for r in got) and any(len(r.tokens) < 20 for r in got)   # rows left the batch early
    assert all(r.nll == [] for r in got)


def test_continuation_nll_equals_reference_nll_one_at_a_time(tiny):
    model, tokenizer = tiny
    ids = [D.prompt_ids(tokenizer, p) for p in PROMPTS]
    got = D.generate_and_score(model, tokenizer, ids, CONTINUATIONS, batch_size=2, score_rows=3)
    for prompt, options, result in zip(PROMPTS, CONTINUATIONS, got):
        expected = [M.reference_nll(model, tokenizer, [prompt], [text], batch_size=1)[0] for text in options]
        assert [t for _, t in result.nll] == [t for _, t in expected]
        for (nll, tokens), (want, _) in zip(result.nll, expected):
            assert nll == pytest.approx(want, rel=1e-4, abs=1e-6 if not tokens else 0)
        scores = [-nll for nll, _ in result.nll]
        assert M.hits_at_1(scores, 0) == M.hits_at_1([-want for want, _ in expected], 0)
        assert sorted(range(len(scores)), key=scores.__getitem__) == \
            sorted(range(len(expected)), key=lambda j: -expected[j][0])


def test_replies_and_scores_from_one_call_match_separate_calls(tiny):
    model, tokenizer = tiny
    ids = [D.prompt_ids(tokenizer, p) for p in PROMPTS]
    both = D.generate_and_score(model, tokenizer, ids, CONTINUATIONS, max_new_tokens=12, repetition_penalty=1.15,
                                batch_size=4)
    replies = D.generate_and_score(model, tokenizer, ids, max_new_tokens=12, repetition_penalty=1.15, batch_size=1)
    scores = D.generate_and_score(model, tokenizer, ids, CONTINUATIONS, batch_size=5)
    assert [r.tokens for r in both] == [r.tokens for r in replies]
    for a, b in zip(both, scores):
        assert [t for _, t in a.nll] == [t for _, t in b.nll]
        assert [x for x, _ in a.nll] == pytest.approx([x for x, _ in b.nll], rel=1e-4)


# --- integration: the packaged SmolLM2, forge eval's shared pass against the old separate passes -------

@pytest.mark.integration
def test_eval_shared_pass_matches_generate_and_reference_nll_on_smollm2(tmp_path):
    from conftest import REPO, make_recipe
    from persona_forge.stages import evaluation as E

    recipe = make_recipe(tmp_path / "run", backend={"threads": 2},
                         eval={"limit": 3, "max_new_tokens": 24, "hits_candidates": 3})
    cfg = recipe.eval
    data = REPO / "corpora" / "spc" / "test.jsonl.gz"
    examples, _ = E.load_examples(data, cfg)
    pool = E.distractor_pool(data)
    candidates = [E.hits_candidates(e, pool, 3, cfg.seed) for e in examples]
    generator = E.Generator.for_model(cfg, recipe.backend, E.ModelUnderTest("base", None, "test"), False)
    assert generator.decodes_locally
    model, tokenizer = generator.lm

    completions, nll, ranked = generator.generate_and_score(examples, cfg, candidates,
                                                            recipe.backend.repetition_penalty)
    old = generator.backend.complete_sync(generator.requests(examples, cfg))   # transformers' generate
    assert [c.text for c in completions] == [c.text for c in old]
    assert [c.finish_reason for c in completions] == [c.finish_reason for c in old]
    assert [c.completion_tokens for c in completions] == [c.completion_tokens for c in old]
    for example, options, (ref_nll, ref_tokens), scores in zip(examples, candidates, nll, ranked):
        prompt = [[m.model_dump() for m in example.messages]]
        expected = [M.reference_nll(model, tokenizer, prompt, [text], batch_size=1)[0] for text in options]
        assert (ref_nll, ref_tokens) == (pytest.approx(expected[0][0], rel=1e-4), expected[0][1])
        assert scores == pytest.approx([-total for total, _ in expected], rel=1e-4)
        assert M.hits_at_1(scores, 0) == M.hits_at_1([-total for total, _ in expected], 0)
