"""Check corpora/nli/chat_train_handwritten.jsonl against its rules; print one line per problem.

The file is hand-written NLI training data in the natural-chat style (issue #16). Its rules:
every premise is a (normalised) persona sentence of Synthetic-Persona-Chat TRAIN, none is a premise
of chat_dev / chat_test or a persona sentence of the SPC test split, no hypothesis equals or nearly
equals (token Jaccard >= 0.6) a hypothesis of chat_dev / chat_test, the three labels are balanced
within 1 percentage point, and every row is well formed. This script reads the held-out sets so that
whoever writes the training file never has to: it prints only the training row at fault, never the
held-out text.

    bench/check_chat_train.py [--file corpora/nli/chat_train_handwritten.jsonl]

Exit status 0 when there is no problem, 1 otherwise.
"""

from __future__ import annotations

import argparse
import gzip
import json
import re
import sys
from collections import Counter
from functools import lru_cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from persona_forge.nli.data import LABELS, normalize  # noqa: E402

TRAIN_FILE = ROOT / "corpora/nli/chat_train_handwritten.jsonl"
HELDOUT_FILES = (ROOT / "corpora/nli/chat_dev.jsonl", ROOT / "corpora/nli/chat_test.jsonl")
SPC_TRAIN = ROOT / "corpora/spc/train.jsonl.gz"
SPC_TEST = ROOT / "corpora/spc/test.jsonl.gz"
PHENOMENA = {"paraphrase", "episode", "hedge", "typo", "lowercase", "question", "reaction", "partner", "quantity",
             "occupation", "location", "family", "synonym", "multi", "negation", "rival", "cross_slot"}
JACCARD_MAX = 0.6
BALANCE_TOLERANCE = 0.01
MIN_WORDS, MAX_WORDS = 3, 35


def sentence_key(text: str) -> str:
    """Case-, spacing- and end-punctuation-insensitive key of a (normalised) sentence."""
    return re.sub(r"\s+", " ", normalize(text).lower()).strip().rstrip(".!? ")


def tokens(text: str) -> set[str]:
    return set(re.findall(r"[a-z0-9']+", text.lower()))


def jaccard(a: set[str], b: set[str]) -> float:
    return len(a & b) / len(a | b) if a | b else 1.0


@lru_cache(maxsize=None)
def persona_keys(path: Path) -> frozenset[str]:
    """Keys of every persona sentence of an SPC split (gzip JSONL with user1_persona / user2_persona)."""
    keys = set()
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                row = json.loads(line)
                for field in ("user1_persona", "user2_persona"):
                    keys.update(sentence_key(s) for s in row.get(field) or [])
    return frozenset(keys)


def load_rows(path: Path) -> tuple[list[tuple[int, object]], list[str]]:
    """(line number, parsed object) per non-empty line, and a problem line per unparsable line."""
    rows, problems = [], []
    with open(path, encoding="utf-8") as fh:
        for no, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                rows.append((no, json.loads(line)))
            except json.JSONDecodeError as exc:
                problems.append(f"{path.name}:{no}: not JSON ({exc.msg})")
    return rows, problems


def heldout_rows(files=HELDOUT_FILES) -> list[dict]:
    out = []
    for path in files:
        with open(path, encoding="utf-8") as fh:
            out.extend(json.loads(line) for line in fh if line.strip())
    return out


def malformed(row: object) -> str | None:
    if not isinstance(row, dict):
        return "row is not an object"
    for key in ("premise", "hypothesis", "label", "slot", "phenomenon"):
        if not isinstance(row.get(key), str) or not row[key].strip():
            return f"missing or empty string field {key!r}"
    extra = set(row) - {"premise", "hypothesis", "label", "slot", "phenomenon"}
    if extra:
        return f"unexpected fields {sorted(extra)}"
    if row["label"] not in LABELS:
        return f"label {row['label']!r} is not one of {', '.join(LABELS)}"
    if row["phenomenon"] not in PHENOMENA:
        return f"phenomenon {row['phenomenon']!r} is not one of the listed phenomena"
    words = len(row["hypothesis"].split())
    if not MIN_WORDS <= words <= MAX_WORDS:
        return f"hypothesis has {words} words (want {MIN_WORDS}-{MAX_WORDS})"
    return None


def label_balance(labels: list[str]) -> list[str]:
    """A problem line per label whose share is off 1/3 by more than the tolerance."""
    counts = Counter(labels)
    total = len(labels) or 1
    return [f"labels unbalanced: {label} {counts[label]} of {total} ({counts[label] / total:.3f})"
            for label in LABELS if abs(counts[label] / total - 1 / 3) > BALANCE_TOLERANCE]


def check(path: Path = TRAIN_FILE, heldout_files=HELDOUT_FILES, spc_train: Path = SPC_TRAIN,
          spc_test: Path = SPC_TEST) -> list[str]:
    """Every problem of the training file, one line each (empty when the file is clean)."""
    parsed, problems = load_rows(path)
    train_keys, test_keys = persona_keys(spc_train), persona_keys(spc_test)
    held = heldout_rows(heldout_files)
    held_premises = {sentence_key(r["premise"]) for r in held}
    held_hyps = [tokens(r["hypothesis"]) for r in held]
    seen: set[tuple[str, str]] = set()
    labels = []
    for no, row in parsed:
        where = f"{path.name}:{no}"
        bad = malformed(row)
        if bad:
            problems.append(f"{where}: {bad}")
            continue
        labels.append(row["label"])
        key = sentence_key(row["premise"])
        if key not in train_keys:
            problems.append(f"{where}: premise {row['premise']!r} is not a persona sentence of SPC train")
        if key in test_keys:
            problems.append(f"{where}: premise {row['premise']!r} is a persona sentence of SPC test")
        if key in held_premises:
            problems.append(f"{where}: premise {row['premise']!r} is a premise of chat_dev/chat_test")
        pair = (key, row["hypothesis"].strip().lower())
        if pair in seen:
            problems.append(f"{where}: duplicate pair {row['hypothesis']!r}")
        seen.add(pair)
        hyp = tokens(row["hypothesis"])
        worst = max((jaccard(hyp, other) for other in held_hyps), default=0.0)
        if worst >= JACCARD_MAX:
            problems.append(f"{where}: hypothesis {row['hypothesis']!r} is too close to a chat_dev/chat_test "
                            f"hypothesis (token Jaccard {worst:.2f}); rewrite it")
    problems.extend(label_balance(labels))
    return problems


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--file", type=Path, default=TRAIN_FILE)
    args = parser.parse_args()
    problems = check(args.file)
    for line in problems:
        print(line)
    if problems:
        sys.exit(1)
    print(f"{args.file.name}: ok")


if __name__ == "__main__":
    main()
