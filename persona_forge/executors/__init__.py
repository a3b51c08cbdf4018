"""How per-record heavy work (NLI, sentence embeddings) is fanned out: in this process (`local`,
the default, no Ray needed) or over a Ray cluster (`ray`, `pip install persona_forge[ray]`).

Stages ask `get(recipe.executor)` and call its small interface (executors/base.py); only the
driver reads and writes the run directory, workers only compute.
"""

from __future__ import annotations

from ..config import ExecutorConfig
from .base import Executor
from .local import LocalExecutor

_LOCAL = LocalExecutor()
_OPEN: dict[str, Executor] = {}


def get(config: ExecutorConfig | None = None) -> Executor:
    """The executor a recipe asks for, opened once per process (a Ray connection is reused)."""
    if config is None or config.kind == "local":
        return _LOCAL
    key = config.model_dump_json()
    if key not in _OPEN:
        from .ray import RayExecutor  # the only place Ray is reached: never with executor.kind local

        _OPEN[key] = RayExecutor(config)
    return _OPEN[key]


__all__ = ["Executor", "LocalExecutor", "get"]
