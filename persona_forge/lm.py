"""Loading a causal chat model (and, optionally, a LoRA adapter on top) for generation,
training, evaluation and chat: one place, so every stage sees the same weights the same way.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .errors import UserError


def device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def load_tokenizer(path: str, padding_side: str = "left"):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.padding_side = padding_side
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def check_adapter(adapter: Path | str) -> Path:
    """An adapter folder as peft saves it, or one clear error saying what is missing."""
    folder = Path(adapter)
    if not (folder / "adapter_config.json").is_file():
        raise UserError(f"{folder}: not a LoRA adapter folder (no adapter_config.json); give the "
                        "`adapter` folder that `forge train` wrote")
    try:
        json.loads((folder / "adapter_config.json").read_text())
    except ValueError as exc:
        raise UserError(f"{folder / 'adapter_config.json'}: not valid JSON ({exc})") from None
    return folder


def load_chat_model(spec: str, adapter: Path | str | None = None, progress: bool = True,
                    merge: bool = True) -> tuple[Any, Any]:
    """(model, tokenizer) in eval mode: the base model for `spec`, with `adapter` applied.

    With merge (the default for inference) the LoRA weights are folded into the base weights,
    which makes generation as fast as the base model's.
    """
    import torch
    from transformers import AutoModelForCausalLM

    from .models import causal_lm_path

    path = causal_lm_path(spec, progress=progress)
    where = device()
    model = AutoModelForCausalLM.from_pretrained(
        path, dtype=torch.bfloat16 if where == "cuda" else torch.float32)
    tokenizer = load_tokenizer(path)
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(check_adapter(adapter)))
        if merge:
            model = model.merge_and_unload()
    return model.to(where).eval(), tokenizer
