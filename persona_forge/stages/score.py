"""`forge score`: per-reply quality signals of a conversation corpus, each in its own field.

In:  --data FILE: Dialogue records (forge generate) or any Synthetic-Persona-Chat-shaped JSONL(.gz)
     (corpora.load_conversations reads both); the base model (score.model, default backend.model; a
     local model, the losses need its logits); the recipe's NLI when score.nli is on.
Out: <out>/<name>.scores.jsonl (one ReplyScore per next-reply sample, keyed by the sample id forge
     curate gives the same sample, appended and flushed a chunk at a time: a killed run resumes where it
     stopped), <out>/<name>.score.manifest.json; <out> is --out, else the data's folder, and <name> the
     data file's name without .jsonl(.gz).

Samples: the replies forge curate turns into next_reply samples (samples.reply_positions: one per
conversation at score.position by default, or every reply), with the same messages (samples.next_reply:
the replying persona as the system prompt, score.context earlier turns, the other user's turn).

Signals (docs/score.md says what each means and how to read it):
- words, words_z: the reply's whitespace words, and their z-score against every scored sample of the file;
- loss_context: mean token NLL of the reply given its messages (chat template, assistant header), the
  same prompt shape train and eval use; loss_alone: given one empty user turn instead (the reply with
  no persona and no context); ifd = loss_context / loss_alone (Li et al. 2023, "From Quantity to
  Quality": near or above 1, the context does not help predict the reply); perplexity = exp(loss_context);
- max_entailment, max_contradiction, c_score: the NLI (premise = each sentence of the replying persona,
  hypothesis = the reply) through nli.base.load_nli, the loader the critic and eval use.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .. import metrics as M
from .. import ui
from ..config import BackendConfig, NLIConfig, ScoreConfig
from ..contract import StageContext, StageResult
from ..corpora import load_conversations
from ..errors import UserError
from ..nli.labels import CONTRADICTION, ENTAILMENT
from ..samples import next_reply, reply_positions, sample_id
from ..schema import ChatMessage, ReplyScore
from ..store import JsonlStore, RunDir

STAGE = "score"
KIND = "next_reply"
ALONE: list[dict[str, str]] = [{"role": "user", "content": ""}]  # the reply "alone": no persona, no context
SIGNALS = ("words", "words_z", "loss_context", "loss_alone", "ifd", "perplexity", "max_entailment",
           "max_contradiction", "c_score")


@dataclass(frozen=True)
class Reply:
    """One next-reply sample to score."""

    id: str
    dialogue_id: str
    position: int
    speaker: str
    persona: list[str]
    messages: list[ChatMessage]
    text: str


def data_name(data: Path) -> str:
    name = data.name
    for suffix in (".gz", ".jsonl", ".json"):
        name = name.removesuffix(suffix)
    return name or "data"


def output_folder(data: Path, out: Path | None) -> Path:
    return Path(out) if out is not None else data.resolve().parent


def scores_path(data: Path, out: Path | None = None) -> Path:
    """Where forge score writes the scores of `data` (curate --quality reads them from here)."""
    return output_folder(data, out) / f"{data_name(data)}.scores.jsonl"


def build_replies(dialogues, positions: str, position: int, context: int) -> list[Reply]:
    out = []
    for dialogue in dialogues:
        for p in reply_positions(dialogue.turns, positions, position):
            speaker = dialogue.turns[p].speaker
            persona = dialogue.user1_persona if speaker == "user1" else dialogue.user2_persona
            built = next_reply(persona, dialogue.turns, p, context)
            if built is None:
                continue
            messages, text = built
            out.append(Reply(sample_id(dialogue.id, KIND, p), dialogue.id, p, speaker, list(persona), messages,
                             text.strip()))
    return out


def word_counts(text: str) -> int:
    return len(text.split())


def z_scorer(counts: Sequence[int]) -> Callable[[int], float | None]:
    """The z-score of a word count against `counts` (population mean and standard deviation)."""
    arr = np.asarray(counts, dtype=float)
    mean, sd = (float(arr.mean()), float(arr.std())) if len(arr) else (0.0, 0.0)
    return lambda n: (n - mean) / sd if sd > 0 else None


def ifd(loss_context: float | None, loss_alone: float | None) -> float | None:
    """Instruction-following difficulty: the reply's loss with its context over its loss alone."""
    if loss_context is None or not loss_alone:
        return None
    return loss_context / loss_alone


