"""forge train --method reward / rloo on a tiny random llama: the reward model learns to rank, RLOO logs
reward and KL every step and moves the policy, the reward-hacking alarm (as a pure function and on a
reward that pays for length), resuming and refusing a changed config."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import run_train
from persona_forge import rlwatch
from persona_forge.config import load_recipe
from persona_forge.errors import UserError
from persona_forge.schema import Preference, Turn
from persona_forge.stages import train, train_reward, train_rl
from persona_forge.store import iter_jsonl
from train_data import SPC, StopAfter, tiny_llama, tiny_llama_config

pytestmark = pytest.mark.timeout(600)

FILLER = ["As an AI language model, I have no hobbies.", "I cannot have opinions.", "I am only a program.",
          "Please ask me something else."]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return tiny_llama(tmp_path_factory.mktemp("tiny") / "model")


def write_preferences(path: Path, n: int, turns: int = 4) -> list[Preference]:
    """Pairs whose chosen conversation is SPC's real one and whose rejected one is off-persona filler."""
    prefs = []
    for i, row in enumerate(iter_jsonl(SPC)):
        if i == n:
            break
        real = [Turn(**t) for t in row["turns"][:turns]]
        fake = [Turn(speaker=t.speaker, text=FILLER[k % len(FILLER)]) for k, t in enumerate(real)]
        prefs.append(Preference(id=f"pref{i}", pair_id=f"pair{i}", user1_persona=row["user1_persona"],
                                user2_persona=row["user2_persona"], round=0, chosen_id=f"c{i}", rejected_id=f"r{i}",
                                chosen_turns=real, rejected_turns=fake, chosen_score=0.9, rejected_score=0.1))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(p.model_dump_json() + "\n" for p in prefs))
    return prefs


def recipe_for(run_dir: Path, model: Path, **train_overrides):
    # Two threads: torch tests run one at a time under the shared lock, and most of an RL step on the tiny
    # llama is trl's log-probabilities over SmolLM2's 49k-token vocabulary, which two cores share well.
    overrides = {"run_dir": str(run_dir), "train.model": str(model), "train.max_steps": 4,
                 "train.logging_steps": 1, "train.save_steps": 2, "train.threads": 2}
    overrides.update({f"train.{k}": v for k, v in train_overrides.items()})
    return load_recipe(None, overrides)


def log_rows(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "log.jsonl").read_text().splitlines()]


# --- the reward model ----------------------------------------------------------------------------

def test_the_reward_model_learns_to_rank_and_reports_held_out_accuracy(tiny, tmp_path):
    prefs = write_preferences(tmp_path / "run" / "preferences.jsonl", 10)
    recipe = recipe_for(tmp_path / "run", tiny, method="reward", max_steps=12, lr=5e-3, batch_size=4,
                        max_length=256)
    rows = run_train(recipe)
    folder = tmp_path / "run" / "train" / "reward"
    assert rows["status"] == "trained"
    log = log_rows(folder)
    losses = [r["loss"] for r in log if "loss" in r]
    assert len(losses) == 12 and np.mean(losses[-3:]) < np.mean(losses[:3])
    manifest = json.loads((folder / "train.manifest.json").read_text())
    figures = manifest["figures"]
    assert (figures["n_train_pairs"], figures["n_heldout_pairs"]) == (8, 2)
    assert 0.0 <= figures["heldout_accuracy"] <= 1.0 and rows["held-out accuracy"] == figures["heldout_accuracy"]
    assert [r["step"] for r in log if "eval_accuracy" in r] == list(range(1, 13))
    assert (folder / "reward_accuracy.png").read_bytes()[:4] == b"\x89PNG"
    # A training pair is ranked the right way round, from the saved adapter (head included).
    held = {p.pair_id for p in train_reward.split(prefs, 0.2, 0)[1]}
    pref = next(p for p in prefs if p.pair_id not in held)
    row = train_reward.preference_rows(pref)[0]
    rm = train_reward.RewardModel(str(tiny), folder)
    chosen, rejected = rm.score([row["chosen"], row["rejected"]])
    assert chosen > rejected
    # The same config: nothing to do; a changed one: refused unless forced.
    assert run_train(recipe)["status"] == "already trained (same config and data)"
    changed = recipe_for(tmp_path / "run", tiny, method="reward", max_steps=12, lr=5e-3, batch_size=4,
                         max_length=256, **{"reward.heldout": 0.3})
    with pytest.raises(UserError, match=r"another config \(train\.reward\.heldout: 0\.2 -> 0\.3\).*--force"):
        run_train(changed)


