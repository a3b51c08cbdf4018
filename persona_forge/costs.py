"""Requests, tokens and cost: estimated before a stage sends anything, and counted after.

`estimate_requests(label, requests, backend, prices)` counts what a list of ChatRequests will
cost on a backend; a stage's estimate builds its requests with the same code its run sends, so the
request count is exact. Prices are per 1M tokens (`backend.prices: {input: .., output: ..}`).
`forge judge --estimate` uses it; `forge run --estimate` can sum the stages' estimates with
`total`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def cost(prompt_tokens: int, completion_tokens: int, prices) -> float | None:
    """The cost of that many tokens at `prices` (a PriceConfig, per 1M tokens); None without prices."""
    if prices is None:
        return None
    return round((prompt_tokens * prices.input + completion_tokens * prices.output) / 1e6, 6)


def estimate_requests(label: str, requests: Sequence[Any], backend, prices=None,
                      options: bool = False) -> dict[str, Any]:
    """Requests, prompt tokens (the backend's own count) and completion tokens (each request's
    limit; for option questions what the backend generates for one) and the cost of them."""
    prompt = sum(backend.count_tokens(r) for r in requests)
    if options:
        completion = len(requests) * backend.option_max_tokens
    else:
        completion = sum(backend.resolve(r).max_tokens or 0 for r in requests)
    out = {"part": label, "backend": backend.name, "model": str(backend.model), "requests": len(requests),
           "prompt_tokens": prompt, "completion_tokens": completion}
    price = cost(prompt, completion, prices)
    if price is not None:
        out["cost"] = price
    return out


def total(groups: Sequence[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"requests": sum(g["requests"] for g in groups),
                           "prompt_tokens": sum(g["prompt_tokens"] for g in groups),
                           "completion_tokens": sum(g["completion_tokens"] for g in groups)}
    priced = [g["cost"] for g in groups if "cost" in g]
    if priced:
        out["cost"] = round(sum(priced), 6)
    return out
