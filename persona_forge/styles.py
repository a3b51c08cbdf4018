"""Styles (voices) of chat replies: the style corpus and a classifier that tells them apart.

In: a style corpus JSONL ({"style": NAME, "text": REPLY} a line; corpora/styles/styles.jsonl by
default) and a sentence encoder (texts -> normalised vectors). Out: the corpus as lines per style,
a seeded stratified held-out split, and `StyleClassifier`: a logistic-regression head (sklearn) on
the encoder's embeddings, with its held-out accuracy and confusion matrix.

`forge restyle` uses the classifier to check that a rewrite carries its voice; an evaluation of
style adapters can use it to score their replies. It lives below the stages so both can.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import UserError
from .resources import data_dir
from .store import iter_json_lines

Embed = Callable[[Sequence[str]], np.ndarray]


def default_corpus() -> Path:
    return data_dir("corpora") / "styles" / "styles.jsonl"


def restyled_id(dialogue_id: str, style: str) -> str:
    """The id of a source conversation rewritten into `style` (a record of restyle/<style>.jsonl):
    forge restyle writes it, forge train --style finds a conversation's kept rewrites by it."""
    from .schema import record_id

    return record_id("restyle", dialogue_id, style)


@dataclass(frozen=True)
class StyleLine:
    style: str
    text: str


def load_corpus(path: Path) -> list[StyleLine]:
    """Every {style, text} line of a style corpus; a malformed line is one clear error."""
    lines: list[StyleLine] = []
    for line_no, row in iter_json_lines(path):
        if not (isinstance(row, dict) and isinstance(row.get("style"), str) and row["style"].strip()
                and isinstance(row.get("text"), str) and row["text"].strip()):
            raise UserError(f"{path}:{line_no}: a style corpus line must be {{\"style\": NAME, \"text\": REPLY}} "
                            f"with both non-empty")
        lines.append(StyleLine(row["style"].strip(), row["text"].strip()))
    if not lines:
        raise UserError(f"{path}: no lines in the style corpus; write one {{\"style\", \"text\"}} object a line")
    return lines


def by_style(lines: Sequence[StyleLine]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in lines:
        out.setdefault(line.style, []).append(line.text)
    return out


def split(lines: Sequence[StyleLine], heldout: float, seed: int) -> tuple[list[StyleLine], list[StyleLine]]:
    """(train, held out): `heldout` of each style's lines (at least one when a style has two or more),
    chosen with a seeded shuffle, so every style is measured."""
    rng = np.random.default_rng(seed)
    train: list[StyleLine] = []
    test: list[StyleLine] = []
    for style, texts in sorted(by_style(lines).items()):
        order = rng.permutation(len(texts)).tolist()
        k = max(1, round(heldout * len(texts))) if len(texts) > 1 else 0
        test += [StyleLine(style, texts[i]) for i in order[:k]]
        train += [StyleLine(style, texts[i]) for i in order[k:]]
    return train, test


def confusion(truth: Sequence[str], predicted: Sequence[str], styles: Sequence[str]) -> list[list[int]]:
    """Rows: the true style; columns: the predicted one, both in `styles` order."""
    index = {s: i for i, s in enumerate(styles)}
    matrix = [[0] * len(styles) for _ in styles]
    for t, p in zip(truth, predicted):
        if t in index and p in index:
            matrix[index[t]][index[p]] += 1
    return matrix


@dataclass
class StyleClassifier:
    """A logistic-regression head on sentence embeddings: texts -> a probability per style."""

    embed: Embed
    c: float = 4.0
    seed: int = 0
    styles: list[str] = field(default_factory=list)
    heldout: dict[str, Any] = field(default_factory=dict)  # accuracy, per-style accuracy, confusion
    _model: Any = None

    def fit(self, train: Sequence[StyleLine], test: Sequence[StyleLine] = ()) -> StyleClassifier:
        """Train on `train`; measure on `test` (kept apart) when given."""
        from sklearn.linear_model import LogisticRegression

        self.styles = sorted({line.style for line in train})
        if len(self.styles) < 2:
            raise UserError(f"the style corpus holds {len(self.styles)} style(s); the style classifier needs at "
                            f"least two to tell apart")
        vectors = self.embed([line.text for line in train])
        labels = [self.styles.index(line.style) for line in train]
        self._model = LogisticRegression(C=self.c, max_iter=2000, random_state=self.seed).fit(vectors, labels)
        if test:
            self.heldout = self.measure([line.text for line in test], [line.style for line in test])
        return self

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        """(n, len(styles)) probabilities, columns in `styles` order."""
        if not texts:
            return np.zeros((0, len(self.styles)), dtype=np.float64)
        return self._model.predict_proba(self.embed(list(texts)))

    def predict(self, texts: Sequence[str]) -> list[str]:
        return [self.styles[i] for i in self.predict_proba(texts).argmax(axis=1)]

    def measure(self, texts: Sequence[str], truth: Sequence[str]) -> dict[str, Any]:
        """Accuracy, per-style accuracy and the confusion matrix of these texts against their true styles."""
        predicted = self.predict(texts)
        correct = [p == t for p, t in zip(predicted, truth)]
        per_style = {s: round(float(np.mean([c for c, t in zip(correct, truth) if t == s])), 4)
                     for s in self.styles if s in truth}
        return {"n": len(texts), "accuracy": round(float(np.mean(correct)), 4) if correct else None,
                "per_style": per_style, "styles": list(self.styles),
                "confusion": confusion(truth, predicted, self.styles)}


def confusion_chart(matrix: Sequence[Sequence[int]], rows: Sequence[str], cols: Sequence[str], path: Path,
                    title: str, row_label: str = "true style", col_label: str = "predicted style") -> None:
    """A confusion matrix (counts; rows may be a subset of the columns) as a PNG heat map, each row
    shaded by its shares."""
    from . import plots

    plt = plots.pyplot()
    counts = np.array(matrix, dtype=float)
    shares = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(1.2 * len(cols) + 2, 1.1 * len(rows) + 1.5))
    ax.imshow(shares, cmap="Blues", vmin=0, vmax=1, aspect="auto")
    ax.set_xticks(range(len(cols)), cols, rotation=30, ha="right")
    ax.set_yticks(range(len(rows)), rows)
    ax.set_xlabel(col_label)
    ax.set_ylabel(row_label)
    for i in range(len(rows)):
        for j in range(len(cols)):
            ax.text(j, i, f"{int(counts[i, j])}", ha="center", va="center",
                    color="white" if shares[i, j] > 0.5 else "black")
    ax.set_title(title)
    plots.save(fig, path)


def measured_chart(measured: dict[str, Any], path: Path, title: str) -> None:
    """The confusion matrix of `measured` (StyleClassifier.measure) as a PNG heat map."""
    accuracy = measured.get("accuracy")
    confusion_chart(measured["confusion"], measured["styles"], measured["styles"], path,
                    f"{title} (accuracy {accuracy:.2f}, n={measured['n']})" if accuracy is not None else title)


def fitted_classifier(corpus: Sequence[StyleLine], embed, heldout: float, c: float, seed: int) -> StyleClassifier:
    """The style classifier fitted on the corpus less a held-out share, measured on that share."""
    train, test = split(corpus, heldout, seed)
    return StyleClassifier(embed, c, seed).fit(train, test)
