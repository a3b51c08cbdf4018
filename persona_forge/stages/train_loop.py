"""The run around a trl trainer for the RLHF methods of `forge train` (reward, rloo): the same
resume / refusal / --force / log.jsonl / loss.png / manifest behaviour as SFT and DPO, built from
train.py's own pieces (RunDir, train_resuming, the log writer, the loss plot).
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import TrainConfig
from ..store import RunDir
from . import train as T


@dataclass
class Job:
    """What a method adds to the shared run."""

    inputs: list[Path]                                   # hashed into the manifest; a change is refused
    prepare: Callable[[], Any]                           # read and check the inputs (before anything is written)
    build: Callable[[Any, Any, Path], tuple[Any, Any]]   # (prepared, stage, checkpoints) -> (trainer, tokenizer)
    finish: Callable[[Any, list[dict], Path], dict[str, Any]]  # (trainer, history, folder) -> extra figures
    title: str
    counts: dict[str, int] = field(default_factory=dict)
    summary_keys: Sequence[tuple[str, str]] = ()


def run_job(cfg: TrainConfig, run_dir: Path, spec: str, seed: int, job: Job, force: bool, progress: bool,
            callbacks: Sequence[Any]) -> dict[str, Any]:
    """Train `spec` (the base model) as `job` says in <run_dir>/train/<name>/; `seed`: the recipe's
    global seed, in the config hash as for SFT and DPO. Returns the summary rows."""
    folder = T.out_dir(run_dir, cfg)
    rundir = RunDir(folder)
    config = T.stage_config(cfg, spec, seed)
    previous = rundir.manifest(T.STAGE)
    changed = rundir.check(T.STAGE, config, job.inputs, force)
    if previous is not None and previous.status == "done" and not changed \
            and (folder / "adapter" / "adapter_config.json").is_file():
        return summary(folder, previous.figures, "already trained (same config and data)", job.summary_keys)

    started = time.time()
    prepared = job.prepare()
    stage = rundir.begin(T.STAGE, config, job.inputs, T.OUTPUTS, force)
    threads = T.prepare_process(cfg.threads, cfg.seed)
    stage.record_model("base", spec)
    if cfg.adapter is not None:
        stage.record_model("start_adapter", str(cfg.adapter))
    checkpoints = folder / "checkpoints"
    trainer, tokenizer = job.build(prepared, stage, checkpoints)
    for key, n in job.counts.items():
        stage.set_count(key, n)
    stage.save()

    log_path = folder / "log.jsonl"
    resume, steps_this_run, train_seconds = T.train_resuming(trainer, checkpoints, log_path, progress, callbacks)
    state = trainer.state
    history = list(state.log_history)
    extra = job.finish(trainer, history, folder)  # may add rows (e.g. a final evaluation) to the history
    T._write_log(log_path, history)
    T.plot_loss(history, folder / "loss.png", job.title)

    adapter, tmp = folder / "adapter", folder / ".adapter.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    trainer.model.save_pretrained(str(tmp), selected_adapters=["default"])
    tokenizer.save_pretrained(str(tmp))
    shutil.rmtree(adapter, ignore_errors=True)
    os.replace(tmp, adapter)

    losses = [row["loss"] for row in history if "loss" in row]
    figures = {
        "steps": state.global_step, "steps_this_run": steps_this_run,
        "resumed_from": resume.name if resume else None, "epochs": round(float(state.epoch or 0), 3),
        "s_per_step": round(train_seconds / steps_this_run, 3) if steps_this_run else None,
        "train_seconds": round(train_seconds, 1), "total_seconds": round(time.time() - started, 1),
        "peak_rss_mb": T.peak_rss_mb(), "first_loss": losses[0] if losses else None,
        "final_loss": losses[-1] if losses else None, "threads": threads,
        "trainable_parameters": T._trainable(trainer.model), **extra,
    }
    manifest = stage.finish(**figures)
    return summary(folder, manifest.figures, "trained", job.summary_keys)


def summary(folder: Path, figures: dict[str, Any], status: str, keys: Sequence[tuple[str, str]]) -> dict[str, Any]:
    rows = T._summary(folder, figures, status)
    for key, label in keys:
        if figures.get(key) is not None:
            rows[label] = figures[key]
    return rows
