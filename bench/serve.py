"""forge serve on the packaged SmolLM2 with persona adapters. Benchmarks report figures; they never
pass or fail.

Eight random LoRA adapters (r=8 on q_proj, v_proj, as forge train makes them) are served from one
SmolLM2 in this process (uvicorn on a loopback port) and driven with the real `openai` client:

1. throughput: 8 clients, each a different adapter, N requests of 32 new tokens (greedy, the
   end-of-sequence token ignored so every request does the same work): mixed-adapter batches vs
   one adapter at a time (per_adapter batching: each batch one adapter, swapped between batches;
   with every client on its own adapter that is one request per batch). Same model, same process.
   The mixed run is made once per LoRA kernel (--kernels peft,bmm: peft's adapter_names, a loop over
   the batch's adapters in every layer; bmm: two batched matmuls per layer).
2. latency p50 / p95 at 1 client and at 8 clients (mixed).
3. memory per loaded adapter: its LoRA weights' bytes, and the process RSS growth over loading 8.
4. a bounded load: 32 clients for S seconds against a small queue; every request must come back
   with a status (200 or 429 with Retry-After, which the clients honour); none lost.

    python bench/serve.py                                   # 200 requests each way, 60 s load
    python bench/serve.py --requests 64 --load-seconds 20   # a shorter run
    python bench/serve.py --requests 48 --swap-requests 24 --latency-requests 0 --load-seconds 0   # throughput only
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

SPEC = "packaged:smollm2-135m-instruct"
PERSONAS = ["I love hiking. I have a dog named Max.", "I am a nurse. I work nights.",
            "I play the violin. I grew up in Ohio.", "I am vegan. I run marathons.",
            "I collect stamps. I have three cats.", "I am a chef. I hate spicy food.",
            "I study physics. I live in a small flat.", "I build furniture. I have two daughters."]
QUESTIONS = ["What do you do on weekends?", "Tell me about your family.", "What did you eat today?",
             "Do you have any pets?", "What is your job like?"]


def make_adapters(base: Path, root: Path, names: list[str], r: int = 8) -> dict[str, Path]:
    """Random LoRA adapters (r=8 on q_proj, v_proj, small B weights so replies stay sensible), one
    base model load for all of them."""
    import json

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base),
                           LoraConfig(r=r, lora_alpha=2 * r, target_modules=["q_proj", "v_proj"], lora_dropout=0.0,
                                      task_type="CAUSAL_LM"))
    folders = {}
    for i, name in enumerate(names):
        gen = torch.Generator().manual_seed(i)
        with torch.no_grad():
            for key, param in model.named_parameters():
                if "lora_" in key:
                    param.copy_(torch.randn(param.shape, generator=gen) * 0.01)
        model.save_pretrained(root / name)
        config = json.loads((root / name / "adapter_config.json").read_text())
        config["base_model_name_or_path"] = str(base)
        (root / name / "adapter_config.json").write_text(json.dumps(config))
        folders[name] = root / name
    del model
    return folders


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def drive(url: str, adapters: list[str], clients: int, requests: int, tokens: int) -> tuple[float, list[float]]:
    """`clients` threads, client i asks as adapters[i % len], `requests` in all; (seconds, latencies)."""
    import openai

    counter = iter(range(requests))
    lock = threading.Lock()
    latencies: list[float] = []

    def client(i: int) -> None:
        api = openai.OpenAI(base_url=url, api_key="none", max_retries=0, timeout=600)
        while True:
            with lock:
                k = next(counter, None)
            if k is None:
                break
            messages = [{"role": "system", "content": PERSONAS[i % len(PERSONAS)]},
                        {"role": "user", "content": QUESTIONS[k % len(QUESTIONS)]}]
            started = time.perf_counter()
            reply = api.chat.completions.create(model=adapters[i % len(adapters)], messages=messages,
                                                max_tokens=tokens, temperature=0, extra_body={"ignore_eos": True})
            assert reply.usage.completion_tokens == tokens, reply.usage
            with lock:
                latencies.append(time.perf_counter() - started)
        api.close()

    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        list(pool.map(client, range(clients)))
    return time.perf_counter() - started, latencies


def load_test(url: str, adapters: list[str], clients: int, seconds: float, tokens: int) -> collections.Counter:
    """Clients that send until the time is up, honouring Retry-After on 429; every outcome counted."""
    import httpx2 as httpx

    outcomes: collections.Counter = collections.Counter()
    lock = threading.Lock()
    stop_at = time.monotonic() + seconds

    def client(i: int) -> None:
        with httpx.Client(timeout=600) as http:
            k = 0
            while time.monotonic() < stop_at:
                body = {"model": adapters[i % len(adapters)], "max_tokens": tokens, "temperature": 0.8, "seed": k,
                        "messages": [{"role": "system", "content": PERSONAS[i % len(PERSONAS)]},
                                     {"role": "user", "content": QUESTIONS[k % len(QUESTIONS)]}]}
                k += 1
                try:
                    response = http.post(url + "/chat/completions", json=body)
                    key = str(response.status_code)
                    if response.status_code == 429 and "retry-after" not in response.headers:
                        key = "429 without Retry-After"
                    if response.status_code == 200 and not response.json()["choices"][0]["message"]["content"]:
                        key = "200 empty"
                except Exception as exc:  # noqa: BLE001 - a lost request is the thing being counted
                    key = f"lost ({type(exc).__name__})"
                    response = None
                with lock:
                    outcomes[key] += 1
                if response is not None and response.status_code == 429:
                    time.sleep(min(float(response.headers.get("retry-after", 1)), 5.0))

    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        list(pool.map(client, range(clients)))
    return outcomes


def batch_figures(stats: dict) -> str:
    """Rows per batch (generate calls) and, where the batcher counts them, rows per decode step."""
    batches = max(1, stats.get("batches", 1))
    text = f"{stats.get('rows', 0) / batches:.1f} rows per batch ({stats.get('batches', 0)} batches)"
    if stats.get("steps"):
        text += f", {stats['step_rows'] / stats['steps']:.2f} rows per decode step ({stats['steps']} steps)"
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=200, help="Requests per throughput run (mixed and swapping).")
    parser.add_argument("--swap-requests", type=int, default=None, help="Requests for the swapping run (default "
                                                                         "--requests; fewer saves time, the rate is "
                                                                         "per second either way).")
    parser.add_argument("--tokens", type=int, default=32, help="New tokens per request.")
    parser.add_argument("--latency-requests", type=int, default=24, help="Requests of the 1-client latency run "
                                                                               "(0 skips it).")
    parser.add_argument("--load-seconds", type=float, default=60.0, help="Length of the 32-client load (0 skips).")
    parser.add_argument("--load-clients", type=int, default=32)
    parser.add_argument("--max-queue", type=int, default=16, help="The server's queue bound in the load run.")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: the usable cores).")
    parser.add_argument("--kernels", default="peft,bmm",
                        help="The mixed runs: one per serve.lora_kernel named (comma-separated).")
    parser.add_argument("--no-bmm", dest="kernels", action="store_const", const="peft",
                        help="Only the mixed run with lora_kernel=peft (--kernels peft).")
    parser.add_argument("--wait-ms", type=float, default=50.0, help="The batcher's wait window.")
    parser.add_argument("--model", default=SPEC, help="Base model (a folder: a smoke run on another model).")
    args = parser.parse_args(argv)

    from persona_forge.models import converted_smollm2
    from persona_forge.serve.app import BackgroundServer, build_state

    from persona_forge.models import causal_lm_path

    base = converted_smollm2(progress=False) if args.model == SPEC else Path(causal_lm_path(args.model))
    names = [f"persona{i}" for i in range(8)]
    with tempfile.TemporaryDirectory() as tmp:
        folders = make_adapters(base, Path(tmp), names)
        state = build_state(args.model, None, {}, max_loaded=8, max_batch=8, wait_ms=args.wait_ms, max_queue=10_000,
                            repetition_penalty=1.15, threads=args.threads, progress=False)
        before = rss_mb()
        for n in names:  # loaded one by one, as /v1/load_lora_adapter does
            info = state.registry.check(n, folders[n])
            state.registry.add(info)
            state.batcher.call(lambda n=n: (state.registry.plan([n]), state.engine.load_adapter(n, str(folders[n])))
                               ).result()
        grown = rss_mb() - before
        per_adapter = state.engine.adapter_bytes(names[0])
        with BackgroundServer(state) as server:
            url = server.base_url
            print(f"memory per loaded adapter: {per_adapter / 2**20:.2f} MiB of LoRA weights; process RSS grew "
                  f"{grown:.1f} MiB over loading 8 ({grown / 8:.2f} MiB each)", flush=True)
            drive(url, names, 8, 8, args.tokens)  # warm-up: one batch of every adapter
            default_kernel = state.engine.lora_kernel
            mixed: dict[str, tuple[float, list[float], dict]] = {}
            for kernel in [k.strip() for k in args.kernels.split(",") if k.strip()]:
                state.engine.lora_kernel = kernel
                state.batcher.stats.clear()
                seconds, lat = drive(url, names, 8, args.requests, args.tokens)
                mixed[kernel] = (seconds, lat, dict(state.batcher.stats))
                print(f"mixed (lora_kernel={kernel}): {args.requests} requests in {seconds:.1f} s", flush=True)
            state.engine.lora_kernel = default_kernel
            state.batcher.mixed = False
            swap_n = args.requests if args.swap_requests is None else args.swap_requests
            swap_s = swap_lat = None
            if swap_n > 0:
                swap_s, swap_lat = drive(url, names, 8, swap_n, args.tokens)
                print(f"one adapter at a time: {swap_n} requests in {swap_s:.1f} s", flush=True)
            state.batcher.mixed = True
            one_s = one_lat = None
            if args.latency_requests > 0:
                one_s, one_lat = drive(url, names, 1, args.latency_requests, args.tokens)
            outcomes = None
            if args.load_seconds > 0:
                state.batcher.max_queue = args.max_queue
                outcomes = load_test(url, names, args.load_clients, args.load_seconds, args.tokens)
        state.batcher.close()

    swap_rate = swap_n * args.tokens / swap_s if swap_s else None
    print(f"\nforge serve: {args.model} ({state.engine.model.dtype}, {state.engine.model.device}), 8 random "
          f"LoRA adapters r=8 on q_proj,v_proj; {args.tokens} new tokens per request, greedy, EOS ignored")
    print(f"{'run':<38}{'requests':>9}{'seconds':>9}{'tokens/s':>10}{'req/s':>8}{'p50 s':>8}{'p95 s':>8}")
    rows = [(f"8 clients, mixed, lora_kernel={k}", args.requests, seconds, lat)
            for k, (seconds, lat, _stats) in mixed.items()]
    rows += [("8 clients, one adapter at a time", swap_n, swap_s, swap_lat),
             (f"1 client (mixed, {default_kernel})", args.latency_requests, one_s, one_lat)]
    for label, n, seconds, lat in rows:
        if seconds is None:
            continue
        print(f"{label:<38}{n:>9}{seconds:>9.1f}{n * args.tokens / seconds:>10.1f}{n / seconds:>8.2f}"
              f"{percentile(lat, 0.5):>8.2f}{percentile(lat, 0.95):>8.2f}")
    for kernel, (seconds, _lat, stats) in mixed.items():
        ratio = f"{args.requests * args.tokens / seconds / swap_rate:.2f}x tokens/s vs one adapter at a time; " \
            if swap_rate else ""
        print(f"mixed, lora_kernel={kernel}: {ratio}{batch_figures(stats)}")
    if outcomes is not None:
        total = sum(outcomes.values())
        lost = sum(v for k, v in outcomes.items() if not k.isdigit())
        print(f"load: {args.load_clients} clients x {args.load_seconds:g} s, queue bound {args.max_queue}: "
              f"{total} requests, " + ", ".join(f"{k}: {v}" for k, v in sorted(outcomes.items())) +
              f"; lost or unexplained: {lost}")
    line = ""
    if default_kernel in mixed:
        lat = mixed[default_kernel][1]
        line = f"latency at 8 clients ({default_kernel}) p50/p95 {percentile(lat, 0.5):.2f}/{percentile(lat, 0.95):.2f} s"
    if one_lat:
        line += (f"{'; ' if line else ''}at 1 client {percentile(one_lat, 0.5):.2f}/{percentile(one_lat, 0.95):.2f} s "
                 f"(mean {statistics.mean(one_lat):.2f})")
    if line:
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
