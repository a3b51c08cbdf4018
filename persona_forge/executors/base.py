"""The small interface the stages call, whatever runs the work.

- `map_batches(items, make_worker, batch_size)`: `make_worker()` builds a function (loading its model
  once) that maps a list of items to as many results; the results come back in input order.
- `nli_probs(pairs, nli_config)`: (n, 3) NLI probabilities, row i for pairs[i].
- `encode(texts, model_spec, batch_size)`: normalised float32 sentence embeddings, row i for texts[i].
- `nli(nli_config, model_or_loader)`: the NLI model a stage should call `.predict` on.

Workers are described by small picklable factories (below) so a remote executor can ship them.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..config import NLIConfig
from ..nli.base import NLIModel, Pair, ProgressFn

Worker = Callable[[list], Sequence]


class Executor(abc.ABC):
    kind: str = "abstract"

    @abc.abstractmethod
    def map_batches(self, items: Sequence[Any], make_worker: Callable[[], Worker], batch_size: int) -> list:
        """worker(items[i:i+batch_size]) for every batch, results flattened in input order."""

    @abc.abstractmethod
    def nli_probs(self, pairs: Sequence[Pair], nli_config: NLIConfig) -> np.ndarray:
        """(n, 3) probabilities in LABELS order for (premise, hypothesis) pairs."""

    @abc.abstractmethod
    def encode(self, texts: Sequence[str], model_spec: str, batch_size: int = 64) -> np.ndarray:
        """Normalised float32 embeddings of `texts`, in order."""

    def nli(self, nli_config: NLIConfig, model: Any) -> Any:
        """The NLI a stage calls: `model` (a model or a loader) itself here; a remote executor
        returns a stand-in whose predict runs on its workers."""
        return model

    def describe(self) -> dict[str, Any]:
        """What the manifests record."""
        return {"kind": self.kind}


@dataclass(frozen=True)
class NLIWorker:
    """Loads the recipe's NLI once (threads: this worker's CPUs) and predicts lists of pairs."""

    config: NLIConfig

    def __call__(self) -> Worker:
        from ..nli.base import load_nli

        model = load_nli(self.config, progress=False)
        return lambda pairs: model.predict([tuple(p) for p in pairs])


@dataclass(frozen=True)
class EncodeWorker:
    """Loads a SentenceTransformer once and encodes lists of texts (normalised float32)."""

    spec: str
    batch_size: int = 64
    threads: int | None = None

    def __call__(self) -> Worker:
        from ..hardware import set_torch_threads
        from ..models import sentence_transformer

        set_torch_threads(self.threads)
        model = sentence_transformer(self.spec)

        def encode(texts: list) -> np.ndarray:
            return np.ascontiguousarray(model.encode(list(texts), batch_size=self.batch_size, normalize_embeddings=True,
                                                     convert_to_numpy=True, show_progress_bar=False), dtype=np.float32)

        return encode


class ExecutorNLI(NLIModel):
    """An NLI model whose predictions run on an executor's workers; the driver never loads it."""

    name = "executor"

    def __init__(self, executor: Executor, config: NLIConfig, describe: Callable[[], str]):
        self.executor, self.config, self._describe = executor, config, describe

    def describe(self) -> str:
        return self._describe()  # asked only once there is something to judge, as a local model is loaded

    def predict(self, pairs: Sequence[Pair], progress: ProgressFn | None = None) -> np.ndarray:
        probs = self.executor.nli_probs(list(pairs), self.config)
        if progress:
            progress(len(pairs))
        return probs


def stack(parts: list, width: int) -> np.ndarray:
    """Worker outputs (arrays, or lists of rows) as one float32 array of `width` columns."""
    parts = [np.asarray(p, dtype=np.float32).reshape(-1, width) for p in parts if len(p)]
    return np.concatenate(parts) if parts else np.zeros((0, width), dtype=np.float32)
