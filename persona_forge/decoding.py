"""Greedy replies and continuation log-likelihoods from one shared pass over each prompt.

`forge eval` needs three things per example from a local model: the greedy reply, the reference
reply's log-likelihood (its perplexity) and the log-likelihood of K candidate replies (Hits@1 of K,
the reference being one of them). Done one by one, the prompt (about 215 tokens on the SPC test
split) is run through the model K + 2 times; here it is run once:

1. prompts are sorted by length and batched with left padding; one forward pass fills a KV cache
   and gives the next-token logits after the prompt;
2. every continuation (candidate reply) of the batch is scored on top of that cache: the cache rows
   are gathered per continuation, the continuations (right-padded, grouped by length) run through
   the model with positions that carry on from their prompt, and the log-probabilities of their
   tokens are summed (the first token's from the prompt pass);
3. the greedy reply is decoded from the same cache, with the repetition penalty of transformers'
   `generate` (the same processor), rows leaving the batch as they finish, the batch ending when
   all have.

The figures equal a plain one-at-a-time computation up to float rounding (tests/test_decoding.py).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass
class PromptResult:
    """One prompt's greedy reply (token ids up to and including the stop token) and, per continuation,
    (summed NLL, token count); a continuation with no tokens is (0.0, 0)."""

    tokens: list[int] = field(default_factory=list)
    stopped: bool = False
    prompt_tokens: int = 0
    nll: list[tuple[float, int]] = field(default_factory=list)


def prompt_ids(tokenizer, messages: Sequence[dict[str, str]]) -> list[int]:
    """The chat-templated prompt with the assistant header, as token ids."""
    return list(tokenizer.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=True,
                                              return_dict=False))


def stop_ids(model, tokenizer) -> set[int]:
    """The tokens that end a reply: the generation config's EOS ids, else the tokenizer's."""
    config = getattr(model, "generation_config", None)
    eos = getattr(config, "eos_token_id", None) if config is not None else None
    if eos is None:
        eos = tokenizer.eos_token_id
    return set(eos) if isinstance(eos, (list, tuple)) else {int(eos)}


def generate_and_score(model, tokenizer, prompts: Sequence[Sequence[int]],
                       continuations: Sequence[Sequence[str]] = (), max_new_tokens: int = 0,
                       repetition_penalty: float = 1.0, batch_size: int = 16,
                       score_rows: int = 32, timings: dict[str, float] | None = None) -> list[PromptResult]:
    """Per prompt (token ids), its greedy reply of at most `max_new_tokens` (0: none) and the summed
    NLL of each of its continuations (texts, tokenised without special tokens and appended to the
    prompt). `batch_size` prompts share a pass; `score_rows` continuations are scored together.
    `timings`, when given, accumulates seconds per phase (prefill, score, greedy) for benches."""
    import time

    import torch

    clock = timings if timings is not None else {}

    def lap(phase: str, since: float) -> float:
        now = time.perf_counter()
        clock[phase] = clock.get(phase, 0.0) + now - since
        return now

    n = len(prompts)
    conts = [[list(tokenizer(text, add_special_tokens=False)["input_ids"]) for text in options]
             for options in (continuations or [[] for _ in range(n)])]
    if len(conts) != n:
        raise ValueError(f"{len(conts)} continuation lists for {n} prompts")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    stops = stop_ids(model, tokenizer)
    device = next(model.parameters()).device
    results = [PromptResult(nll=[(0.0, 0)] * len(c), prompt_tokens=len(p)) for p, c in zip(prompts, conts)]
    order = sorted(range(n), key=lambda i: len(prompts[i]))
    with torch.inference_mode():
        for start in range(0, n, batch_size):
            batch = order[start:start + batch_size]
            width = max(len(prompts[i]) for i in batch)
            ids = torch.full((len(batch), width), pad, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, i in enumerate(batch):   # left padding: every prompt ends at the last column
                ids[row, width - len(prompts[i]):] = torch.tensor(list(prompts[i]), dtype=torch.long)
                mask[row, width - len(prompts[i]):] = 1
            ids, mask = ids.to(device), mask.to(device)
            t = time.perf_counter()
            cache, last = _prefill(model, ids, mask)
            t = lap("prefill", t)
            for row, nll in enumerate(_score(model, cache, mask, last, [conts[i] for i in batch], pad, score_rows)):
                results[batch[row]].nll = nll
            t = lap("score", t)
            if max_new_tokens > 0:
                replies = _greedy(model, cache, ids, mask, last, max_new_tokens, repetition_penalty, stops, pad)
                for row, (tokens, stopped) in enumerate(replies):
                    results[batch[row]].tokens, results[batch[row]].stopped = tokens, stopped
                lap("greedy", t)
            del cache
    return results


def _cache_kw(model, cache) -> dict[str, Any]:
    """The KV cache argument: `cache` from transformers 5.x (`past_key_values` is deprecated there)."""
    return {_cache_arg(type(model)): cache}


@functools.cache
def _cache_arg(cls: type) -> str:
    return "cache" if "cache" in inspect.signature(cls.forward).parameters else "past_key_values"


def _prefill(model, ids, mask) -> tuple[Any, Any]:
    from transformers import DynamicCache

    cache = DynamicCache()
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    out = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, logits_to_keep=1,
                **_cache_kw(model, cache))
    return cache, out.logits[:, -1, :].float()


def _score(model, cache, mask, last, conts: Sequence[Sequence[Sequence[int]]], pad: int,
           score_rows: int) -> list[list[tuple[float, int]]]:
    """(summed NLL, tokens) of every continuation, on top of its prompt's cached pass."""
    import torch
    from transformers import DynamicCache

    out = [[(0.0, 0)] * len(options) for options in conts]
    rows = sorted(((b, j) for b, options in enumerate(conts) for j, c in enumerate(options) if c),
                  key=lambda bj: len(conts[bj[0]][bj[1]]))
    if not rows:
        return out
    first_logp = torch.log_softmax(last, dim=-1)           # the first token is predicted by the prompt pass
    prompt_len = mask.sum(dim=1)
    device = mask.device
    for start in range(0, len(rows), score_rows):
        group = rows[start:start + score_rows]
        sel = torch.tensor([b for b, _ in group], dtype=torch.long, device=device)
        width = max(len(conts[b][j]) for b, j in group)
        ids = torch.full((len(group), width), pad, dtype=torch.long)
        cmask = torch.zeros((len(group), width), dtype=torch.long)
        for r, (b, j) in enumerate(group):   # right padding: the padded tail is never attended to
            ids[r, :len(conts[b][j])] = torch.tensor(list(conts[b][j]), dtype=torch.long)
            cmask[r, :len(conts[b][j])] = 1
        ids, cmask = ids.to(device), cmask.to(device)
        sub = DynamicCache(ddp_cache_data=[(layer.keys.index_select(0, sel), layer.values.index_select(0, sel))
                                           for layer in cache.layers])
        positions = prompt_len[sel][:, None] + torch.arange(width, device=device)[None, :]
        logits = model(input_ids=ids, attention_mask=torch.cat([mask[sel], cmask], dim=1), position_ids=positions,
                       use_cache=True, **_cache_kw(model, sub)).logits.float()
        del sub
        head = first_logp[sel].gather(1, ids[:, :1]).squeeze(1)
        if width > 1:
            rest = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.size(-1)), ids[:, 1:].reshape(-1),
                                                     reduction="none").view(len(group), width - 1)
            rest = (rest * cmask[:, 1:]).sum(dim=1)
        else:
            rest = torch.zeros(len(group), device=device)
        nll = (rest - head).tolist()
        for r, (b, j) in enumerate(group):
            out[b][j] = (float(nll[r]), len(conts[b][j]))
    return out


