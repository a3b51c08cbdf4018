"""forge serve: the OpenAI-compatible adapter server, driven with the real `openai` client.

Unit tests run a tiny random llama with tiny random LoRA adapters (tests/tiny_lm.py); the
integration test runs the packaged SmolLM2.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import subprocess

import pytest

from conftest import forge_cmd, one_line_error, run_forge
from tiny_lm import make_adapter, make_tiny_model

openai = pytest.importorskip("openai")
pytest.importorskip("fastapi")

ADAPTERS = ("alice", "bob", "carol")
PROMPTS = ["hello there", "what do you like to do on weekends?", "x", "tell me about your dogs and cats"]


def make_tiny(root) -> dict:
    """A tiny random llama and one tiny LoRA adapter per name of ADAPTERS, under `root`."""
    import torch

    torch.set_num_threads(1)
    base = make_tiny_model(root / "base")
    adapters = {name: make_adapter(base, root / name, seed=i) for i, name in enumerate(ADAPTERS)}
    return {"root": root, "base": base, "adapters": adapters}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict:
    return make_tiny(tmp_path_factory.mktemp("tiny"))


def _state(tiny: dict, adapters: tuple[str, ...] = ADAPTERS, **options):
    from persona_forge.serve.app import build_state

    options.setdefault("repetition_penalty", 1.15)
    return build_state(str(tiny["base"]), "tiny-base", {n: tiny["adapters"][n] for n in adapters},
                       threads=1, progress=False, **options)


class Served:
    def __init__(self, state):
        from persona_forge.serve.app import BackgroundServer

        self.state = state
        self.server = BackgroundServer(state)

    def __enter__(self):
        self.server.__enter__()
        self.url = self.server.base_url
        self.client = openai.OpenAI(base_url=self.url, api_key=self.state.api_key or "none", max_retries=0)
        return self

    def __exit__(self, *exc):
        self.client.close()
        self.server.__exit__(*exc)
        self.state.batcher.close()


@pytest.fixture(scope="module")
def served(tiny):
    with Served(_state(tiny, wait_ms=20)) as running:
        yield running


def _ask(client, model: str, prompt: str, **kwargs):
    kwargs.setdefault("max_tokens", 24)
    kwargs.setdefault("temperature", 0)
    return client.chat.completions.create(model=model, messages=[{"role": "user", "content": prompt}], **kwargs)


def _post(url: str, path: str, body, key: str | None = None):
    import httpx2 as httpx

    headers = {"Authorization": f"Bearer {key}"} if key else {}
    data = body if isinstance(body, (str, bytes)) else json.dumps(body)
    return httpx.post(url + path, content=data, headers={"Content-Type": "application/json", **headers}, timeout=60)


def test_models_lists_base_and_adapters_with_parent(served):
    models = {m.id: m for m in served.client.models.list().data}
    assert set(models) == {"tiny-base", *ADAPTERS}
    assert models["tiny-base"].model_extra["parent"] is None
    for name in ADAPTERS:
        assert models[name].model_extra["parent"] == "tiny-base"
        assert models[name].model_extra["root"].endswith(name)


def test_chat_reply_with_usage_and_adapters_differ(served):
    replies = {}
    for model in ("tiny-base", *ADAPTERS):
        reply = _ask(served.client, model, PROMPTS[1], max_tokens=12, extra_body={"ignore_eos": True})
        assert reply.object == "chat.completion" and reply.model == model
        assert reply.choices[0].message.role == "assistant"
        assert reply.choices[0].finish_reason == "length"
        assert reply.usage.completion_tokens == 12
        assert reply.usage.prompt_tokens > len(PROMPTS[1])  # the chat template's tokens too
        assert reply.usage.total_tokens == reply.usage.prompt_tokens + 12
        replies[model] = reply.choices[0].message.content
    # every adapter changes the reply, so the equality tests below can tell adapters apart
    assert len(set(replies.values())) == 4


def test_stream_gives_the_same_text_in_chunks(served):
    whole = _ask(served.client, "bob", PROMPTS[3], max_tokens=20)
    stream = _ask(served.client, "bob", PROMPTS[3], max_tokens=20, stream=True,
                  stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [whole.choices[0].finish_reason]
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) > 3  # really streamed


def test_unknown_model_is_404_in_openai_shape(served):
    with pytest.raises(openai.NotFoundError) as caught:
        _ask(served.client, "nobody", "hi")
    assert caught.value.status_code == 404
    assert caught.value.body["code"] == "model_not_found" and "nobody" in caught.value.body["message"]


@pytest.mark.parametrize("body, param", [
    ({"model": "alice"}, "messages"),
    ({"model": "alice", "messages": []}, "messages"),
    ({"model": "alice", "messages": [{"role": "user", "content": "hi"}], "temperature": 5}, "temperature"),
    ({"model": "alice", "messages": [{"role": "wizard", "content": "hi"}]}, "messages.0.role"),
    ({"model": "alice", "messages": [{"role": "user", "content": "hi"}], "n": 3}, "n"),
    ({"model": "alice", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5000}, "max_tokens"),
])
def test_bad_body_is_400(served, body, param):
    response = _post(served.url, "/chat/completions", body)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param and error["message"]


def test_not_json_is_400(served):
    response = _post(served.url, "/chat/completions", "{not json")
    assert response.status_code == 400 and "JSON" in response.json()["error"]["message"]
    with pytest.raises(openai.BadRequestError):
        served.client.chat.completions.create(model="alice", messages=[{"role": "user", "content": "hi"}],
                                              temperature=-1)


def test_stop_string_ends_the_reply_before_it(served):
    full = _ask(served.client, "carol", PROMPTS[0], max_tokens=30, extra_body={"ignore_eos": True})
    text = full.choices[0].message.content
    stop = text[10:13]
    cut = text.index(stop)
    reply = _ask(served.client, "carol", PROMPTS[0], max_tokens=30, stop=[stop])
    assert reply.choices[0].message.content == text[:cut]
    assert reply.choices[0].finish_reason == "stop"
    streamed = "".join(c.choices[0].delta.content or "" for c in
                       _ask(served.client, "carol", PROMPTS[0], max_tokens=30, stop=stop, stream=True))
    assert streamed == text[:cut]


def test_content_as_text_parts(served):
    plain = _ask(served.client, "alice", "hello there")
    parts = served.client.chat.completions.create(
        model="alice", max_tokens=24, temperature=0,
        messages=[{"role": "user", "content": [{"type": "text", "text": "hello "}, {"type": "text", "text": "there"}]}])
    assert parts.choices[0].message.content == plain.choices[0].message.content


def test_load_and_unload_at_runtime(served, tiny):
    extra = make_adapter(tiny["base"], tiny["root"] / "dave", seed=42)
    response = _post(served.url, "/load_lora_adapter", {"lora_name": "dave", "lora_path": str(extra)})
    assert response.status_code == 200, response.text
    assert "dave" in {m.id for m in served.client.models.list().data}
    assert _ask(served.client, "dave", "hi").choices[0].message.content is not None
    again = _post(served.url, "/load_lora_adapter", {"lora_name": "dave", "lora_path": str(extra)})
    assert again.status_code == 400
    assert _post(served.url, "/unload_lora_adapter", {"lora_name": "dave"}).status_code == 200
    assert "dave" not in {m.id for m in served.client.models.list().data}
    with pytest.raises(openai.NotFoundError):
        _ask(served.client, "dave", "hi")
    assert _post(served.url, "/unload_lora_adapter", {"lora_name": "dave"}).status_code == 404
    assert _post(served.url, "/load_lora_adapter", {"lora_name": "dave"}).status_code == 400


def test_load_refuses_adapters_of_another_base_and_large_ranks(served, tiny, tmp_path):
    other = make_adapter(tiny["base"], tmp_path / "other", seed=1)
    config = json.loads((other / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = "meta-llama/Llama-3.1-8B-Instruct"
    (other / "adapter_config.json").write_text(json.dumps(config))
    wide = tmp_path / "wide"
    bigger = make_tiny_model(tmp_path / "tiny-base", seed=3)  # same name, but 64 wide: change the width
    config = json.loads((bigger / "config.json").read_text())
    config.update(hidden_size=96, num_attention_heads=4, num_key_value_heads=2)
    (bigger / "config.json").write_text(json.dumps(config))
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_config(AutoModelForCausalLM.from_pretrained(bigger, ignore_mismatched_sizes=True)
                                     .config).save_pretrained(bigger)
    make_adapter(bigger, wide, seed=2)
    config = json.loads((wide / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = str(tiny["base"])
    (wide / "adapter_config.json").write_text(json.dumps(config))
    big_rank = make_adapter(tiny["base"], tmp_path / "r128", seed=3, r=128)
    cases = {"other": (other, "Llama-3.1-8B"), "wide": (wide, "shape"), "r128": (big_rank, "rank 128")}
    for name, (folder, words) in cases.items():
        response = _post(served.url, "/load_lora_adapter", {"lora_name": name, "lora_path": str(folder)})
        assert response.status_code == 400, name
        message = response.json()["error"]["message"]
        assert words in message and "\n" not in message, message
        assert name not in {m.id for m in served.client.models.list().data}
    missing = _post(served.url, "/load_lora_adapter", {"lora_name": "gone", "lora_path": str(tmp_path / "nope")})
    assert missing.status_code == 400 and "adapter_config.json" in missing.json()["error"]["message"]


def _reference_replies(tiny: dict, adapter: str | None, prompts: list[str], max_tokens: int,
                       penalty: float = 1.15) -> list[str]:
    """Each prompt alone through plain transformers + peft with only that adapter (unmerged)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny["base"])
    model = AutoModelForCausalLM.from_pretrained(tiny["base"])
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(tiny["adapters"][adapter]))
    model.eval()
    out = []
    for prompt in prompts:
        ids = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                            return_tensors="pt", return_dict=True)
        with torch.inference_mode():
            gen = model.generate(**ids, max_new_tokens=max_tokens, do_sample=False, repetition_penalty=penalty,
                                 pad_token_id=tokenizer.pad_token_id)
        new = gen[0, ids["input_ids"].shape[1]:].tolist()
        if tokenizer.eos_token_id in new:
            new = new[: new.index(tokenizer.eos_token_id)]
        out.append(tokenizer.decode(new, skip_special_tokens=True))
    return out