def test_held_out_split_is_by_pair_and_seeded():
    def pref(i, pair):
        t = [Turn(speaker="user1", text="hi")]
        return Preference(id=f"p{i}", pair_id=pair, user1_persona=["a"], user2_persona=["b"], round=i,
                          chosen_id="c", rejected_id="r", chosen_turns=t, rejected_turns=t, chosen_score=1,
                          rejected_score=0)

    prefs = [pref(i, f"pair{i % 5}") for i in range(10)]
    a_train, a_held = train_reward.split(prefs, 0.2, 3)
    b_train, b_held = train_reward.split(prefs, 0.2, 3)
    assert [p.id for p in a_held] == [p.id for p in b_held]
    assert len({p.pair_id for p in a_held}) == 1 and len(a_held) == 2
    assert not {p.pair_id for p in a_held} & {p.pair_id for p in a_train}
    assert train_reward.split(prefs, 0.0, 3)[1] == []


# --- RLOO --------------------------------------------------------------------------------------

class ShortIsGrounded:
    """A stand-in NLI: a persona sentence 'entails' a reply of under 6 words and 'contradicts' one of over 12."""

    name = "fake"

    def predict(self, pairs):
        out = []
        for _, reply in pairs:
            n = len(reply.split())
            out.append([0.9, 0.05, 0.05] if n < 6 else [0.05, 0.05, 0.9] if n > 12 else [0.1, 0.8, 0.1])
        return np.array(out)

    def describe(self):
        return "fake NLI"


def rl_recipe(run_dir: Path, model: Path, **overrides):
    base = {"method": "rloo", "max_steps": 3, "batch_size": 2, "lr": 1e-2, "rl.n_prompts": 4,
            "rl.num_generations": 2, "rl.max_completion_length": 8, "rl.beta": 0.1,
            "rl.context": 2}  # short prompts: trl's log-probability head over the 49k vocabulary is most of a step
    base.update(overrides)
    return recipe_for(run_dir, model, **base)


@pytest.fixture(scope="module")
def trained(tiny, tmp_path_factory) -> dict[str, Path]:
    """An SFT adapter and a reward model on the tiny llama, shared by the RLOO tests."""
    from train_data import write_sft

    run = tmp_path_factory.mktemp("rlhf") / "run"
    write_sft(run / "curated" / "sft.jsonl", 4, context=2)
    run_train(recipe_for(run, tiny, max_steps=2))
    write_preferences(run / "preferences.jsonl", 6)
    run_train(recipe_for(run, tiny, method="reward", max_steps=4, max_length=256))
    return {"sft": run / "train" / "sft" / "adapter", "reward": run / "train" / "reward"}


def lora_weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(folder / "adapter_model.safetensors"))


def test_rloo_logs_reward_and_kl_every_step_and_moves_the_policy(tiny, trained, tmp_path):
    import torch

    recipe = rl_recipe(tmp_path / "run", tiny, adapter=str(trained["sft"]),
                       **{"rl.reward_model": str(trained["reward"]), "save_steps": 2})
    rows = run_train(recipe, rl=True, nli=ShortIsGrounded())
    folder = tmp_path / "run" / "train" / "rloo"
    assert rows["status"] == "trained"
    log = [r for r in log_rows(folder) if "reward" in r]
    assert [r["step"] for r in log] == [1, 2, 3]
    for row in log:
        assert {"reward", "kl", rlwatch.REWARD_RM, rlwatch.REWARD_NLI, rlwatch.REWARD_LENGTH, rlwatch.GROUNDING,
                rlwatch.CONTRADICTING, rlwatch.WORDS} <= set(row)
        assert row[rlwatch.REWARD_RM] + row[rlwatch.REWARD_NLI] + row[rlwatch.REWARD_LENGTH] == \
            pytest.approx(row["reward"], abs=1e-4)
        assert 0.0 <= row[rlwatch.GROUNDING] <= 1.0 and row["kl"] >= 0.0
    assert log[0]["kl"] == pytest.approx(0.0, abs=1e-6)  # the policy starts as its reference
    before, after = lora_weights(trained["sft"]), lora_weights(folder / "adapter")
    assert before.keys() == after.keys()
    assert any(not torch.allclose(before[k], after[k]) for k in before)
    samples = [json.loads(line) for line in (folder / "samples.jsonl").read_text().splitlines()]
    assert {s["step"] for s in samples} == {2, 3} and all("reply" in s and "reward" in s for s in samples)
    manifest = json.loads((folder / "train.manifest.json").read_text())
    assert manifest["models"]["reward_model"] == str(trained["reward"] / "adapter")
    assert manifest["models"]["start_adapter"] == str(trained["sft"])
    assert manifest["figures"]["alarms"] == [] or isinstance(manifest["figures"]["alarms"], list)
    assert (folder / "rl_curves.png").read_bytes()[:4] == b"\x89PNG"
    # A changed KL coefficient is another config: refused unless forced.
    with pytest.raises(UserError, match=r"another config \(train\.rl\.beta: 0\.1 -> 0\.2\).*--force"):
        run_train(rl_recipe(tmp_path / "run", tiny, adapter=str(trained["sft"]),
                            **{"rl.reward_model": str(trained["reward"]), "save_steps": 2, "rl.beta": 0.2}),
                  rl=True, nli=ShortIsGrounded())


