"""`forge train --backend openai`: fine-tune a hosted model on the curated OpenAI JSONL.

In:  <run_dir>/curated/openai.jsonl (or --data FILE): rows {"messages": [...]}, OpenAI's chat
     fine-tuning format; the recipe's backend (base_url, api_key_env) and model (train.model, else
     backend.model).
Out: <run_dir>/train/<name>/ (name: train.name, else "openai"): train.manifest.json with the uploaded
     file's id, the job's id and status, and the fine-tuned model's name (figures.fine_tuned_model);
     log.jsonl with every status change and event seen while polling.

Resumable: the file and job ids are saved as soon as they exist, so a re-run (after a kill, a
network error or a polling timeout) polls the recorded job instead of starting another.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from .. import layout, ui
from ..config import BackendConfig, TrainConfig, redact_url
from ..contract import StageContext, StageResult
from ..errors import UserError
from ..store import RunDir, file_sha256, iter_json_lines
from .train import ROLES, STAGE

TERMINAL = ("succeeded", "failed", "cancelled")


def out_dir(run_dir: Path, cfg: TrainConfig) -> Path:
    return layout.train_dir(run_dir, cfg.name or "openai")


def check_data(path: Path) -> int:
    """The number of examples; a row that is not {"messages": [...]} with an assistant turn is a UserError."""
    n = 0
    for line_no, row in iter_json_lines(path):
        messages = row.get("messages") if isinstance(row, dict) else None
        if not isinstance(messages, list) or not messages or not all(
                isinstance(m, dict) and m.get("role") in ROLES and isinstance(m.get("content"), str)
                for m in messages):
            raise UserError(f"{path}:{line_no}: not an OpenAI fine-tuning row "
                            f"{{\"messages\": [{{\"role\": ..., \"content\": ...}}, ...]}}")
        if not any(m["role"] == "assistant" for m in messages):
            raise UserError(f"{path}:{line_no}: no assistant message to learn from")
        n += 1
    if n == 0:
        raise UserError(f"{path}: no examples in it; run forge curate first or give --data FILE")
    return n


def _client(backend: BackendConfig):
    from openai import OpenAI

    from ..backends.openai_compat import read_key

    return OpenAI(api_key=read_key(backend), base_url=backend.base_url, timeout=backend.timeout_s,
                  max_retries=backend.max_retries)


def run(cfg: TrainConfig, context: StageContext, backend: BackendConfig, sleep=time.sleep) -> StageResult:
    """Start (or poll) the hosted fine-tuning job at the endpoint `backend` names."""
    rows = _job(cfg, context.run_dir, backend, context.force, context.progress, sleep)
    return StageResult.read(STAGE, rows, context.run_dir, [str(out_dir(context.run_dir, cfg).relative_to(
        context.run_dir))], manifest_dir=out_dir(context.run_dir, cfg))


def _job(cfg: TrainConfig, run_dir: Path, backend: BackendConfig, force: bool, progress: bool,
         sleep) -> dict[str, Any]:
    if backend.kind != "openai":
        raise UserError("forge train --backend openai needs an OpenAI-compatible backend: set backend.kind: openai "
                        "(and backend.base_url unless it is api.openai.com) in the recipe")
    model = cfg.model or backend.model
    if model.startswith("packaged:") or Path(model).expanduser().exists():
        raise UserError(f"'{model}' is a local model; give the hosted base model to fine-tune, e.g. "
                        f"--model gpt-4o-mini-2024-07-18 (or train.model in the recipe)")
    data = Path(cfg.data) if cfg.data else Path(run_dir) / layout.training_file("openai")
    examples = check_data(data)
    folder = out_dir(run_dir, cfg)
    config = {"train": {"backend": "openai", "base_url": redact_url(backend.base_url), "model": model,
                        "suffix": cfg.openai.suffix, "n_epochs": cfg.openai.n_epochs, "seed": cfg.seed}}
    rundir = RunDir(folder)
    previous = rundir.manifest(STAGE)
    changed = rundir.check(STAGE, config, [data], force)
    stage = rundir.begin(STAGE, config, [data], ["log.jsonl"], force)
    figures = stage.manifest.figures
    restart = force and previous is not None and previous.figures.get("status") in ("failed", "cancelled")
    if previous is not None and not changed and not restart:
        figures.update(previous.figures)  # the file and job ids of the run before: poll, do not restart
    stage.set_count("examples", examples)
    stage.record_model("base", model)
    client = _client(backend)
    try:
        return _run(client, cfg, stage, figures, data, model, folder, progress, sleep)
    except UserError:
        raise
    except Exception as exc:  # the openai client's errors: one line, the key never in it
        name = type(exc).__name__
        if name in ("APIConnectionError", "APITimeoutError"):
            raise UserError(f"cannot reach {redact_url(backend.base_url) or 'the OpenAI API'} ({name}); check backend.base_url "
                            f"and the network, then re-run (a started job is polled, not restarted)") from None
        status = getattr(exc, "status_code", None)
        if status is not None:
            message = _redact(str(getattr(exc, "message", exc)), backend.api_key_env)
            hint = f"check the key in ${backend.api_key_env}" if status in (401, 403) else "re-run to retry"
            raise UserError(f"the fine-tuning API said {status}: {message} ({hint})") from None
        raise


def _redact(text: str, env: str) -> str:
    key = os.environ.get(env)
    return text.replace(key, "***") if key else text


def _run(client, train: TrainConfig, stage, figures: dict, data: Path, model: str, folder: Path,
         progress: bool, sleep) -> dict[str, Any]:
    cfg = train.openai
    log_path = folder / "log.jsonl"
    digest = file_sha256(data)
    if figures.get("status") == "succeeded" and figures.get("fine_tuned_model"):
        stage.finish()
        return _summary(figures, "already finished")
    if figures.get("status") in TERMINAL:
        _failed(figures)
    if not figures.get("file_id") or figures.get("data_sha256") != digest:
        uploaded = client.files.create(file=(data.name, data.read_bytes()), purpose="fine-tune")
        figures.update(file_id=uploaded.id, data_sha256=digest)
        stage.save()
        _log(log_path, {"event": "uploaded", "file_id": uploaded.id, "bytes": data.stat().st_size})
    resumed = bool(figures.get("job_id"))
    if not resumed:
        kwargs: dict[str, Any] = {"model": model, "training_file": figures["file_id"], "seed": train.seed}
        if cfg.suffix:
            kwargs["suffix"] = cfg.suffix
        if cfg.n_epochs:
            kwargs["method"] = {"type": "supervised",
                                "supervised": {"hyperparameters": {"n_epochs": cfg.n_epochs}}}
        job = client.fine_tuning.jobs.create(**kwargs)
        figures.update(job_id=job.id, status=job.status)
        stage.save()
        _log(log_path, {"event": "created", "job_id": job.id, "status": job.status})
    else:
        ui.info(f"polling the job started before: {figures['job_id']}")
    started = time.time()
    status = figures.get("status")
    with ui.console.status(f"fine-tuning job {figures['job_id']}: {status}") as spinner:
        while True:
            job = client.fine_tuning.jobs.retrieve(figures["job_id"])
            if job.status != status:
                status = job.status
                figures["status"] = status
                stage.save()
                _log(log_path, {"event": "status", "status": status, "trained_tokens": job.trained_tokens})
            spinner.update(f"fine-tuning job {job.id}: {status} ({time.time() - started:.0f}s)")
            if status in TERMINAL:
                break
            if time.time() - started > cfg.timeout_s:
                raise UserError(f"job {job.id} is still {status} after {cfg.timeout_s:.0f}s; run the same command "
                                f"again to keep polling it")
            sleep(cfg.poll_s)
    figures.update(fine_tuned_model=job.fine_tuned_model, trained_tokens=job.trained_tokens,
                   poll_seconds=round(time.time() - started, 1))
    if status != "succeeded":
        error = getattr(job, "error", None)
        figures["error"] = getattr(error, "message", None) or "no reason given"
        stage.save()
        _failed(figures)
    manifest = stage.finish()
    return _summary(manifest.figures, "succeeded" + (" (resumed)" if resumed else ""))


def _failed(figures: dict[str, Any]) -> None:
    raise UserError(f"fine-tuning job {figures['job_id']} {figures['status']}: {figures.get('error') or 'no reason given'}; "
                    f"fix the cause and re-run with --force to start a new job")


def _log(path: Path, row: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps({"time": round(time.time(), 3), **row}) + "\n")


def _summary(figures: dict[str, Any], status: str) -> dict[str, Any]:
    rows = {"status": status, "job": figures.get("job_id"), "training file": figures.get("file_id"),
            "fine-tuned model": figures.get("fine_tuned_model")}
    if figures.get("trained_tokens"):
        rows["trained tokens"] = figures["trained_tokens"]
    return rows
