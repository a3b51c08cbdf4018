"""`forge train` at the issue's size: LoRA SFT of the packaged SmolLM2-135M-Instruct on 200
next-reply samples from Synthetic-Persona-Chat (persona system prompt, 6 turns of context, the
turn before the target as the prompt, turn 8 as the target), 3 epochs at batch 2: 300 steps.
Prints s/step, the total time including loading the model, peak memory and the loss. A benchmark
reports figures; it never passes or fails. Run it alone (under the heavy lock on a shared machine):

    flock /tmp/pf-heavy.lock python bench/train.py                       # 200 samples x 3 epochs
    flock /tmp/pf-heavy.lock python bench/train.py --samples 40 --epochs 1 --dpo
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--epochs", type=float, default=3.0)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto")
    parser.add_argument("--checkpointing", choices=("auto", "on", "off"), default="auto")
    parser.add_argument("--dpo", action="store_true", help="DPO on as many pairs (rejected: an off-persona reply).")
    parser.add_argument("--keep", type=Path, default=None, help="Run directory to keep (default: a temporary one).")
    args = parser.parse_args()

    from persona_forge import ui
    from persona_forge.config import load_recipe
    from persona_forge.contract import StageContext
    from persona_forge.stages import train
    from train_data import write_dpo, write_sft

    ui.set_verbosity(0)
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = args.keep or Path(tmp) / "run"
        method = "dpo" if args.dpo else "sft"
        (write_dpo if args.dpo else write_sft)(run_dir / "curated" / f"{method}.jsonl", args.samples)
        recipe = load_recipe(None, {"run_dir": str(run_dir), "train.method": method, "train.epochs": args.epochs,
                                    "train.batch_size": args.batch_size, "train.threads": args.threads,
                                    "train.logging_steps": 10, "train.precision": args.precision,
                                    "train.checkpointing": args.checkpointing})
        started = time.time()
        train.run(recipe.train, StageContext(recipe.run_dir, progress=True), base_model=recipe.backend.model,
                  seed=recipe.seed, prompts_dir=recipe.prompts_dir)
        wall = time.time() - started
        manifest = json.loads((run_dir / "train" / method / "train.manifest.json").read_text())
        figures, counts = manifest["figures"], manifest["counts"]
        print(f"{method.upper()} LoRA r={recipe.train.lora.r} {'+'.join(recipe.train.lora.target_modules)} on "
              f"{counts['samples']} samples x {args.epochs:g} epochs, batch {args.batch_size}, "
              f"max_length {recipe.train.max_length}, {figures['threads']} threads ({figures['mode']})")
        print(f"  steps            {figures['steps']}")
        print(f"  s/step           {figures['s_per_step']:.3f}")
        print(f"  training         {figures['train_seconds']:.1f} s")
        print(f"  total            {wall:.1f} s (loading, data, training, saving)")
        print(f"  peak RSS         {figures['peak_rss_mb']:.0f} MB")
        print(f"  loss             {figures['first_loss']:.3f} -> {figures['final_loss']:.3f}")
        print(f"  contexts cut     {counts['shortened']} of {counts['samples']} to fit")
        adapter = run_dir / "train" / method / "adapter" / "adapter_model.safetensors"
        print(f"  adapter          {adapter.stat().st_size / 2**20:.1f} MB")


if __name__ == "__main__":
    main()
