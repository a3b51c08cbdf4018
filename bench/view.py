"""forge view's dialogue list on a 10,000-dialogue run: first page and page 50, cold and warm index.

A SYNTHETIC run directory (2,500 pairs x 4 candidates, 12 turns each, critic scores and reasons
like generate writes; a quarter rejected with a reason, a quarter kept) is written to a temporary
folder. Each page is fetched over real HTTP from uvicorn in a thread (urllib, loopback):
cold = the offset index is built by this request (cache cleared first), warm = it is cached.
Baseline, same process: what a page costs without the index (read and parse the whole file per
request, then slice), the obvious alternative. Figures only, never pass/fail.

Run: python bench/view.py [--dialogues 10000] [--repeat 5]   (light: no torch)
"""

from __future__ import annotations

import argparse
import json
import random
import socket
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import uvicorn  # noqa: E402

from persona_forge.config import AnnotateConfig  # noqa: E402
from persona_forge.web import index as jidx  # noqa: E402
from persona_forge.web.app import create_app  # noqa: E402

WORDS = ("dog hiking jazz nurse ohio guitar coffee garden teacher travel movies pizza running books "
         "music beach family winter cooking painting").split()


def write_run(folder: Path, n: int, candidates: int = 4, turns: int = 12, seed: int = 0) -> Path:
    rng = random.Random(seed)
    pairs = n // candidates
    with open(folder / "dialogues.jsonl", "w") as d, open(folder / "best.jsonl", "w") as b, \
            open(folder / "generate_rejections.jsonl", "w") as r:
        for p in range(pairs):
            u1 = [f"I like {rng.choice(WORDS)} and {rng.choice(WORDS)}." for _ in range(5)]
            u2 = [f"My job involves {rng.choice(WORDS)}." for _ in range(5)]
            scored = []
            for c in range(candidates):
                critic = round(rng.random(), 4)
                record = {
                    "id": f"{p:05d}-{c}", "pair_id": f"p{p:05d}", "user1_persona": u1, "user2_persona": u2,
                    "turns": [{"speaker": "user1" if t % 2 == 0 else "user2",
                               "text": " ".join(rng.choice(WORDS) for _ in range(14)) + "."} for t in range(turns)],
                    "round": p % 2, "candidate": c, "provenance": None, "parse_error": None,
                    "scores": {"critic": critic, "contradiction": round(rng.random(), 3), "coverage": 0.6,
                               "coherence": float(rng.randint(1, 5)), "quality": 0.7, "form": 0.8},
                    "reasons": {"coherence": "fine"}}
                if c == 0:
                    record["reasons"]["contradiction"] = '"I have no dog." vs persona "I like dog and jazz." (0.93)'
                    r.write(json.dumps({"id": f"r{p}", "stage": "generate", "subject_id": record["id"],
                                        "reason": "contradiction", "detail": {"critic": critic}}) + "\n")
                d.write(json.dumps(record) + "\n")
                scored.append(record)
            b.write(json.dumps(max(scored[1:], key=lambda x: x["scores"]["critic"])) + "\n")
    return folder


def serve(app) -> tuple[str, uvicorn.Server]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    base = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            urllib.request.urlopen(base + "/static/style.css", timeout=1).close()
            return base, server
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("server did not start")


def fetch(url: str) -> tuple[float, int]:
    started = time.perf_counter()
    with urllib.request.urlopen(url, timeout=120) as response:
        body = response.read()
    return time.perf_counter() - started, len(body)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dialogues", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        run = write_run(Path(tmp), args.dialogues)
        size = (run / "dialogues.jsonl").stat().st_size
        n = sum(1 for _ in open(run / "dialogues.jsonl"))
        print(f"run: {n:,} dialogues, dialogues.jsonl {size / 1e6:.1f} MB (synthetic), page size 20")
        base, server = serve(create_app(run, AnnotateConfig(page_size=20)))
        rows = []
        for label, query in (("first page", "/dialogues"), ("page 50", "/dialogues?page=50"),
                             ("rejected, page 50", "/dialogues?status=rejected&page=50"),
                             ("critic 0.2-0.4, search 'jazz'", "/dialogues?score=critic&lo=0.2&hi=0.4&q=jazz")):
            jidx.clear_cache()
            cold, nbytes = fetch(base + query)
            warm = statistics.median(fetch(base + query)[0] for _ in range(args.repeat))
            rows.append((label, cold, warm, nbytes))
        server.should_exit = True

        # baseline: no index, the whole file read and parsed per request, then one page sliced out
        def naive(page: int) -> list[dict]:
            with open(run / "dialogues.jsonl") as fh:
                records = [json.loads(line) for line in fh]
            return records[(page - 1) * 20:page * 20]

        naive_s = statistics.median(_timed(lambda: naive(50)) for _ in range(args.repeat))
        print(f"{'request':32s} {'cold (index built)':>20s} {'warm (median of ' + str(args.repeat) + ')':>20s} "
              f"{'HTML sent':>10s}")
        for label, cold, warm, nbytes in rows:
            print(f"{label:32s} {cold * 1000:17.0f} ms {warm * 1000:17.1f} ms {nbytes / 1e3:7.0f} kB")
        warm50 = rows[1][2]
        print(f"baseline, no index (read + parse the whole file, slice page 50): {naive_s * 1000:.0f} ms "
              f"(parse only, no HTML); warm page 50 is {naive_s / warm50:.0f}x faster, and sends "
              f"{rows[1][3] / size:.2%} of the file")


def _timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


if __name__ == "__main__":
    main()
