"""ConvAI2's metrics (unigram F1, Hits@1 of K), distinct-n and the persona C-score on hand-worked values.
No torch: these run in a fraction of a second."""

from __future__ import annotations

import numpy as np
import pytest

from persona_forge import metrics as M


def test_normalize_answer_is_parlais():
    # lowercase; punctuation (apostrophe too) becomes a space; a/an/the dropped as whole words only
    assert M.normalize_answer("The Cat's hat, an APPLE!") == "cat s hat apple"
    assert M.normalize_answer("theatre and a banana") == "theatre and banana"


def test_unigram_f1_hand_worked():
    # hypothesis "the cat sat on a mat" -> [cat, sat, on, mat] (4); reference "the cat sat on the mat"
    # -> [cat, sat, on, mat] (4): overlap 4, P = R = 1, F1 = 1 (the articles do not count)
    assert M.unigram_f1("the cat sat on a mat", "the cat sat on the mat") == 1.0
    # "I love my dogs" -> [i, love, my, dogs]; "i love cats and dogs!" -> [i, love, cats, and, dogs]
    # overlap {i, love, dogs} = 3; P = 3/4, R = 3/5; F1 = 2 * 0.75 * 0.6 / 1.35 = 0.9 / 1.35 = 2/3
    assert M.unigram_f1("I love my dogs", "i love cats and dogs!") == pytest.approx(2 / 3)
    # counts are a multiset: "no no no" vs "no" -> overlap min(3, 1) = 1; P = 1/3, R = 1; F1 = 2/3 / (4/3) = 0.5
    assert M.unigram_f1("no no no", "no") == pytest.approx(0.5)
    assert M.unigram_f1("", "anything") == 0.0
    assert M.unigram_f1("the a an", "the") == 0.0   # both empty after normalisation


def test_distinct_n_hand_worked():
    replies = ["I like dogs.", "I like cats", "dogs"]
    # unigrams: i like dogs | i like cats | dogs -> 7 in all, distinct {i, like, dogs, cats} = 4 -> 4/7
    assert M.distinct_n(replies, 1) == pytest.approx(4 / 7)
    # bigrams (never across replies): (i like)(like dogs) | (i like)(like cats) | none -> 4, distinct 3 -> 3/4
    assert M.distinct_n(replies, 2) == pytest.approx(3 / 4)
    assert M.distinct_n(["", "one"], 2) is None


def test_hits_at_1_hand_worked():
    # summed log-likelihoods of 4 candidates; the reference (index 2) is the largest -> hit
    assert M.hits_at_1([-12.0, -30.5, -7.25, -9.0], 2) == 1.0
    # reference index 0 at -12.0 loses to -7.25 -> miss
    assert M.hits_at_1([-12.0, -30.5, -7.25, -9.0], 0) == 0.0
    # a tie with a distractor is a miss
    assert M.hits_at_1([-3.0, -3.0], 1) == 0.0
    assert M.hits_at_1([5.0], 0) == 1.0    # a single candidate is trivially first
    with pytest.raises(ValueError):
        M.hits_at_1([1.0, 2.0], 2)
    # over 20 candidates: the mean over examples is Hits@1 of 20; 3 hits of 4 examples = 0.75
    rng = np.random.default_rng(0)
    rows = [rng.normal(size=20) for _ in range(4)]
    for row, boost in zip(rows, (10, 10, 10, -10)):
        row[0] += boost
    assert np.mean([M.hits_at_1(r, 0) for r in rows]) == 0.75


def test_c_score_rule():
    E, N, C = [0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.1, 0.1, 0.8]
    assert M.c_score([N, E, N]) == 1          # one sentence entailed
    assert M.c_score([N, C, N]) == -1         # one contradicted, none entailed
    assert M.c_score([C, E]) == 1             # entailment wins over a contradiction (documented rule)
    assert M.c_score([N, N]) == 0
    assert M.c_score([[0.4, 0.35, 0.25]]) == 1   # argmax, no threshold
    assert M.c_score(np.zeros((0, 3))) is None


def test_persona_nli_rows_and_max_contradiction():
    class KeywordNLI:
        def predict(self, pairs, progress=None):
            return np.array([[0.9, 0.05, 0.05] if p.split()[-1] in h else
                             [0.05, 0.05, 0.9] if "hate" in h else [0.1, 0.8, 0.1] for p, h in pairs])

    rows = M.persona_nli(KeywordNLI(), [["I love dogs", "I am tall"], ["I sing"], []],
                         ["my dogs are great", "i hate it", "hello"])
    assert rows[0].shape == (2, 3) and M.c_score(rows[0]) == 1
    assert M.c_score(rows[1]) == -1
    assert rows[2] is None
    assert M.max_contradiction(KeywordNLI(), [["I sing"], ["I sing"]], ["i hate it", " "]) == [pytest.approx(0.9), None]
