"""What a stage is handed and what it hands back: the contract between the stages and whoever runs them.

A stage is given its own config section, the shared things it needs (a chat backend, the NLI, the
sentence encoder) and a `StageContext` (where, whether to redo, whether to draw progress). It hands
back a `StageResult`: typed figures that the CLI prints, the pipeline collects and the report reads,
instead of a dict of display strings.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .config import Recipe

FAILED = "failed (re-run to retry)"  # the summary row of requests that failed after retries (a re-run retries them)


@dataclass(frozen=True)
class StageContext:
    run_dir: Path
    force: bool = False      # redo a stage whose config or input changed (old outputs go to .trash/)
    progress: bool = True    # progress bars on the terminal
    executor: Any = None     # where per-record model work fans out (executors/); None: in this process

    @classmethod
    def for_recipe(cls, recipe: Recipe, force: bool = False, progress: bool = True) -> "StageContext":
        """The context a recipe's stages run in: its run directory and the executor it asks for."""
        from . import executors

        return cls(Path(recipe.run_dir), force, progress, executors.get(recipe.executor))


@dataclass
class StageResult:
    stage: str                                          # the stage's name, as in its manifest
    summary: dict[str, Any]                             # the rows `forge <stage>` prints
    counts: dict[str, int] = field(default_factory=dict)       # from the stage's manifest
    figures: dict[str, Any] = field(default_factory=dict)      # from the stage's manifest
    outputs: list[Path] = field(default_factory=list)          # what it wrote, in the run directory
    failed: int = 0                                     # requests that failed after retries (a re-run retries them)
    data: dict[str, Any] | None = None                  # eval's metrics.json, judge's judge.json

    @property
    def ok(self) -> bool:
        return not self.failed

    @classmethod
    def read(cls, stage: str, summary: dict[str, Any], run_dir: Path, outputs: Sequence[str], failed: int = 0,
             data: dict[str, Any] | None = None, manifest_dir: Path | None = None) -> "StageResult":
        """The result of a stage that has written its manifest: counts and figures read from it."""
        from .store import RunDir

        manifest = RunDir(manifest_dir or run_dir).manifest(stage)
        return cls(stage=stage, summary=summary, counts=dict(manifest.counts) if manifest else {},
                   figures=dict(manifest.figures) if manifest else {},
                   outputs=[Path(run_dir) / name for name in outputs], failed=failed, data=data)
