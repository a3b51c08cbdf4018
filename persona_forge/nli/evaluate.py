"""Scoring an NLI model on labelled pairs: accuracy, per-class P/R/F1, confusion matrix."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .base import LABELS, NLIModel
from ..resources import data_dir
from .data import NLIPair, load_sick, read_labelled


def metrics(gold: Sequence[str], predicted: Sequence[str]) -> dict[str, Any]:
    confusion = {g: {p: 0 for p in LABELS} for g in LABELS}
    for g, p in zip(gold, predicted):
        confusion[g][p] += 1
    per_class = {}
    for label in LABELS:
        tp = confusion[label][label]
        predicted_n = sum(confusion[g][label] for g in LABELS)
        gold_n = sum(confusion[label].values())
        precision = tp / predicted_n if predicted_n else 0.0
        recall = tp / gold_n if gold_n else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[label] = {"precision": precision, "recall": recall, "f1": f1, "support": gold_n}
    correct = sum(confusion[l][l] for l in LABELS)
    return {"n": len(gold), "accuracy": correct / len(gold) if gold else 0.0, "per_class": per_class,
            "confusion": confusion}


def evaluate(model: NLIModel, pairs: Sequence[NLIPair], progress=None) -> dict[str, Any]:
    probs = model.predict([(p.premise, p.hypothesis) for p in pairs], progress)
    predicted = [LABELS[i] for i in probs.argmax(axis=1)]
    result = metrics([p.label for p in pairs], predicted)
    result["errors"] = [
        {"premise": p.premise, "hypothesis": p.hypothesis, "label": p.label, "predicted": q,
         "source": p.source}
        for p, q in zip(pairs, predicted) if p.label != q
    ]
    return result


def sick_test() -> list[NLIPair]:
    return load_sick(["SICK_test_annotated.txt"])


# `forge nli eval --data NAME`: the evaluation sets by name. chat-dev is the set the critic's
# thresholds are tuned on; chat-test, sick-test and persona-test are never trained or tuned on.
NAMED_SETS = {"sick-test": None, "chat-test": "chat_test.jsonl", "chat-dev": "chat_dev.jsonl",
              "persona-test": "persona_test.jsonl", "persona-dev": "persona_dev.jsonl"}


def named_set(name: str) -> list[NLIPair] | None:
    """The pairs of a named evaluation set, or None when `name` names none (then it is a path)."""
    if name not in NAMED_SETS:
        return None
    if NAMED_SETS[name] is None:
        return sick_test()
    return read_labelled(data_dir("corpora") / "nli" / NAMED_SETS[name], source=name)
