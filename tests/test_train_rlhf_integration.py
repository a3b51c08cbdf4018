"""The RLHF half on the packaged SmolLM2-135M-Instruct and the embedded NLI (a few steps each; run under
the heavy lock): a reward model from preference pairs, then RLOO from an SFT adapter against it with
the KL leash, every step logging reward, its parts, KL and the watch rates."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import run_train
from persona_forge.config import load_recipe
from test_train_rlhf import write_preferences

pytestmark = [pytest.mark.integration, pytest.mark.timeout(1200)]
SPEC = "packaged:smollm2-135m-instruct"


def recipe_for(run_dir: Path, **train_overrides):
    overrides = {"run_dir": str(run_dir), "train.logging_steps": 1, "train.save_steps": 100, "train.threads": 2,
                 "train.model": SPEC}
    overrides.update({f"train.{k}": v for k, v in train_overrides.items()})
    return load_recipe(None, overrides)


def test_reward_model_then_rloo_on_smollm2(tmp_path, smollm2_sft):
    from safetensors.torch import load_file

    import torch

    run = tmp_path / "run"
    write_preferences(run / "preferences.jsonl", 20, turns=4)  # real turns against filler: four tell them apart
    # Held-out accuracy is measured at the end only (logging_steps, which sets the evaluation interval,
    # = max_steps): the assertion reads the final figure.
    rm_rows = run_train(recipe_for(run, method="reward", lr=1e-3, max_steps=8, batch_size=2, max_length=256,
                                   logging_steps=8))
    rm_figures = json.loads((run / "train" / "reward" / "train.manifest.json").read_text())["figures"]
    print("reward model:", {k: rm_figures.get(k) for k in ("first_loss", "final_loss", "heldout_accuracy",
                                                          "n_heldout_pairs", "s_per_step", "total_seconds")})
    assert rm_rows["status"] == "trained" and rm_figures["n_heldout_pairs"] == 4
    assert rm_figures["heldout_accuracy"] >= 0.75  # real conversations against filler: easy to rank

    sft = smollm2_sft / "train" / "sft" / "adapter"  # conftest's session SFT run: RLOO starts from its adapter
    rows = run_train(recipe_for(run, method="rloo", adapter=str(sft), lr=1e-4, max_steps=3, batch_size=1,
                                **{"rl.n_prompts": 3, "rl.num_generations": 2, "rl.max_completion_length": 12,
                                   "rl.beta": 0.05}))
    folder = run / "train" / "rloo"
    figures = json.loads((folder / "train.manifest.json").read_text())["figures"]
    print("rloo:", {k: v for k, v in figures.items() if k.startswith(("first_", "last_", "s_per", "total", "alarms"))})
    log = [json.loads(line) for line in (folder / "log.jsonl").read_text().splitlines()]
    stepped = [r for r in log if "reward" in r]
    assert [r["step"] for r in stepped] == [1, 2, 3]
    assert all({"kl", "reward/rm", "reward/nli", "watch/grounding_rate", "watch/contradiction_rate"} <= set(r)
               for r in stepped)
    before, after = load_file(str(sft / "adapter_model.safetensors")), load_file(str(folder / "adapter" /
                                                                                      "adapter_model.safetensors"))
    assert any(not torch.allclose(before[k], after[k]) for k in before)
    assert rows["status"] == "trained" and (folder / "rl_curves.png").is_file()
