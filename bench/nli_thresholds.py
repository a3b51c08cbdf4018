"""The critic's two NLI thresholds against a labelled chat set (tune on chat-dev only).

For each contradiction threshold t: the share of contradicting utterances above t (recall: what the
critic catches), of entailing utterances above t (faithful lines punished) and of neutral ones above
t (false alarms on chit-chat). For each entailment threshold: the share of entailing utterances
above it (the critic's coverage recall) and the precision of "above it" (how often such a line
really expresses the sentence). Also the plain argmax accuracy and per-class recall.

    .venv/bin/python bench/nli_thresholds.py [--data chat-dev] [--model DIR]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from persona_forge.nli.base import CrossEncoderNLI  # noqa: E402
from persona_forge.nli.labels import CONTRADICTION, ENTAILMENT, LABELS  # noqa: E402
from persona_forge.nli.data import read_labelled  # noqa: E402
from persona_forge.nli.evaluate import metrics, named_set  # noqa: E402
from persona_forge.nli.train import ensure_embedded  # noqa: E402

THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95)


def table(probs: np.ndarray, gold: list[str]) -> dict:
    gold_arr = np.array(gold)
    predicted = [LABELS[i] for i in probs.argmax(axis=1)]
    out = {"argmax": metrics(gold, predicted), "contradiction": [], "entailment": []}
    for t in THRESHOLDS:
        above = probs[:, CONTRADICTION] > t
        out["contradiction"].append({"t": t, **{label: float(above[gold_arr == label].mean()) for label in LABELS}})
        above = probs[:, ENTAILMENT] > t
        out["entailment"].append({"t": t, "recall": float(above[gold_arr == "entailment"].mean()),
                                  "precision": float((gold_arr[above] == "entailment").mean()) if above.any() else 0.0})
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="chat-dev")
    parser.add_argument("--model", type=Path, default=None)
    args = parser.parse_args(argv)
    pairs = named_set(args.data) or read_labelled(Path(args.data))
    folder = args.model or ensure_embedded()
    model = CrossEncoderNLI(str(folder), batch_size=64, trace=True, precision="auto")
    result = table(model.predict([(p.premise, p.hypothesis) for p in pairs]), [p.label for p in pairs])
    m = result["argmax"]
    print(f"{args.data} ({m['n']} pairs), model {Path(folder).name}: accuracy {m['accuracy']:.3f}; recall "
          + ", ".join(f"{label} {m['per_class'][label]['recall']:.3f}" for label in LABELS))
    print("\ncontradiction threshold: share of each gold label above it")
    print(f"{'t':>5} {'contradiction (recall)':>23} {'entailment (punished)':>22} {'neutral (false alarm)':>22}")
    for row in result["contradiction"]:
        print(f"{row['t']:>5} {row['contradiction']:>23.3f} {row['entailment']:>22.3f} {row['neutral']:>22.3f}")
    print("\nentailment threshold")
    print(f"{'t':>5} {'recall':>8} {'precision':>10}")
    for row in result["entailment"]:
        print(f"{row['t']:>5} {row['recall']:>8.3f} {row['precision']:>10.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