def _concurrently(calls):
    with concurrent.futures.ThreadPoolExecutor(len(calls)) as pool:
        return list(pool.map(lambda f: f(), calls))


@pytest.mark.parametrize("kernel", ["peft", "bmm"])
def test_mixed_batch_rows_equal_each_adapter_alone(tiny, kernel):
    """Greedy, row by row: a batch mixing the base and three adapters (prompts of different
    lengths) gives each request exactly what that adapter gives it alone."""
    models = [None, "alice", "bob", "carol", "alice", "carol", "bob", None]
    prompts = [PROMPTS[i % 4] for i in range(len(models))]
    with Served(_state(tiny, wait_ms=400, max_batch=8, lora_kernel=kernel)) as running:
        calls = [lambda m=m, p=p: _ask(running.client, m or "tiny-base", p, max_tokens=20) for m, p in zip(models, prompts)]
        replies = [r.choices[0].message.content for r in _concurrently(calls)]
        stats = running.state.batcher.stats
        assert stats["rows"] == len(models) and stats["batches"] < len(models)  # they did share batches
        alone = [_ask(running.client, m or "tiny-base", p, max_tokens=20).choices[0].message.content
                 for m, p in zip(models, prompts)]
    assert replies == alone
    for model in (None, *ADAPTERS):
        rows = [i for i, m in enumerate(models) if m == model]
        reference = _reference_replies(tiny, model, [prompts[i] for i in rows], 20)
        assert [replies[i] for i in rows] == reference, model