def terse_llama(folder: Path) -> Path:
    """A tiny random llama that mostly ends its reply after a few words: every embedding shares a large
    component along one axis and the (untied) output row of <|im_end|> points along it."""
    import torch
    from transformers import AutoTokenizer, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama(folder.parent / "tiny"))
    torch.manual_seed(0)
    model = LlamaForCausalLM(tiny_llama_config(tokenizer, tie_word_embeddings=False))
    with torch.no_grad():
        model.model.embed_tokens.weight[:, 0] += 1.0
        model.lm_head.weight[tokenizer.eos_token_id] = 0.0
        model.lm_head.weight[tokenizer.eos_token_id, 0] = 1.5
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_the_alarm_fires_on_a_reward_that_pays_for_length(tmp_path):
    def pays_for_length(completions, **_):
        return [float(len(c[-1]["content"].split())) for c in completions]

    model = terse_llama(tmp_path / "terse")
    recipe = rl_recipe(tmp_path / "run", model, max_steps=5, lr=5e-2,
                       **{"lora.target_modules": ["q_proj", "v_proj", "o_proj", "down_proj"], "rl.rm_weight": 0.0,
                          "rl.nli_weight": 0.0, "rl.length_penalty": 0.0, "rl.beta": 0.0,
                          "rl.max_completion_length": 16, "rl.num_generations": 4})
    rows = run_train(recipe, rl=True, nli=ShortIsGrounded(), extra_rewards=[pays_for_length])
    figures = json.loads((tmp_path / "run" / "train" / "rloo" / "train.manifest.json").read_text())["figures"]
    assert figures["last_reply_words"] > 2 * figures["first_reply_words"], figures
    assert all(r.get("kl") is not None for r in log_rows(tmp_path / "run" / "train" / "rloo") if "reward" in r)
    assert figures["last_reward"] > figures["first_reward"]
    assert any("reply length drifted" in a for a in figures["alarms"]), figures
    assert "reply length drifted" in rows["alarms"]
    # The stand-in NLI grounds only short replies: grounding falls as the replies grow, and that alarms too.
    assert any("grounding fell" in a for a in figures["alarms"]), figures


def test_alarm_logic_on_a_scripted_log():
    G, C, L = rlwatch.GROUNDING, rlwatch.CONTRADICTING, rlwatch.WORDS

    def log(rewards, grounding, contra, words):
        return [{"step": i + 1, "reward": r, G: g, C: c, L: w}
                for i, (r, g, c, w) in enumerate(zip(rewards, grounding, contra, words))]

    steady = log([0.1, 0.2, 0.3, 0.4, 0.5, 0.6], [0.5] * 6, [0.1] * 6, [20] * 6)
    assert rlwatch.alarms(steady) == []                           # reward up, nothing else moved: fine
    hacked = log([0.1, 0.2, 0.3, 0.4, 0.5, 0.6], [0.6, 0.6, 0.6, 0.3, 0.3, 0.3], [0.1, 0.1, 0.1, 0.3, 0.3, 0.3],
                 [20, 20, 20, 40, 40, 40])
    found = rlwatch.alarms(hacked)
    assert len(found) == 3
    assert found[0].startswith("reward rose 0.200 -> 0.500 while grounding fell 0.60 -> 0.30 (steps 1-3 -> 4-6)")
    assert "contradiction rose 0.10 -> 0.30" in found[1] and "drifted 20.0 -> 40.0 words (+100%)" in found[2]
    falling = log([0.6, 0.5, 0.4, 0.3, 0.2, 0.1], *[[v[k] for v in hacked] for k in (G, C, L)])
    assert rlwatch.alarms(falling) == []                          # the reward did not rise: no hacking alarm
    shrinking = log([0.1, 0.2, 0.3, 0.4, 0.5, 0.6], [0.5] * 6, [0.1] * 6, [40, 40, 40, 10, 10, 10])
    assert ["drifted 40.0 -> 10.0 words (-75%)" in a for a in rlwatch.alarms(shrinking)] == [True]
    # Thresholds are settings: a 0.05 grounding drop passes the default 0.1 and trips a stricter 0.01.
    small = log([0.1, 0.2, 0.3, 0.4, 0.5, 0.6], [0.5, 0.5, 0.5, 0.45, 0.45, 0.45], [0.1] * 6, [20] * 6)
    assert rlwatch.alarms(small) == [] and len(rlwatch.alarms(small, grounding_drop=0.01)) == 1
    assert rlwatch.alarms(steady[:1]) == [] and rlwatch.alarms([]) == []
    # Rows without a reward (trl's final summary row) are ignored; a short log shrinks the window.
    assert len(rlwatch.alarms(hacked[:2] + hacked[-2:] + [{"step": 6, "train_runtime": 1.0}], window=3)) == 3


