"""Throughput of the chat backends. Benchmarks report figures; they never pass or fail.

openai: the real OpenAIBackend against the stand-in server (tests/standin_server.py), run in
its own process and answering every request after a fixed latency. With latency L and C
requests in flight the best possible rate is C / L, so each run is shown as a fraction of
that ideal, next to the naive one-at-a-time loop most scripts use. Client and server CPU per
request say which side limits the rate when it falls short.

local: the packaged SmolLM2 through LocalBackend, the same 16 persona prompts generated one
at a time (batch 1) and together (batch 16), greedy with a fixed number of new tokens so
both runs do the same work; new tokens per second and the ratio.

--busy runs a CPU hog process beside the client for the whole measurement (a machine doing
other work); --complete also times `forge complete`'s stage on the same requests at the highest
concurrency, against the raw backend in the same run. Targets (issue 17): at least 90% of ideal
at 64 and 256 in flight quiet, at least 80% busy, and forge complete within 10% of the raw backend.

    python bench/backends.py                       # 2,000 requests, 50 ms, concurrency 1, 64 and 256
    python bench/backends.py --requests 500 --concurrency 1,16,64
    python bench/backends.py --skip-local --concurrency 64,256 --busy --complete
    python bench/backends.py --skip-local --concurrency 64,256 --loop asyncio   # without uvloop

The raw backend runs on the event loop stages give it: a backend session's (uvloop where installed).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from persona_forge.backends.base import ChatRequest  # noqa: E402
from persona_forge.backends.openai_compat import OpenAIBackend  # noqa: E402
from persona_forge.config import LocalBackendConfig, OpenAIBackendConfig  # noqa: E402


def session_loop():
    """An event loop of the kind backend sessions run (closed at once: only its type is read)."""
    from persona_forge.backends import session

    loop = session.new_event_loop()
    loop.close()
    return loop

# An environment variable nobody sets, so no real key is ever sent to the stand-in.
KEY_ENV = "PERSONA_FORGE_BENCH_UNUSED_KEY"
PILOT_REQUESTS = 20


def _standin_module():
    spec = importlib.util.spec_from_file_location("standin_server", ROOT / "tests" / "standin_server.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _requests(n: int, tag: str) -> list[ChatRequest]:
    return [ChatRequest.of([{"role": "user", "content": f"bench {tag} request {i}"}], max_tokens=16)
            for i in range(n)]


async def _timed_batch(backend: OpenAIBackend, n: int, warmup: int, tag: str) -> dict[str, Any]:
    # Warm-up: imports, the platform probe on the first call, connections opened.
    await backend.complete(_requests(warmup, f"{tag}-warmup"))
    requests = _requests(n, tag)
    cpu, wall = time.process_time(), time.perf_counter()
    results = await backend.complete(requests)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    wrong = sum(1 for i, c in enumerate(results) if c.text != f"echo: bench {tag} request {i}")
    return {"n": n, "seconds": wall, "client_cpu_s": cpu, "wrong": wrong}


def _measure(server, concurrency: int, n: int, latency_s: float) -> dict[str, Any]:
    """The raw backend on the event loop the stages give it (a backend session's), closed after."""
    warmup = min(2 * concurrency, 128)
    server.reset()
    backend = OpenAIBackend(OpenAIBackendConfig(base_url=server.url, model="standin", api_key_env=KEY_ENV,
                                                concurrency=concurrency))
    with backend.session() as session:
        run = session.run(_timed_batch(backend, n, warmup, f"c{concurrency}"))
    stats = server.stats()
    rate = run["n"] / run["seconds"]
    ideal = concurrency / latency_s
    return {**run, "concurrency": concurrency, "rate": rate, "ideal": ideal,
            "fraction": rate / ideal, "max_in_flight": stats["max_in_flight"],
            "connections": stats["connections"], "server_cpu_s": stats["cpu_s"],
            "server_requests": stats["chat"], "handling_ms": stats["handling_ms"],
            "turnaround_ms": stats["turnaround_ms"]}


@contextlib.contextmanager
def cpu_hog(enabled: bool):
    """A process spinning on one core for as long as the block runs (--busy)."""
    if not enabled:
        yield
        return
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.5)
        yield
    finally:
        hog.kill()
        hog.wait()


