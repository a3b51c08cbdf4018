"""Ray: a pool of actors that each load their model once and keep it for the whole run.

The driver cuts the work into chunks, hands them to the actor pool (ray.util.ActorPool, results in
input order) and puts the results back in input order. Workers only compute: the driver alone
writes the run directory, so a worker killed mid-chunk is restarted and its chunk retried by Ray
(actors with max_restarts / max_task_retries -1) without a record written twice.

The pool outlives the call: the critic calls the NLI once per chunk of pairs, and a pool per call
(Ray Data's ActorPoolStrategy, the first version of this module) paid for starting the actors and
loading the model in each on every call, about 22 s on a 2-core machine. One pool is kept alive at
a time: a call for another model (the encoder after the NLI) retires the previous pool first, so its
CPUs are free for the new actors on a small cluster.

Cluster: `executor.address`, else $RAY_ADDRESS, else a Ray started here with a small object store.
NLI chunks are cut from the pairs sorted by token length, in multiples of nli.batch_size, so every
actor runs exactly the forward passes the local executor would: the probabilities are the same.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from .. import ui
from ..config import ExecutorConfig, NLIConfig
from ..errors import UserError
from ..nli.base import Pair, _text
from .base import EncodeWorker, Executor, ExecutorNLI, NLIWorker, Worker, stack

INSTALL_HINT = "executor ray needs `pip install persona_forge[ray]`"
# The one live actor pool of this process, shared by every RayExecutor in it (two pools would each
# hold CPUs the other's actors wait for on a small cluster): (key, actors).
_POOL: dict[str, Any] = {}


def _import_ray():
    try:
        import ray
        import ray.util  # noqa: F401 - ActorPool
    except ImportError as exc:
        raise UserError(f"{INSTALL_HINT} ({exc}); or set executor.kind: local") from None
    return ray


class _ChunkActor:
    """One Ray actor: builds its worker once (loads the model), then maps one chunk per call."""

    def __init__(self, make_worker: Callable[[], Worker]):
        self.worker = make_worker()

    def run(self, chunk: list) -> Any:
        return _as_rows(self.worker(chunk))


def _as_rows(result: Any) -> Any:
    return result if isinstance(result, np.ndarray) else list(result)


class RayExecutor(Executor):
    kind = "ray"

    def __init__(self, config: ExecutorConfig):
        self.config = config
        self.ray = _import_ray()
        self.address = config.address or os.environ.get("RAY_ADDRESS") or None
        self.started_here = False
        self._tokenizers: dict[str, Any] = {}
        self._connect()

    def _connect(self) -> None:
        ray = self.ray
        if not ray.is_initialized():
            kwargs: dict[str, Any] = {"ignore_reinit_error": True, "log_to_driver": ui.verbosity() > 0,
                                      "include_dashboard": False, "logging_level": logging.WARNING}
            if self.address is None:
                kwargs["object_store_memory"] = self.config.object_store_mb * 1024 * 1024
                self.started_here = True
            try:
                ray.init(address=self.address, **kwargs)
            except Exception as exc:  # noqa: BLE001 - any start/connect failure is the user's to fix
                where = f"the Ray cluster at {self.address}" if self.address else "a local Ray"
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise UserError(f"executor ray: could not start or join {where} ({first}); check RAY_ADDRESS / "
                                f"executor.address (`ray status` there), or set executor.kind: local") from None

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "address": self.address or "local", "actors": self.config.actors,
                "cpus_per_actor": self.config.cpus_per_actor}

    # --- the generic fan-out ---

    def map_chunks(self, chunks: list[list], make_worker: Callable[[], Worker]) -> list:
        """worker(chunk) for every chunk on the actor pool; one result per chunk, in order."""
        if not chunks:
            return []
        from ray.util import ActorPool

        actors = self._actors(make_worker, min(self.config.actors, len(chunks)))
        # Actors are made with max_restarts=-1 and max_task_retries=-1: a dead actor is restarted
        # (its worker rebuilt) and its chunk retried (tests/test_executor_ray.py kills one).
        return list(ActorPool(actors).map(lambda actor, chunk: actor.run.remote(chunk), chunks))

    def _actors(self, make_worker: Callable[[], Worker], n: int) -> list:
        """n live actors holding make_worker's worker: the kept pool when it holds the same worker
        and is large enough, else a new pool (the old one retired first, freeing its CPUs)."""
        from ray import cloudpickle

        # The job id: a pool from an earlier ray.init of this process is gone with it.
        key = cloudpickle.dumps((make_worker, self.config.cpus_per_actor, self.ray.get_runtime_context().get_job_id()))
        if _POOL.get("key") == key and len(_POOL["actors"]) >= n:
            return _POOL["actors"][:n]
        self.close()
        remote = self.ray.remote(num_cpus=self.config.cpus_per_actor, max_restarts=-1,
                                 max_task_retries=-1)(_ChunkActor)
        actors = [remote.remote(make_worker) for _ in range(max(n, self.config.actors))]
        _POOL.update(key=key, actors=actors)
        return actors[:n]

    def close(self) -> None:
        """Retire the live actor pool (its models and CPUs)."""
        for actor in _POOL.get("actors", []):
            try:
                self.ray.kill(actor)
            except Exception:  # noqa: BLE001 - Ray already shut down: nothing left to free
                pass
        _POOL.clear()

    def map_batches(self, items: Sequence[Any], make_worker: Callable[[], Worker], batch_size: int) -> list:
        chunks = [list(items[s:s + batch_size]) for s in range(0, len(items), batch_size)]
        return [row for part in self.map_chunks(chunks, make_worker) for row in part]

    # --- NLI and embeddings ---

    def _threads(self) -> int:
        return max(1, int(self.config.cpus_per_actor))

    def nli(self, nli_config: NLIConfig, model: Any) -> Any:
        if nli_config.kind == "llm":  # request-bound: the chat backend's own concurrency serves it
            return model
        # The manifest names the same model as a local run does.
        return ExecutorNLI(self, nli_config, lambda: _nli_description(nli_config))

    def nli_probs(self, pairs: Sequence[Pair], nli_config: NLIConfig) -> np.ndarray:
        pairs = [(_text(p), _text(h)) for p, h in pairs]
        if not pairs:
            return np.zeros((0, 3), dtype=np.float32)
        if nli_config.threads is None:
            nli_config = nli_config.model_copy(update={"threads": self._threads()})
        order = self._length_order(pairs, nli_config)
        per = nli_config.batch_size
        chunk = max(per, self.config.batch_size // per * per)
        chunks = [[pairs[i] for i in order[s:s + chunk]] for s in range(0, len(order), chunk)]
        probs = np.zeros((len(pairs), 3), dtype=np.float32)
        probs[order] = stack(self.map_chunks(chunks, NLIWorker(nli_config)), 3)
        return probs

    def _length_order(self, pairs: list[Pair], nli_config: NLIConfig) -> list[int]:
        """The order CrossEncoderNLI.predict sorts pairs into (by token length, stable)."""
        path = _nli_path(nli_config)
        if path not in self._tokenizers:
            from transformers import AutoTokenizer

            self._tokenizers[path] = AutoTokenizer.from_pretrained(path)
        tokenizer = self._tokenizers[path]
        encoded = tokenizer([p for p, _ in pairs], [h for _, h in pairs], add_special_tokens=True,
                            truncation=False, verbose=False)
        lengths = [len(ids) for ids in encoded["input_ids"]]
        return sorted(range(len(pairs)), key=lambda i: lengths[i])

    def encode(self, texts: Sequence[str], model_spec: str, batch_size: int = 64) -> np.ndarray:
        if not texts:
            return np.zeros((0, 0), dtype=np.float32)
        chunks = [list(texts[s:s + self.config.batch_size]) for s in range(0, len(texts), self.config.batch_size)]
        parts = self.map_chunks(chunks, EncodeWorker(model_spec, batch_size, self._threads()))
        return np.ascontiguousarray(np.concatenate(parts), dtype=np.float32)


def _nli_path(config: NLIConfig) -> str:
    """The folder (or hub name) load_nli reads for a cross-encoder NLI config."""
    if config.kind == "hf":
        from ..models import hub_model_path, resolve

        if not config.model:
            raise UserError("nli.kind: hf needs nli.model: a local folder or hub name of an NLI checkpoint")
        source = resolve(config.model)
        return hub_model_path(source.name) if source.kind == "hub" else source.name
    from ..nli.train import ensure_embedded

    return str(ensure_embedded(progress=ui.verbosity() >= 0))


def _nli_description(config: NLIConfig) -> str:
    """What load_nli's model would call itself, without loading it on the driver."""
    if config.kind == "hf":
        return f"hf:{config.model}"
    from pathlib import Path

    return f"embedded ({Path(_nli_path(config)).name})"
