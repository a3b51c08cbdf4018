"""forge train and forge chat on a tiny random llama (training mechanics in seconds): the label mask,
context fitting, outputs, resuming, config changes, bad data, and chat through a pipe. The tests that
train with trl are marked integration (torch-heavy: run them under the shared lock, one at a time)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from conftest import REPO, forge_cmd, make_recipe, one_line_error, run_train
from persona_forge.chat import converse, read_persona
from persona_forge.config import TrainConfig, load_recipe
from persona_forge.errors import UserError
from persona_forge.stages import train
from train_data import StopAfter, spc_samples, tiny_llama, write_dpo, write_sft

pytestmark = pytest.mark.timeout(300)
# The training runs take two turns of context (about 100 tokens a sample, not 230): a step on the tiny
# llama is mostly its output layer over SmolLM2's 49k-token vocabulary, so it costs half as much. The
# label-mask test keeps the full context.


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return tiny_llama(tmp_path_factory.mktemp("tiny") / "model")


def recipe_for(run_dir: Path, model: Path, **train_overrides):
    # Two threads: torch tests run one at a time under the shared lock.
    return make_recipe(run_dir, train={"model": str(model), "max_steps": 4, "logging_steps": 1, "save_steps": 2,
                                       "threads": 2, **train_overrides})


@pytest.fixture(scope="module")
def tiny_sft(tiny, tmp_path_factory) -> Path:
    """An SFT adapter on the tiny llama (4 samples, 2 steps at a high rate, so that it visibly changes the
    model), trained once and shared read-only: loaded, chatted with, and DPO's starting point."""
    run_dir = tmp_path_factory.mktemp("tiny_sft") / "run"
    write_sft(run_dir / "curated" / "sft.jsonl", 4, context=2)
    run_train(recipe_for(run_dir, tiny, max_steps=2, lr=0.05))
    return run_dir / "train" / "sft" / "adapter"


def test_loss_covers_the_target_reply_only(tiny, tmp_path):
    samples = write_sft(tmp_path / "sft.jsonl", 6)
    cfg = TrainConfig(model=str(tiny), max_steps=1, threads=1)
    loaded = train.load_for_training(str(tiny), cfg, progress=False)
    rows, _ = train.fit_rows(train.read_sft(tmp_path / "sft.jsonl"), loaded.tokenizer, cfg.max_length,
                             ("completion",))
    trainer = train._trainer(cfg, loaded, rows, tmp_path / "ck")
    tokenizer = loaded.tokenizer
    targets = {target for _, target in samples}
    seen = set()
    for example in trainer.train_dataset:
        labels = example["labels"]
        learned = tokenizer.decode([t for t in labels if t != -100])
        # Exactly the target, its end-of-turn token and the template's newline: nothing of the persona,
        # the context or the other user's turn.
        assert learned.endswith("<|im_end|>\n")
        target = learned.removesuffix("<|im_end|>\n")
        assert target in targets
        seen.add(target)
        first = next(i for i, t in enumerate(labels) if t != -100)
        assert all(t == -100 for t in labels[:first]) and all(t != -100 for t in labels[first:])
        prompt = tokenizer.decode(example["input_ids"][:first])
        assert prompt.startswith("<|im_start|>system\nYou are a person chatting")
        assert prompt.endswith("<|im_start|>assistant\n")
    assert seen == targets


def test_long_contexts_lose_their_oldest_turns_not_persona_or_target(tiny):
    from persona_forge.lm import load_tokenizer

    tokenizer = load_tokenizer(str(tiny))
    messages, target = spc_samples(1)[0]
    row = {"prompt": messages, "completion": [{"role": "assistant", "content": target}]}
    full = len(train._chat_ids(tokenizer, messages + row["completion"]))
    (fitted,), shortened = train.fit_rows([row], tokenizer, full - 10, ("completion",))
    assert shortened == 1
    assert fitted["prompt"][0] == messages[0]                     # the persona stays
    assert fitted["prompt"][-1] == messages[-1]                   # the turn being answered stays
    assert fitted["prompt"][1:] == messages[-(len(fitted["prompt"]) - 1):]  # oldest turns went first
    assert len(train._chat_ids(tokenizer, fitted["prompt"] + row["completion"])) <= full - 10
    (same,), none = train.fit_rows([row], tokenizer, full, ("completion",))
    assert none == 0 and same["prompt"] == messages