def stage_config(cfg: ScoreConfig, nli_config: NLIConfig, model: str) -> dict[str, Any]:
    nli = nli_config.model_dump(mode="json", exclude={"threads", "batch_size"}) if cfg.nli else None
    return {"score": cfg.identity(), "model": model, "nli": nli, "alone": ALONE}


def run(cfg: ScoreConfig, context: StageContext, *, chat: BackendConfig, nli_config: NLIConfig,
        data: Path | None = None, out: Path | None = None, lm: tuple[Any, Any] | None = None, nli: Any = None,
        on_written: Callable[[int], None] | None = None) -> StageResult:
    """Score what is missing. Handed by the caller: `chat`, the recipe's backend (its model is the
    default base model, and must be local unless score.model is set), and `nli_config`, the NLI loaded
    when score.nli is on. The scores go beside the data (or to `out`), not into the run directory: the
    result's stage is `<name>.score`, its manifest's; its `data` is the summary (`forge score --json`).
    `lm` (model, tokenizer) and `nli` (an NLIModel, or a function making one) may be given (tests);
    `on_written(n)` is called after each record."""
    summary = _run(cfg, context, chat, nli_config, data, out, lm, nli, on_written)
    path = Path(summary["output"])
    return StageResult.read(f"{data_name(Path(summary['data']))}.{STAGE}", summary_rows(summary), path.parent,
                            [path.name], data=summary)


def _run(cfg: ScoreConfig, context: StageContext, chat: BackendConfig, nli_config: NLIConfig, data: Path | None,
         out: Path | None, lm: tuple[Any, Any] | None, nli: Any,
         on_written: Callable[[int], None] | None) -> dict[str, Any]:
    progress = context.progress
    if data is None and cfg.data is None:
        raise UserError("forge score needs --data FILE: the conversations to score (a Synthetic-Persona-Chat-shaped "
                        "JSONL(.gz) or forge generate's Dialogue records)")
    data = Path(data if data is not None else cfg.data)
    out = Path(out) if out is not None else cfg.out
    conv = load_conversations(data)
    dialogues = conv.dialogues[:cfg.limit] if cfg.limit else conv.dialogues
    every = build_replies(conv.dialogues, cfg.positions, cfg.position, cfg.context)
    if not every:
        raise UserError(f"{data}: no conversation has a reply to the other user's turn to score; give longer "
                        f"conversations")
    wanted = {d.id for d in dialogues}
    replies = [r for r in every if r.dialogue_id in wanted]
    zscore = z_scorer([word_counts(r.text) for r in every])    # the whole file: a limit does not move it

    model_spec = cfg.model or chat.model
    if lm is None and cfg.model is None and chat.kind != "local":
        raise UserError(f"forge score needs a local model's logits for IFD and perplexity; backend.kind is "
                        f"{chat.kind}: set score.model (e.g. --model packaged:smollm2-135m-instruct)")
    folder = output_folder(data, out)
    _check_folder(folder)
    name = data_name(data)
    path = scores_path(data, out)
    run_dir = RunDir(folder)
    stage = run_dir.begin(f"{name}.{STAGE}", stage_config(cfg, nli_config, model_spec), inputs=[data],
                          outputs=[path.name], force=context.force)
    store = JsonlStore(path, ReplyScore)
    done = store.ids()
    todo = [r for r in replies if r.id not in done]
    written = 0
    if todo:
        if lm is None:
            from ..lm import load_chat_model

            if cfg.threads:
                import torch

                torch.set_num_threads(cfg.threads)
            lm = load_chat_model(model_spec, progress=progress)
        stage.record_model("base", model_spec)
        judge = _nli(chat, nli_config, nli, progress) if cfg.nli else None
        if judge is not None:
            stage.record_model("nli", judge.describe() if hasattr(judge, "describe") else "given")
        with store.appender() as writer, ui.progress(f"score {name}", total=len(todo)) as advance:
            for start in range(0, len(todo), cfg.chunk):
                chunk = todo[start:start + cfg.chunk]
                for record in score_chunk(chunk, lm, judge, zscore, cfg.batch_size, model_spec):
                    writer.write(record)
                    written += 1
                    if on_written is not None:
                        on_written(written)
                advance(len(chunk))
    wanted_ids = {r.id for r in replies}
    records = [r for r in store.read() if r.id in wanted_ids]
    summary = summarise(records)
    summary.update(data=str(data), conversations=len(dialogues), samples=len(replies), scored_this_run=written,
                   output=str(path))
    stage.set_count("samples", len(replies))
    stage.set_count("scored", len(records))
    stage.set_count("scored_this_run", written)
    stage.finish(**{f"mean_{k}": v for k, v in summary["means"].items()})
    return summary


