"""corpora/nli/chat_train_handwritten.jsonl: hand-written natural-chat NLI training pairs (issue 16).

Unit and fast: no model is loaded. The file trains the embedded NLI, so it must never share a premise
or a (near-)hypothesis with the sets the NLI is tuned or tested on (chat_dev, chat_test) nor a premise
with the SPC test split; bench/check_chat_train.py states those rules and this test runs it.
"""

from __future__ import annotations

import importlib.util
import json
from collections import Counter

import pytest

from conftest import REPO
from persona_forge.errors import UserError
from persona_forge.nli.data import LABELS, read_labelled

TRAIN = REPO / "corpora" / "nli" / "chat_train_handwritten.jsonl"


def _checker():
    spec = importlib.util.spec_from_file_location("check_chat_train", REPO / "bench" / "check_chat_train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


check = _checker()


def test_loads_through_read_labelled_with_balanced_labels():
    pairs = read_labelled(TRAIN)
    counts = Counter(p.label for p in pairs)
    assert len(pairs) >= 900
    assert set(counts) == set(LABELS)
    assert max(counts.values()) - min(counts.values()) <= 0.01 * len(pairs)


def test_no_premise_or_hypothesis_shared_with_chat_dev_or_test():
    rows = [json.loads(line) for line in TRAIN.open(encoding="utf-8") if line.strip()]
    held = check.heldout_rows()
    held_premises = {check.sentence_key(r["premise"]) for r in held}
    held_hyps = {r["hypothesis"].strip().lower() for r in held}
    assert not {check.sentence_key(r["premise"]) for r in rows} & held_premises
    assert not {r["hypothesis"].strip().lower() for r in rows} & held_hyps


def test_checker_passes_on_the_shipped_file():
    assert check.check() == []


def test_checker_reports_leaks_imbalance_and_malformed_rows(tmp_path):
    held = check.heldout_rows()
    good = json.loads(TRAIN.open(encoding="utf-8").readline())
    rows = [
        good,
        dict(good, hypothesis=held[0]["hypothesis"]),          # copies a held-out hypothesis
        dict(good, premise="I have a pet unicorn named Zed."),  # not an SPC train persona sentence
        dict(good, label="maybe"),                              # malformed label
        {"premise": good["premise"]},                           # missing fields
    ]
    path = tmp_path / "bad.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + "{not json\n", encoding="utf-8")
    problems = check.check(path)
    text = "\n".join(problems)
    assert "bad.jsonl:2: hypothesis" in text and "too close" in text
    assert "bad.jsonl:3: premise" in text and "not a persona sentence of SPC train" in text
    assert "bad.jsonl:4: label 'maybe'" in text
    assert "bad.jsonl:5: missing" in text
    assert "bad.jsonl:6: not JSON" in text
    assert "labels unbalanced" in text  # the three well-formed rows all carry one label


def test_read_labelled_rejects_a_bad_label(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text(json.dumps({"premise": "a b c", "hypothesis": "d e f", "label": "maybe"}) + "\n")
    with pytest.raises(UserError):
        read_labelled(path)
