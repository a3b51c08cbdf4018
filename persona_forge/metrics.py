"""Reply-quality metrics for `forge eval`, each pinned to one implementation and its settings.

- BLEU: sacrebleu (13a tokenisation, 4-grams). Sentence BLEU uses exponential-decay smoothing
  ("exp", Chen & Cherry 2014 method 3) with effective order; corpus BLEU uses the same smoothing
  over the summed n-gram statistics. 0-100.
- ROUGE-1/2/L: Google's rouge-score, F-measure, Porter stemming. 0-1.
- BERTScore P/R/F1: bert_score with a local encoder folder and an explicit layer; no idf, no
  baseline rescaling (there is no baseline file for a local model), so the values are raw.
  An empty candidate or reference scores 0 (bert_score 0.3.13 crashes on empty strings).
- Perplexity: exp of the mean token negative log-likelihood; corpus perplexity weights every
  reference token equally (sum of NLL / sum of tokens).
- Unigram F1: ConvAI2's (ParlAI's `F1Metric`): both texts lowercased, punctuation replaced by spaces,
  the articles a/an/the removed, split on whitespace; precision and recall over token counts
  (multiset overlap); 0 when nothing overlaps. 0-1, mean over examples.
- Distinct-1/2 (Li et al. 2016): distinct n-grams / all n-grams over the whole set of replies (tokens:
  lowercased, punctuation replaced by spaces, articles kept). A property of the set, not of one reply,
  so it has no bootstrap interval (resampling with replacement repeats replies and biases it low).
- Hits@1 of K (ConvAI2): the reference among K-1 distractor replies, ranked by a score (the model's
  summed log-likelihood of each candidate given the prompt); 1 when the reference scores strictly
  highest, else 0 (a tie is a miss).
- C-score (Madotto et al. 2019, per reply): the NLI on (persona sentence, reply) for each sentence,
  each pair labelled by its most probable label; +1 when any sentence is entailed, else -1 when any is
  contradicted, else 0. An entailed sentence wins over a contradicted one: the reply used the persona.
- Bootstrap: the same seeded resamples of examples for every statistic (percentile intervals).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

# --- the registry: every metric `forge eval` reports, once ------------------------------------------

@dataclass(frozen=True)
class Metric:
    """How one key of metrics.json reads: its column title, its direction and its table format."""

    key: str
    title: str
    higher_is_better: bool
    scale: float = 1.0     # the table shows value x scale (ROUGE and BERTScore as 0-100)
    decimals: int = 2
    delta: bool = False    # shown as adapter - base (with a paired interval) and kept in the manifest
    interval: bool = True  # False: a property of the whole set of replies, reported without an interval

    def cell(self, value: float) -> str:
        return f"{value * self.scale:.{self.decimals}f}"


METRICS = (
    Metric("bleu_corpus", "BLEU (corpus)", True, delta=True),
    Metric("bleu_sentence", "BLEU (sent.)", True),
    Metric("rouge1", "ROUGE-1", True, 100.0),
    Metric("rouge2", "ROUGE-2", True, 100.0),
    Metric("rougeL", "ROUGE-L", True, 100.0, delta=True),
    Metric("bertscore_p", "BERTScore P", True, 100.0),
    Metric("bertscore_r", "BERTScore R", True, 100.0),
    Metric("bertscore_f1", "BERTScore F1", True, 100.0, delta=True),
    Metric("f1", "F1 (unigram)", True, 100.0, delta=True),
    Metric("distinct1", "Distinct-1", True, 100.0, interval=False),
    Metric("distinct2", "Distinct-2", True, 100.0, interval=False),
    Metric("hits_at_1", "Hits@1", True, 100.0, 1, delta=True),
    Metric("c_score", "C-score", True, 1.0, 3, delta=True),
    Metric("perplexity", "PPL (ref.)", False, delta=True),
    Metric("contradiction_rate", "Contradiction %", False, 100.0, 1, delta=True),
)
BY_KEY = {m.key: m for m in METRICS}
DELTA_METRICS = tuple(m for m in METRICS if m.delta)


# The per-example means among METRICS (each a mean over examples of metrics[key] in a generation record).
MEAN_KEYS = ("bleu_sentence", "rouge1", "rouge2", "rougeL", "bertscore_p", "bertscore_r", "bertscore_f1", "f1",
             "hits_at_1", "c_score")


BLEU_DESCRIPTION = "sacrebleu {version}: 13a tokenisation, 4-grams, smoothing exp (sentence: effective order)"
ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")


# --- BLEU -----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class BleuStats:
    """Sufficient statistics of one (hypothesis, reference) pair: corpus BLEU sums these."""

    sys_len: int
    ref_len: int
    correct: tuple[int, ...]
    total: tuple[int, ...]

    def as_list(self) -> list[int]:
        return [self.sys_len, self.ref_len, *self.correct, *self.total]

    @classmethod
    def from_list(cls, values: Sequence[int]) -> "BleuStats":
        n = (len(values) - 2) // 2
        return cls(int(values[0]), int(values[1]), tuple(int(v) for v in values[2:2 + n]),
                   tuple(int(v) for v in values[2 + n:]))


def _bleu(effective_order: bool):
    from sacrebleu.metrics import BLEU

    return BLEU(smooth_method="exp", effective_order=effective_order)


def sentence_bleu(hypothesis: str, reference: str) -> float:
    """Smoothed sentence BLEU, 0-100."""
    return float(_bleu(True).sentence_score(hypothesis or "", [reference or ""]).score)


def bleu_stats(hypothesis: str, reference: str) -> BleuStats:
    score = _bleu(False).corpus_score([hypothesis or ""], [[reference or ""]])
    return BleuStats(score.sys_len, score.ref_len, tuple(score.counts), tuple(score.totals))


def corpus_bleu_from_stats(stats: Sequence[BleuStats]) -> float:
    """Corpus BLEU (0-100) of the pairs whose statistics are given (summed, then scored)."""
    from sacrebleu.metrics import BLEU

    if not stats:
        return 0.0
    summed = np.sum([s.as_list() for s in stats], axis=0)
    merged = BleuStats.from_list(summed.tolist())
    return float(BLEU.compute_bleu(list(merged.correct), list(merged.total), merged.sys_len, merged.ref_len,
                                   smooth_method="exp").score)


def corpus_bleu(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    return corpus_bleu_from_stats([bleu_stats(h, r) for h, r in zip(hypotheses, references)])


def bleu_description() -> str:
    from importlib import metadata

    return BLEU_DESCRIPTION.format(version=metadata.version("sacrebleu"))


# --- ROUGE ----------------------------------------------------------------------------------------

_rouge_scorer = None


def rouge(hypothesis: str, reference: str) -> dict[str, float]:
    """ROUGE-1/2/L F-measures (rouge-score, Porter stemming), 0-1."""
    global _rouge_scorer
    if _rouge_scorer is None:
        from rouge_score import rouge_scorer

        _rouge_scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)
    scores = _rouge_scorer.score(reference or "", hypothesis or "")
    return {name: float(scores[name].fmeasure) for name in ROUGE_TYPES}


# --- ConvAI2 unigram F1, distinct-n ---------------------------------------------------------------

_PUNCTUATION = re.compile(r"[!\"#$%&()*+,-./:;<=>?@\[\]\\^`{|}~_']")  # ParlAI's re_punc
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(text: str) -> str:
    """ParlAI's normalisation: lowercase, punctuation to spaces, articles out, whitespace collapsed."""
    text = _PUNCTUATION.sub(" ", (text or "").lower())
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def unigram_f1(hypothesis: str, reference: str) -> float:
    """ConvAI2's unigram F1 of a reply against its reference (ParlAI F1Metric, one reference), 0-1."""
    guess, gold = normalize_answer(hypothesis).split(), normalize_answer(reference).split()
    same = sum((Counter(guess) & Counter(gold)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(guess), same / len(gold)
    return 2 * precision * recall / (precision + recall)


def distinct_tokens(text: str) -> list[str]:
    return " ".join(_PUNCTUATION.sub(" ", (text or "").lower()).split()).split()


def distinct_n(replies: Sequence[str], n: int) -> float | None:
    """Distinct n-grams / all n-grams over every reply (n-grams never cross replies); None without any."""
    seen: set[tuple[str, ...]] = set()
    total = 0
    for reply in replies:
        tokens = distinct_tokens(reply)
        grams = [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]
        seen.update(grams)
        total += len(grams)
    return len(seen) / total if total else None


# --- Hits@1 of K, C-score ------------------------------------------------------------------------------

def hits_at_1(scores: Sequence[float], reference_index: int) -> float:
    """1.0 when the reference's score is strictly above every other candidate's, else 0.0 (ties miss)."""
    if not 0 <= reference_index < len(scores):
        raise ValueError(f"reference_index {reference_index} outside the {len(scores)} candidates")
    ref = scores[reference_index]
    return float(all(s < ref for i, s in enumerate(scores) if i != reference_index))


def c_score(probs: Sequence[Sequence[float]] | np.ndarray) -> int | None:
    """Persona consistency of one reply from its NLI rows (one per persona sentence, LABELS order:
    entailment, neutral, contradiction), each read as its argmax: +1 when any sentence is entailed,
    -1 when none is and any is contradicted, 0 else; None without sentences."""
    from .nli.labels import CONTRADICTION, ENTAILMENT

    rows = np.asarray(probs, dtype=float)
    if rows.size == 0:
        return None
    labels = rows.reshape(-1, 3).argmax(axis=1)
    if (labels == ENTAILMENT).any():
        return 1
    if (labels == CONTRADICTION).any():
        return -1
    return 0


# --- BERTScore ------------------------------------------------------------------------------------

class BertScore:
    """BERTScore with one encoder loaded once; empty strings score 0 instead of crashing."""

    def __init__(self, model_path: str, layer: int, batch_size: int = 64):
        from bert_score import BERTScorer

        self.model_path = model_path
        self.layer = layer
        self._scorer = BERTScorer(model_type=model_path, num_layers=layer, batch_size=batch_size,
                                  rescale_with_baseline=False, idf=False)

    def describe(self) -> str:
        return bertscore_description(self.layer, self.model_path)

    def __call__(self, candidates: Sequence[str], references: Sequence[str]) -> list[tuple[float, float, float]]:
        """(precision, recall, F1) per pair, in order."""
        out = [(0.0, 0.0, 0.0)] * len(candidates)
        keep = [i for i, (c, r) in enumerate(zip(candidates, references)) if c.strip() and r.strip()]
        if keep:
            p, r, f = self._scorer.score([candidates[i] for i in keep], [references[i] for i in keep],
                                         batch_size=64)
            for j, i in enumerate(keep):
                out[i] = (float(p[j]), float(r[j]), float(f[j]))
        return out


def bertscore_description(layer: int, model: str = "packaged all-MiniLM-L6-v2") -> str:
    from importlib import metadata

    return (f"bert_score {metadata.version('bert-score')} on {model}, layer {layer}, no idf, raw values (no "
            f"baseline rescaling: bert_score has no baseline file for this encoder); an empty reply scores 0")


def load_bertscore(layer: int) -> BertScore:
    """BERTScore on the packaged all-MiniLM-L6-v2 (an HF BERT folder bert_score loads as is)."""
    from .models import sentence_model_path

    return BertScore(sentence_model_path("packaged:minilm-l6"), layer)


# --- NLI contradiction ------------------------------------------------------------------------------

def persona_nli(nli, personas: Sequence[Sequence[str]], replies: Sequence[str]) -> list[np.ndarray | None]:
    """Per reply, its NLI rows (n_attributes, 3) against its persona's attributes (premise = attribute,
    hypothesis = reply), in one predict call; None for an empty reply or an empty persona."""
    pairs, owner = [], []
    for i, (persona, reply) in enumerate(zip(personas, replies)):
        if reply.strip():
            for attribute in persona:
                pairs.append((attribute, reply))
                owner.append(i)
    rows: list[list[np.ndarray]] = [[] for _ in replies]
    if pairs:
        for i, row in zip(owner, np.asarray(nli.predict(pairs), dtype=float)):
            rows[i].append(row)
    return [np.stack(r) if r else None for r in rows]


def max_contradiction(nli, personas: Sequence[Sequence[str]], replies: Sequence[str]) -> list[float | None]:
    """Per reply, the largest contradiction probability over its persona's attributes
    (premise = attribute, hypothesis = reply); None for an empty reply (nothing to contradict)."""
    from .nli.labels import CONTRADICTION

    return [None if r is None else float(r[:, CONTRADICTION].max()) for r in persona_nli(nli, personas, replies)]


# --- perplexity -------------------------------------------------------------------------------------

def perplexity(nll_sum: float, tokens: int) -> float | None:
    return math.exp(nll_sum / tokens) if tokens else None


def reference_nll(model, tokenizer, prompts: Sequence[Sequence[dict[str, str]]], references: Sequence[str],
                  batch_size: int = 8) -> list[tuple[float, int]]:
    """(summed NLL, token count) of each reference reply under the model, conditioned on the
    chat-templated prompt (with the assistant header): the loss counts the reference's tokens only."""
    import torch

    from .decoding import prompt_ids

    rows = []
    for messages, reference in zip(prompts, references):
        ref_ids = tokenizer(reference, add_special_tokens=False)["input_ids"]
        rows.append((prompt_ids(tokenizer, messages), list(ref_ids)))
    out: list[tuple[float, int]] = [(0.0, 0)] * len(rows)
    order = sorted(range(len(rows)), key=lambda i: len(rows[i][0]) + len(rows[i][1]))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    device = next(model.parameters()).device
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            batch = [i for i in order[start:start + batch_size] if rows[i][1]]
            if not batch:
                continue
            width = max(len(rows[i][0]) + len(rows[i][1]) for i in batch)
            ids = torch.full((len(batch), width), pad, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            labels = torch.full((len(batch), width), -100, dtype=torch.long)
            for b, i in enumerate(batch):  # right padding: positions stay as in an unpadded pass
                prompt, ref_ids = rows[i]
                seq = prompt + ref_ids
                ids[b, :len(seq)] = torch.tensor(seq)
                mask[b, :len(seq)] = 1
                labels[b, len(prompt):len(seq)] = torch.tensor(ref_ids)
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()
            shifted, targets = logits[:, :-1], labels[:, 1:].to(device)
            nll = torch.nn.functional.cross_entropy(shifted.reshape(-1, shifted.size(-1)), targets.reshape(-1),
                                                    ignore_index=-100, reduction="none").view(targets.shape)
            counted = (targets != -100)
            for b, i in enumerate(batch):
                out[i] = (float(nll[b][counted[b]].sum()), int(counted[b].sum()))
    return out


# --- bootstrap --------------------------------------------------------------------------------------

def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float | None, float | None]:
    """The Wilson score interval of a proportion (95% by default): sound for small n and rates
    near 0 or 1, where the normal approximation is not."""
    if n == 0:
        return None, None
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * ((p * (1 - p) / n + z * z / (4 * n * n)) ** 0.5) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def bootstrap_indices(n: int, resamples: int, seed: int) -> np.ndarray:
    """(resamples, n) example indices drawn with replacement, seeded: shared by every statistic,
    so the intervals of one model's metrics (and of two models on the same examples) are paired."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, n, size=(resamples, n)) if n else np.zeros((resamples, 0), dtype=int)


def interval(statistic: Callable[[np.ndarray], float], indices: np.ndarray, n: int,
             confidence: float = 0.95) -> dict[str, Any]:
    """The statistic on all n examples, with a percentile bootstrap interval."""
    if n == 0:
        return {"value": None, "low": None, "high": None}
    value = statistic(np.arange(n))
    draws = np.array([statistic(row) for row in indices], dtype=float)
    draws = draws[~np.isnan(draws)]
    if not len(draws):
        return {"value": value, "low": None, "high": None}
    tail = (1 - confidence) / 2 * 100
    return {"value": value, "low": float(np.percentile(draws, tail)), "high": float(np.percentile(draws, 100 - tail))}


def mean_of(values: Sequence[float | None]) -> Callable[[np.ndarray], float]:
    """Mean over the resampled examples, skipping missing values (NaN when all are missing)."""
    arr = np.array([np.nan if v is None else v for v in values], dtype=float)

    def statistic(idx: np.ndarray) -> float:
        picked = arr[idx]
        picked = picked[~np.isnan(picked)]
        return float(picked.mean()) if len(picked) else float("nan")

    return statistic


def corpus_bleu_of(stats: Sequence[BleuStats]) -> Callable[[np.ndarray], float]:
    table = np.array([s.as_list() for s in stats], dtype=np.int64)

    def statistic(idx: np.ndarray) -> float:
        if not len(idx):
            return float("nan")
        return corpus_bleu_from_stats([BleuStats.from_list(table[idx].sum(axis=0).tolist())])

    return statistic


def corpus_perplexity_of(nll: Sequence[float | None], tokens: Sequence[int | None]) -> Callable[[np.ndarray], float]:
    nll_arr = np.array([0.0 if v is None else v for v in nll], dtype=float)
    tok_arr = np.array([0 if v is None else v for v in tokens], dtype=float)

    def statistic(idx: np.ndarray) -> float:
        total = tok_arr[idx].sum()
        return float(math.exp(nll_arr[idx].sum() / total)) if total else float("nan")

    return statistic
