"""The local backend on the real packaged SmolLM2 (integration: loads a 135M model)."""

from __future__ import annotations

import pytest

from persona_forge.backends import ChatRequest
from persona_forge.backends.local import LocalBackend
from persona_forge.config import LocalBackendConfig

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def local() -> LocalBackend:
    backend = LocalBackend(LocalBackendConfig(batch_size=4), progress=False)
    backend.load()
    return backend


def ask(persona: str, question: str, **kw) -> ChatRequest:
    return ChatRequest.of([{"role": "system", "content": f"You are this person: {persona} Reply in one sentence."},
                           {"role": "user", "content": question}], **kw)


def test_packaged_model_is_converted_once_into_the_cache(local):
    from persona_forge.models import smollm2_dir

    folder = smollm2_dir()
    assert (folder / "model.safetensors").is_file() and (folder / ".complete").is_file()
    assert local._model.config.num_hidden_layers == 30


def test_batched_replies_come_back_in_request_order_within_the_token_limit(local):
    questions = ["What is your job?", "Do you have pets?", "Where do you live?", "What do you eat?", "Hi!"]
    # 12 new tokens: a padding or masking fault shows in the first few (each token is a pass through the model).
    requests = [ask("I am a nurse with two dogs in Chicago.", q, temperature=0.0, max_tokens=12) for q in questions]
    batched = local.complete_sync(requests)
    single = [local.complete_sync([r])[0] for r in requests[:2]]
    assert len(batched) == 5 and all(c.ok and c.text for c in batched)
    assert all(0 < c.completion_tokens <= 12 for c in batched)
    assert all(c.prompt_tokens > 20 for c in batched)
    # Greedy replies do not depend on which batch a prompt was in (left padding is masked).
    assert [c.text for c in batched[:2]] == [c.text for c in single]


def test_same_seed_same_sampled_replies(local):
    requests = [ask("I love hiking.", "What did you do this weekend?", seed=7, temperature=0.9, max_tokens=12),
                ask("I bake bread.", "What is your hobby?", seed=8, temperature=0.9, max_tokens=12)]
    first = [c.text for c in local.complete_sync(requests)]
    second = [c.text for c in local.complete_sync(requests)]
    assert first == second
    # ... and the sampling is real: one prompt under other seeds gives other replies (a backend that
    # ignored temperature, decoding greedily, would give one reply for every seed).
    again = [ask("I love hiking.", "What did you do this weekend?", seed=s, temperature=0.9, max_tokens=12)
             for s in (7, 11, 12, 13)]
    texts = [c.text for c in local.complete_sync(again)]
    assert len(set(texts)) > 1


def test_stop_strings_cut_the_reply(local):
    request = ask("I am a chef.", "What do you cook at home?", temperature=0.0, max_tokens=30)
    [full] = local.complete_sync([request])
    words = full.text.split()
    assert len(words) > 4
    stop = " " + words[3]  # greedy replies repeat, so this word will come again at the same place
    [cut] = local.complete_sync([ChatRequest.of(request.messages, temperature=0.0, max_tokens=30, stop=(stop,))])
    assert cut.text == full.text[: full.text.find(stop)].strip()
    assert cut.finish_reason == "stop"
