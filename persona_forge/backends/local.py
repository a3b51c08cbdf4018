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

from ..config import BackendConfig
from ..hardware import native_bf16, set_torch_threads, usable_cores  # noqa: F401 - re-exported
from ..schema import record_id
from .base import ChatBackend, ChatRequest, Completion


class LocalBackend(ChatBackend):
    name = "local"

    def __init__(self, config: BackendConfig, progress: bool = True):
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
        _, tokenizer = self.load()
        return tokenizer.apply_chat_template(list(request.messages), add_generation_prompt=True,
                                             tokenize=True, return_dict=False)

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
