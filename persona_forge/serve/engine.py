"""The model and batched generation: one base model, LoRA adapters by name, rows that do not
interfere with one another.

A batch holds requests for any mix of adapters (peft's `adapter_names=`, "__base__" for none) and
any mix of sampling settings. Each row is decoded on its own terms, so its reply does not depend on
which other rows share its batch:

- `RowProcessor` applies each row's repetition penalty (over its own tokens only, never the left
  padding), then, for a sampled row, its temperature and top-p, and draws the next token with the
  row's own `torch.Generator` (seeded from the request's `seed`); it returns a one-hot row so
  that generate's greedy step takes exactly that token. Greedy rows are left to the argmax.
- `RowStopper` ends each row at its own `max_tokens`, end-of-sequence token or `stop` string,
  and streams each row's new text as it is decoded (holding back what could still become a
  stop string, which is never sent).

All model work runs on one thread (the batcher's); nothing here is thread-safe by itself.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

BASE = "__base__"  # peft's name for "no adapter" in a mixed batch


@dataclass
class GenRequest:
    """One chat completion to generate: already templated into token ids."""

    prompt_ids: list[int]
    adapter: str | None = None          # None: the base model
    max_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    repetition_penalty: float = 1.0
    ignore_eos: bool = False
    on_text: Callable[[str], None] | None = None   # streaming: called (on the model thread) with new text
    cancelled: threading.Event = field(default_factory=threading.Event)


@dataclass
class GenResult:
    text: str
    finish_reason: str          # "stop" | "length" | "cancelled"
    prompt_tokens: int
    completion_tokens: int


class Engine:
    """The base model, wrapped by peft once an adapter is loaded, and batched generation."""

    def __init__(self, model: Any, tokenizer: Any, lora_kernel: str = "peft"):
        self.lora_kernel = lora_kernel  # "peft": adapter_names=; "bmm": one batched matmul per layer
        self.base_model = model
        self.model = model          # becomes the PeftModel on the first adapter
        self.tokenizer = tokenizer
        self.peft = False
        eos = model.generation_config.eos_token_id
        eos = [eos] if isinstance(eos, int) else list(eos or [])
        if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in eos:
            eos.append(tokenizer.eos_token_id)
        self.eos_ids = eos
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos[0]
        self.max_context = int(getattr(model.config, "max_position_embeddings", 0) or 0) or None

    # --- adapters (called on the model thread) ---
    def load_adapter(self, name: str, path: str) -> None:
        if not self.peft:
            from peft import PeftModel

            self.model = PeftModel.from_pretrained(self.base_model, path, adapter_name=name, is_trainable=False)
            self.peft = True
        else:
            self.model.load_adapter(path, adapter_name=name, is_trainable=False)
        self.model.eval()

    def unload_adapter(self, name: str) -> None:
        if not self.peft or name not in self.model.peft_config:
            return
        if len(self.model.peft_config) == 1:
            # peft cannot generate with no adapter at all: take the LoRA layers out instead.
            self.base_model = self.model.unload()
            self.model, self.peft = self.base_model, False
        else:
            if name in self.model.active_adapters:
                # What peft would do anyway, minus its warning: the active adapter moves to another one.
                self.model.set_adapter(next(n for n in self.model.peft_config if n != name), inference_mode=True)
            self.model.delete_adapter(name)

    def loaded_adapters(self) -> list[str]:
        return list(self.model.peft_config) if self.peft else []

    def adapter_bytes(self, name: str) -> int:
        """The memory one adapter's LoRA weights take."""
        if not self.peft:
            return 0
        total = 0
        for key, param in self.model.named_parameters():
            if f".{name}." in key and ("lora_" in key):
                total += param.numel() * param.element_size()
        return total

    def use_single_adapter(self, name: str | None) -> None:
        """Swap the active adapter (the one-adapter-at-a-time baseline)."""
        if self.peft and name is not None:
            self.model.set_adapter(name)

    # --- generation ---
    def chat_ids(self, messages: Sequence[dict[str, str]]) -> list[int]:
        ids = self.tokenizer.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=True,
                                                 return_dict=False)
        return list(ids)

    def generate(self, requests: Sequence[GenRequest], mixed: bool = True) -> list[GenResult]:
        """Generate every request in one batch. mixed: rows may name different adapters
        (peft's adapter_names); otherwise all rows share the active adapter (use_single_adapter)."""
        import torch
        from transformers import LogitsProcessorList, StoppingCriteriaList

        width = max(len(r.prompt_ids) for r in requests)
        pads = [width - len(r.prompt_ids) for r in requests]
        input_ids = torch.tensor([[self.pad_id] * p + r.prompt_ids for r, p in zip(requests, pads)])
        attention = torch.tensor([[0] * p + [1] * len(r.prompt_ids) for r, p in zip(requests, pads)])
        stopper = RowStopper(requests, width, self.tokenizer, self.eos_ids)
        processor = RowProcessor(requests, pads, self.eos_ids)
        kwargs: dict[str, Any] = {
            "input_ids": input_ids, "attention_mask": attention,
            "max_new_tokens": max(r.max_tokens for r in requests), "do_sample": False,
            "num_beams": 1, "repetition_penalty": None, "temperature": None, "top_p": None, "top_k": None,
            "pad_token_id": self.pad_id, "logits_processor": LogitsProcessorList([processor]),
            "stopping_criteria": StoppingCriteriaList([stopper]),
        }
        hooks = None
        if self.peft and mixed and self.lora_kernel == "bmm":
            hooks = bmm_lora_hooks(self.model, [r.adapter for r in requests])
        if self.peft and mixed and hooks is None:
            kwargs["adapter_names"] = [r.adapter or BASE for r in requests]
        with torch.inference_mode():
            if hooks is not None:
                try:
                    with self.model.disable_adapter():  # peft adds nothing; the hooks add each row's delta
                        self.model.generate(**kwargs)
                finally:
                    for handle in hooks:
                        handle.remove()
            elif self.peft and not mixed and requests[0].adapter is None:
                with self.model.disable_adapter():
                    self.model.generate(**kwargs)
            else:
                self.model.generate(**kwargs)
        stopper.finish_all()
        return [GenResult(text=row.text, finish_reason=row.finish or "length", prompt_tokens=len(r.prompt_ids),
                          completion_tokens=len(row.ids))
                for r, row in zip(requests, stopper.rows)]


