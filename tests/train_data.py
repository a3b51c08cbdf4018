"""Training fixtures: next-reply SFT rows and DPO pairs from Synthetic-Persona-Chat, a tiny
random llama with SmolLM2's tokenizer (training mechanics in seconds, no lock needed), and a
callback that kills a run after a checkpoint (the resume tests)."""

from __future__ import annotations

import json
from pathlib import Path

from persona_forge.samples import next_reply
from persona_forge.schema import Turn
from persona_forge.store import iter_jsonl

REPO = Path(__file__).resolve().parents[1]
SPC = REPO / "corpora" / "spc" / "train.jsonl.gz"


def spc_samples(n: int, position: int = 7, context: int = 6) -> list[tuple[list[dict], str]]:
    """(messages, target) next-reply samples: the replier's persona, turns 1-7, turn 8 as the target."""
    out = []
    for row in iter_jsonl(SPC):
        turns = [Turn(**t) for t in row["turns"]]
        if len(turns) <= position:
            continue
        speaker = turns[position].speaker
        persona = row["user1_persona"] if speaker == "user1" else row["user2_persona"]
        sample = next_reply(persona, turns, position=position, context=context)
        if sample is None:
            continue
        messages, target = sample
        out.append(([m.model_dump() for m in messages], target))
        if len(out) == n:
            break
    return out


def write_sft(path: Path, n: int, context: int = 6) -> list[tuple[list[dict], str]]:
    samples = spc_samples(n, context=context)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        for messages, target in samples:
            fh.write(json.dumps({"messages": messages + [{"role": "assistant", "content": target}]}) + "\n")
    return samples


def write_dpo(path: Path, n: int, context: int = 6) -> list[dict]:
    """Pairs whose chosen answer is the real next turn and whose rejected one is off-persona filler."""
    rows = []
    for messages, target in spc_samples(n, context=context):
        rows.append({"prompt": messages, "chosen": [{"role": "assistant", "content": target}],
                     "rejected": [{"role": "assistant", "content": "As an AI language model, I have no "
                                                                   "hobbies or opinions."}]})
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row) + "\n")
    return rows


def tiny_llama(folder: Path) -> Path:
    """A 2-layer random llama (hidden 32) with SmolLM2's tokenizer and chat template."""
    import torch
    from transformers import AutoTokenizer, LlamaForCausalLM

    from persona_forge.models import causal_lm_path

    if (folder / "config.json").is_file():
        return folder
    tokenizer = AutoTokenizer.from_pretrained(causal_lm_path("packaged:smollm2-135m-instruct", progress=False))
    torch.manual_seed(0)
    model = LlamaForCausalLM(tiny_llama_config(tokenizer))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def tiny_llama_config(tokenizer, tie_word_embeddings: bool = True):
    """tiny_llama's shape (2 layers, hidden 32) over `tokenizer`'s vocabulary and special tokens."""
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                       tie_word_embeddings=tie_word_embeddings, eos_token_id=tokenizer.eos_token_id,
                       pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id)


class StopAfter:
    """Kills the run (as Ctrl-C would) right after checkpoint `step` is written."""

    def __init__(self, step: int):
        from transformers import TrainerCallback

        outer = self

        class Callback(TrainerCallback):
            def on_save(self, args, state, control, **kwargs):
                if state.global_step == outer.step:
                    raise KeyboardInterrupt

        self.step = step
        self.callback = Callback()
