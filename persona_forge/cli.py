"""The `forge` command: a thin layer from options to config to stage.run to a rich summary.

Every mistake a user can make ends in one line on stderr and a non-zero exit.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from . import __version__, ui
from .config import Recipe, load_recipe, parse_set_option
from .errors import UserError


class Context:
    def __init__(self, recipe_path: Path | None, run_dir: Path | None, sets: tuple[str, ...], force: bool):
        self.recipe_path = recipe_path
        self.run_dir = run_dir
        self.sets = sets
        self.force = force

    def recipe(self, **overrides: Any) -> Recipe:
        merged = parse_set_option(self.sets)
        merged.update({k: v for k, v in overrides.items() if v is not None})
        if self.run_dir is not None:
            merged["run_dir"] = str(self.run_dir)
        return load_recipe(self.recipe_path, merged)


recipe_option = click.option("--recipe", "-r", type=click.Path(path_type=Path), default=None,
                             help="Recipe YAML (see recipes/); flags override it.")


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@recipe_option
@click.option("--run-dir", type=click.Path(path_type=Path), default=None, help="Run directory (overrides the recipe).")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
              help="Override any recipe value, e.g. --set backend.concurrency=32.")
@click.option("--force", is_flag=True, help="Redo a stage whose config or input changed (old outputs go to .trash/).")
@click.option("-v", "--verbose", count=True, help="More detail (and tracebacks on internal errors).")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars or summaries.")
@click.version_option(__version__, prog_name="forge")
@click.pass_context
def forge(ctx: click.Context, recipe: Path | None, run_dir: Path | None, sets: tuple[str, ...],
          force: bool, verbose: int, quiet: bool) -> None:
    """Make persona-grounded conversation data and prove that it is good.

    Example: forge --recipe recipes/quickstart.yaml complete --input prompts.jsonl
    """
    ui.set_verbosity(-1 if quiet else verbose)
    ctx.obj = Context(recipe, run_dir, sets, force)


def _stage_recipe_option(f):
    """Let `--recipe` also follow the subcommand (`forge complete --recipe r.yaml`)."""
    return click.option("--recipe", "-r", "sub_recipe", type=click.Path(path_type=Path), default=None,
                        help="Recipe YAML (same as the group option).")(f)


def _context(obj: Context, sub_recipe: Path | None) -> Context:
    if sub_recipe is not None:
        obj.recipe_path = sub_recipe
    return obj


@forge.command()
@_stage_recipe_option
@click.option("--input", "input_path", type=click.Path(path_type=Path), help="JSONL of prompts.")
@click.option("--json", "want_json", is_flag=True, default=None, help="Ask for JSON replies and parse them.")
@click.pass_obj
def complete(obj: Context, sub_recipe: Path | None, input_path: Path | None, want_json: bool | None) -> None:
    """Send a JSONL of prompts to the chat backend; resumable, results as they finish.

    Example: forge complete --input prompts.jsonl --set backend.kind=openai --set backend.model=gpt-4o-mini
    """
    from .backends import build_backend
    from .stages import complete as stage

    recipe = _context(obj, sub_recipe).recipe(**{"complete.input": str(input_path) if input_path else None,
                                                 "complete.json_replies": want_json})
    backend = build_backend(recipe.backend, progress=ui.verbosity() >= 0)
    rows = stage.run(recipe, backend, force=obj.force)
    ui.summary("forge complete", rows)
    if rows["failed (re-run to retry)"]:
        raise UserError(f"{rows['failed (re-run to retry)']} prompts failed after retries; "
                        f"run the same command again to retry only those")


@forge.command()
@_stage_recipe_option
@click.option("--n", "n", type=int, default=None, help="Profiles to build.")
@click.option("--seeds", "seeds_path", type=click.Path(path_type=Path), default=None,
              help="Seed attributes: text (one a line), JSONL or CSV (default: the packaged Synthetic-Persona-Chat ones).")
@click.option("--column", default=None, help="The CSV column or JSONL key holding the attribute (default: text).")
@click.option("--expand/--no-expand", default=None, help="Ask the chat backend for new attributes first (default: on).")
@click.pass_obj
def personas(obj: Context, sub_recipe: Path | None, n: int | None, seeds_path: Path | None, column: str | None,
             expand: bool | None) -> None:
    """Expand seed persona attributes with the LLM, then build NLI-consistent user profiles.

    Example: forge --recipe recipes/quickstart.yaml personas --n 1000
    """
    from .backends import build_backend
    from .nli.base import load_nli
    from .stages import personas as stage

    recipe = _context(obj, sub_recipe).recipe(**{
        "personas.n": n, "personas.seeds": str(seeds_path) if seeds_path else None, "personas.column": column,
        "personas.expand": expand})
    show = ui.verbosity() >= 0
    backend = build_backend(recipe.backend, progress=show) if recipe.personas.expand else None
    rows = stage.run(recipe, backend, lambda: load_nli(recipe.nli, lambda: build_backend(recipe.backend), show),
                     force=obj.force)
    ui.summary("forge personas", rows)
    if rows.get("failed (re-run to retry)"):
        raise UserError(f"{rows['failed (re-run to retry)']} requests failed after retries; run the same command "
                        f"again to retry only those (profiles are built once all are done)")


@forge.command()
@_stage_recipe_option
@click.option("--profiles", "profiles_path", type=click.Path(path_type=Path),
              help="Profile JSONL, or a Synthetic-Persona-Chat .jsonl(.gz) (default: <run_dir>/profiles.jsonl).")
@click.option("--strategy", type=click.Choice(["greedy", "random"]), default=None,
              help="greedy: most similar in-band pairs first; random: the baseline.")
@click.option("--low", type=float, default=None, help="Least similarity for a pair.")
@click.option("--high", type=float, default=None, help="Most similarity for a pair (keeps out near-copies).")
@click.option("--per-user", type=int, default=None, help="Most conversations per user.")
@click.option("--model", default=None, help="Sentence-embedding model: packaged:NAME, a folder, or a hub name.")
@click.option("--seed", type=int, default=None, help="Seed for the random strategy.")
@click.pass_obj
def pair(obj: Context, sub_recipe: Path | None, profiles_path: Path | None, strategy: str | None,
         low: float | None, high: float | None, per_user: int | None, model: str | None, seed: int | None) -> None:
    """Pair users who have something to talk about: embeddings, FAISS kNN, greedy matching in a band.

    Example: forge --run-dir runs/spc pair --profiles corpora/spc/train.jsonl.gz --per-user 2
    """
    from .stages import pairing as stage

    recipe = _context(obj, sub_recipe).recipe(**{
        "pair.profiles": str(profiles_path) if profiles_path else None, "pair.strategy": strategy,
        "pair.low": low, "pair.high": high, "pair.per_user": per_user, "pair.model": model, "pair.seed": seed})
    rows = stage.run(recipe, force=obj.force)
    ui.summary("forge pair", rows)


@forge.command()
@_stage_recipe_option
@click.option("--pairs", "pairs_path", type=click.Path(path_type=Path), help="Pair JSONL (default <run_dir>/pairs.jsonl).")
@click.option("--profiles", "profiles_path", type=click.Path(path_type=Path),
              help="The profiles the pairs refer to (default <run_dir>/profiles.jsonl).")
@click.option("--mode", type=click.Choice(["auto", "whole", "turns"]), default=None,
              help="whole: one request per conversation; turns: persona agents take turns (auto: turns for local).")
@click.option("--candidates", type=int, default=None, help="Candidate conversations per pair.")
@click.option("--rounds", type=int, default=None, help="Generator-critic rounds.")
@click.option("--limit", type=int, default=None, help="Only the first N pairs (a larger N later extends the run).")
@click.option("--no-judge", "no_judge", is_flag=True, default=False, help="Leave out the LLM quality/safety judge.")
@click.pass_obj
def generate(obj: Context, sub_recipe: Path | None, pairs_path: Path | None, profiles_path: Path | None,
             mode: str | None, candidates: int | None, rounds: int | None, limit: int | None, no_judge: bool) -> None:
    """Generator-Critic loop: candidate conversations per pair, scored by NLI, an LLM judge, a safety
    screen and form; the best of each round are the next round's examples.

    Example: forge --recipe recipes/quickstart.yaml generate --limit 10
    """
    from .backends import build_backend
    from .nli.base import load_nli
    from .stages import generate as stage

    recipe = _context(obj, sub_recipe).recipe(**{
        "generate.pairs": str(pairs_path) if pairs_path else None,
        "generate.profiles": str(profiles_path) if profiles_path else None, "generate.mode": mode,
        "generate.candidates": candidates, "generate.rounds": rounds, "generate.limit": limit,
        "generate.critic.judge": False if no_judge else None})
    show = ui.verbosity() >= 0
    backend = build_backend(recipe.backend, progress=show)
    embed = _embedder(recipe) if recipe.generate.critic.prefilter > 0 else None
    rows = stage.run(recipe, backend, lambda: load_nli(recipe.nli, lambda: build_backend(recipe.backend), show),
                     embed=embed, force=obj.force)
    ui.summary("forge generate", rows)
    if rows.get("failed (re-run to retry)"):
        raise UserError(f"{rows['failed (re-run to retry)']} candidates failed after retries; run the same "
                        "command again to generate only those")


def _embedder(recipe: Recipe):
    from .models import sentence_transformer

    model = sentence_transformer(recipe.personas.model)
    return lambda texts: model.encode(texts, batch_size=64, normalize_embeddings=True, show_progress_bar=False)
@forge.command("eval")
@_stage_recipe_option
@click.option("--data", "data_path", type=click.Path(path_type=Path), default=None,
              help="Conversations JSONL(.gz) in the Synthetic-Persona-Chat shape (default: its test split).")
@click.option("--adapter", "adapters", multiple=True, metavar="NAME=DIR",
              help="A LoRA adapter from forge train to compare with the base model (repeatable; NAME defaults "
                   "to the folder's parent name).")
@click.option("--limit", type=int, default=None, help="Evaluate the first N conversations (0: all).")
@click.option("--sample/--greedy", default=None, help="Sample replies instead of greedy decoding (default: greedy).")
@click.option("--json", "as_json", is_flag=True, help="Print metrics.json on stdout.")
@click.pass_obj
def eval_(obj: Context, sub_recipe: Path | None, data_path: Path | None, adapters: tuple[str, ...],
          limit: int | None, sample: bool | None, as_json: bool) -> None:
    """The study's protocol on held-out conversations: BLEU, ROUGE, BERTScore, perplexity, NLI contradiction.

    Example: forge --run-dir runs/demo eval --limit 50 --adapter sft=runs/demo/train/sft/adapter
    """
    from .stages import evaluation as stage

    recipe = _context(obj, sub_recipe).recipe(**{
        "eval.data": str(data_path) if data_path else None, "eval.limit": limit, "eval.sample": sample})
    result = stage.run(recipe, stage.parse_adapter_options(adapters), force=obj.force,
                       progress=ui.verbosity() >= 0)
    if as_json:
        click.echo(json.dumps(result, indent=2, sort_keys=True))
        return
    click.echo(stage.markdown_table(result))  # plain: a markdown table must not be wrapped
    ui.summary("forge eval", {"examples": result["examples"], "models": ", ".join(result["models"]),
                              "outputs": str(Path(recipe.run_dir) / stage.FOLDER)})


@forge.command("judge")
@_stage_recipe_option
@click.option("--input", "input_path", type=click.Path(path_type=Path), default=None,
              help="Generations to judge (default: <run_dir>/eval/generations.jsonl).")
@click.option("--limit", type=int, default=None, help="Judge the first N examples (0: all).")
@click.option("--rubric/--no-rubric", default=None, help="Rubric scores for each reply (default: on).")
@click.option("--pairwise/--no-pairwise", default=None, help="Base vs each adapter, both orders (default: on).")
@click.option("--bigfive/--no-bigfive", default=None, help="Big Five probes of each model, in persona (default: on).")
@click.option("--json", "as_json", is_flag=True, help="Print judge.json on stdout.")
@click.pass_obj
def judge(obj: Context, sub_recipe: Path | None, input_path: Path | None, limit: int | None, rubric: bool | None,
          pairwise: bool | None, bigfive: bool | None, as_json: bool) -> None:
    """LLM-as-judge on eval's replies (rubric, pairwise in both orders) and Big Five probes in persona.

    Example: forge --run-dir runs/demo judge --set judge.backend.kind=openai --set judge.backend.model=gpt-4o-mini
    """
    from .stages import judging as stage

    recipe = _context(obj, sub_recipe).recipe(**{
        "judge.input": str(input_path) if input_path else None, "judge.limit": limit, "judge.rubric": rubric,
        "judge.pairwise": pairwise, "judge.bigfive": bigfive})
    result = stage.run(recipe, force=obj.force, progress=ui.verbosity() >= 0)
    if as_json:
        click.echo(json.dumps(result, indent=2, sort_keys=True))
        return
    for key, table in (("rubric", stage.rubric_table), ("pairwise", stage.pairwise_table),
                       ("bigfive", stage.bigfive_table)):
        if result.get(key):
            click.echo(table(result[key]))
    ui.summary("forge judge", {"examples": result["examples"], "judge": result["judge"]["model"],
                               "outputs": str(Path(recipe.run_dir) / stage.FOLDER)})


@forge.command()
@_stage_recipe_option
@click.option("--n", "n", type=int, default=None, help="Samples to choose (default 200).")
@click.option("--strategy", type=click.Choice(["kcenter", "facility", "random"]), default=None,
              help="kcenter: farthest first (default); facility: facility location; random: the baseline.")
@click.option("--data", "data_path", type=click.Path(path_type=Path), default=None,
              help="A Synthetic-Persona-Chat-shaped .jsonl(.gz) instead of <run_dir>/best.jsonl.")
@click.option("--kind", type=click.Choice(["next_reply", "conversation"]), default=None,
              help="next_reply: the study's sample (default); conversation: whole conversations, one persona's side.")
@click.option("--quality-weight", type=float, default=None, help="0..1: how much the critic's score counts in selection.")
@click.option("--dedup-threshold", type=float, default=None, help="Cosine similarity at which samples are near-duplicates.")
@click.option("--heldout", type=int, default=None, help="Also export this many held-out samples.")
@click.pass_obj
def curate(obj: Context, sub_recipe: Path | None, n: int | None, strategy: str | None, data_path: Path | None,
           kind: str | None, quality_weight: float | None, dedup_threshold: float | None, heldout: int | None) -> None:
    """Choose n training samples for quality and diversity; export SFT, DPO, OpenAI, ShareGPT, datasets.

    Example: forge --run-dir runs/spc curate --n 200 --data corpora/spc/train.jsonl.gz
    """
    from .stages import curate as stage

    recipe = _context(obj, sub_recipe).recipe(**{
        "curate.n": n, "curate.strategy": strategy, "curate.data": str(data_path) if data_path else None,
        "curate.kind": kind, "curate.quality_weight": quality_weight, "curate.dedup_threshold": dedup_threshold,
        "curate.heldout": heldout})
    rows = stage.run(recipe, force=obj.force)
    ui.summary("forge curate", rows)


@forge.command()
@_stage_recipe_option
@click.option("--data", "data_path", type=click.Path(path_type=Path), default=None,
              help="Training JSONL (default: <run_dir>/curated/sft.jsonl, dpo.jsonl with --dpo, openai.jsonl "
                   "with --backend openai).")
@click.option("--dpo", is_flag=True, default=None, help="DPO on preference pairs instead of SFT.")
@click.option("--adapter", "adapter_path", type=click.Path(path_type=Path), default=None,
              help="Start from this LoRA adapter (e.g. DPO after SFT).")
@click.option("--name", default=None, help="Output folder <run_dir>/train/NAME (default: sft, dpo or openai).")
@click.option("--model", default=None, help="Base model (default: backend.model, the packaged SmolLM2).")
@click.option("--epochs", type=float, default=None, help="Passes over the data (default 3).")
@click.option("--max-steps", type=int, default=None, help="Stop after this many optimizer steps.")
@click.option("--merge", is_flag=True, help="Also write merged/: the base model with the adapter folded in.")
@click.option("--backend", "backend_kind", type=click.Choice(["local", "openai"]), default="local",
              help="local: LoRA with trl + peft here; openai: a fine-tuning job at the recipe's OpenAI endpoint.")
@click.pass_obj
def train(obj: Context, sub_recipe: Path | None, data_path: Path | None, dpo: bool | None,
          adapter_path: Path | None, name: str | None, model: str | None, epochs: float | None,
          max_steps: int | None, merge: bool, backend_kind: str) -> None:
    """Fine-tune the chat model on curated samples: LoRA SFT or DPO (resumable), or a hosted job.

    Example: forge --run-dir runs/quickstart train --epochs 3 --merge
    """
    overrides = {"train.data": str(data_path) if data_path else None, "train.method": "dpo" if dpo else None,
                 "train.adapter": str(adapter_path) if adapter_path else None, "train.name": name,
                 "train.model": model, "train.epochs": epochs, "train.max_steps": max_steps}
    if backend_kind == "openai":
        from .stages import train_openai as stage

        overrides["backend.kind"] = "openai"
        recipe = _context(obj, sub_recipe).recipe(**overrides)
        rows = stage.run(recipe, force=obj.force, progress=ui.verbosity() >= 0)
        ui.summary("forge train (openai)", rows)
        return
    from .stages import train as stage

    recipe = _context(obj, sub_recipe).recipe(**overrides)
    rows = stage.run(recipe, force=obj.force, merge=merge, progress=ui.verbosity() >= 0)
    ui.summary(f"forge train ({recipe.train.method})", rows)


@forge.command()
@_stage_recipe_option
@click.option("--persona", "persona_path", type=click.Path(path_type=Path), required=True,
              help="The persona: a text file (one attribute a line) or a JSON list of sentences.")
@click.option("--adapter", "adapter_path", type=click.Path(path_type=Path), default=None,
              help="A LoRA adapter folder from forge train (default: the base model alone).")
@click.option("--base", "compare_base", is_flag=True, help="Also show the base model's reply to each message.")
@click.option("--model", default=None, help="Base model (default: the one the adapter was trained on, as its "
                                            "train.manifest.json says; else train.model or backend.model).")
@click.option("--seed", type=int, default=0, show_default=True, help="Sampling seed.")
@click.pass_obj
def chat(obj: Context, sub_recipe: Path | None, persona_path: Path, adapter_path: Path | None,
         compare_base: bool, model: str | None, seed: int) -> None:
    """Chat with the trained persona model in the terminal; /reset starts over, /quit stops.

    Reads stdin when it is not a terminal, one message a line. Sampling follows backend.sampling.

    Example: forge chat --adapter runs/quickstart/train/sft/adapter --persona me.txt --base
    """
    import torch

    from . import chat as chat_mod

    recipe = _context(obj, sub_recipe).recipe()
    persona = chat_mod.read_persona(persona_path)
    # The model an adapter was trained on: train.model, else the local backend's model.
    local_default = recipe.backend.model if recipe.backend.kind == "local" else "packaged:smollm2-135m-instruct"
    spec = model or chat_mod.trained_base(adapter_path) or recipe.train.model or local_default
    interactive = sys.stdin.isatty()
    chat_model = chat_mod.ChatModel(spec, adapter_path, recipe.backend, progress=ui.verbosity() >= 0)
    torch.manual_seed(seed)
    if interactive:
        ui.info(f"persona: {' '.join(persona)}\n/reset starts over, /quit stops")
    chat_mod.converse(persona, chat_model.reply, compare_base, chat_mod.stdin_lines(interactive), sys.stdout,
                      interactive, chat_model.has_adapter)


PIPELINE = ("personas", "pair", "generate", "curate", "train", "eval", "judge")


@forge.command("run")
@click.argument("recipe_path", metavar="RECIPE", type=click.Path(path_type=Path), required=False)
@click.option("--stages", default=None, metavar="A,B,...",
              help=f"Only these stages, in pipeline order (default: all of {', '.join(PIPELINE)}).")
@click.pass_context
def run_pipeline(ctx: click.Context, recipe_path: Path | None, stages: str | None) -> None:
    """The whole pipeline from one recipe: personas, pair, generate, curate, train, eval, judge,
    then report.md. Every stage resumes, so a killed run started again picks up where it stopped.

    Example: forge run recipes/quickstart.yaml
    """
    obj: Context = ctx.obj
    if recipe_path is not None:
        obj.recipe_path = recipe_path
    chosen = _pipeline_stages(stages)
    recipe = obj.recipe()
    commands = {"personas": personas, "pair": pair, "generate": generate, "curate": curate, "train": train,
                "eval": eval_, "judge": judge}
    for number, name in enumerate(chosen, 1):
        ui.info(f"[bold]forge run[/bold] {number}/{len(chosen)}: {name}")
        kwargs: dict[str, Any] = {}
        if name == "eval":
            kwargs["adapters"] = _trained_adapters(recipe.run_dir)
        ctx.invoke(commands[name], **kwargs)
    from . import report

    path = report.write(recipe.run_dir)
    ui.summary("forge run", {"stages": ", ".join(chosen), "report": str(path)})


def _pipeline_stages(stages: str | None) -> list[str]:
    if not stages:
        return list(PIPELINE)
    wanted = [s.strip() for s in stages.split(",") if s.strip()]
    unknown = [s for s in wanted if s not in PIPELINE]
    if unknown:
        raise UserError(f"--stages: unknown stage {unknown[0]!r}; choose from {', '.join(PIPELINE)}")
    return [s for s in PIPELINE if s in wanted]


def _trained_adapters(run_dir: Path) -> tuple[str, ...]:
    """NAME=DIR for every adapter `forge train` finished in this run directory."""
    found = sorted(Path(run_dir).glob("train/*/adapter/adapter_config.json"))
    return tuple(f"{p.parent.parent.name}={p.parent}" for p in found)


@forge.command("report")
@_stage_recipe_option
@click.pass_obj
def report_cmd(obj: Context, sub_recipe: Path | None) -> None:
    """Write <run_dir>/report.md from the stages' manifests and reports (forge run does this at the end).

    Example: forge --run-dir runs/quickstart report
    """
    from . import report

    recipe = _context(obj, sub_recipe).recipe()
    if not Path(recipe.run_dir).is_dir():
        raise UserError(f"{recipe.run_dir}: no run directory here; give --run-dir or a recipe")
    click.echo(str(report.write(recipe.run_dir)))


@forge.group()
def nli() -> None:
    """The NLI model: build the embedded one, evaluate any, try a pair."""


def _nli_model(obj: Context, sub_recipe: Path | None):
    from .backends import build_backend
    from .nli.base import load_nli

    recipe = _context(obj, sub_recipe).recipe()
    return load_nli(recipe.nli, lambda: build_backend(recipe.backend), progress=ui.verbosity() >= 0)


@nli.command("build")
@click.option("--rebuild", is_flag=True, help="Train again even if this machine already has the model.")
def nli_build(rebuild: bool) -> None:
    """Train the embedded NLI into the user cache (once; other commands do it on first use).

    Example: forge nli build
    """
    from .nli.train import ensure_embedded, rebuild as rebuild_model

    if rebuild:
        path, _ = rebuild_model(progress=ui.verbosity() >= 0)
    else:
        path = ensure_embedded(progress=ui.verbosity() >= 0)
    info = json.loads((path / "build.json").read_text())
    ui.summary("embedded NLI", {"folder": str(path), "training pairs": info["pairs"], "steps": info["steps"],
                                "build seconds": info["seconds"], "final loss": info["loss_last_100"],
                                "licence": "non-commercial (SICK is CC BY-NC-SA 3.0)"})


@nli.command("eval")
@_stage_recipe_option
@click.option("--data", "data_path", type=click.Path(path_type=Path), required=True,
              help="JSONL rows {premise, hypothesis, label}; or a named set: sick-test (SICK's test split), "
                   "chat-test, chat-dev (natural chat), persona-test, persona-dev.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
@click.option("--errors", "show_errors", type=int, default=0, help="Also list up to N misclassified pairs.")
@click.pass_obj
def nli_eval(obj: Context, sub_recipe: Path | None, data_path: Path, as_json: bool, show_errors: int) -> None:
    """Accuracy, per-class precision/recall/F1 and the confusion matrix on labelled pairs.

    Example: forge nli eval --data chat-test
    """
    import time

    from .nli.data import read_labelled
    from .nli.evaluate import evaluate, named_set

    pairs = named_set(str(data_path)) or read_labelled(data_path)
    model = _nli_model(obj, sub_recipe)
    started = time.time()
    with ui.progress("judging pairs", total=len(pairs)) as advance:
        result = evaluate(model, pairs, advance)
    result["pairs_per_second"] = len(pairs) / max(1e-9, time.time() - started)
    result["model"] = model.describe()
    result["data"] = str(data_path)
    if as_json:
        out = {k: v for k, v in result.items() if k != "errors"}
        out["errors"] = result["errors"][:show_errors]
        click.echo(json.dumps(out, indent=2))
        return
    _print_nli_report(result, show_errors)


def _print_nli_report(result: dict, show_errors: int) -> None:
    from rich.table import Table

    from .nli.base import LABELS

    table = Table(title=f"NLI on {result['data']}: accuracy {result['accuracy']:.3f} (n={result['n']})",
                  title_justify="left")
    for column in ("label", "precision", "recall", "F1", "support", *[f"→ {l[:4]}" for l in LABELS]):
        table.add_column(column, justify="right")
    for label in LABELS:
        c = result["per_class"][label]
        table.add_row(label, f"{c['precision']:.3f}", f"{c['recall']:.3f}", f"{c['f1']:.3f}", str(c["support"]),
                      *[str(result["confusion"][label][p]) for p in LABELS])
    ui.stdout.print(table)
    ui.stdout.print(f"model: {result['model']}; {result['pairs_per_second']:.0f} pairs/s")
    for error in result["errors"][:show_errors]:
        ui.stdout.print(f"  {error['label']} → {error['predicted']}: {error['premise']} | {error['hypothesis']}",
                        markup=False, highlight=False)


@nli.command("check")
@_stage_recipe_option
@click.argument("premise")
@click.argument("hypothesis")
@click.pass_obj
def nli_check(obj: Context, sub_recipe: Path | None, premise: str, hypothesis: str) -> None:
    """Judge one pair and print the three probabilities.

    Example: forge nli check "I have two dogs." "I have no pets."
    """
    from .nli.base import LABELS

    probs = _nli_model(obj, sub_recipe).predict([(premise, hypothesis)])[0]
    for label, p in zip(LABELS, probs):
        ui.stdout.print(f"{label:14s} {p:.3f}")


@forge.group()
def models() -> None:
    """Where models come from: packaged, local folders, hub names."""


@models.command("list")
def models_list() -> None:
    """Show the packaged models and where they are.

    Example: forge models list
    """
    from .models import PACKAGED, cache_dir, smollm2_dir

    rows = {f"packaged:{name}": text for name, text in PACKAGED.items()}
    target = smollm2_dir()
    rows["SmolLM2 converted copy"] = str(target) if (target / ".complete").exists() else \
        "not yet (forge models prepare)"
    rows["cache"] = str(cache_dir())
    ui.summary("models", rows)


@models.command("prepare")
def models_prepare() -> None:
    """Convert the packaged SmolLM2 to safetensors in the cache once (about 30 s).

    Example: forge models prepare
    """
    from .models import converted_smollm2, sentence_model_path

    path = converted_smollm2(progress=ui.verbosity() >= 0)
    ui.summary("models ready", {"packaged:smollm2-135m-instruct": str(path),
                                "packaged:minilm-l6": sentence_model_path("packaged:minilm-l6")})


@forge.group()
def recipe() -> None:
    """Inspect recipes."""


@recipe.command("check")
@click.argument("path", type=click.Path(path_type=Path))
@click.pass_obj
def recipe_check(obj: Context, path: Path) -> None:
    """Validate a recipe and print it with every default filled in, as JSON.

    Example: forge recipe check recipes/quickstart.yaml
    """
    obj.recipe_path = path
    resolved = obj.recipe()
    ui.stdout.print_json(json.dumps(resolved.model_dump(mode="json")))


@forge.command("prompt")
@click.argument("name")
@click.option("--vars", "vars_json", default="{}", help="Template variables as a JSON object.")
def prompt_render(name: str, vars_json: str) -> None:
    """Render a prompt template with variables, to see exactly what a model is sent.

    Example: forge prompt complete/echo --vars '{"text": "hi"}'
    """
    from .prompts import render

    try:
        variables = json.loads(vars_json)
    except json.JSONDecodeError as exc:
        raise UserError(f"--vars: not valid JSON ({exc.msg}); give an object like '{{\"name\": \"value\"}}'") from None
    rendered = render(name, **variables)
    for message in rendered.messages:
        ui.stdout.print(f"[bold]### {message['role']}[/bold]")
        ui.stdout.print(message["content"], markup=False, highlight=False)
    ui.info(f"prompt {rendered.ref.name} hash {rendered.ref.hash}")


def main(argv: list[str] | None = None) -> None:
    """Entry point: user errors become one line and an exit code, never a traceback."""
    try:
        forge.main(args=argv, prog_name="forge", standalone_mode=False)
    except click.exceptions.Abort:
        _fail("interrupted; run the same command again to resume", 130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except UserError as exc:
        _fail(str(exc), exc.exit_code)
    except KeyboardInterrupt:
        _fail("interrupted; run the same command again to resume", 130)
    except Exception as exc:  # a bug, not the user's fault: still one line unless asked for more
        if ui.verbosity() > 0:
            raise
        _fail(f"internal error: {type(exc).__name__}: {exc} (run with -v for the traceback)", 1)


def _fail(message: str, code: int) -> None:
    click.echo(f"forge: error: {message}", err=True)
    sys.exit(code)


if __name__ == "__main__":
    main()
