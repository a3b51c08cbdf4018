"""NLI throughput on this machine: pairs per second for short (about 30-token) persona pairs.

Runs the embedded cross-encoder (built on first use) as configured by default (TorchScript-traced,
precision auto: bf16 on a CPU with AMX / AVX512-BF16, float32 elsewhere), against the same model
run eagerly in float32 (the baseline), at a few batch sizes; the unsorted order, to show what
sorting by length buys; float32 traced; and int8 dynamic quantization. Figures only: benchmarks never pass or fail.

    python bench/nli.py [--pairs 4000] [--threads N]
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from persona_forge.nli.base import CrossEncoderNLI  # noqa: E402
from persona_forge.nli.data import read_labelled  # noqa: E402
from persona_forge.nli.train import ensure_embedded  # noqa: E402


def short_pairs(n: int, seed: int = 0) -> list[tuple[str, str]]:
    """Persona-domain pairs from the dev set re-paired at random, the hypothesis two chat lines
    long: about 30 tokens a pair, like an utterance checked against a persona attribute."""
    rows = read_labelled(ROOT / "corpora" / "nli" / "persona_dev.jsonl")
    rng = random.Random(seed)
    return [(rng.choice(rows).premise, f"{rng.choice(rows).hypothesis} {rng.choice(rows).hypothesis}")
            for _ in range(n)]


def rate(model: CrossEncoderNLI, pairs, sort: bool = True) -> float:
    model.predict(pairs[:64])  # warm-up
    started = time.perf_counter()
    if sort:
        model.predict(pairs)
    else:  # the naive loop: batches in input order, padded to their longest pair
        for k in range(0, len(pairs), model.batch_size):
            model.predict(pairs[k:k + model.batch_size])
    return len(pairs) / (time.perf_counter() - started)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=4000)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    path = str(ensure_embedded())
    pairs = short_pairs(args.pairs)
    model = CrossEncoderNLI(path, batch_size=64, quantize=False, threads=args.threads)
    tokens = sum(model._lengths(pairs)) / len(pairs)
    print(f"embedded NLI ({Path(path).name}), {len(pairs)} pairs of {tokens:.1f} tokens on average, "
          f"{__import__('torch').get_num_threads()} torch threads\n")
    print(f"{'variant':<34} {'pairs/s':>8}  {'vs baseline':>11}")
    baseline = rate(model, pairs)
    print(f"{'eager, batch 64, length-sorted':<34} {baseline:>8.0f}  {'1.00x (baseline)':>11}")
    default = CrossEncoderNLI(path, batch_size=64, threads=args.threads, trace=True, precision="auto")
    r = rate(default, pairs)
    print(f"{'default: traced ' + default.precision + ', batch 64':<34} {r:>8.0f}  {r / baseline:>10.2f}x  "
          f"traced={default.traced}")
    traced = CrossEncoderNLI(path, batch_size=64, threads=args.threads, trace=True, precision="fp32")
    r = rate(traced, pairs)
    print(f"{'traced fp32, batch 64, sorted':<34} {r:>8.0f}  {r / baseline:>10.2f}x  traced={traced.traced}")
    for batch in (16, 128):
        model.batch_size = batch
        r = rate(model, pairs)
        print(f"{f'eager, batch {batch}, length-sorted':<34} {r:>8.0f}  {r / baseline:>10.2f}x")
    model.batch_size = 64
    r = rate(model, pairs, sort=False)
    print(f"{'eager, batch 64, input order':<34} {r:>8.0f}  {r / baseline:>10.2f}x")
    quantized = CrossEncoderNLI(path, batch_size=64, quantize=True, threads=args.threads)
    r = rate(quantized, pairs)
    print(f"{'int8 dynamic, batch 64, sorted':<34} {r:>8.0f}  {r / baseline:>10.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