def test_seeded_sampling_does_not_depend_on_the_batch(tiny):
    with Served(_state(tiny, wait_ms=300, max_batch=8)) as running:
        def sampled(model, prompt, seed):
            return _ask(running.client, model, prompt, temperature=0.9, top_p=0.9, seed=seed,
                        max_tokens=20).choices[0].message.content

        alone = sampled("bob", PROMPTS[1], 7)
        crowd = _concurrently([lambda: sampled("bob", PROMPTS[1], 7), lambda: sampled("alice", PROMPTS[0], 1),
                               lambda: sampled("tiny-base", PROMPTS[3], 2), lambda: sampled("bob", PROMPTS[1], 8)])
        assert running.state.batcher.stats["batches"] < 5
    assert crowd[0] == alone
    assert crowd[3] != alone  # another seed, another sample


def test_overload_answers_429_with_retry_after(tiny):
    import httpx2 as httpx

    with Served(_state(tiny, max_queue=2, max_batch=1, wait_ms=0)) as running:
        body = {"model": "alice", "messages": [{"role": "user", "content": "go"}], "max_tokens": 150,
                "ignore_eos": True, "temperature": 0}

        def call():
            return httpx.post(running.url + "/chat/completions", json=body, timeout=120)

        responses = _concurrently([call] * 12)
        statuses = sorted(r.status_code for r in responses)
        assert set(statuses) == {200, 429}, statuses  # every request answered with a status
        refused = [r for r in responses if r.status_code == 429]
        assert all(int(r.headers["Retry-After"]) >= 1 for r in refused)
        assert all(r.json()["error"]["type"] == "rate_limit_error" for r in refused)
        with pytest.raises(openai.RateLimitError):
            _concurrently([lambda: _ask(running.client, "alice", "go", max_tokens=150,
                                        extra_body={"ignore_eos": True})] * 12)