def _measure_complete(server, concurrency: int, n: int) -> dict[str, Any]:
    """`forge complete`'s stage (prompt file in, records appended, manifest) on n prompts."""
    from persona_forge import ui
    from persona_forge.backends import build_backend
    from persona_forge.config import load_recipe
    from persona_forge.contract import StageContext
    from persona_forge.stages import complete

    ui.set_verbosity(-1)  # as `forge -q complete`: no bar on the bench's stderr
    with tempfile.TemporaryDirectory() as tmp:
        prompts = Path(tmp) / "prompts.jsonl"
        prompts.write_text("".join(json.dumps({"id": f"p{i}", "prompt": f"bench complete request {i}"}) + "\n"
                                   for i in range(n)))
        recipe = load_recipe(None, {"run_dir": str(Path(tmp) / "run"), "complete.input": str(prompts),
                                    "backend.kind": "openai", "backend.base_url": server.url,
                                    "backend.model": "standin", "backend.api_key_env": KEY_ENV,
                                    "backend.concurrency": concurrency, "backend.sampling.max_tokens": 16})
        server.reset()
        cpu, wall = time.process_time(), time.perf_counter()
        rows = complete.run(recipe.complete, StageContext(recipe.run_dir), build_backend(recipe.backend),
                            chat=recipe.backend).summary
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {"n": n, "seconds": wall, "client_cpu_s": cpu, "rate": n / wall, "failed": rows["failed (re-run to retry)"]}