def bmm_lora_hooks(model: Any, adapters: Sequence[str | None]) -> list | None:
    """Forward hooks that add every row's own LoRA update with two batched matmuls per layer
    (each row's A and B stacked, ranks zero-padded to the largest), instead of peft's loop over
    the adapters in the batch; None where an adapter is not a plain LoRA Linear (peft handles it)."""
    import torch
    from peft.tuners.lora import LoraLayer

    plans = []
    for module in model.modules():
        if not isinstance(module, LoraLayer) or not isinstance(getattr(module, "base_layer", None), torch.nn.Linear):
            continue
        present = {a for a in adapters if a is not None and a in module.lora_A}
        if not present:
            continue
        if any(a in getattr(module, "lora_variant", {}) for a in present):
            return None
        rank = max(module.r[a] for a in present)
        first_a = module.lora_A[next(iter(present))].weight
        a_rows = first_a.new_zeros(len(adapters), rank, module.in_features)
        b_rows = first_a.new_zeros(len(adapters), module.out_features, rank)
        scale = first_a.new_zeros(len(adapters), 1, 1)
        for i, name in enumerate(adapters):
            if name in present:
                r = module.r[name]
                a_rows[i, :r] = module.lora_A[name].weight
                b_rows[i, :, :r] = module.lora_B[name].weight
                scale[i] = module.scaling[name]
        plans.append((module, a_rows.transpose(1, 2), b_rows.transpose(1, 2), scale))

    def hook(a_t, b_t, scale):
        def add_update(_module, args, output):
            x = args[0]
            return output + torch.bmm(torch.bmm(x.to(a_t.dtype), a_t), b_t).to(output.dtype) * scale
        return add_update

    return [module.register_forward_hook(hook(a_t, b_t, scale)) for module, a_t, b_t, scale in plans]


def _generator(seed: int | None):
    import torch

    gen = torch.Generator()
    gen.manual_seed(seed if seed is not None else random.SystemRandom().randrange(2**63))
    return gen


