"""forge serve's iteration-level batching: rows join a running batch between decode steps and leave
when they finish, and each row still gives what its adapter gives alone (greedy, row by row).

A tiny random llama with tiny random LoRA adapters (tests/tiny_lm.py), driven through the engine's
Decoder directly, then once through the server."""

from __future__ import annotations

import threading
import time

import pytest

from test_serve import PROMPTS, Served, _ask, _reference_replies, _state, make_tiny
from tiny_lm import make_adapter

LONG = "tell me everything about the place where you grew up, your family, your work and your dogs"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict:
    tiny = make_tiny(tmp_path_factory.mktemp("tiny"))
    # Another rank and other layers: the bmm kernel pads ranks and leaves zero slots where it has none.
    tiny["adapters"]["dave"] = make_adapter(tiny["base"], tiny["root"] / "dave", seed=7, r=4,
                                            targets=("q_proj", "k_proj", "o_proj"))
    return tiny


def _engine(tiny: dict, kernel: str):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from persona_forge.serve.engine import Engine

    engine = Engine(AutoModelForCausalLM.from_pretrained(tiny["base"]).eval(),
                    AutoTokenizer.from_pretrained(tiny["base"]), lora_kernel=kernel)
    for name, folder in tiny["adapters"].items():
        engine.load_adapter(name, str(folder))
    return engine


def _request(engine, prompt: str, adapter: str | None, max_tokens: int, **options):
    from persona_forge.serve.engine import GenRequest

    ids = engine.chat_ids([{"role": "user", "content": prompt}])
    return GenRequest(prompt_ids=ids, adapter=adapter, max_tokens=max_tokens, temperature=options.pop("temperature", 0.0),
                      repetition_penalty=1.15, **options)


@pytest.mark.parametrize("kernel", ["peft", "bmm"])
def test_rows_joining_and_leaving_a_running_batch_equal_each_adapter_alone(tiny, kernel):
    """Rows join at different steps (prompts longer and shorter than the running rows' cache), leave at
    different steps, and each gives exactly what plain peft gives with only its adapter, alone."""
    engine = _engine(tiny, kernel)
    plan = [  # (join before step, adapter, prompt, max_tokens)
        (0, "alice", PROMPTS[0], 24), (0, "bob", LONG, 5),
        (3, "carol", LONG, 16), (3, None, PROMPTS[2], 20),
        (7, "dave", PROMPTS[1], 18), (7, "alice", PROMPTS[3], 9),
        (12, "bob", PROMPTS[0], 14),
    ]
    requests = [_request(engine, prompt, adapter, n) for _, adapter, prompt, n in plan]
    decoder = engine.decoder(mixed=True)
    done: dict[int, object] = {}
    widths = []
    step = 0
    while step <= 12 or decoder.rows:
        joining = [r for (at, *_), r in zip(plan, requests) if at == step]
        done.update(decoder.join(joining))
        if decoder.rows:
            done.update(decoder.step())
            widths.append((len(decoder.rows), None if decoder.mask is None else decoder.mask.shape[1]))
        step += 1
    assert len(done) == len(requests)
    assert max(n for n, _ in widths) >= 4  # rows that joined at different steps ran together
    assert decoder.steps < sum(n for *_, n in plan)
    for (_, adapter, prompt, n), request in zip(plan, requests):
        result = done[id(request)]
        assert result.completion_tokens <= n and result.finish_reason in ("stop", "length")
        assert [result.text] == _reference_replies(tiny, adapter, [prompt], n), (adapter, prompt)


def test_cache_columns_that_are_padding_in_every_row_are_dropped(tiny):
    engine = _engine(tiny, "bmm")
    decoder = engine.decoder()
    short, long = _request(engine, "x", "alice", 12), _request(engine, LONG, "bob", 2)
    decoder.join([short, long])
    while len(decoder.rows) == 2:
        decoder.step()
    assert [r.request for r in decoder.rows] == [short]
    # the short row alone: its prompt and reply so far, no column of padding left
    assert decoder.mask.shape[1] == len(short.prompt_ids) + len(decoder.rows[0].ids) - 1
    assert bool(decoder.mask.all())
    while decoder.rows:
        decoder.step()


def test_a_seeded_sampled_row_is_the_same_whenever_it_joins(tiny):
    engine = _engine(tiny, "bmm")
    options = {"temperature": 0.9, "top_p": 0.9, "seed": 11}
    alone = engine.generate([_request(engine, PROMPTS[1], "carol", 16, **options)])[0].text
    decoder = engine.decoder()
    decoder.join([_request(engine, LONG, "alice", 30), _request(engine, PROMPTS[0], None, 30)])
    for _ in range(4):
        decoder.step()
    late = _request(engine, PROMPTS[1], "carol", 16, **options)
    done = dict(decoder.join([late]))
    while decoder.rows:
        done.update(decoder.step())
    assert done[id(late)].text == alone


def test_a_request_joins_the_running_batch_through_the_server(tiny):
    """A request sent while another is being decoded joins it at the next step (no wait for the batch
    to end) and gets the same greedy reply as alone."""
    with Served(_state(tiny, wait_ms=0, max_batch=8, lora_kernel="bmm")) as running:
        stats = running.state.batcher.stats
        long_reply: list = []
        first = threading.Thread(target=lambda: long_reply.append(
            _ask(running.client, "alice", PROMPTS[1], max_tokens=600, extra_body={"ignore_eos": True})))
        first.start()
        deadline = time.monotonic() + 60
        while stats["steps"] < 3:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        joined = _ask(running.client, "bob", PROMPTS[3], max_tokens=20).choices[0].message.content
        assert first.is_alive()  # answered while the long request was still being decoded
        first.join()
        assert stats["batches"] == 2 and stats["step_rows"] > stats["steps"]  # they shared decode steps
        alone = _ask(running.client, "bob", PROMPTS[3], max_tokens=20).choices[0].message.content
    assert joined == alone == _reference_replies(tiny, "bob", [PROMPTS[3]], 20)[0]
    assert long_reply[0].usage.completion_tokens == 600


def test_one_engine_switching_kernels_and_one_adapter_batches(tiny):
    """The bench's order on one engine: mixed with bmm, then peft's adapter_names, then one adapter at a
    time: each gives the reference replies (the bmm hooks act only inside their own forward passes)."""
    engine = _engine(tiny, "bmm")
    names = ["alice", None, "dave", "carol"]
    requests = lambda: [_request(engine, PROMPTS[i], n, 12) for i, n in enumerate(names)]  # noqa: E731
    expected = [_reference_replies(tiny, n, [PROMPTS[i]], 12)[0] for i, n in enumerate(names)]
    assert [r.text for r in engine.generate(requests())] == expected
    engine.lora_kernel = "peft"
    assert [r.text for r in engine.generate(requests())] == expected
    alone = []
    for request in requests():
        engine.use_single_adapter(request.adapter)
        alone.append(engine.generate([request], mixed=False)[0].text)
    assert alone == expected
