"""`forge complete`: send a JSONL of prompts to the configured chat backend, resumably.

In:  a JSONL file, each line {"prompt": "..."} or {"messages": [{"role", "content"}, ...]},
     optionally with "id" and "system".
Out: <run_dir>/complete.jsonl (CompletionRecord, one per prompt, written as each finishes),
     complete.manifest.json. Failed requests are not written: a re-run tries them again.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..backends import ChatBackend, ChatRequest
from ..config import BackendConfig, CompleteConfig
from ..contract import FAILED, StageContext, StageResult
from ..errors import UserError
from ..schema import ChatMessage, CompletionRecord, Provenance, Usage, record_id
from ..store import JsonlStore, RunDir, iter_jsonl
from .. import layout, ui

STAGE = "complete"
INPUTS = ()  # complete.input
OUTPUTS = (layout.COMPLETIONS,)


def load_prompts(path: Path, seed: int) -> list[tuple[str, ChatRequest, list[ChatMessage]]]:
    """Parse the prompt file into (id, request, messages); a bad line is one clear error."""
    prompts = []
    seen: set[str] = set()
    for line_no, row in enumerate(iter_jsonl(path), start=1):
        messages = _messages(row, path, line_no)
        rid = _given_id(row, path, line_no) if "id" in row else \
            record_id(STAGE, [m.model_dump() for m in messages], seed)
        if rid in seen:
            raise UserError(f"{path}:{line_no}: id {rid} appears twice; ids must be unique")
        seen.add(rid)
        request = ChatRequest.of([m.model_dump() for m in messages], seed=seed + line_no)
        prompts.append((rid, request, messages))
    if not prompts:
        raise UserError(f"{path}: no prompts; write one JSON object per line with a \"prompt\" or \"messages\" key")
    return prompts


def _given_id(row: dict, path: Path, line_no: int) -> str:
    value = row["id"]
    if isinstance(value, bool) or not isinstance(value, (str, int)) or not str(value).strip():
        raise UserError(f"{path}:{line_no}: \"id\" must be a non-empty string or a number, not {json.dumps(value)}; "
                        f"give one or leave the key out")
    return str(value)


def _messages(row: Any, path: Path, line_no: int) -> list[ChatMessage]:
    where = f"{path}:{line_no}"
    if not isinstance(row, dict):
        raise UserError(f"{where}: expected a JSON object with \"prompt\" or \"messages\"")
    if "messages" in row:
        try:
            messages = [ChatMessage.model_validate(m) for m in row["messages"]]
        except Exception:
            raise UserError(f"{where}: \"messages\" must be a list of {{\"role\": system|user|assistant, "
                            f"\"content\": text}}") from None
        if not messages or not any(m.content.strip() for m in messages):
            raise UserError(f"{where}: \"messages\" is empty; give at least one message with some text")
        return messages
    if not isinstance(row.get("prompt"), str) or not row["prompt"].strip():
        raise UserError(f"{where}: needs a non-empty \"prompt\" string or a \"messages\" list")
    messages = [ChatMessage(role="user", content=row["prompt"])]
    if row.get("system"):
        messages.insert(0, ChatMessage(role="system", content=str(row["system"])))
    return messages


def run(cfg: CompleteConfig, context: StageContext, backend: ChatBackend, *, chat: BackendConfig) -> StageResult:
    """Send complete.input's prompts through `backend`, built from `chat` (the recipe's backend
    section, whose identity goes into the config hash); the summary counts what failed."""
    rows = _run(cfg, context, backend, chat)
    return StageResult.read(STAGE, rows, context.run_dir, OUTPUTS, failed=int(rows[FAILED]))


def _run(cfg: CompleteConfig, context: StageContext, backend: ChatBackend, chat: BackendConfig) -> dict[str, Any]:
    if cfg.input is None:
        raise UserError("no prompts given: pass --input FILE.jsonl (or set complete.input in the recipe)")
    prompts = load_prompts(cfg.input, cfg.seed)
    run_dir = RunDir(context.run_dir)
    stage = run_dir.begin(STAGE, {"complete": cfg.model_dump(mode="json", exclude={"input"}),
                                  "backend": chat.identity()},
                          inputs=[cfg.input], outputs=OUTPUTS, force=context.force)
    stage.record_model("chat", str(backend.describe()))
    store = JsonlStore(run_dir.file(layout.COMPLETIONS), CompletionRecord)
    done = store.ids()
    todo = [p for p in prompts if p[0] not in done]
    failed = _complete_all(backend, todo, store, cfg.json_replies)
    written = len(done) + len(todo) - failed  # each prompt's record written once, or it failed
    stage.set_count("prompts", len(prompts))
    stage.set_count("written", written)
    stage.set_count("failed_this_run", failed)
    figures = {"usage": backend.usage.as_dict()}
    if failed:
        stage.manifest.figures.update(figures)  # with usage.last_errors: why they failed
        stage.save()
    else:
        stage.finish(**figures)
    return {"prompts": len(prompts), "already done": len(done), "completed now": written - len(done),
            FAILED: failed, "parse errors": backend.usage.parse_errors,
            "retries": backend.usage.retries, "prompt tokens": backend.usage.prompt_tokens,
            "completion tokens": backend.usage.completion_tokens, "output": str(store.path)}


def _complete_all(backend: ChatBackend, todo, store: JsonlStore, want_json: bool) -> int:
    """Send every pending prompt through one session; each record is written (and flushed) as its
    completion comes back, while the others are in flight."""
    with backend.session() as session:
        # Written on the session's loop itself: at hundreds of replies a second, handing each one
        # over to this thread cost a quarter of the throughput (bench/backends.py --complete).
        return session.run(_write_all(backend, todo, store, want_json))


async def _write_all(backend: ChatBackend, todo, store: JsonlStore, want_json: bool) -> int:
    failed = 0
    requests = [_with_json(req, want_json) for _, req, _ in todo]
    with store.appender() as out, ui.progress("completing", total=len(todo)) as advance:
        async for index, completion in backend.stream(requests):
            advance()
            if not completion.ok:
                failed += 1
                ui.debug(f"prompt {todo[index][0]} failed: {completion.error}")
                continue
            rid, _, messages = todo[index]
            out.write(CompletionRecord(
                id=rid, messages=messages, text=completion.text, parsed=completion.parsed,
                parse_error=completion.parse_error,
                usage=Usage(prompt_tokens=completion.prompt_tokens,
                            completion_tokens=completion.completion_tokens),
                provenance=Provenance(backend=backend.name, model=backend.model,
                                      params=backend.resolve(requests[index]).params())))
    return failed


def _with_json(request: ChatRequest, want_json: bool) -> ChatRequest:
    from dataclasses import replace

    return replace(request, json=want_json)
