"""The three NLI labels, in the order every model's probability rows use."""

from __future__ import annotations

LABELS = ("entailment", "neutral", "contradiction")
ENTAILMENT, NEUTRAL, CONTRADICTION = range(3)