def test_lru_bound_unloads_and_reloads(tiny):
    with Served(_state(tiny, max_loaded=2)) as running:
        first = {m: _ask(running.client, m, PROMPTS[0]).choices[0].message.content for m in ADAPTERS}
        assert len(running.state.engine.loaded_adapters()) <= 2
        second = {m: _ask(running.client, m, PROMPTS[0]).choices[0].message.content for m in reversed(ADAPTERS)}
        assert len(running.state.engine.loaded_adapters()) <= 2
        assert {m.id for m in running.client.models.list().data} == {"tiny-base", *ADAPTERS}
    assert first == second


def test_api_key_required_when_set(tiny):
    state = _state(tiny, adapters=("alice",), api_key="s3cret")
    with Served(state) as running:
        assert _ask(running.client, "alice", "hi").choices[0].message.content is not None
        bad = openai.OpenAI(base_url=running.url, api_key="wrong", max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            _ask(bad, "alice", "hi")
        assert _post(running.url, "/load_lora_adapter", {"lora_name": "x", "lora_path": "y"}).status_code == 401


def test_openai_backend_through_the_server_matches_the_local_backend(served, tiny):
    """What forge eval and forge chat do with backend.kind=openai: the same greedy replies as the
    local backend with the same adapter (merged there, unmerged and batched here)."""
    from persona_forge.backends import ChatRequest
    from persona_forge.backends.local import LocalBackend
    from persona_forge.backends.openai_compat import OpenAIBackend
    from persona_forge.config import LocalBackendConfig, OpenAIBackendConfig

    requests = [ChatRequest.of([{"role": "system", "content": "I have two dogs."}, {"role": "user", "content": p}],
                               max_tokens=24, temperature=0.0, top_p=1.0) for p in PROMPTS]
    for adapter in ("bob", None):
        local = LocalBackend(LocalBackendConfig(model=str(tiny["base"]), threads=1,
                                                adapter=tiny["adapters"][adapter] if adapter else None), progress=False)
        remote = OpenAIBackend(OpenAIBackendConfig(model=adapter or "tiny-base", base_url=served.url,
                                                   api_key_env="PF_TEST_NO_KEY", concurrency=4))
        expected = [c.text for c in local.complete_sync(requests)]
        got = [(c.text or "").strip() for c in remote.complete_sync(requests)]
        assert all(c for c in expected)
        assert got == expected, adapter


def test_forge_chat_through_the_server_matches_chat_in_process(served, tiny, tmp_path):
    """forge chat --endpoint --model bob --base: the adapter's and the base model's greedy replies are
    what forge chat gives with the adapter folder in-process (the base's name from GET /v1/models)."""
    import re
    from io import StringIO

    from conftest import run_forge
    from persona_forge.chat import ChatModel, converse
    from persona_forge.config import LocalBackendConfig

    persona = tmp_path / "me.txt"
    persona.write_text("I have two dogs.\n")
    lines = ["hello there", "what do you like to do on weekends?"]
    result = run_forge("--set", "backend.sampling.temperature=0", "--set", "backend.sampling.max_tokens=16",
                       "--set", "backend.api_key_env=PF_TEST_NO_KEY", "chat", "--endpoint", served.url,
                       "--persona", str(persona), "--model", "bob", "--base", input="\n".join(lines) + "\n")
    assert result.returncode == 0, result.stderr
    local = ChatModel(str(tiny["base"]), tiny["adapters"]["bob"],
                      LocalBackendConfig(threads=1, sampling={"temperature": 0, "max_tokens": 16}), progress=False)
    out = StringIO()
    converse(["I have two dogs."], local.reply, True, lines, out, False, True)
    assert result.stdout == out.getvalue()
    # The tiny random model's replies may hold newlines: a reply runs to the next label.
    shown = re.findall(r"^(tuned|base)> (.*?)(?=^(?:tuned|base)> |\Z)", result.stdout, re.S | re.M)
    assert [label for label, _ in shown] == ["tuned", "base", "tuned", "base"]
    assert shown[0][1] != shown[1][1]  # the base request reached the base model


def test_adapters_from_options_and_folder(tiny, tmp_path):
    from persona_forge.serve.registry import adapters_from

    run = tmp_path / "train"
    make_adapter(tiny["base"], run / "sft" / "adapter", seed=5)
    make_adapter(tiny["base"], run / "sft" / "checkpoint-5", seed=5)
    found = adapters_from([f"x={tiny['adapters']['alice']}"], run, {"c": tiny["adapters"]["carol"]})
    assert found == {"c": tiny["adapters"]["carol"], "sft": run / "sft" / "adapter", "x": tiny["adapters"]["alice"]}


def test_vllm_engine_prints_the_exact_command(tiny):
    result = subprocess.run([*forge_cmd(), "-q", "serve", "--engine", "vllm", "--model", str(tiny["base"]),
                             "--adapter", f"alice={tiny['adapters']['alice']}", "--adapter",
                             f"bob={tiny['adapters']['bob']}", "--port", "8123"],
                            capture_output=True, text=True, env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert result.returncode == 0, result.stderr
    line = result.stdout.strip()
    assert line.startswith("VLLM_ALLOW_RUNTIME_LORA_UPDATING=True vllm serve ")
    import shlex

    cmd = shlex.split(line)[1:]
    assert cmd[:3] == ["vllm", "serve", str(tiny["base"])]
    assert cmd[cmd.index("--port") + 1] == "8123" and cmd[cmd.index("--host") + 1] == "127.0.0.1"
    assert "--enable-lora" in cmd and cmd[cmd.index("--max-lora-rank") + 1] == "8"
    at = cmd.index("--lora-modules")
    assert cmd[at + 1:at + 3] == [f"alice={tiny['adapters']['alice'].resolve()}",
                                  f"bob={tiny['adapters']['bob'].resolve()}"]


def test_vllm_rank_rounds_up():
    from persona_forge.serve.vllm import vllm_rank

    assert [vllm_rank(r) for r in (4, 8, 9, 64, 300)] == [8, 8, 16, 64, 320]


def test_cli_refuses_a_public_address_without_a_key(tiny):
    env = {k: v for k, v in os.environ.items() if k != "FORGE_SERVE_API_KEY"}
    result = subprocess.run([*forge_cmd(), "serve", "--model", str(tiny["base"]), "--host", "0.0.0.0"],
                            capture_output=True, text=True, env={**env, "PYTHONPATH": os.getcwd()})
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "FORGE_SERVE_API_KEY" in result.stderr


def test_cli_refuses_an_adapter_of_another_base_in_one_line(tiny, tmp_path):
    other = make_adapter(tiny["base"], tmp_path / "other", seed=1)
    config = json.loads((other / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = "HuggingFaceTB/SmolLM2-1.7B-Instruct"
    (other / "adapter_config.json").write_text(json.dumps(config))
    # In this process (cli.main, as the script runs it): the tiny base loads in a moment, and the refusal
    # comes before anything is served.
    line = one_line_error(run_forge("serve", "--model", str(tiny["base"]), "--adapter", f"o={other}"))
    assert "SmolLM2-1.7B-Instruct" in line


def test_cli_serves_until_stopped(tiny):
    """`forge serve` as a subprocess: it binds, answers the client, and stops on SIGINT."""
    import signal
    import socket
    import time

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proc = subprocess.Popen([*forge_cmd(), "-q", "--set", "serve.threads=1", "serve", "--model", str(tiny["base"]),
                             "--adapters-dir", str(tiny["root"]), "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": os.getcwd()})
    try:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0)
        deadline = time.monotonic() + 120
        while True:
            try:
                ids = {m.id for m in client.models.list().data}
                break
            except openai.APIConnectionError:
                assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
                time.sleep(0.3)
        assert set(ADAPTERS) <= ids
        assert _ask(client, "alice", "hi").choices[0].message.content is not None
        client.close()
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)


@pytest.mark.integration
def test_smollm2_mixed_batch_and_openai_backend_match_the_local_backend(tmp_path):
    """The real target: SmolLM2 with two random r=8 adapters on q_proj, v_proj; a mixed batch
    equals each adapter alone, and the openai backend through the server equals the local one."""
    from persona_forge.backends import ChatRequest
    from persona_forge.backends.local import LocalBackend
    from persona_forge.backends.openai_compat import OpenAIBackend
    from persona_forge.config import LocalBackendConfig, OpenAIBackendConfig
    from persona_forge.models import converted_smollm2
    from persona_forge.serve.app import build_state

    from transformers import AutoModelForCausalLM

    base = converted_smollm2(progress=False)
    loaded = AutoModelForCausalLM.from_pretrained(base)  # once for both adapters
    adapters = {n: make_adapter(base, tmp_path / n, seed=i, scale=0.02, model=loaded)
                for i, n in enumerate(("p1", "p2"))}
    del loaded
    spec = "packaged:smollm2-135m-instruct"
    state = build_state(spec, None, adapters, threads=2, progress=False, wait_ms=300, repetition_penalty=1.15)
    system = {"role": "system", "content": "I love hiking. I have a dog named Max."}
    prompts = ["What do you do on weekends?", "Do you have pets?"]
    with Served(state) as running:
        models = [spec, "p1", "p2", "p1"]
        asks = [lambda m=m, p=p: running.client.chat.completions.create(
            model=m, messages=[system, {"role": "user", "content": p}], max_tokens=24, temperature=0)
            for m, p in zip(models, prompts * 2)]
        mixed = [r.choices[0].message.content for r in _concurrently(asks)]
        assert running.state.batcher.stats["batches"] < len(models)
        alone = [f().choices[0].message.content for f in asks]
        assert mixed == alone
        assert len({mixed[0], mixed[1], mixed[2]}) == 3 or mixed[1] != mixed[3]
        requests = [ChatRequest.of([system, {"role": "user", "content": p}], max_tokens=24, temperature=0.0,
                                   top_p=1.0) for p in prompts]
        remote = OpenAIBackend(OpenAIBackendConfig(model="p2", base_url=running.url,
                                                   api_key_env="PF_TEST_NO_KEY"))
        got = [(c.text or "").strip() for c in remote.complete_sync(requests)]
    local = LocalBackend(LocalBackendConfig(model=spec, adapter=adapters["p2"], threads=2), progress=False)
    assert got == [c.text for c in local.complete_sync(requests)]