def test_a_killed_rloo_run_resumes_from_its_last_checkpoint(tiny, trained, tmp_path):
    recipe = rl_recipe(tmp_path / "run", tiny, adapter=str(trained["sft"]), max_steps=4, save_steps=2,
                       **{"rl.rm_weight": 0.0})
    with pytest.raises(KeyboardInterrupt):
        run_train(recipe, rl=True, nli=ShortIsGrounded(), callbacks=[StopAfter(2).callback])
    folder = tmp_path / "run" / "train" / "rloo"
    assert train.last_checkpoint(folder / "checkpoints").name == "checkpoint-2"
    assert not (folder / "adapter").exists()
    rows = run_train(recipe, rl=True, nli=ShortIsGrounded())
    figures = json.loads((folder / "train.manifest.json").read_text())["figures"]
    assert rows["resumed from"] == "checkpoint-2"
    assert (figures["steps"], figures["steps_this_run"], figures["resumed_from"]) == (4, 2, "checkpoint-2")
    assert [r["step"] for r in log_rows(folder) if "reward" in r] == [1, 2, 3, 4]
    assert all("kl" in r for r in log_rows(folder) if "reward" in r)
    # Done: the same config again is not retrained.
    assert run_train(recipe, rl=True, nli=ShortIsGrounded())["status"] == \
        "already trained (same config and data)"


def test_rl_prompts_never_come_from_the_evaluation_split(tiny, tmp_path):
    from persona_forge.resources import data_dir

    recipe = rl_recipe(tmp_path / "run", tiny, **{"rl.prompts": str(data_dir("corpora") / "spc" / "test.jsonl.gz"),
                                                  "rl.rm_weight": 0.0})
    with pytest.raises(UserError, match=r"is the evaluation split; RL prompts must come from training"):
        run_train(recipe, rl=True, nli=ShortIsGrounded())
    missing_rm = rl_recipe(tmp_path / "run2", tiny)
    with pytest.raises(UserError, match=r"no reward model; run forge train --method reward first"):
        run_train(missing_rm)
    rows = train_rl.read_prompts(train_rl.default_prompts(), 3, 7, 2)
    assert len(rows) == 3
    for row in rows:
        assert row["prompt"][0]["role"] == "system" and row["prompt"][-1]["role"] == "user"
        assert all(sentence in row["prompt"][0]["content"] for sentence in row["persona"])


def test_forge_train_method_reward_on_the_command_line(tiny, tmp_path):
    import subprocess

    from conftest import REPO, forge_cmd

    write_preferences(tmp_path / "run" / "preferences.jsonl", 5)
    cmd = forge_cmd() + ["--run-dir", str(tmp_path / "run"), "--set", "train.threads=2", "--set",
                         "train.max_length=256", "--set", "train.logging_steps=1", "train", "--method", "reward",
                         "--model", str(tiny), "--max-steps", "2"]
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=300)
    assert result.returncode == 0, result.stderr
    manifest = json.loads((tmp_path / "run" / "train" / "reward" / "train.manifest.json").read_text())
    assert manifest["config"]["train"]["method"] == "reward" and manifest["figures"]["steps"] == 2
    assert "held-out accuracy" in result.stderr  # the summary table
    no_rm = subprocess.run(forge_cmd() + ["--run-dir", str(tmp_path / "other"), "train", "--method", "rloo"],
                           capture_output=True, text=True, cwd=REPO, timeout=120)
    assert no_rm.returncode == 2
    assert no_rm.stderr.strip().endswith("no reward model; run forge train --method reward first, set "
                                         "train.rl.reward_model, or train.rl.rm_weight: 0")


def test_grpo_is_the_same_run_with_grpo(tiny, trained, tmp_path):
    recipe = rl_recipe(tmp_path / "run", tiny, method="grpo", adapter=str(trained["sft"]), max_steps=2,
                       **{"rl.reward_model": str(trained["reward"])})
    rows = run_train(recipe, rl=True, nli=ShortIsGrounded())
    folder = tmp_path / "run" / "train" / "grpo"
    assert rows["status"] == "trained" and (folder / "adapter" / "adapter_model.safetensors").is_file()
    log = [r for r in log_rows(folder) if "reward" in r]
    assert [r["step"] for r in log] == [1, 2] and all("kl" in r and rlwatch.GROUNDING in r for r in log)
