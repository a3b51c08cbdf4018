"""The critic's NLI on Ray: 50,000 (persona sentence, utterance) pairs, in-process vs Ray.

Pairs come from Synthetic-Persona-Chat (corpora/spc): every utterance against each sentence of its
own speaker's persona, as stages/critic.py sends them. Three ways, one process, the same embedded
NLI (`load_nli(NLIConfig())`, built on first use):

  local       the local executor: one process, torch on every core (today's behaviour)
  ray         executor ray on this machine: a local Ray, one actor per core, 1 thread each
  ray 2-node  a local two-node cluster (ray.cluster_utils.Cluster, 1 CPU per node), one actor a node

Ray's wall time is end to end; the first call of the executor (64 pairs, not counted) starts its
actor pool, which later calls reuse, and a separate 1,000-pair call shows the per-call cost left.
Then a projection, from the measured per-actor throughput, of the wall time for 1M conversations (about 80 NLI pairs each) on N nodes.
Figures only; benchmarks never pass or fail.

    flock /tmp/pf-heavy.lock python bench/ray_critic.py [--pairs 50000] [--skip-cluster]
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from persona_forge import ui  # noqa: E402
from persona_forge.config import ExecutorConfig, NLIConfig  # noqa: E402
from persona_forge.hardware import usable_cores  # noqa: E402


def critic_pairs(n: int) -> list[tuple[str, str]]:
    """Distinct (persona sentence, utterance) pairs from Synthetic-Persona-Chat train, in file order."""
    seen: dict[tuple[str, str], None] = {}
    with gzip.open(ROOT / "corpora" / "spc" / "train.jsonl.gz", "rt", encoding="utf-8") as fh:
        for line in fh:
            row = json.loads(line)
            for turn in row["turns"]:
                for sentence in row[f"{turn['speaker']}_persona"]:
                    seen.setdefault((sentence, turn["text"]), None)
                    if len(seen) >= n:
                        return list(seen)
    return list(seen)


def timed(fn):
    started = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - started


def compare(name: str, probs: np.ndarray, baseline: np.ndarray) -> str:
    same = float((probs.argmax(1) == baseline.argmax(1)).mean())
    return f"{name}: max |diff| {float(np.abs(probs - baseline).max()):.2e}, labels agree {same:.4%}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=50_000)
    parser.add_argument("--skip-cluster", action="store_true", help="leave out the two-node cluster")
    parser.add_argument("--conversations", type=int, default=1_000_000)
    parser.add_argument("--pairs-per-conversation", type=int, default=80)
    parser.add_argument("--nli-model", default=None, help="an NLI checkpoint folder instead of the embedded one "
                                                          "(a dry run of this script with a small model)")
    args = parser.parse_args()
    ui.set_verbosity(-1)

    pairs = critic_pairs(args.pairs)
    cfg = NLIConfig(kind="hf", model=args.nli_model) if args.nli_model else NLIConfig()
    cores = usable_cores()
    print(f"{len(pairs):,} distinct (persona sentence, utterance) pairs from SPC train; {cores} cores; "
          f"nli: {cfg.kind}, batch {cfg.batch_size}, precision {cfg.precision}")

    from persona_forge.nli.base import load_nli

    model, load_s = timed(lambda: load_nli(cfg, progress=False))
    print(f"model: {model.describe()} ({model.precision}, traced {model.traced})")
    model.predict(pairs[:64])  # warm-up, as a long-running process would be
    local, local_s = timed(lambda: model.predict(pairs))
    rows = [("local (in-process, %d threads)" % cores, local_s + load_s, local_s)]
    model = None  # freed before the Ray actors load their own copies

    import ray

    from persona_forge.executors.ray import RayExecutor

    def on_ray(config: ExecutorConfig) -> tuple[np.ndarray, float, float]:
        executor = RayExecutor(config)
        executor.nli_probs(pairs[:64], cfg)  # connect + a first pool (not counted: it is per process)
        small, small_s = timed(lambda: executor.nli_probs(pairs[:1000], cfg))
        probs, wall = timed(lambda: executor.nli_probs(pairs, cfg))
        return probs, wall, small_s

    remote, ray_s, ray_small_s = on_ray(ExecutorConfig(kind="ray", actors=cores, cpus_per_actor=1))
    ray.shutdown()
    rows.append((f"ray, this machine ({cores} actors x 1 thread)", ray_s, None))
    notes = [compare("ray vs local", remote, local),
             f"ray: a 1,000-pair call takes {ray_small_s:.1f} s (the actor pool is kept from the first call: "
             f"this is shipping the pairs and judging them)"]

    cluster_s = None
    if not args.skip_cluster:
        from ray.cluster_utils import Cluster

        small = {"num_cpus": 1, "object_store_memory": 256 * 2**20}
        cluster = Cluster(initialize_head=True, head_node_args=small)
        cluster.add_node(**small)
        cluster.wait_for_nodes()
        try:
            two, cluster_s, two_small_s = on_ray(ExecutorConfig(kind="ray", address=cluster.address, actors=2,
                                                                cpus_per_actor=1))
        finally:
            ray.shutdown()
            cluster.shutdown()
        rows.append(("ray, 2-node local cluster (1 actor a node)", cluster_s, None))
        notes.append(compare("2-node vs local", two, local))
        notes.append(f"2-node: a 1,000-pair call takes {two_small_s:.1f} s")

    print(f"\n{'variant':<44} {'wall s':>8} {'pairs/s':>8} {'vs local':>9}")
    baseline = rows[0][1]
    for name, wall, predict_s in rows:
        print(f"{name:<44} {wall:>8.1f} {len(pairs) / wall:>8.0f} {wall / baseline:>8.2f}x")
    print(f"(local: load {load_s:.1f} s + predict {local_s:.1f} s = {len(pairs) / local_s:.0f} pairs/s predicting)")
    for note in notes:
        print(note)

    per_actor = len(pairs) / (cluster_s or ray_s) / 2 if (cluster_s or ray_s) else 0
    total = args.conversations * args.pairs_per_conversation
    print(f"\nPROJECTION (not measured): {args.conversations:,} conversations x {args.pairs_per_conversation} NLI "
          f"pairs = {total:,} pairs, at the measured {per_actor:.0f} pairs/s per 1-CPU actor (end to end, "
          f"this CPU), one actor per core, perfect scaling assumed:")
    print(f"{'nodes x cores':<16} {'actors':>7} {'hours':>8}")
    for nodes, node_cores in ((1, 2), (1, 16), (4, 16), (16, 16), (64, 16)):
        actors = nodes * node_cores
        print(f"{f'{nodes} x {node_cores}':<16} {actors:>7} {total / (per_actor * actors) / 3600:>8.1f}")


if __name__ == "__main__":
    main()
