"""forge train --method reward / rloo on a tiny random llama: the reward model learns to rank, RLOO logs
reward and KL every step and moves the policy, the reward-hacking alarm (as a pure function and on a
reward that pays for length), resuming and refusing a changed config."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from persona_forge import rlwatch
from persona_forge.config import load_recipe
from persona_forge.errors import UserError
from persona_forge.schema import Preference, Turn
from persona_forge.stages import train, train_reward
from persona_forge.store import iter_jsonl
from train_data import SPC, tiny_llama

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
    overrides = {"run_dir": str(run_dir), "train.model": str(model), "train.max_steps": 4,
                 "train.logging_steps": 1, "train.save_steps": 2, "train.threads": 1}
    overrides.update({f"train.{k}": v for k, v in train_overrides.items()})
    return load_recipe(None, overrides)


def log_rows(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "log.jsonl").read_text().splitlines()]


# --- the reward model ----------------------------------------------------------------------------

def test_the_reward_model_learns_to_rank_and_reports_held_out_accuracy(tiny, tmp_path):
    prefs = write_preferences(tmp_path / "run" / "preferences.jsonl", 10)
    recipe = recipe_for(tmp_path / "run", tiny, method="reward", max_steps=12, lr=5e-3, batch_size=4,
                        max_length=256)
    rows = train.run(recipe, progress=False)
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
    assert train.run(recipe, progress=False)["status"] == "already trained (same config and data)"
    changed = recipe_for(tmp_path / "run", tiny, method="reward", max_steps=12, lr=5e-3, batch_size=4,
                         max_length=256, **{"reward.heldout": 0.3})
    with pytest.raises(UserError, match=r"another config \(train\.reward\.heldout: 0\.2 -> 0\.3\).*--force"):
        train.run(changed, progress=False)


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
