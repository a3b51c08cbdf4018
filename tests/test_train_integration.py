"""Real LoRA SFT and DPO runs on the packaged SmolLM2-135M-Instruct (a few steps each; run under
the heavy lock): the loss is logged and falls, the LoRA weights move, and the reloaded adapter
changes what the model generates."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import make_recipe, run_train
from persona_forge.lm import load_chat_model
from train_data import spc_samples, write_dpo

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]
SPEC = "packaged:smollm2-135m-instruct"


def recipe_for(run_dir: Path, **train_overrides):
    return make_recipe(run_dir, train={"logging_steps": 1, "save_steps": 100, "threads": 2, **train_overrides})


def lora_tensors(adapter: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(adapter / "adapter_model.safetensors"))


def losses(folder: Path) -> list[float]:
    return [row["loss"] for row in map(json.loads, (folder / "log.jsonl").read_text().splitlines()) if "loss" in row]


def greedy(model, tokenizer, messages: list[dict], n: int = 24) -> str:
    import torch

    inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                           return_dict=True)
    with torch.inference_mode():
        out = model.generate(**inputs, max_new_tokens=n, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    return tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)


def test_sft_loss_falls_and_lora_weights_move(smollm2_sft):
    run_dir = smollm2_sft  # conftest: 8 samples x 3 epochs at batch 2, lr 1e-3
    folder = run_dir / "train" / "sft"
    logged = losses(folder)
    assert len(logged) == 12
    assert sum(logged[-3:]) / 3 < sum(logged[:3]) / 3 * 0.9
    tensors = lora_tensors(folder / "adapter")
    b_weights = [t for name, t in tensors.items() if "lora_B" in name]
    assert len(b_weights) == 30 * 2  # q_proj and v_proj of every layer
    # LoRA B starts at zero: every one of them has moved.
    assert all(float(t.abs().max()) > 0 for t in b_weights)
    figures = json.loads((folder / "train.manifest.json").read_text())["figures"]
    assert figures["steps"] == 12 and figures["final_loss"] == logged[-1]


def test_sft_adapter_reloads_and_changes_generation(smollm2_sft):
    run_dir = smollm2_sft
    messages, _ = spc_samples(20)[-1]  # not among the 8 trained on
    base, tokenizer = load_chat_model(SPEC, progress=False)
    before = greedy(base, tokenizer, messages)
    del base
    tuned, tokenizer = load_chat_model(SPEC, adapter=run_dir / "train" / "sft" / "adapter", progress=False)
    after = greedy(tuned, tokenizer, messages)
    assert before != after


def test_dpo_on_a_few_pairs(tmp_path):
    import torch

    run_dir = tmp_path / "run"
    write_dpo(run_dir / "curated" / "dpo.jsonl", 4, context=2)  # about 100 tokens a row, not 230: half the step
    run_train(recipe_for(run_dir, method="dpo", lr=1e-3, epochs=2, max_length=320))
    folder = run_dir / "train" / "dpo"
    log = [row for row in map(json.loads, (folder / "log.jsonl").read_text().splitlines()) if "loss" in row]
    assert len(log) == 4
    assert log[0]["loss"] == pytest.approx(0.6931, abs=1e-3)  # policy == reference at the start
    assert log[-1]["loss"] < log[0]["loss"]
    assert log[-1]["rewards/margins"] > 0
    assert all(float(t.abs().max()) > 0 for n, t in lora_tensors(folder / "adapter").items() if "lora_B" in n)
    # The reloaded adapter prefers the chosen answer more than the base model does.
    row = json.loads((run_dir / "curated" / "dpo.jsonl").read_text().splitlines()[0])

    def margin(model, tokenizer) -> float:
        def logp(answer):
            prompt = tokenizer.apply_chat_template(row["prompt"], add_generation_prompt=True, tokenize=False)
            full = tokenizer.apply_chat_template(row["prompt"] + answer, tokenize=False)
            ids = tokenizer(full, return_tensors="pt", add_special_tokens=False)["input_ids"]
            start = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
            with torch.no_grad():
                logits = model(ids).logits[0, :-1].log_softmax(-1)
            targets = ids[0, 1:]
            return float(logits[start - 1:].gather(1, targets[start - 1:, None]).sum())
        return logp(row["chosen"]) - logp(row["rejected"])

    base, tokenizer = load_chat_model(SPEC, progress=False)
    before = margin(base, tokenizer)
    del base
    tuned, tokenizer = load_chat_model(SPEC, adapter=folder / "adapter", progress=False)
    assert margin(tuned, tokenizer) > before