def _check_folder(folder: Path) -> None:
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK):
        raise UserError(f"{folder}: cannot write the scores there; give a writable folder with --out DIR")


def _nli(chat: BackendConfig, nli_config: NLIConfig, nli: Any, progress: bool):
    if nli is None:
        from ..backends import build_backend
        from ..nli.base import load_nli

        return load_nli(nli_config, lambda: build_backend(chat), progress)
    return nli if hasattr(nli, "predict") else nli()


def score_chunk(chunk: Sequence[Reply], lm: tuple[Any, Any], nli: Any, zscore: Callable[[int], float | None],
                batch_size: int, model: str) -> list[ReplyScore]:
    model_, tokenizer = lm
    texts = [r.text for r in chunk]
    with_context = M.reference_nll(model_, tokenizer, [[m.model_dump() for m in r.messages] for r in chunk], texts,
                                   batch_size)
    alone = M.reference_nll(model_, tokenizer, [ALONE] * len(chunk), texts, batch_size)
    judged = M.persona_nli(nli, [r.persona for r in chunk], texts) if nli is not None else [None] * len(chunk)
    out = []
    for reply, (nll_c, tokens), (nll_a, _), rows in zip(chunk, with_context, alone, judged):
        loss_c = nll_c / tokens if tokens else None
        loss_a = nll_a / tokens if tokens else None
        words = word_counts(reply.text)
        out.append(ReplyScore(
            id=reply.id, dialogue_id=reply.dialogue_id, position=reply.position, speaker=reply.speaker,
            reply=reply.text, words=words, words_z=zscore(words), tokens=tokens or None, loss_context=loss_c,
            loss_alone=loss_a, ifd=ifd(loss_c, loss_a), perplexity=math.exp(loss_c) if loss_c is not None else None,
            max_entailment=None if rows is None else float(rows[:, ENTAILMENT].max()),
            max_contradiction=None if rows is None else float(rows[:, CONTRADICTION].max()),
            c_score=None if rows is None else M.c_score(rows), model=model))
    return out


def summarise(records: Sequence[ReplyScore]) -> dict[str, Any]:
    """Mean of each signal over the records that have it, and how many have it."""
    means, present = {}, {}
    for key in SIGNALS:
        values = [getattr(r, key) for r in records if getattr(r, key) is not None]
        present[key] = len(values)
        means[key] = round(float(np.mean(values)), 4) if values else None
    return {"records": len(records), "means": means, "present": present}


def summary_rows(summary: dict[str, Any]) -> dict[str, Any]:
    m = summary["means"]

    def fmt(key: str) -> str:
        return "n/a" if m[key] is None else f"{m[key]:.3f}"

    return {"data": summary["data"], "samples": f"{summary['samples']:,} ({summary['scored_this_run']:,} scored now)",
            "mean words": fmt("words"), "mean IFD": fmt("ifd"), "mean perplexity": fmt("perplexity"),
            "mean max entailment": fmt("max_entailment"), "mean max contradiction": fmt("max_contradiction"),
            "mean C-score": fmt("c_score"), "output": summary["output"]}
