"""Carve a development split out of Synthetic-Persona-Chat's TRAIN conversations.

The study (docs/RESULTS.md) chooses settings, such as which `forge score` signal curate should weigh,
on data it never evaluates on: a seeded shuffle of the train split, the first DEV conversations as the
dev set (eval.data), the next POOL as the pool curate selects from. The test split is never read.

    bench/spc_dev_split.py --out runs/q19 --dev 100 --pool 3000 --seed 19
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT / "corpora/spc/train.jsonl.gz")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--dev", type=int, default=100)
    parser.add_argument("--pool", type=int, default=0, help="pool conversations (0: all the rest)")
    parser.add_argument("--seed", type=int, default=19)
    args = parser.parse_args()
    with gzip.open(args.data, "rt", encoding="utf-8") as f:
        rows = [line for line in f if line.strip()]
    if any(json.loads(row).get("split") == "test" for row in rows[:50]):
        raise SystemExit(f"{args.data}: this is the test split; carve dev from the train split")
    random.Random(args.seed).shuffle(rows)
    dev, rest = rows[:args.dev], rows[args.dev:]
    pool = rest[:args.pool] if args.pool else rest
    args.out.mkdir(parents=True, exist_ok=True)
    for name, part in (("dev", dev), ("pool", pool)):
        path = args.out / f"{name}.jsonl.gz"
        # mtime 0: the same split gives the same bytes, so forge score and curate see the same input again
        with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as f:
            f.write("".join(part).encode("utf-8"))
        print(f"{path}: {len(part)} conversations")


if __name__ == "__main__":
    main()
