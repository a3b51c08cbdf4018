"""The model and batched generation: one base model, LoRA adapters by name, rows that do not
interfere with one another.

A batch (`Decoder`) holds requests for any mix of adapters ("__base__" for none) and any mix of
sampling settings, decoded one token a step by our own loop over the model's forward pass
(iteration-level batching: rows join between steps and leave when they finish). Each row is decoded
on its own terms, so its reply does not depend on which other rows share its batch:

- its own KV-cache row, attention mask (its left padding hidden) and positions: the attention and
  rotary angles it would have alone;
- its adapter: `LoraBank` (serve.lora_kernel: bmm) adds each row's LoRA update with two batched
  matmuls per layer; `peft` uses peft's `adapter_names=`;
- its repetition penalty (over its own tokens only, never padding), then, for a sampled row,
  temperature and top-p and a draw from the row's own `torch.Generator` (seeded from the request's
  `seed`); a greedy row takes the argmax;
- its own `max_tokens`, end-of-sequence token and `stop` strings, and its streamed text (holding back
  what could still become a stop string, which is never sent).

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

    def __init__(self, model: Any, tokenizer: Any, lora_kernel: str = "bmm"):
        self.lora_kernel = lora_kernel  # "bmm": LoraBank's batched matmuls; "peft": adapter_names=
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
        self.version = 0            # bumped by every load and unload: the LoRA bank is rebuilt after one
        self._bank: LoraBank | None = None
        self._bank_version = -1

    # --- adapters (called on the model thread) ---
    def load_adapter(self, name: str, path: str) -> None:
        self.version += 1
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
        self.version += 1
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

    def decoder(self, mixed: bool = True) -> "Decoder":
        """A running batch that rows may join between decode steps (see Decoder)."""
        return Decoder(self, mixed)

    def generate(self, requests: Sequence[GenRequest], mixed: bool = True) -> list[GenResult]:
        """Every request in one batch, run to the end. mixed: rows may name different adapters; otherwise
        all rows share the active adapter (use_single_adapter)."""
        decoder = Decoder(self, mixed)
        done = dict(decoder.join(requests))
        while decoder.rows:
            done.update(decoder.step())
        return [done[id(r)] for r in requests]

    def forward(self, input_ids, attention, positions, cache, adapters: Sequence[str | None], mixed: bool):
        """One forward pass over the rows (each with its own adapter when mixed); the logits of each row's
        last position, in float32 (as generate takes them)."""
        import torch

        kwargs: dict[str, Any] = {"input_ids": input_ids, "attention_mask": attention, "position_ids": positions,
                                  "cache": cache, "use_cache": True, "logits_to_keep": 1}
        model = self.model
        if not self.peft:
            out = model(**kwargs)
        elif not mixed:
            if adapters[0] is None:
                with model.disable_adapter():
                    out = model(**kwargs)
            else:
                out = model(**kwargs)
        else:
            bank = self._lora_bank() if self.lora_kernel == "bmm" else None
            if bank is not None:
                with bank.applied(adapters):
                    out = model(**kwargs)
            else:
                out = model(**kwargs, adapter_names=[a or BASE for a in adapters])
        return out.logits[:, -1, :].to(torch.float32, copy=True)

    def _lora_bank(self) -> "LoraBank | None":
        if self._bank_version != self.version:
            if self._bank is not None:
                self._bank.close()
            self._bank = LoraBank.build(self.model)
            self._bank_version = self.version
        return self._bank


@dataclass
class _Row:
    request: GenRequest
    history: list[int]          # prompt and reply so far: the repetition penalty's tokens
    generator: Any = None       # a sampled row's own torch.Generator
    ids: list[int] = field(default_factory=list)
    text: str = ""
    sent: int = 0               # characters of text already streamed
    cut: bool = False           # text ends before a stop string (not the decoded ids)
    finish: str | None = None


class Decoder:
    """The running batch, decoded one token a step (iteration-level batching).

    Rows join between steps: their prompts are prefilled together (left padding among themselves),
    then their KV-cache rows are left-padded to the running rows' length (or the running rows to
    theirs) and stacked under them; the attention mask hides every pad, and each row keeps its own
    positions, so a row's attention and rotary angles are those it would have alone. A row leaves as
    soon as it finishes, and cache columns that have become padding in every row are dropped.

    Joining needs a cache of plain layers (DynamicLayer: a full-attention model such as llama);
    where the model's cache is another kind (sliding windows), `can_join` is False while rows run,
    so the batch runs to its end before others start (static batching)."""

    def __init__(self, engine: Engine, mixed: bool = True):
        self.engine = engine
        self.mixed = mixed
        self.rows: list[_Row] = []
        self.cache: Any = None
        self.mask: Any = None        # (rows, cache length): 1 for a row's own tokens, 0 for its padding
        self.positions: Any = None   # (rows,): the position of each row's next input token
        self.next_ids: Any = None    # (rows,): each row's last chosen token, not yet in the cache
        self.steps = 0               # decode steps taken
        self.step_rows = 0           # rows summed over those steps

    def adapters(self) -> set[str]:
        return {r.request.adapter for r in self.rows if r.request.adapter is not None}

    def can_join(self) -> bool:
        if not self.rows:
            return True
        from transformers.cache_utils import DynamicLayer

        return all(type(layer) is DynamicLayer for layer in self.cache.layers)

    def join(self, requests: Sequence[GenRequest]) -> list[tuple[int, GenResult]]:
        """Prefill `requests` and add them to the batch; (id(request), result) for any that finished
        at their first token."""
        import torch

        with torch.inference_mode():
            return self._join(requests)

    def step(self) -> list[tuple[int, GenResult]]:
        """One decode step for every row; (id(request), result) for the rows that finished."""
        import torch

        with torch.inference_mode():
            return self._step()

    def _join(self, requests: Sequence[GenRequest]) -> list[tuple[int, GenResult]]:
        import torch
        from transformers import DynamicCache

        if not requests:
            return []
        width = max(len(r.prompt_ids) for r in requests)
        pads = [width - len(r.prompt_ids) for r in requests]
        input_ids = torch.tensor([[self.engine.pad_id] * p + r.prompt_ids for r, p in zip(requests, pads)])
        mask = torch.tensor([[0] * p + [1] * len(r.prompt_ids) for r, p in zip(requests, pads)])
        # generate's positions: counted over a row's own tokens, padding at 0
        positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)
        cache = DynamicCache(config=self.engine.model.config)
        logits = self.engine.forward(input_ids, mask, positions, cache, [r.adapter for r in requests], self.mixed)
        rows = [_Row(request=r, history=list(r.prompt_ids),
                     generator=_generator(r.seed) if r.temperature > 0 else None) for r in requests]
        tokens = self._choose(rows, logits)
        self._merge(rows, cache, mask, torch.tensor([len(r.prompt_ids) for r in requests]), torch.tensor(tokens))
        for row, token in zip(rows, tokens):
            self._advance(row, token)
        return self._drop_finished()

    def _step(self) -> list[tuple[int, GenResult]]:
        import torch

        for row in self.rows:
            if row.finish is None and row.request.cancelled.is_set():
                row.finish = "cancelled"
        if any(row.finish for row in self.rows):
            done = self._drop_finished()
            if not self.rows:
                return done
        else:
            done = []
        self.mask = torch.cat([self.mask, self.mask.new_ones(len(self.rows), 1)], dim=1)
        logits = self.engine.forward(self.next_ids[:, None], self.mask, self.positions[:, None], self.cache,
                                     [r.request.adapter for r in self.rows], self.mixed)
        self.positions = self.positions + 1
        self.steps += 1
        self.step_rows += len(self.rows)
        tokens = self._choose(self.rows, logits)
        self.next_ids = torch.tensor(tokens)
        for row, token in zip(self.rows, tokens):
            self._advance(row, token)
        return done + self._drop_finished()

    def close(self, exc: BaseException) -> list[tuple[int, BaseException]]:
        """Drop every row (the model failed): (id(request), exc) for each."""
        gone = [(id(r.request), exc) for r in self.rows]
        self.rows, self.cache, self.mask, self.positions, self.next_ids = [], None, None, None, None
        return gone

    # --- choosing each row's next token ---
    def _choose(self, rows: Sequence[_Row], logits) -> list[int]:
        """Each row's repetition penalty (over its own tokens, never padding: transformers'
        RepetitionPenaltyLogitsProcessor arithmetic), ignore_eos, then the argmax, or for a sampled row
        temperature and top-p and a draw from its own generator."""
        import torch

        eos = self.engine.eos_ids
        for i, row in enumerate(rows):
            request = row.request
            if request.repetition_penalty != 1.0:
                ids = torch.tensor(row.history)
                picked = logits[i].gather(0, ids)
                picked = torch.where(picked < 0, picked * request.repetition_penalty,
                                     picked / request.repetition_penalty)
                logits[i].scatter_(0, ids, picked)
            if request.ignore_eos:
                logits[i, eos] = -float("inf")
        tokens = logits.argmax(dim=-1).tolist()
        for i, row in enumerate(rows):
            if row.generator is not None:
                tokens[i] = _sample(logits[i], row.request.temperature, row.request.top_p, row.generator)
        return tokens

    # --- the batch's tensors ---
    def _merge(self, rows: list[_Row], cache, mask, positions, next_ids) -> None:
        import torch
        import torch.nn.functional as F

        if not self.rows:
            self.rows, self.cache, self.mask, self.positions, self.next_ids = rows, cache, mask, positions, next_ids
            return
        old, new = self.mask.shape[1], mask.shape[1]
        for running, joining in zip(self.cache.layers, cache.layers):
            # (batch, heads, length, dim): pad the length on the left, stack the rows
            running.keys = torch.cat([F.pad(running.keys, (0, 0, max(0, new - old), 0)),
                                      F.pad(joining.keys, (0, 0, max(0, old - new), 0))], dim=0)
            running.values = torch.cat([F.pad(running.values, (0, 0, max(0, new - old), 0)),
                                        F.pad(joining.values, (0, 0, max(0, old - new), 0))], dim=0)
        self.mask = torch.cat([F.pad(self.mask, (max(0, new - old), 0)), F.pad(mask, (max(0, old - new), 0))], dim=0)
        self.positions = torch.cat([self.positions, positions])
        self.next_ids = torch.cat([self.next_ids, next_ids])
        self.rows = self.rows + rows

    def _drop_finished(self) -> list[tuple[int, GenResult]]:
        import torch

        done = [row for row in self.rows if row.finish is not None]
        if not done:
            return []
        keep = [i for i, row in enumerate(self.rows) if row.finish is None]
        if not keep:
            self.rows, self.cache, self.mask, self.positions, self.next_ids = [], None, None, None, None
        else:
            index = torch.tensor(keep)
            self.cache.batch_select_indices(index)
            self.mask, self.positions, self.next_ids = self.mask[index], self.positions[index], self.next_ids[index]
            self.rows = [self.rows[i] for i in keep]
            first = int(self.mask.any(dim=0).int().argmax())  # columns before it are padding in every row
            if first and self.can_join():
                for layer in self.cache.layers:
                    layer.keys, layer.values = layer.keys[:, :, first:], layer.values[:, :, first:]
                self.mask = self.mask[:, first:]
        return [(id(row.request), self._result(row)) for row in done]

    # --- each row's text, stop strings and streaming ---
    def _advance(self, row: _Row, token: int) -> None:
        request = row.request
        if row.finish is not None:
            return
        if request.cancelled.is_set():
            row.finish = "cancelled"
            return
        if token in self.engine.eos_ids and not request.ignore_eos:
            row.finish = "stop"
            self._emit(row, final=True)
            return
        row.ids.append(token)
        row.history.append(token)
        if request.stop or request.on_text is not None:
            row.text = self.engine.tokenizer.decode(row.ids, skip_special_tokens=True)
            for stop in request.stop:
                cut = row.text.find(stop)
                if cut >= 0:
                    row.text, row.finish, row.cut = row.text[:cut], "stop", True
        if row.finish is None and len(row.ids) >= request.max_tokens:
            row.finish = "length"
        self._emit(row, final=row.finish is not None)

    def _emit(self, row: _Row, final: bool) -> None:
        request = row.request
        if request.on_text is None:
            return
        if final and not row.cut:
            row.text = self.engine.tokenizer.decode(row.ids, skip_special_tokens=True)
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

    def _result(self, row: _Row) -> GenResult:
        if not row.cut:
            row.text = self.engine.tokenizer.decode(row.ids, skip_special_tokens=True)
        return GenResult(text=row.text, finish_reason=row.finish or "length", prompt_tokens=len(row.request.prompt_ids),
                         completion_tokens=len(row.ids))


class LoraBank:
    """Every loaded adapter's LoRA weights stacked per layer, to apply a mixed batch's adapters with two
    batched matmuls per layer (each row's A and B gathered, ranks zero-padded to the largest, the base
    model a zero slot) instead of peft's loop over the batch's adapters in every layer.

    Built for plain LoRA on nn.Linear layers; `build` gives None (peft's adapter_names does the work)
    where an adapter is anything else (DoRA and other variants, a LoRA bias, other layer kinds)."""

    def __init__(self, layers: list, names: list[str]):
        self.layers = layers      # (module, A (slots, in, r), B (slots, r, out), scale (slots, 1, 1))
        self.slot = {name: i + 1 for i, name in enumerate(names)}   # 0: no adapter
        self.rows: tuple | None = None
        self.current: list = []   # per layer: the batch's (A, B, scale), gathered by row
        self.on = False
        self.handles = [module.register_forward_hook(self._hook(k)) for k, (module, *_rest) in enumerate(layers)]

    @classmethod
    def build(cls, model: Any) -> "LoraBank | None":
        import torch
        from peft.tuners.lora import LoraLayer

        names = list(getattr(model, "peft_config", {}))
        layers = []
        for module in model.modules():
            if not isinstance(module, LoraLayer):
                continue
            present = [n for n in names if n in module.lora_A]
            if not present:
                continue
            if (not isinstance(getattr(module, "base_layer", None), torch.nn.Linear)
                    or getattr(module, "fan_in_fan_out", False)
                    or any(n in getattr(module, "lora_variant", {}) or module.lora_B[n].bias is not None
                           for n in present)):
                return None
            rank = max(module.r[n] for n in present)
            first = module.lora_A[present[0]].weight
            a = first.new_zeros(len(names) + 1, module.in_features, rank)
            b = first.new_zeros(len(names) + 1, rank, module.out_features)
            scale = first.new_zeros(len(names) + 1, 1, 1)
            for n in present:
                slot, r = names.index(n) + 1, module.r[n]
                a[slot, :, :r] = module.lora_A[n].weight.T
                b[slot, :r] = module.lora_B[n].weight.T
                scale[slot] = module.scaling[n]
            layers.append((module, a, b, scale))
        return cls(layers, names)

    def _hook(self, k: int):
        import torch

        def add_update(_module, args, output):
            if not self.on or not self.current:
                return None  # outside `applied` (peft's own path, another kernel): no change
            a, b, scale = self.current[k]
            x = args[0]
            return output + (torch.bmm(torch.bmm(x.to(a.dtype), a), b) * scale).to(output.dtype)
        return add_update

    def applied(self, adapters: Sequence[str | None]):
        """A context: peft's own LoRA path off in these layers, each row's update added by the hooks."""
        import contextlib

        import torch

        key = tuple(adapters)
        if key != self.rows:
            index = torch.tensor([self.slot[a] if a is not None else 0 for a in adapters])
            self.current = [(a.index_select(0, index), b.index_select(0, index), s.index_select(0, index))
                            for _m, a, b, s in self.layers] if any(key) else []
            self.rows = key

        @contextlib.contextmanager
        def context():
            modules = [m for m, *_rest in self.layers]
            saved = [m._disable_adapters for m in modules]
            try:
                for m in modules:
                    # What peft's disable_adapter() sets, without its walk over every module and its
                    # requires_grad bookkeeping on every call (this runs once per decode step).
                    m._disable_adapters = True
                self.on = True
                yield
            finally:
                self.on = False
                for m, was in zip(modules, saved):
                    m._disable_adapters = was
        return context()

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.current, self.rows = [], None


def _generator(seed: int | None):
    import torch

    gen = torch.Generator()
    gen.manual_seed(seed if seed is not None else random.SystemRandom().randrange(2**63))
    return gen


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
