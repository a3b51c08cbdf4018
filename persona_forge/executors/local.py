"""In this process, exactly as the stages ran before executors existed: no Ray, no copies."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ..config import NLIConfig
from ..nli.base import Pair
from .base import EncodeWorker, Executor, NLIWorker, Worker


class LocalExecutor(Executor):
    kind = "local"

    def __init__(self) -> None:
        self._workers: dict[Any, Worker] = {}

    def _worker(self, make_worker: Callable[[], Worker]) -> Worker:
        if not dataclasses.is_dataclass(make_worker):  # only described factories are kept for reuse
            return make_worker()
        key = repr(make_worker)
        if key not in self._workers:
            self._workers[key] = make_worker()
        return self._workers[key]

    def map_batches(self, items: Sequence[Any], make_worker: Callable[[], Worker], batch_size: int) -> list:
        if not items:
            return []
        worker = self._worker(make_worker)
        out: list = []
        for start in range(0, len(items), batch_size):
            out.extend(worker(list(items[start:start + batch_size])))
        return out

    def nli_probs(self, pairs: Sequence[Pair], nli_config: NLIConfig) -> np.ndarray:
        if not pairs:
            return np.zeros((0, 3), dtype=np.float32)
        return np.asarray(self._worker(NLIWorker(nli_config))(list(pairs)), dtype=np.float32)

    def encode(self, texts: Sequence[str], model_spec: str, batch_size: int = 64) -> np.ndarray:
        if not texts:
            return np.zeros((0, 0), dtype=np.float32)
        return self._worker(EncodeWorker(model_spec, batch_size))(list(texts))