class RowProcessor:
    """Per-row repetition penalty, temperature, top-p and seeded sampling (see the module doc)."""

    def __init__(self, requests: Sequence[GenRequest], pads: Sequence[int], eos_ids: Sequence[int]):
        self.requests = requests
        self.pads = pads
        self.eos_ids = list(eos_ids)
        self.generators = [_generator(r.seed) if r.temperature > 0 else None for r in requests]

    def __call__(self, input_ids, scores):
        import torch

        scores = scores.clone()
        for i, request in enumerate(self.requests):
            row = scores[i]
            if request.repetition_penalty != 1.0:
                # The same arithmetic as transformers' RepetitionPenaltyLogitsProcessor, over this
                # row's own tokens (prompt and reply), never its left padding.
                ids = input_ids[i, self.pads[i]:]
                picked = row.gather(0, ids)
                picked = torch.where(picked < 0, picked * request.repetition_penalty,
                                     picked / request.repetition_penalty)
                row.scatter_(0, ids, picked)
            if request.ignore_eos:
                row[self.eos_ids] = -float("inf")
            if self.generators[i] is not None:
                token = _sample(row, request.temperature, request.top_p, self.generators[i])
                row.fill_(-float("inf"))
                row[token] = 0.0
        return scores


def _sample(logits, temperature: float, top_p: float, generator) -> int:
    """One token from softmax(logits / temperature) within the top-p nucleus (transformers'
    TopPLogitsWarper rule: drop the tokens whose cumulative mass from the bottom is <= 1 - top_p)."""
    import torch

    logits = logits / temperature
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=False)
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        remove = cumulative <= (1 - top_p)
        remove[-1] = False  # keep at least one token
        logits = logits.scatter(0, order[remove], -float("inf"))
    probs = torch.softmax(logits, dim=-1)
    return int(torch.multinomial(probs, 1, generator=generator).item())


@dataclass
class _Row:
    ids: list[int] = field(default_factory=list)
    text: str = ""
    sent: int = 0               # characters of text already streamed
    finish: str | None = None


class RowStopper:
    """Ends each row at its own limit, EOS or stop string; streams its text as it grows."""

    def __init__(self, requests: Sequence[GenRequest], prompt_width: int, tokenizer: Any, eos_ids: Sequence[int]):
        self.requests = requests
        self.width = prompt_width
        self.tokenizer = tokenizer
        self.eos_ids = set(eos_ids)
        self.rows = [_Row() for _ in requests]

    def __call__(self, input_ids, scores, **kwargs):
        import torch

        done = []
        last = input_ids[:, -1].tolist()
        for i, (request, row) in enumerate(zip(self.requests, self.rows)):
            if row.finish is None:
                self._advance(request, row, last[i])
            done.append(row.finish is not None)
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)

    def _advance(self, request: GenRequest, row: _Row, token: int) -> None:
        if request.cancelled.is_set():
            row.finish = "cancelled"
            return
        if token in self.eos_ids and not request.ignore_eos:
            row.finish = "stop"
            self._emit(request, row, final=True)
            return
        row.ids.append(token)
        row.text = self.tokenizer.decode(row.ids, skip_special_tokens=True)
        for stop in request.stop:
            cut = row.text.find(stop)
            if cut >= 0:
                row.text, row.finish = row.text[:cut], "stop"
        if row.finish is None and len(row.ids) >= request.max_tokens:
            row.finish = "length"
        self._emit(request, row, final=row.finish is not None)

    def _emit(self, request: GenRequest, row: _Row, final: bool) -> None:
        if request.on_text is None:
            return
        end = len(row.text)
        if not final:
            # Hold back an incomplete character and anything that may still grow into a stop string.
            if row.text.endswith("\ufffd"):
                end -= 1
            for stop in request.stop:
                for k in range(min(len(stop) - 1, end), 0, -1):
                    if row.text[:end].endswith(stop[:k]):
                        end = min(end, len(row.text[:end]) - k)
                        break
        if end > row.sent:
            request.on_text(row.text[row.sent:end])
            row.sent = end

    def finish_all(self) -> None:
        """After generate returns: rows it stopped itself (EOS, the length cap) are settled."""
        for request, row in zip(self.requests, self.rows):
            if row.finish is None:
                row.finish = "length"
            if row.finish != "cancelled":
                self._emit(request, row, final=True)
