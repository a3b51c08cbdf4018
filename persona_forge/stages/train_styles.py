"""`forge train --style NAME`: one LoRA adapter per style, each trained on that style's kept rewrites.

In:  <run_dir>/restyle/<style>.jsonl (forge restyle's conversations with the passed rewrites in place)
     and <run_dir>/restyle/rewrites.jsonl (which replies were rewritten and passed both checks); both
     named in layout.py: this module never imports the restyle stage.
Out: <run_dir>/adapters/<style>/: sft.jsonl (the next-reply rows: the replier's persona as the system
     prompt, up to 6 earlier turns, the other user's turn, and a kept rewrite as the target; only kept
     rewrites are targets, never a reply that kept its original text), styles.manifest.json (the style,
     the hash of restyle/<style>.jsonl, the row count) and everything `forge train` writes (adapter/,
     checkpoints/, log.jsonl, loss.png, train.manifest.json). `forge serve --adapters-dir
     <run_dir>/adapters` serves each as its style's name.

Each style is `train.run` on its own rows in its own folder, so it resumes from its last checkpoint; a
style already trained with the same data and config is skipped without loading a model; a changed
restyle/<style>.jsonl (or train config) is refused in one line unless --force.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .. import layout, ui
from ..config import TrainConfig
from ..contract import StageContext, StageResult
from ..errors import UserError
from ..prompts import library
from ..samples import next_reply
from ..schema import Dialogue, Rewrite
from ..store import RunDir, atomic_write_jsonl, file_sha256, iter_jsonl
from ..styles import restyled_id
from . import train

STAGE = "styles"
INPUTS = (layout.RESTYLE_REWRITES,)      # and restyle/<style>.jsonl for each style
OUTPUTS = (layout.STYLE_ROWS,)           # inside adapters/<style>/, beside train's own outputs
CONTEXT = 6                              # earlier turns in a row's prompt: the study's (samples.next_reply)
ALL = "all"


def available(run_dir: Path) -> list[str]:
    """The styles forge restyle wrote conversations for in this run directory."""
    folder = Path(run_dir) / layout.RESTYLE
    own = {Path(layout.RESTYLE_REWRITES).name, Path(layout.RESTYLE_REJECTIONS).name}
    return sorted(p.stem for p in folder.glob("*.jsonl") if p.name not in own)


def chosen(run_dir: Path, names: Sequence[str]) -> list[str]:
    """The styles `--style` names (`all`: every style restyled here), or one line saying what is wrong."""
    there = available(run_dir)
    where = Path(run_dir) / layout.RESTYLE
    if not there:
        raise UserError(f"{where}: no restyled conversations here (no restyle/<style>.jsonl); run forge restyle "
                        f"first, or give the --run-dir it wrote")
    out: list[str] = []
    for name in names:
        for style in (there if name == ALL else [name]):
            if style not in there:
                raise UserError(f"--style {style}: no {layout.restyled(style)} in {run_dir} (restyled there: "
                                f"{', '.join(there)}); run forge restyle --styles {style} first, or use --style all")
            if style not in out:
                out.append(style)
    return out


def kept_rewrites(run_dir: Path, style: str) -> dict[tuple[str, int], str]:
    """(restyled conversation id, position) -> the text of every rewrite into `style` that passed."""
    path = Path(run_dir) / layout.RESTYLE_REWRITES
    if not path.is_file():
        raise UserError(f"{path}: missing, so which replies were rewritten is unknown; run forge restyle again")
    return {(restyled_id(r.dialogue_id, style), r.position): r.text for r in iter_jsonl(path, Rewrite)
            if r.style == style and r.passed and r.text}


def rows_for(run_dir: Path, style: str, prompts_dir: Path | None = None) -> tuple[list[dict[str, Any]], int]:
    """Next-reply SFT rows ({"messages": [...]}) whose targets are the kept rewrites of `style`, and
    how many conversations gave at least one."""
    kept = kept_rewrites(run_dir, style)
    prompts = library(prompts_dir)
    rows: list[dict[str, Any]] = []
    conversations = 0
    for dialogue in iter_jsonl(Path(run_dir) / layout.restyled(style), Dialogue):
        before = len(rows)
        for position, turn in enumerate(dialogue.turns):
            if kept.get((dialogue.id, position)) != turn.text:
                continue  # not rewritten, or its rewrite failed a check: the original text is no target
            persona = dialogue.user1_persona if turn.speaker == "user1" else dialogue.user2_persona
            sample = next_reply(persona, dialogue.turns, position, CONTEXT, prompts)
            if sample is None:
                continue  # the first turn, or a turn after one by the same speaker: nothing to reply to
            messages, target = sample
            rows.append({"messages": [m.model_dump() for m in messages]
                         + [{"role": "assistant", "content": target}]})
        conversations += len(rows) > before
    return rows, conversations


def run(cfg: TrainConfig, context: StageContext, *, styles: Sequence[str], base_model: str, seed: int,
        prompts_dir: Path | None = None, callbacks: Sequence[Any] = ()) -> StageResult:
    """Train (or resume, or skip) an SFT adapter per style in <run_dir>/adapters/<style>/, with `cfg`'s
    LoRA and optimiser settings. `styles`: names, or `all` for every restyle/<style>.jsonl here."""
    if cfg.method != "sft":
        raise UserError(f"--style trains SFT adapters on the kept rewrites; train.method is {cfg.method!r} "
                        f"(leave out --dpo / --method)")
    run_dir = Path(context.run_dir)
    names = chosen(run_dir, styles)
    summary: dict[str, Any] = {}
    data: dict[str, Any] = {}
    for style in names:
        data[style] = _one(cfg, context, style, base_model, seed, prompts_dir, callbacks)
        row = data[style]
        summary[style] = (f"{row['status']}: {row['rows']} rows from {row['conversations']} conversations"
                          + (f", final loss {row['final_loss']:.4f}" if row.get("final_loss") is not None else "")
                          + f" -> {row['folder']}")
    summary["serve them"] = f"forge serve --adapters-dir {run_dir / layout.ADAPTERS}"
    trained = sum(row["status"] == "trained" for row in data.values())
    return StageResult(stage=STAGE, summary=summary, counts={"styles": len(names), "trained": trained,
                                                             "skipped": len(names) - trained},
                       outputs=[layout.style_adapter_dir(run_dir, s) for s in names], data=data)


def _one(cfg: TrainConfig, context: StageContext, style: str, base_model: str, seed: int,
         prompts_dir: Path | None, callbacks: Sequence[Any]) -> dict[str, Any]:
    run_dir = Path(context.run_dir)
    folder = layout.style_adapter_dir(run_dir, style)
    source = run_dir / layout.restyled(style)
    spec = cfg.model or base_model
    ident = {k: v for k, v in cfg.identity().items() if k not in ("data", "name")}
    config = {"style": style, "train": ident, "model": spec, "seed": seed, "context": CONTEXT}
    rundir = RunDir(folder)
    previous = rundir.manifest(STAGE)
    changed = rundir.check(STAGE, config, [source], context.force)  # a changed source or config: one line
    if previous is not None and previous.status == "done" and not changed \
            and (folder / layout.ADAPTER / "adapter_config.json").is_file():
        return {**previous.figures, "status": "already trained (same config and data)"}

    rows, conversations = rows_for(run_dir, style, prompts_dir)
    if not rows:
        raise UserError(f"{source}: no kept rewrites of style {style!r} to train on (every rewrite failed a check, "
                        f"or none replies to the other user); see {run_dir / layout.RESTYLE_REJECTIONS}")
    stage = rundir.begin(STAGE, config, [source], OUTPUTS, context.force)
    atomic_write_jsonl(folder / layout.STYLE_ROWS, rows)
    stage.set_count("rows", len(rows))
    stage.set_count("conversations", conversations)
    stage.save()
    ui.info(f"forge train --style {style}: {len(rows)} rows from {conversations} conversations")
    style_cfg = cfg.model_copy(update={"name": style, "data": folder / layout.STYLE_ROWS})
    result = train.run(style_cfg, context, base_model=base_model, seed=seed, prompts_dir=prompts_dir,
                       callbacks=callbacks, folder=folder)
    figures = {"style": style, "folder": str(folder), "adapter": str(folder / layout.ADAPTER),
               "data": str(source), "data_sha256": file_sha256(source), "rows": len(rows),
               "rows_sha256": file_sha256(folder / layout.STYLE_ROWS), "conversations": conversations,
               "steps": result.figures.get("steps"), "final_loss": result.figures.get("final_loss")}
    stage.finish(**figures)
    return {**figures, "status": result.summary.get("status", "trained")}
