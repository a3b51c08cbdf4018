"""A chat model run in-process with transformers: the packaged SmolLM2 by default.

Prompts are grouped by sampling parameters, sorted by length (less padding) and generated in
batches with left padding. Generation runs in a worker thread so the event loop stays free.
Seeds: each batch is seeded from its requests' seeds, so the same requests give the same
replies; the batch a request lands in is fixed by the request list, not by timing.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Any

from ..config import LocalBackendConfig
from ..hardware import set_torch_threads
from ..schema import record_id
from .base import ChatBackend, ChatRequest, Completion, OptionProbs


class LocalBackend(ChatBackend):
    name = "local"
    supports_logprobs = True
    option_max_tokens = 0   # option questions are one forward pass: nothing is generated
    batch_invariant = False  # each batch is seeded and padded from its requests

    def __init__(self, config: LocalBackendConfig, progress: bool = True):
        super().__init__(config.model, config.sampling)
        self.config = config
        self._show_progress = progress
        self._model = None
        self._tokenizer = None
        self.threads = None

    def describe(self) -> dict[str, Any]:
        from ..models import resolve

        described = {"backend": self.name, "model": resolve(self.model).describe()}
        if self.config.adapter is not None:
            described["adapter"] = str(self.config.adapter)
        return described

    def load(self):
        if self._model is None:
            from ..lm import load_chat_model

            self.threads = set_torch_threads(self.config.threads)
            self._model, self._tokenizer = load_chat_model(self.model, adapter=self.config.adapter,
                                                           progress=self._show_progress)
        return self._model, self._tokenizer

    async def _stream_raw(self, requests: Sequence[ChatRequest]) -> AsyncIterator[tuple[int, Completion]]:
        await asyncio.to_thread(self.load)
        for batch in self._batches(requests):
            completions = await asyncio.to_thread(self._generate, [requests[i] for i in batch])
            for index, completion in zip(batch, completions):
                yield index, completion

    def _batches(self, requests: Sequence[ChatRequest]) -> list[list[int]]:
        _, tokenizer = self.load()
        lengths = [len(self._prompt_ids(r)) for r in requests]
        groups: dict[tuple, list[int]] = {}
        for index, request in enumerate(requests):
            key = (request.temperature, request.top_p, request.max_tokens)
            groups.setdefault(key, []).append(index)
        batches = []
        for members in groups.values():
            members.sort(key=lambda i: lengths[i])
            size = self.config.batch_size
            batches += [members[k:k + size] for k in range(0, len(members), size)]
        return batches

    def _prompt_ids(self, request: ChatRequest) -> list[int]:
        from ..decoding import prompt_ids

        _, tokenizer = self.load()
        return prompt_ids(tokenizer, request.messages)

    def _generate(self, requests: list[ChatRequest]) -> list[Completion]:
        import torch

        model, tokenizer = self.load()
        texts = [tokenizer.apply_chat_template(list(r.messages), add_generation_prompt=True, tokenize=False)
                 for r in requests]
        inputs = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
        first = requests[0]
        sample = (first.temperature or 0) > 0
        torch.manual_seed(int(record_id([r.seed for r in requests], [r.messages for r in requests]), 16) % 2**63)
        kwargs: dict[str, Any] = {"max_new_tokens": first.max_tokens, "do_sample": sample,
                                  "repetition_penalty": self.config.repetition_penalty,
                                  "pad_token_id": tokenizer.pad_token_id}
        if sample:
            kwargs.update(temperature=first.temperature, top_p=first.top_p)
        with torch.inference_mode():
            output = model.generate(**inputs, **kwargs)
        new_tokens = output[:, inputs["input_ids"].shape[1]:]
        prompt_lengths = inputs["attention_mask"].sum(dim=1).tolist()
        completions = []
        for request, row, prompt_len in zip(requests, new_tokens, prompt_lengths):
            completions.append(self._completion(request, row, prompt_len, tokenizer))
        return completions

    def _completion(self, request: ChatRequest, row, prompt_len: int, tokenizer) -> Completion:
        ids = row.tolist()
        finished = tokenizer.eos_token_id in ids
        if finished:
            ids = ids[: ids.index(tokenizer.eos_token_id)]
        text = tokenizer.decode(ids, skip_special_tokens=True)
        finish = "stop" if finished else "length"
        for stop in request.stop:
            cut = text.find(stop)
            if cut >= 0:
                text, finish = text[:cut], "stop"
        return Completion(text=text.strip(), finish_reason=finish, prompt_tokens=int(prompt_len),
                          completion_tokens=len(ids))

    # --- answer-token probabilities: one forward pass, no generation ------------------------------

    async def option_probs(self, requests: Sequence[ChatRequest], options: Sequence[str],
                           prefix: str = "") -> list[OptionProbs]:
        """The next-token distribution after the prompt (+ `prefix` in the assistant turn),
        summed over each option's spellings that are one token ("4" and " 4"), normalised over
        the options. Prompts are batched by length, left-padded, one forward pass per batch."""
        await asyncio.to_thread(self.load)
        lengths = [len(self._prompt_ids(r)) for r in requests]
        order = sorted(range(len(requests)), key=lambda i: lengths[i])
        size = self.config.batch_size
        results: list[OptionProbs | None] = [None] * len(requests)
        for k in range(0, len(order), size):
            batch = order[k:k + size]
            rows = await asyncio.to_thread(self._option_batch, [requests[i] for i in batch], options, prefix)
            for index, row in zip(batch, rows):
                results[index] = row
                self.usage.add(Completion(text=None, prompt_tokens=row.prompt_tokens))
        return results  # type: ignore[return-value]

    def option_token_ids(self, options: Sequence[str]) -> dict[str, list[int]]:
        """Each option's one-token spellings: the bare option and with a leading space."""
        _, tokenizer = self.load()
        ids: dict[str, list[int]] = {}
        for option in options:
            found = []
            for spelling in (option, " " + option):
                encoded = tokenizer.encode(spelling, add_special_tokens=False)
                if len(encoded) == 1 and encoded[0] not in found:
                    found.append(encoded[0])
            if not found:
                raise ValueError(f"option {option!r} is not one token for {self.model}")
            ids[option] = found
        return ids

    def _option_batch(self, requests: list[ChatRequest], options: Sequence[str], prefix: str) -> list[OptionProbs]:
        import torch

        model, tokenizer = self.load()
        ids = self.option_token_ids(options)
        texts = [tokenizer.apply_chat_template(list(r.messages), add_generation_prompt=True, tokenize=False) + prefix
                 for r in requests]
        side = tokenizer.padding_side
        tokenizer.padding_side = "left"   # the answer position is the last one in every row
        try:
            inputs = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
        finally:
            tokenizer.padding_side = side
        mask = inputs["attention_mask"]
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        with torch.inference_mode():
            out = model(input_ids=inputs["input_ids"], attention_mask=mask, position_ids=positions, logits_to_keep=1)
        probs = torch.softmax(out.logits[:, -1, :].float(), dim=-1)
        rows = []
        for r, prompt_len in enumerate(mask.sum(dim=1).tolist()):
            per = {o: float(probs[r, token_ids].sum()) for o, token_ids in ids.items()}
            mass = sum(per.values())
            rows.append(OptionProbs({o: p / mass for o, p in per.items()} if mass > 0 else {}, mass=round(mass, 6),
                                    prompt_tokens=int(prompt_len),
                                    error=None if mass > 0 else "no probability on any option"))
        return rows

    def count_tokens(self, request: ChatRequest) -> int:
        """Exact prompt tokens; loads only the tokenizer when the model is not loaded yet."""
        tokenizer = self._tokenizer
        if tokenizer is None:
            if getattr(self, "_count_tokenizer", None) is None:
                from ..lm import load_tokenizer
                from ..models import causal_lm_path

                self._count_tokenizer = load_tokenizer(causal_lm_path(self.model, progress=self._show_progress))
            tokenizer = self._count_tokenizer
        return len(tokenizer.apply_chat_template(list(request.messages), add_generation_prompt=True,
                                                 tokenize=True, return_dict=False))
