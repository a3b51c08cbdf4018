"""bench/generate.py: `forge generate` in `whole` mode against the stand-in server.

500 pairs x 3 candidates, the stand-in answering every request (generator and judge) after
100 ms, 64 requests in flight, the whole critic included (embedded NLI on every utterance against
its speaker's persona, the judge, safety and form). Pairs are Synthetic-Persona-Chat test personas.

Two runs in the same process: every (sentence, utterance) pair through the cross-encoder (the
baseline; each distinct pair judged once), then with the embedding prefilter (critic.prefilter)
that sends only related pairs. The stand-in words each candidate differently (its `persona`
behaviour varies with the request seed), so a pair's candidates are not copies.
The target: under a minute. Prints seconds, where they go, and the ratio.

    .venv/bin/python bench/generate.py [--pairs 500] [--prefilter 0.2]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from persona_forge import ui  # noqa: E402
from persona_forge.backends import build_backend  # noqa: E402
from persona_forge.config import load_recipe  # noqa: E402
from persona_forge.contract import StageContext  # noqa: E402
from persona_forge.nli.base import load_nli  # noqa: E402
from persona_forge.resources import data_dir  # noqa: E402
from persona_forge.schema import Pair, Profile, record_id  # noqa: E402
from persona_forge.stages import generate as stage  # noqa: E402
from persona_forge.store import iter_jsonl  # noqa: E402


def _standin():
    spec = importlib.util.spec_from_file_location("standin_server", ROOT / "tests" / "standin_server.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_pairs(folder: Path, n: int) -> None:
    rows = list(iter_jsonl(data_dir("corpora") / "spc" / "test.jsonl.gz"))[:n]
    profiles, pairs = [], []
    for row in rows:
        a, b = (Profile(id=record_id(p), attribute_ids=[], attributes=p) for p in (row["user1_persona"],
                                                                                  row["user2_persona"]))
        profiles += [a, b]
        pairs.append(Pair(id=record_id(a.id, b.id), user1=a.id, user2=b.id, similarity=0.5))
    (folder / "profiles.jsonl").write_text("".join(p.model_dump_json() + "\n" for p in profiles))
    (folder / "pairs.jsonl").write_text("".join(p.model_dump_json() + "\n" for p in pairs))


def one_run(url: str, folder: Path, nli, embed, prefilter: float, candidates: int) -> dict:
    recipe = load_recipe(None, {
        "run_dir": str(folder), "backend.kind": "openai", "backend.base_url": url, "backend.model": "standin",
        "backend.concurrency": 64, "generate.mode": "whole", "generate.candidates": candidates,
        "generate.chunk_pairs": 100, "generate.critic.prefilter": prefilter})
    os.environ.setdefault("OPENAI_API_KEY", "bench")
    backend = build_backend(recipe.backend, progress=False)
    started = time.perf_counter()
    rows = stage.run(recipe.generate, StageContext(recipe.run_dir, progress=False), backend, nli, chat=recipe.backend,
                     nli_config=recipe.nli, embed=embed if prefilter > 0 else None).summary
    seconds = time.perf_counter() - started
    manifest = json.loads((folder / "generate.manifest.json").read_text())
    return {"seconds": seconds, "rows": rows, "usage": manifest["figures"]["usage"],
            "nli": manifest["figures"]["nli_pairs"], "overall": manifest["figures"]["overall"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=500)
    parser.add_argument("--candidates", type=int, default=3)
    parser.add_argument("--latency-ms", type=float, default=100.0)
    parser.add_argument("--prefilter", type=float, default=0.2)
    args = parser.parse_args()
    ui.set_verbosity(-1)
    standin = _standin()
    url, process = standin.start_server(latency_ms=args.latency_ms, default="persona")
    try:
        recipe = load_recipe(None, {})
        nli = load_nli(recipe.nli, progress=False)
        from persona_forge.models import sentence_transformer

        encoder = sentence_transformer("packaged:minilm-l6")
        embed = lambda texts: encoder.encode(texts, batch_size=64, normalize_embeddings=True,  # noqa: E731
                                              show_progress_bar=False)
        nli.predict([("I have a dog.", "I like cats.")] * 8)  # load and trace outside the timings
        embed(["warm up"])
        results = {}
        for name, prefilter in (("every pair", 0.0), (f"prefilter {args.prefilter}", args.prefilter)):
            with tempfile.TemporaryDirectory() as tmp:
                write_pairs(Path(tmp), args.pairs)
                results[name] = one_run(url, Path(tmp), nli, embed, prefilter, args.candidates)
    finally:
        standin.stop_server(process)
    print(f"forge generate, whole mode: {args.pairs} pairs x {args.candidates} candidates, stand-in at "
          f"{args.latency_ms:g} ms, 64 in flight, critic with judge + embedded NLI")
    for name, r in results.items():
        nli_pairs = r["nli"]
        print(f"  {name:16s} {r['seconds']:6.1f} s  requests {r['usage']['requests']}  "
              f"NLI pairs {nli_pairs['nli_pairs']} (distinct, judged {nli_pairs['nli_pairs_judged']}; "
              f"skipped {nli_pairs['nli_pairs_skipped']})  "
              f"kept {r['rows']['pairs kept (best.jsonl)']}  contradiction rate all "
              f"{r['overall']['contradiction_rate_all']}")
    base, fast = results.values()
    print(f"  speed-up of the prefilter: {base['seconds'] / fast['seconds']:.2f}x")


if __name__ == "__main__":
    main()