def _greedy(model, cache, ids, mask, last, max_new_tokens: int, penalty: float, stops: set[int],
            pad: int) -> list[tuple[list[int], bool]]:
    """Greedy decoding as transformers' `generate` does it (the same repetition penalty over the
    padded prompt and the reply so far), except that finished rows leave the batch."""
    import torch
    from transformers.generation.logits_process import RepetitionPenaltyLogitsProcessor

    processor = RepetitionPenaltyLogitsProcessor(penalty) if penalty != 1.0 else None
    batch = ids.shape[0]
    tokens: list[list[int]] = [[] for _ in range(batch)]
    stopped = [False] * batch
    active = list(range(batch))
    seqs, logits = ids, last
    for step in range(max_new_tokens):
        scores = processor(seqs, logits) if processor is not None else logits
        chosen = scores.argmax(dim=-1)
        picked = chosen.tolist()
        keep = []
        for r, b in enumerate(active):
            tokens[b].append(picked[r])
            if picked[r] in stops:
                stopped[b] = True
            else:
                keep.append(r)
        if not keep or step == max_new_tokens - 1:
            break
        if len(keep) < len(active):
            index = torch.tensor(keep, dtype=torch.long, device=ids.device)
            cache.batch_select_indices(index)
            seqs, mask, chosen = seqs[index], mask[index], chosen[index]
            active = [active[r] for r in keep]
        seqs = torch.cat([seqs, chosen[:, None]], dim=1)
        mask = torch.cat([mask, torch.ones((len(active), 1), dtype=mask.dtype, device=mask.device)], dim=1)
        positions = mask.sum(dim=1, keepdim=True) - 1
        logits = model(input_ids=chosen[:, None], attention_mask=mask, position_ids=positions, use_cache=True,
                       **_cache_kw(model, cache)).logits[:, -1, :].float()
    return [(tokens[b], stopped[b]) for b in range(batch)]