@pytest.mark.integration  # trains with trl: slow and CPU-heavy, run under the shared lock
def test_a_killed_run_resumes_from_its_last_checkpoint(tiny, tmp_path):
    write_sft(tmp_path / "run" / "curated" / "sft.jsonl", 8, context=2)
    recipe = recipe_for(tmp_path / "run", tiny)
    with pytest.raises(KeyboardInterrupt):
        run_train(recipe, callbacks=[StopAfter(2).callback])
    folder = tmp_path / "run" / "train" / "sft"
    assert train.last_checkpoint(folder / "checkpoints").name == "checkpoint-2"
    assert not (folder / "adapter").exists()

    rows = run_train(recipe)
    manifest = json.loads((folder / "train.manifest.json").read_text())
    figures = manifest["figures"]
    assert rows["resumed from"] == "checkpoint-2"
    assert (figures["steps"], figures["steps_this_run"], figures["resumed_from"]) == (4, 2, "checkpoint-2")
    log = [json.loads(line) for line in (folder / "log.jsonl").read_text().splitlines()]
    assert [row["step"] for row in log if "loss" in row] == [1, 2, 3, 4]


@pytest.mark.integration  # trains with trl: slow and CPU-heavy, run under the shared lock
def test_outputs_manifest_and_reruns(tiny, tmp_path):
    write_sft(tmp_path / "run" / "curated" / "sft.jsonl", 4, context=2)
    recipe = recipe_for(tmp_path / "run", tiny, max_steps=2)
    rows = run_train(recipe, merge=True)
    folder = tmp_path / "run" / "train" / "sft"
    assert rows["status"] == "trained"
    assert (folder / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json"} <= \
        {p.name for p in (folder / "adapter").iterdir()}
    assert (folder / "merged" / "config.json").is_file() and (folder / "merged" / "model.safetensors").is_file()
    manifest = json.loads((folder / "train.manifest.json").read_text())
    assert manifest["status"] == "done"
    assert manifest["counts"]["samples"] == 4
    assert manifest["models"]["base"] == str(tiny)
    assert {"trl", "peft", "transformers", "torch"} <= set(manifest["packages"])
    assert list(manifest["inputs"].values())[0] == __import__("persona_forge.store").store.file_sha256(
        tmp_path / "run" / "curated" / "sft.jsonl")
    figures = manifest["figures"]
    assert figures["steps"] == 2 and figures["s_per_step"] > 0 and figures["peak_rss_mb"] > 100
    assert figures["final_loss"] == [json.loads(l) for l in (folder / "log.jsonl").read_text().splitlines()
                                     if "loss" in json.loads(l)][-1]["loss"]
    assert figures["trainable_parameters"] == 2 * 2 * 8 * (32 + 32) // 2 + 2 * 8 * (32 + 16)

    # The same config again: nothing to do.
    assert run_train(recipe)["status"] == "already trained (same config and data)"
    # Another config: refused, unless forced.
    changed = recipe_for(tmp_path / "run", tiny, max_steps=2, lr=1e-3)
    with pytest.raises(UserError, match=r"another config \(train\.lr: 0\.0002 -> 0\.001\).*--force"):
        run_train(changed)
    assert run_train(changed, force=True)["status"] == "trained"
    assert any((tmp_path / "run" / "train" / "sft" / ".trash").iterdir())


@pytest.mark.integration  # trains with trl: slow and CPU-heavy, run under the shared lock
def test_the_adapter_loads_with_the_shared_loader(tiny, tiny_sft):
    import torch

    from persona_forge.lm import load_chat_model

    base, tokenizer = load_chat_model(str(tiny), progress=False)
    tuned, _ = load_chat_model(str(tiny), adapter=tiny_sft, progress=False)
    ids = tokenizer("hello there", return_tensors="pt")
    with torch.no_grad():
        assert not torch.allclose(base(**ids).logits, tuned(**ids).logits)


@pytest.mark.integration  # trains with trl: slow and CPU-heavy, run under the shared lock
def test_dpo_trains_from_preference_pairs_and_from_an_sft_adapter(tiny, tiny_sft, tmp_path):
    write_dpo(tmp_path / "run" / "curated" / "dpo.jsonl", 4, context=2)
    sft_adapter = tiny_sft
    rows = run_train(recipe_for(tmp_path / "run", tiny, method="dpo", max_steps=2, adapter=str(sft_adapter)))
    folder = tmp_path / "run" / "train" / "dpo"
    assert rows["status"] == "trained"
    log = [json.loads(line) for line in (folder / "log.jsonl").read_text().splitlines()]
    assert [row["step"] for row in log if "loss" in row] == [1, 2]
    assert all("rewards/margins" in row for row in log if "loss" in row)
    # Only the trained adapter is saved, not trl's frozen reference copy.
    assert not (folder / "adapter" / "ref").exists()
    manifest = json.loads((folder / "train.manifest.json").read_text())
    assert manifest["models"]["start_adapter"] == str(sft_adapter)


@pytest.mark.parametrize("row, message", [
    ({"text": "hi"}, r"sft\.jsonl:2: an SFT row needs `messages`"),
    ({"prompt": [{"role": "user", "content": "a"}], "chosen": [], "rejected": []}, r"pass --dpo"),
    ({"messages": [{"role": "user", "content": "a"}]}, r"sft\.jsonl:2: the last message must be the assistant"),
    ({"messages": [{"role": "bot", "content": "a"}]}, r"sft\.jsonl:2: messages\[0\] is not a chat message"),
])
def test_bad_sft_rows_are_one_clear_line(tmp_path, row, message):
    good = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    path = tmp_path / "sft.jsonl"
    path.write_text(json.dumps(good) + "\n" + json.dumps(row) + "\n")
    with pytest.raises(UserError, match=message):
        train.read_sft(path)


def test_bad_dpo_rows_and_missing_data(tmp_path):
    path = tmp_path / "dpo.jsonl"
    path.write_text(json.dumps({"messages": []}) + "\n")
    with pytest.raises(UserError, match=r"dpo\.jsonl:1: a DPO row needs `prompt`"):
        train.read_dpo(path)
    with pytest.raises(UserError, match=r"curated/sft\.jsonl: no training data; run forge curate first"):
        run_train(load_recipe(None, {"run_dir": str(tmp_path / "empty")}))


def test_4bit_without_cuda_says_so_and_trains_plain_lora(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert train.wants_4bit(TrainConfig(quantize="4bit")) == (
        False, "no CUDA here: 4-bit QLoRA needs a GPU, so this is a plain LoRA run")
    assert train.wants_4bit(TrainConfig())[0] is False


@pytest.mark.parametrize("precision,cuda,native,bf16", [
    ("auto", False, True, True),    # AMX / AVX512-BF16 CPU: the frozen base in bf16
    ("auto", False, False, False),  # emulated bf16 would be slower
    ("auto", True, False, True),
    ("fp32", True, True, False),
    ("bf16", False, False, True),
])
def test_precision_auto_holds_the_base_in_bf16_where_the_hardware_has_it(monkeypatch, precision, cuda, native, bf16):
    import torch

    from persona_forge import hardware as local

    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(local, "native_bf16", lambda: native)
    cfg = TrainConfig(precision=precision)
    assert train.uses_bf16(cfg) is bf16
    args = train._common_args(cfg, Path("out"))
    assert args["bf16"] is (bf16 and cuda)  # autocast only on CUDA; on CPU the weights are bf16 instead


@pytest.mark.parametrize("setting,cuda,expected", [("auto", False, False), ("auto", True, True),
                                                   ("on", False, True), ("off", True, False)])
def test_activation_checkpointing_is_off_on_cpu_unless_asked(monkeypatch, setting, cuda, expected):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    cfg = TrainConfig(checkpointing=setting)
    assert train.uses_checkpointing(cfg) is expected
    assert train._common_args(cfg, Path("out"))["activation_checkpointing"] is expected


# --- forge chat --------------------------------------------------------------------------------

def test_persona_files(tmp_path):
    text = tmp_path / "p.txt"
    text.write_text("# me\nI have two dogs.\n\nI live in Ohio.\n")
    assert read_persona(text) == ["I have two dogs.", "I live in Ohio."]
    as_json = tmp_path / "p.json"
    as_json.write_text('["I surf.", "I am a nurse."]')
    assert read_persona(as_json) == ["I surf.", "I am a nurse."]
    bad = tmp_path / "bad.json"
    bad.write_text('[1, 2]')
    with pytest.raises(UserError, match="a JSON persona is a list of sentences"):
        read_persona(bad)
    with pytest.raises(UserError, match="persona file not found"):
        read_persona(tmp_path / "none.txt")


def test_chat_loop_uses_the_training_form_and_commands():
    import io

    seen = []

    def reply(messages, base):
        seen.append((messages, base))
        return f"{'B' if base else 'T'}{len(seen)}"

    out = io.StringIO()
    n = converse(["I have two dogs."], reply, True, ["hi\n", "\n", "how are you\n", "/reset\n", "again\n",
                                                    "/oops\n", "/quit\n", "never read\n"], out, False, True)
    assert n == 3
    assert out.getvalue().splitlines() == [
        "tuned> T1", "base> B2", "tuned> T3", "base> B4", "(conversation reset)", "tuned> T5", "base> B6",
        "(unknown command /oops; /reset starts over, /quit stops)"]
    second = seen[2][0]
    assert second[0]["role"] == "system" and "- I have two dogs." in second[0]["content"]
    # The conversation goes on with the tuned model's reply, as the assistant's own turn.
    assert [(m["role"], m["content"]) for m in second[1:]] == [("user", "hi"), ("assistant", "T1"),
                                                               ("user", "how are you")]
    assert [(m["role"], m["content"]) for m in seen[4][0][1:]] == [("user", "again")]


@pytest.mark.integration  # trains with trl: slow and CPU-heavy, run under the shared lock
def test_forge_chat_through_a_pipe(tiny_sft, tmp_path):
    persona = tmp_path / "persona.txt"
    persona.write_text("I have two dogs.\nI live in Ohio.\n")
    adapter = tiny_sft
    cmd = forge_cmd() + ["--set", "backend.sampling.max_tokens=5", "--set", "backend.threads=1", "chat",
                         "--adapter", str(adapter), "--persona", str(persona), "--base"]  # base: from the manifest
    result = subprocess.run(cmd, input="hello\nwhat do you do?\n/quit\n", capture_output=True, text=True,
                            cwd=REPO, timeout=120)
    assert result.returncode == 0, result.stderr
    labels = [line.split(">", 1)[0] for line in result.stdout.splitlines()]
    assert labels == ["tuned", "base", "tuned", "base"]
    missing = subprocess.run(forge_cmd() + ["chat", "--persona", str(tmp_path / "nope.txt")], input="",
                             capture_output=True, text=True, cwd=REPO, timeout=120)
    assert missing.returncode == 2
    assert missing.stderr.strip().endswith("nope.txt: persona file not found; give a text file with one "
                                           "attribute a line")


def test_forge_train_without_data_is_one_line_and_exit_2(tmp_path, forge):
    result = forge("--run-dir", str(tmp_path / "run"), "train", "--dpo")
    assert [one_line_error(result)] == [
        f"forge: error: {tmp_path / 'run' / 'curated' / 'dpo.jsonl'}: no training data; run forge curate first, "
        f"or give --data FILE"]