def openai_bench(requests: int = 2000, latency_ms: float = 50.0, concurrencies: tuple[int, ...] = (1, 64, 256),
                 budget_s: float = 120.0, busy: bool = False, rounds: int = 1,
                 with_complete: bool = False) -> list[dict[str, Any]]:
    """Requests/s of OpenAIBackend against the stand-in at each concurrency; prints a table."""
    standin = _standin_module()
    latency_s = latency_ms / 1000
    rows = []
    notes = []
    complete_rows = []
    with standin.standin(latency_ms=latency_ms) as server, cpu_hog(busy):
        for concurrency in concurrencies:
            n = requests
            # The naive loop takes requests x latency: when that would blow the time budget,
            # time a pilot and send only as many as fit. A rate is a rate.
            estimate = requests * latency_s / concurrency
            if estimate > budget_s / 2:
                pilot = _measure(server, concurrency, PILOT_REQUESTS, latency_s)
                estimate = requests / pilot["rate"]
                if estimate > budget_s:
                    n = max(PILOT_REQUESTS, int(budget_s * pilot["rate"]))
                    notes.append(f"concurrency {concurrency}: scaled to {n} of {requests} requests "
                                 f"(all {requests} would take about {estimate:.0f}s)")
            print(f"  concurrency {concurrency}: {n} requests x {rounds} round(s) ...", file=sys.stderr, flush=True)
            measured = [_measure(server, concurrency, n, latency_s) for _ in range(rounds)]
            rows.append(sorted(measured, key=lambda row: row["rate"])[len(measured) // 2])  # the median round
        if with_complete:
            top = max(concurrencies)
            for _ in range(rounds):  # interleaved: raw backend, then the stage, each round
                print(f"  forge complete vs raw at {top}: {requests} requests ...", file=sys.stderr, flush=True)
                raw = _measure(server, top, requests, latency_s)
                staged = _measure_complete(server, top, requests)
                complete_rows.append((raw, staged))
        load = os.getloadavg()[0]

    loop = type(session_loop()).__module__.split(".")[0]
    print(f"\nopenai backend vs stand-in server ({latency_ms:g} ms per answer, 127.0.0.1, warm-up excluded; "
          f"client event loop: {loop}; "
          f"{'BUSY: a CPU hog process beside it; ' if busy else ''}"
          f"load average {load:.2f} on {os.cpu_count()} CPUs; median of {rounds} round(s))")
    _print_table(
        ("concurrency", "requests", "seconds", "req/s", "ideal req/s", "of ideal", "wrong"),
        [(row["concurrency"], row["n"], f"{row['seconds']:.2f}", f"{row['rate']:.1f}", f"{row['ideal']:.0f}",
          f"{row['fraction']:.1%}", row["wrong"]) for row in rows])
    print("\nwhere the time goes (per request; the server's latency not included)")
    _print_table(
        ("concurrency", "client CPU", "server CPU", "server handling", "client turnaround", "max in flight",
         "connections"),
        [(row["concurrency"], f"{row['client_cpu_s'] / row['n'] * 1000:.2f} ms",
          f"{row['server_cpu_s'] / max(1, row['server_requests']) * 1000:.2f} ms",
          f"{row['handling_ms']:.2f} ms", f"{row['turnaround_ms']:.2f} ms", row["max_in_flight"],
          row["connections"]) for row in rows])
    by_concurrency = {row["concurrency"]: row for row in rows}
    if 1 in by_concurrency and len(by_concurrency) > 1:
        top = max(by_concurrency)
        ratio = by_concurrency[top]["rate"] / by_concurrency[1]["rate"]
        targets = ""
        print(f"concurrency {top} vs 1: {ratio:.1f}x the naive loop, at {by_concurrency[top]['fraction']:.1%} "
              f"of ideal{targets}")
    target = 0.8 if busy else 0.9
    for row in rows:
        if row["concurrency"] >= 64:
            print(f"concurrency {row['concurrency']}: {row['fraction']:.1%} of ideal (target {target:.0%} "
                  f"{'busy' if busy else 'quiet'})")
    if complete_rows:
        ratios = [staged["rate"] / raw["rate"] for raw, staged in complete_rows]
        print(f"\nforge complete (the stage: prompt file, records appended, manifest) vs the raw backend, "
              f"concurrency {max(concurrencies)}, {requests} requests, {len(ratios)} interleaved round(s)")
        _print_table(("round", "raw req/s", "complete req/s", "complete / raw", "complete client CPU"),
                     [(i + 1, f"{raw['rate']:.1f}", f"{staged['rate']:.1f}", f"{staged['rate'] / raw['rate']:.1%}",
                       f"{staged['client_cpu_s'] / staged['n'] * 1000:.2f} ms")
                      for i, (raw, staged) in enumerate(complete_rows)])
        print(f"median: forge complete at {statistics.median(ratios):.1%} of the raw backend (target at least 90%)")
    for note in notes:
        print(f"note: {note}")
    print("client turnaround: how long a kept-alive connection sat idle between an answer and the next "
          "request; server handling: the server's time per request beyond its latency.")
    return rows


def _print_table(header: tuple[str, ...], rows: list[tuple[Any, ...]]) -> None:
    table = [header] + [tuple(str(cell) for cell in row) for row in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    for line in table:
        print("  ".join(cell.rjust(width) for cell, width in zip(line, widths)))


LOCAL_PROMPTS = [
    ("I have two dogs. I work as a nurse.", "What do you do for a living?"),
    ("I am a retired teacher. I grow tomatoes.", "How do you spend your weekends?"),
    ("I am vegan. I play the violin.", "Want to grab a burger later?"),
    ("I am a college student. I play soccer.", "Do you like sports?"),
]


def local_bench(new_tokens: int = 48, prompts: int = 16) -> None:
    from persona_forge.backends.local import LocalBackend

    config = LocalBackendConfig(batch_size=1)
    backend = LocalBackend(config, progress=False)
    backend.load()
    requests = []
    for i in range(prompts):
        persona, question = LOCAL_PROMPTS[i % len(LOCAL_PROMPTS)]
        requests.append(ChatRequest.of([{"role": "system", "content": f"You are this person: {persona}"},
                                        {"role": "user", "content": f"{question} ({i})"}],
                                       temperature=0.0, max_tokens=new_tokens))
    # Forcing every reply to the full length (no early EOS) makes the two runs the same work.
    backend._model.generation_config.min_new_tokens = new_tokens
    rows = []
    for batch_size in (1, prompts):
        backend.config = config.model_copy(update={"batch_size": batch_size})
        backend._generate(requests[:1])  # warm-up
        started = time.perf_counter()
        results = asyncio.run(backend.complete(requests))
        seconds = time.perf_counter() - started
        tokens = sum(r.completion_tokens for r in results)
        rows.append((batch_size, tokens, seconds, tokens / seconds))
    print(f"\nlocal backend: packaged SmolLM2-135M-Instruct, {prompts} prompts x {new_tokens} new tokens, greedy, "
          f"{backend.threads} torch threads")
    print(f"{'batch':>5}  {'tokens':>6}  {'seconds':>7}  {'tokens/s':>8}")
    for batch_size, tokens, seconds, rate in rows:
        print(f"{batch_size:>5}  {tokens:>6}  {seconds:>7.2f}  {rate:>8.1f}")
    print(f"batch {prompts} vs batch 1: {rows[1][3] / rows[0][3]:.1f}x tokens/s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=2000, help="Requests per concurrency level.")
    parser.add_argument("--latency-ms", type=float, default=50.0, help="The stand-in's answer time.")
    parser.add_argument("--concurrency", default="1,64,256", help="Comma-separated concurrency levels.")
    parser.add_argument("--busy", action="store_true", help="Run a CPU hog process beside the client.")
    parser.add_argument("--rounds", type=int, default=1, help="Rounds per level; the median is shown.")
    parser.add_argument("--complete", action="store_true",
                        help="Also time forge complete's stage against the raw backend at the top concurrency.")
    parser.add_argument("--budget-s", type=float, default=120.0,
                        help="Longest a slow (low-concurrency) level may run before it is scaled down.")
    parser.add_argument("--skip-local", action="store_true", help="Leave out the local-model part.")
    parser.add_argument("--loop", choices=("default", "asyncio"), default="default",
                        help="The client's event loop: the one backend sessions use (uvloop where installed) or "
                             "asyncio's own, for comparison.")
    args = parser.parse_args(argv)
    if args.loop == "asyncio":
        from persona_forge.backends import session

        session.new_event_loop = asyncio.new_event_loop
    concurrencies = tuple(int(c) for c in args.concurrency.split(",") if c.strip())
    openai_bench(args.requests, args.latency_ms, concurrencies, args.budget_s, args.busy, args.rounds,
                 args.complete)
    if not args.skip_local:
        local_bench()
    return 0


if __name__ == "__main__":
    sys.exit(main())
