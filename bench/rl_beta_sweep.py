"""A small sweep over RLOO's KL coefficient (beta) on the packaged SmolLM2-135M-Instruct, with a reward
that can be hacked: the reward model + NLI faithfulness + a bonus per word (train.rl.length_penalty < 0).
One SFT adapter and one reward model are trained first (synthetic SPC preferences: the real conversation
against off-persona filler), then one RLOO run per beta from that adapter. Prints, per beta, reward,
KL, reply words, grounding and contradiction rates (mean of the first and last 3 logged steps), the
alarms and the run time; draws them over the steps in one figure. A benchmark reports figures; it never
passes or fails. Run it alone:

    flock /tmp/pf-heavy.lock python bench/rl_beta_sweep.py --steps 24 --figure docs/img/rl-beta-sweep.png
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

SPEC = "packaged:smollm2-135m-instruct"
KEYS = (("reward", "reward"), ("kl", "KL"), ("watch/reply_words", "words"),
        ("watch/grounding_rate", "grounding"), ("watch/contradiction_rate", "contradiction"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--betas", type=float, nargs="+", default=[0.0, 0.05, 0.2])
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--length-bonus", type=float, default=0.05, help="Reward per word beyond length_free.")
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--keep", type=Path, default=None)
    parser.add_argument("--figure", type=Path, default=None)
    parser.add_argument("--model", default=SPEC, help="Base model (a tiny one with --stub-nli checks the script).")
    parser.add_argument("--stub-nli", action="store_true",
                        help="The tests' stand-in NLI instead of the embedded one (a dry run of the mechanics).")
    args = parser.parse_args()

    from persona_forge import ui
    from persona_forge.config import load_recipe
    from conftest import run_train
    from test_train_rlhf import ShortIsGrounded, write_preferences
    from train_data import write_sft

    ui.console.quiet = True
    run = args.keep or Path(tempfile.mkdtemp(prefix="rl-sweep-")) / "run"

    def recipe(**overrides):
        base = {"run_dir": str(run), "train.model": args.model, "train.logging_steps": 1, "train.save_steps": 1000,
                "train.threads": args.threads}
        base.update({f"train.{k}": v for k, v in overrides.items()})
        return load_recipe(None, base)

    started = time.time()
    write_sft(run / "curated" / "sft.jsonl", 40)
    run_train(recipe(lr=1e-3, max_steps=20))
    write_preferences(run / "preferences.jsonl", 30, turns=6)
    rm = run_train(recipe(method="reward", lr=1e-3, max_steps=20, batch_size=2, max_length=256))
    print(f"SFT + reward model: {time.time() - started:.0f} s; reward model held-out accuracy "
          f"{rm.get('held-out accuracy')} on {rm.get('held-out pairs')} pairs")
    sft = run / "train" / "sft" / "adapter"
    results = {}
    for beta in args.betas:
        t0 = time.time()
        run_train(recipe(method="rloo", name=f"rloo-beta{beta}", adapter=str(sft), lr=args.lr,
                         max_steps=args.steps, batch_size=1,
                         **{"rl.beta": beta, "rl.n_prompts": args.steps, "rl.num_generations": 4,
                            "rl.max_completion_length": 48, "rl.length_penalty": -args.length_bonus,
                            "rl.length_free": 10}),
                  rl=True, nli=ShortIsGrounded() if args.stub_nli else None)
        folder = run / "train" / f"rloo-beta{beta}"
        log = [json.loads(line) for line in (folder / "log.jsonl").read_text().splitlines()]
        log = [row for row in log if "reward" in row]
        figures = json.loads((folder / "train.manifest.json").read_text())["figures"]
        results[beta] = {"log": log, "alarms": figures["alarms"], "seconds": time.time() - t0,
                         "s_per_step": figures["s_per_step"]}

    def mean(rows, key):
        values = [r[key] for r in rows if r.get(key) is not None]
        return sum(values) / len(values) if values else float("nan")

    print(f"\n{args.steps} RLOO steps per beta (1 prompt x 4 replies a step, 48 tokens max, lr {args.lr}), "
          f"reward = RM + NLI + {args.length_bonus} per word beyond 10; first 3 -> last 3 logged steps")
    print("| beta | " + " | ".join(label for _, label in KEYS) + " | alarms | run time |")
    print("|---|" + "---|" * (len(KEYS) + 2))
    for beta, result in results.items():
        log = result["log"]
        cells = [f"{mean(log[:3], key):.3f} -> {mean(log[-3:], key):.3f}" for key, _ in KEYS]
        alarms = "; ".join(a.split(" while ")[1].split(" (")[0] for a in result["alarms"]) or "none"
        print(f"| {beta} | " + " | ".join(cells) + f" | {alarms} | {result['seconds']:.0f} s "
              f"({result['s_per_step']} s/step) |")
    print(f"\nwhole sweep including SFT and reward model: {time.time() - started:.0f} s ({run})")
    if args.figure:
        draw(results, args.figure)


def draw(results, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(KEYS), figsize=(3.1 * len(KEYS), 2.8), dpi=90)
    for ax, (key, label) in zip(axes, KEYS):
        for beta, result in results.items():
            points = [(r["step"], r[key]) for r in result["log"] if r.get(key) is not None]
            if points:
                ax.plot(*zip(*points), linewidth=1.2, label=f"beta {beta}")
        ax.set_title(label, fontsize=9)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=7)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    plt.close(fig)


if __name__ == "__main__":
    main()
