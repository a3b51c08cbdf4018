"""forge train --method generator: its rows are exactly the requests generate's turns mode sends (the
rendered chat-template text, byte for byte), which turns become rows, and a 2-step LoRA run on a tiny
random llama whose adapter generate then applies."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import KeywordNLI, make_recipe, run_train
from persona_forge.backends import ScriptedBackend
from persona_forge.config import GeneratorTrainSettings
from persona_forge.corpora import load_conversations
from persona_forge.schema import Dialogue, Pair, Profile, SharedTopic, Turn
from persona_forge.stages import generate, train, train_generator
from persona_forge.store import read_jsonl
from test_generate import run_generate
from tiny_lm import tiny_tokenizer

pytestmark = pytest.mark.timeout(300)

ALICE = ["I have two dogs.", "I live in Ohio."]
BOB = ["I am a nurse.", "My dogs are poodles."]
TALK = ["Hi! How are you today?", "Great, just back from work at the hospital.", "Do you have pets?",
        "Two poodles, they are my babies."]
OTHER = {"user1_persona": ["I like tea."], "user2_persona": ["I drive a truck."],
         "turns": [{"speaker": "user1" if i % 2 == 0 else "user2", "text": f"line {i}."} for i in range(8)]}


def write_conversations(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def talk(**extra) -> dict:
    return {"id": "talk", "user1_persona": ALICE, "user2_persona": BOB,
            "turns": [{"speaker": "user1" if i % 2 == 0 else "user2", "text": t} for i, t in enumerate(TALK)], **extra}


def test_training_rows_are_what_turns_mode_sends_byte_for_byte(tmp_path, monkeypatch):
    data = write_conversations(tmp_path / "seed.jsonl", [talk(), {"id": "other", **OTHER}])
    dialogues = load_conversations(data).dialogues
    samples = train_generator.build_samples(dialogues, GeneratorTrainSettings(samples=0, example_share=1.0), seed=0)
    rows = {s.position: s for s in samples if s.conversation == "talk"}
    assert sorted(rows) == [0, 1, 2, 3] and {s.example for s in rows.values()} == {"other"}
    assert (rows[0].topic, rows[1].topic) == ("I have two dogs.", "My dogs are poodles.")  # "dogs" in common

    # generate in turns mode, same personas, topics and example; the agents say what the seed conversation said
    run = tmp_path / "run"
    run.mkdir()
    a = Profile(id="a", attribute_ids=["x", "y"], attributes=ALICE)
    b = Profile(id="b", attribute_ids=["z", "w"], attributes=BOB)
    (run / "profiles.jsonl").write_text(a.model_dump_json() + "\n" + b.model_dump_json() + "\n")
    pair = Pair(id="p", user1="a", user2="b", similarity=0.5,
                shared_topics=[SharedTopic(user1_attribute=rows[0].topic, user2_attribute=rows[1].topic,
                                           similarity=0.5)])
    (run / "pairs.jsonl").write_text(pair.model_dump_json() + "\n")
    other = next(d for d in dialogues if d.id == "other")
    monkeypatch.setattr(generate, "corpus_examples", lambda count, seed: [list(other.turns)])
    recipe = make_recipe(run, backend={"kind": "fake"},
                         generate={"mode": "turns", "rounds": 1, "candidates": 1, "examples": 1, "turns": 4,
                                   "min_turns": 4, "critic": {"judge": False}})
    backend = ScriptedBackend(list(TALK))
    run_generate(recipe, backend, KeywordNLI())
    assert [t.text for t in read_jsonl(run / "dialogues.jsonl", Dialogue)[0].turns] == TALK

    tokenizer = tiny_tokenizer()
    for step, request in enumerate(backend.seen):
        sample = rows[step]
        assert list(request.messages) == sample.messages
        sent = tokenizer.apply_chat_template(list(request.messages), tokenize=False, add_generation_prompt=True)
        trained = tokenizer.apply_chat_template(sample.row()["prompt"], tokenize=False, add_generation_prompt=True)
        assert sent.encode() == trained.encode()
        whole = tokenizer.apply_chat_template(sample.row()["prompt"] + sample.row()["completion"], tokenize=False)
        assert whole == trained + TALK[step] + "<|im_end|>\n"
    assert "Here is how a good conversation between two other people went:\nUser 1: line 0." in \
        backend.seen[0].messages[0]["content"]


def test_which_turns_become_rows():
    def dialogue(did, texts, speakers=None):
        speakers = speakers or ["user1" if i % 2 == 0 else "user2" for i in range(len(texts))]
        return Dialogue(id=did, user1_persona=ALICE, user2_persona=BOB,
                        turns=[Turn(speaker=s, text=t) for s, t in zip(speakers, texts)])

    placeholder = dialogue("named", ["Hi! I'm [user 1's name].", "Hi, I am Bob.", "Nice.", "Yes."])
    broken = dialogue("broken", ["Hi.", "Hello.", "Again me.", "Me too."], ["user1", "user2", "user2", "user1"])
    opens_wrong = dialogue("wrong", ["Hello.", "Hi."], ["user2", "user1"])
    long = dialogue("long", [f"line {i}." for i in range(30)])
    cfg = GeneratorTrainSettings(samples=0, max_turns=16, example_share=0.0)
    samples = train_generator.build_samples([placeholder, broken, opens_wrong, long], cfg, seed=0)
    got = sorted((s.conversation, s.position) for s in samples)
    assert got == sorted([("named", 1), ("named", 2), ("named", 3), ("broken", 0), ("broken", 1)]
                         + [("long", i) for i in range(16)])
    assert all(s.example is None for s in samples)
    drawn = train_generator.build_samples([placeholder, broken, long], cfg.model_copy(update={"samples": 5}), seed=3)
    again = train_generator.build_samples([placeholder, broken, long], cfg.model_copy(update={"samples": 5}), seed=3)
    assert len(drawn) == 5 and drawn == again


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    from train_data import tiny_llama

    return tiny_llama(tmp_path_factory.mktemp("tiny") / "model")


def test_a_generator_trains_on_the_target_only_and_generate_applies_it(tiny, tmp_path):
    """Two LoRA steps on the tiny llama; the loss covers the seed reply alone; then generate runs the
    local tiny model with the adapter (generate.generator), whose hash the manifest records."""
    from persona_forge.config import TrainConfig

    data = write_conversations(tmp_path / "seed.jsonl", [talk(), {"id": "other", **OTHER}])
    cfg = TrainConfig(model=str(tiny), method="generator", max_steps=1, threads=1)
    loaded = train.load_for_training(str(tiny), cfg, progress=False)
    rows = train_generator.read_rows(data, cfg.generator, cfg.seed)
    trainer = train._trainer(cfg, loaded, rows, tmp_path / "ck")
    learned = {loaded.tokenizer.decode([t for t in ex["labels"] if t != -100]) for ex in trainer.train_dataset}
    assert learned == {t + "<|im_end|>\n" for t in TALK + [f"line {i}." for i in range(8)]}

    run = tmp_path / "run"
    recipe = make_recipe(run, backend={"kind": "local", "model": str(tiny), "batch_size": 4, "threads": 1},
                         train={"method": "generator", "data": str(data), "model": str(tiny), "max_steps": 2,
                                "logging_steps": 1, "save_steps": 2, "threads": 1})
    summary = run_train(recipe)
    folder = run / "train" / "generator"
    manifest = json.loads((folder / "train.manifest.json").read_text())
    assert summary["status"] == "trained" and manifest["figures"]["steps"] == 2
    assert manifest["counts"]["samples"] == 12 and "generate/turn" in manifest["config"]["prompts"]
    assert (folder / "adapter" / "adapter_model.safetensors").is_file()

    a = Profile(id="a", attribute_ids=["x", "y"], attributes=ALICE)
    b = Profile(id="b", attribute_ids=["z", "w"], attributes=BOB)
    (run / "profiles.jsonl").write_text(a.model_dump_json() + "\n" + b.model_dump_json() + "\n")
    (run / "pairs.jsonl").write_text(Pair(id="p", user1="a", user2="b", similarity=0.5).model_dump_json() + "\n")
    gen_recipe = make_recipe(run, backend={"kind": "local", "model": str(tiny), "batch_size": 4, "threads": 1,
                                           "sampling": {"max_tokens": 8}},
                             generate={"mode": "turns", "rounds": 1, "candidates": 1, "examples": 0, "turns": 2,
                                       "min_turns": 2, "turn_max_tokens": 8, "turn_candidates": 2,
                                       "generator": str(folder), "critic": {"judge": False}})
    from persona_forge.backends import build_backend

    backend = build_backend(generate.backend_config(gen_recipe.generate, gen_recipe.backend), progress=False)
    run_generate(gen_recipe, backend, KeywordNLI())
    gen_manifest = json.loads((run / "generate.manifest.json").read_text())
    assert gen_manifest["models"]["generator_adapter"].startswith(str(folder / "adapter"))
    assert gen_manifest["config"]["backend"]["adapter"] == gen_manifest["config"]["generator"]
    assert len(read_jsonl(run / "dialogues.jsonl", Dialogue)) == 1
