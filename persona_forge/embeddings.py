"""Sentence embeddings, shared by every stage that needs them (personas, pairing, curate, generate's prefilter).

In: texts; out: normalised float32 vectors (one row per text), from a sentence-transformers model
loaded once per process (models.sentence_transformer caches it). `Encoder` shows a progress bar
and times itself (pairing, curate); `Embedder` is the plain callable texts -> vectors (personas,
the critic's prefilter). `VectorCache` keeps vectors in the run directory, keyed by hash(model, text),
so a re-run embeds only what is new.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import ui
from .schema import record_id
from .store import atomic_open, atomic_write_json

Embed = Callable[[Sequence[str]], np.ndarray]


class Encoder:
    """A sentence-transformers model, loaded on first use; normalised float32 vectors out."""

    def __init__(self, spec: str, batch_size: int = 64, executor=None):
        self.spec = spec
        self.batch_size = batch_size
        self.executor = executor  # a remote executor (executors/) encodes on its workers instead
        self.seconds = 0.0  # time spent encoding, without loading: the embedding rate's denominator

    def encode(self, texts: list[str], label: str) -> np.ndarray:
        if not texts:
            return np.zeros((0, 0), dtype=np.float32)
        if self.executor is not None and self.executor.kind != "local":
            return self._encode_on(self.executor, texts, label)
        from .models import sentence_transformer

        model = sentence_transformer(self.spec)
        started = time.time()
        chunk = max(self.batch_size, 1024)  # our own progress bar, advanced per chunk
        parts = []
        with ui.progress(label, total=len(texts)) as advance:
            for start in range(0, len(texts), chunk):
                batch = texts[start:start + chunk]
                parts.append(model.encode(batch, batch_size=self.batch_size, normalize_embeddings=True,
                                          convert_to_numpy=True, show_progress_bar=False))
                advance(len(batch))
        self.seconds += time.time() - started
        return np.ascontiguousarray(np.concatenate(parts), dtype=np.float32)

    def _encode_on(self, executor, texts: list[str], label: str) -> np.ndarray:
        started = time.time()
        with ui.progress(label, total=len(texts)) as advance:
            vectors = executor.encode(texts, self.spec, self.batch_size)  # one fan-out: actors load once
            advance(len(texts))
        self.seconds += time.time() - started
        return vectors


class Embedder:
    """Normalised sentence embeddings from a SentenceTransformer model, loaded on first use: texts -> vectors."""

    def __init__(self, spec: str = "packaged:minilm-l6", batch_size: int = 64, threads: int | None = None,
                 executor=None):
        self.spec = spec
        self.batch_size = batch_size
        self.threads = threads
        self.executor = executor  # a remote executor (executors/) encodes on its workers instead

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, 1), dtype=np.float32)
        if self.executor is not None and self.executor.kind != "local":
            return self.executor.encode(list(texts), self.spec, self.batch_size)
        model = self._load()
        emb = model.encode(list(texts), batch_size=self.batch_size, normalize_embeddings=True,
                           convert_to_numpy=True, show_progress_bar=False)
        return np.ascontiguousarray(emb, dtype=np.float32)

    def _load(self):
        from .hardware import set_torch_threads
        from .models import sentence_transformer

        set_torch_threads(self.threads)
        return sentence_transformer(self.spec)


@dataclass
class VectorCache:
    """Vectors keyed by hash(model, text), stored as <name>.npy plus <name>.json: the keys in row
    order and a label for each row (`label_name`: the profile ids, or the attribute texts)."""

    folder: Path
    name: str
    label_name: str
    vectors: dict[str, np.ndarray] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    stored: list[str] = field(default_factory=list)  # the keys in file order

    def load(self) -> "VectorCache":
        npy, meta = self.folder / f"{self.name}.npy", self.folder / f"{self.name}.json"
        with contextlib.suppress(OSError, ValueError, KeyError):
            stored = json.loads(meta.read_text(encoding="utf-8"))
            keys, labels = stored["keys"], stored[self.label_name]
            array = np.load(npy)
            # A kill between the two writes leaves them out of step: then the cache is ignored.
            if len(keys) == len(array) == len(labels):
                self.vectors, self.labels, self.stored = dict(zip(keys, array)), dict(zip(keys, labels)), keys
        return self

    def save(self, keys: list[str], model: str) -> None:
        array = np.stack([self.vectors[k] for k in keys]) if keys else np.zeros((0, 0), np.float32)
        _atomic_save_npy(self.folder / f"{self.name}.npy", array)
        atomic_write_json(self.folder / f"{self.name}.json",
                          {"model": model, "keys": keys, self.label_name: [self.labels[k] for k in keys]})


def _atomic_save_npy(path: Path, array: np.ndarray) -> None:
    with atomic_open(path, "wb") as fh:
        np.save(fh, array)


def cached_embeddings(texts: list[str], labels: list[str], encoder: Encoder, cache: VectorCache,
                      what: str, keep_old: bool = False) -> tuple[np.ndarray, int]:
    """Vectors for `texts` (in order), embedding only those the cache lacks; returns (vectors, newly embedded)."""
    keys = [record_id(encoder.spec, t) for t in texts]
    missing = list(dict.fromkeys(k_t for k_t in zip(keys, texts) if k_t[0] not in cache.vectors))
    if missing:
        fresh = encoder.encode([t for _, t in missing], f"embedding {what}")
        cache.vectors.update(zip([k for k, _ in missing], fresh))
    cache.labels.update(zip(keys, labels))
    if keep_old and missing:  # attribute vectors from earlier pairings stay useful to later ones
        cache.save(list(cache.vectors), encoder.spec)
    elif not keep_old and (missing or cache.stored != keys):  # the file mirrors the profiles, in order
        cache.save(keys, encoder.spec)
    return np.stack([cache.vectors[k] for k in keys]).astype(np.float32), len(missing)


def set_threads(threads: int | None) -> int:
    """torch and FAISS threads: explicit, else the usable cores."""
    import faiss

    from .hardware import set_torch_threads

    n = set_torch_threads(threads)
    faiss.omp_set_num_threads(n)
    return n


def describe_model(spec: str) -> str:
    from .models import resolve

    return resolve(spec).describe()
