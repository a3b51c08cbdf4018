"""The `forge` command: a thin layer from options to config to stage.run to a rich summary.

Every mistake a user can make ends in one line on stderr and a non-zero exit.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from . import __version__, limits, ui
from .config import Recipe, load_recipe, parse_set_option
from .errors import UserError
from .flags import config_option


class Context:
    def __init__(self, recipe_path: Path | None, run_dir: Path | None, sets: tuple[str, ...], force: bool,
                 verbose: int = 0, quiet: bool = False):
        self.recipe_path = recipe_path
        self.run_dir = run_dir
        self.sets = sets
        self.force = force
        self.verbose = verbose
        self.quiet = quiet

    def recipe(self, writes: bool = True, **overrides: Any) -> Recipe:
        """The recipe with --set and the command's flags applied; a bad value is blamed on its flag.
        `writes`: the command writes into the run directory, so check it can first."""
        merged = parse_set_option(self.sets)
        sources = {key: f"--set {key}" for key in merged}
        flags = {k: v for k, v in overrides.items() if v is not None}
        merged.update(flags)
        sources.update({key: _flag_name(key) for key in flags})
        if self.run_dir is not None:
            merged["run_dir"] = str(self.run_dir)
            sources["run_dir"] = "--run-dir"
        resolved = load_recipe(self.recipe_path, merged, sources)
        if writes:
            check_run_dir(Path(resolved.run_dir), "--run-dir" if self.run_dir is not None else "run_dir")
        return resolved


# Flags whose name is not the config key's last part with dashes (curate.n -> --n).
_FLAG_NAMES = {"complete.json_replies": "--json", "generate.critic.judge": "--no-judge", "train.method": "--dpo",
               "eval.sample": "--sample/--greedy", "personas.seeds": "--seeds", "personas.expand": "--expand",
               "backend.base_url": "--endpoint"}


def _flag_name(dotted: str) -> str:
    return _FLAG_NAMES.get(dotted) or "--" + dotted.rsplit(".", 1)[-1].replace("_", "-")


def check_run_dir(path: Path, label: str = "--run-dir") -> None:
    """Refuse, before any work, a run directory that is a file or that cannot be written."""
    if path.exists() and not path.is_dir():
        raise UserError(f"{label} {path}: is a file, not a folder; give a folder (it is made if missing)")
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"{label} {path}: {existing} is a file, so no folder can be made there; "
                        f"choose another --run-dir")
    import tempfile

    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as exc:
        raise UserError(f"{label} {path}: cannot write in {existing} ({exc.strerror}); "
                        f"choose another --run-dir") from None


def _common(ctx: click.Context, param: click.Parameter, value: Any) -> None:
    """The group's options given after a subcommand (`forge curate --run-dir runs/x --n 5`)."""
    obj = ctx.find_object(Context)
    if obj is None or value in (None, False, (), 0):
        return
    if param.name == "common_recipe":
        obj.recipe_path = value
    elif param.name == "common_run_dir":
        obj.run_dir = value
    elif param.name == "common_sets":
        obj.sets = tuple(obj.sets) + tuple(value)
    elif param.name == "common_force":
        obj.force = True
    elif param.name == "common_verbose":
        obj.verbose += value
    elif param.name == "common_quiet":
        obj.quiet = True
    ui.set_verbosity(-1 if obj.quiet else obj.verbose)


def _common_options(f, with_recipe: bool = True):
    """--run-dir, --set, --force, -v, -q (and --recipe) on a subcommand too: the same as before it."""
    options = [
        click.option("--run-dir", "common_run_dir", type=click.Path(path_type=Path), default=None,
                     expose_value=False, callback=_common, help="Run directory (overrides the recipe)."),
        click.option("--set", "common_sets", multiple=True, metavar="KEY=VALUE", expose_value=False,
                     callback=_common, help="Override any recipe value, e.g. --set backend.concurrency=32."),
        click.option("--force", "common_force", is_flag=True, expose_value=False, callback=_common,
                     help="Redo a stage whose config or input changed (old outputs go to .trash/)."),
        click.option("-v", "--verbose", "common_verbose", count=True, expose_value=False, callback=_common,
                     help="More detail (and tracebacks on internal errors)."),
        click.option("-q", "--quiet", "common_quiet", is_flag=True, expose_value=False, callback=_common,
                     help="No progress bars or summaries."),
    ]
    if with_recipe:
        options.insert(0, click.option("--recipe", "-r", "common_recipe", type=click.Path(path_type=Path),
                                       default=None, expose_value=False, callback=_common,
                                       help="Recipe YAML (same as the group option)."))
    for option in reversed(options):
        f = option(f)
    return f


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
    ctx.obj = Context(recipe, run_dir, sets, force, verbose, quiet)


def _stage_recipe_option(f):
    """Let `--recipe` and the other group options also follow the subcommand
    (`forge complete --recipe r.yaml --run-dir runs/x`)."""
    f = _common_options(f, with_recipe=False)
    return click.option("--recipe", "-r", "sub_recipe", type=click.Path(path_type=Path), default=None,
                        help="Recipe YAML (same as the group option).")(f)


def _context(obj: Context, sub_recipe: Path | None) -> Context:
    if sub_recipe is not None:
        obj.recipe_path = sub_recipe
    return obj


@forge.command()
@_stage_recipe_option
@config_option(("--input", "input_path"), "complete.input")
@config_option(("--json", "want_json"), "complete.json_replies")
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
    result = stage.run(recipe.complete, _stage_context(recipe, obj, fans_out=False), backend, chat=recipe.backend)
    ui.summary("forge complete", _with_last_errors(result.summary, backend))
    if result.failed:
        raise UserError(f"{result.failed} prompts failed after retries{_last_error(backend)}; "
                        f"run the same command again to retry only those")


def _with_last_errors(rows: dict[str, Any], backend) -> dict[str, Any]:
    """The summary rows plus the last error of each kind the backend met (keys redacted)."""
    errors = getattr(getattr(backend, "usage", None), "last_errors", None) or {}
    return {**rows, **{f"last error ({kind})": text for kind, text in errors.items()}}


def _last_error(backend) -> str:
    errors = getattr(getattr(backend, "usage", None), "last_errors", None) or {}
    return f" (last: {list(errors.values())[-1]})" if errors else ""


@forge.command()
@_stage_recipe_option
@config_option("--n", "personas.n")
@config_option(("--seeds", "seeds_path"), "personas.seeds")
@config_option("--column", "personas.column")
@config_option("--expand/--no-expand", "personas.expand")
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
    result = stage.run(recipe.personas, _stage_context(recipe, obj), backend,
                       lambda: load_nli(recipe.nli, lambda: build_backend(recipe.backend), show),
                       chat=recipe.backend, nli_config=recipe.nli, prompts_dir=recipe.prompts_dir)
    ui.summary("forge personas", _with_last_errors(result.summary, backend))
    if result.failed:
        raise UserError(f"{result.failed} requests failed after retries; run the same command "
                        f"again to retry only those (profiles are built once all are done)")


@forge.command()
@_stage_recipe_option
@config_option(("--profiles", "profiles_path"), "pair.profiles")
@config_option("--strategy", "pair.strategy")
@config_option("--low", "pair.low")
@config_option("--high", "pair.high")
@config_option("--per-user", "pair.per_user")
@config_option("--model", "pair.model")
@config_option("--seed", "pair.seed")
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
    result = stage.run(recipe.pair, _stage_context(recipe, obj))
    ui.summary("forge pair", result.summary)


@forge.command()
@_stage_recipe_option
@config_option(("--pairs", "pairs_path"), "generate.pairs")
@config_option(("--profiles", "profiles_path"), "generate.profiles")
@config_option("--mode", "generate.mode")
@config_option("--candidates", "generate.candidates")
@config_option("--rounds", "generate.rounds")
@config_option("--limit", "generate.limit")
@click.option("--no-judge", "no_judge", is_flag=True, default=False, help="Leave out the LLM quality/safety judge.")
@click.pass_obj
def generate(obj: Context, sub_recipe: Path | None, pairs_path: Path | None, profiles_path: Path | None,
             mode: str | None, candidates: int | None, rounds: int | None, limit: int | None, no_judge: bool) -> None:
    """Generator-Critic loop: candidate conversations per pair, scored by NLI, an LLM judge, a safety
    screen and form; the best of each round are the next round's examples.

    Example: forge --recipe recipes/quickstart.yaml generate --limit 10
    """
    from .backends import build_backend
    from .embeddings import Embedder
    from .nli.base import load_nli
    from .stages import generate as stage

    recipe = _context(obj, sub_recipe).recipe(**{
        "generate.pairs": str(pairs_path) if pairs_path else None,
        "generate.profiles": str(profiles_path) if profiles_path else None, "generate.mode": mode,
        "generate.candidates": candidates, "generate.rounds": rounds, "generate.limit": limit,
        "generate.critic.judge": False if no_judge else None})
    show = ui.verbosity() >= 0
    # with generate.generator's adapter, if set
    backend = build_backend(stage.backend_config(recipe.generate, recipe.backend), progress=show)
    context = _stage_context(recipe, obj)
    embed = Embedder(recipe.personas.model, executor=context.executor) \
        if recipe.generate.critic.prefilter > 0 else None
    result = stage.run(recipe.generate, context, backend,
                       lambda: load_nli(recipe.nli, lambda: build_backend(recipe.backend), show),
                       chat=recipe.backend, nli_config=recipe.nli, embed=embed,
                       default_profiles=recipe.pair.profiles, prompts_dir=recipe.prompts_dir)
    ui.summary("forge generate", _with_last_errors(result.summary, backend))
    if result.failed:
        raise UserError(f"{result.failed} candidates failed after retries; run the same "
                        "command again to generate only those")


@forge.command("eval")
@_stage_recipe_option
@config_option(("--data", "data_path"), "eval.data")
@click.option("--adapter", "adapters", multiple=True, metavar="NAME=DIR",
              help="A LoRA adapter from forge train to compare with the base model (repeatable; NAME defaults "
                   "to the folder's parent name).")
@config_option("--limit", "eval.limit")
@config_option("--sample/--greedy", "eval.sample")
@config_option(("--retrieval", "retrieval_path"), "eval.retrieval")
@click.option("--json", "as_json", is_flag=True, help="Print metrics.json on stdout.")
@click.pass_obj
def eval_(obj: Context, sub_recipe: Path | None, data_path: Path | None, adapters: tuple[str, ...],
          limit: int | None, sample: bool | None, retrieval_path: Path | None, as_json: bool) -> None:
    """The study's protocol on held-out conversations: BLEU, ROUGE, BERTScore, F1, distinct-n, perplexity,
    NLI contradiction and C-score (Hits@1 of 20 with --set eval.hits_candidates=20); --retrieval
    corpora/spc/train.jsonl.gz adds the retrieval baseline.

    Example: forge --run-dir runs/demo eval --limit 50 --adapter sft=runs/demo/train/sft/adapter
    """
    from .stages import evaluation as stage

    recipe = _context(obj, sub_recipe).recipe(**{
        "eval.data": str(data_path) if data_path else None, "eval.limit": limit, "eval.sample": sample,
        "eval.retrieval": str(retrieval_path) if retrieval_path else None})
    result = stage.run(recipe.eval, _stage_context(recipe, obj, fans_out=False), chat=recipe.backend,
                       nli_config=recipe.nli, adapters=stage.parse_adapter_options(adapters))
    if as_json:
        click.echo(json.dumps(result.data, indent=2, sort_keys=True))
        return
    click.echo(stage.markdown_table(result.data))  # plain: a markdown table must not be wrapped
    ui.summary("forge eval", result.summary)


@forge.command("judge")
@_stage_recipe_option
@config_option(("--input", "input_path"), "judge.input")
@config_option("--limit", "judge.limit")
@config_option("--rubric/--no-rubric", "judge.rubric")
@config_option("--pairwise/--no-pairwise", "judge.pairwise")
@config_option("--bigfive/--no-bigfive", "judge.bigfive")
@click.option("--estimate", is_flag=True, help="Print the requests, tokens and cost it would send, and send nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print judge.json on stdout.")
@click.pass_obj
def judge(obj: Context, sub_recipe: Path | None, input_path: Path | None, limit: int | None, rubric: bool | None,
          pairwise: bool | None, bigfive: bool | None, estimate: bool, as_json: bool) -> None:
    """LLM-as-judge on eval's replies (rubric, pairwise in both orders) and Big Five probes in persona.

    Example: forge --run-dir runs/demo judge --set judge.backend.kind=openai --set judge.backend.model=gpt-4o-mini
    """
    from .stages import judging as stage

    recipe = _context(obj, sub_recipe).recipe(**{
        "judge.input": str(input_path) if input_path else None, "judge.limit": limit, "judge.rubric": rubric,
        "judge.pairwise": pairwise, "judge.bigfive": bigfive})
    if estimate:
        planned = stage.estimate(recipe.judge, Path(recipe.run_dir), chat=recipe.backend,
                                 prompts_dir=recipe.prompts_dir)
        click.echo(json.dumps(planned, indent=2, sort_keys=True) if as_json else stage.estimate_table(planned))
        return
    result = stage.run(recipe.judge, _stage_context(recipe, obj, fans_out=False), chat=recipe.backend,
                       nli_config=recipe.nli, bootstrap=(recipe.eval.bootstrap, recipe.eval.seed),
                       contradiction=recipe.eval.contradiction, prompts_dir=recipe.prompts_dir)
    if as_json:
        click.echo(json.dumps(result.data, indent=2, sort_keys=True))
        return
    for key, table in (("rubric", stage.rubric_table), ("pairwise", stage.pairwise_table),
                       ("bigfive", stage.bigfive_table)):
        if result.data.get(key):
            click.echo(table(result.data[key]))
    ui.summary("forge judge", result.summary)


@forge.command()
@_stage_recipe_option
@config_option("--n", "curate.n")
@config_option("--strategy", "curate.strategy")
@config_option(("--data", "data_path"), "curate.data")
@config_option("--kind", "curate.kind")
@config_option("--quality-weight", "curate.quality_weight")
@config_option("--dedup-threshold", "curate.dedup_threshold")
@config_option("--heldout", "curate.heldout")
@config_option("--quality", "curate.quality", metavar="FILE:FIELD")
@click.pass_obj
def curate(obj: Context, sub_recipe: Path | None, n: int | None, strategy: str | None, data_path: Path | None,
           kind: str | None, quality_weight: float | None, dedup_threshold: float | None, heldout: int | None,
           quality: str | None = None) -> None:
    """Choose n training samples for quality and diversity; export SFT, DPO, OpenAI, ShareGPT, datasets.

    Example: forge --run-dir runs/spc curate --n 200 --data corpora/spc/train.jsonl.gz
    """
    from .stages import curate as stage

    recipe = _context(obj, sub_recipe).recipe(**{
        "curate.n": n, "curate.strategy": strategy, "curate.data": str(data_path) if data_path else None,
        "curate.kind": kind, "curate.quality_weight": quality_weight, "curate.dedup_threshold": dedup_threshold,
        "curate.heldout": heldout, "curate.quality": quality})
    result = stage.run(recipe.curate, _stage_context(recipe, obj), recipe.backend)
    ui.summary("forge curate", result.summary)


@forge.command()
@_stage_recipe_option
@config_option(("--data", "data_path"), "train.data")
@click.option("--dpo", is_flag=True, default=None, help="DPO on preference pairs instead of SFT.")
@config_option("--method", "train.method")
@config_option(("--adapter", "adapter_path"), "train.adapter")
@config_option("--name", "train.name")
@config_option("--model", "train.model")
@config_option("--epochs", "train.epochs")
@config_option("--max-steps", "train.max_steps")
@click.option("--merge", is_flag=True, help="Also write merged/: the base model with the adapter folded in.")
@click.option("--backend", "backend_kind", type=click.Choice(["local", "openai"]), default="local",
              help="local: LoRA with trl + peft here; openai: a fine-tuning job at the recipe's OpenAI endpoint.")
@click.option("--style", "styles", multiple=True, metavar="NAME",
              help="One SFT adapter per style from forge restyle's kept rewrites, in <run_dir>/adapters/NAME "
                   "(repeatable; all: every restyle/<style>.jsonl).")
@click.pass_obj
def train(obj: Context, sub_recipe: Path | None, data_path: Path | None, dpo: bool | None, method: str | None,
          adapter_path: Path | None, name: str | None, model: str | None, epochs: float | None,
          max_steps: int | None, merge: bool, backend_kind: str, styles: tuple[str, ...] = ()) -> None:
    """Fine-tune the chat model on curated samples: LoRA SFT or DPO (resumable), or a hosted job.

    Example: forge --run-dir runs/quickstart train --epochs 3 --merge
    """
    if adapter_path is not None and not (Path(adapter_path) / "adapter_config.json").is_file():
        raise UserError(f"--adapter {adapter_path}: no LoRA adapter there (no adapter_config.json); give the "
                        f"adapter folder forge train wrote, e.g. runs/NAME/train/sft/adapter")
    overrides = {"train.data": str(data_path) if data_path else None,
                 "train.method": method or ("dpo" if dpo else None),
                 "train.adapter": str(adapter_path) if adapter_path else None, "train.name": name,
                 "train.model": model, "train.epochs": epochs, "train.max_steps": max_steps}
    if styles:
        return _train_styles(obj, sub_recipe, overrides, styles, conflicts=[
            flag for flag, value in (("--data", data_path), ("--name", name), ("--merge", merge or None),
                                     ("--backend openai", backend_kind == "openai" or None)) if value is not None])
    if backend_kind == "openai":
        from .stages import train_openai as stage

        overrides["backend.kind"] = "openai"
        recipe = _context(obj, sub_recipe).recipe(**overrides)
        context = _stage_context(recipe, obj)
        ui.summary("forge train (openai)", stage.run(recipe.train, context, recipe.backend).summary)
        return
    from .stages import train as stage

    recipe = _context(obj, sub_recipe).recipe(**overrides)
    result = stage.run(recipe.train, _stage_context(recipe, obj, fans_out=False), base_model=recipe.backend.model,
                       seed=recipe.seed, prompts_dir=recipe.prompts_dir, nli_config=recipe.nli,
                       eval_data=recipe.eval.data, merge=merge)
    ui.summary(f"forge train ({recipe.train.method})", result.summary)


@forge.command()
@_stage_recipe_option
@click.option("--persona", "persona_path", type=click.Path(path_type=Path), required=True,
              help="The persona: a text file (one attribute a line) or a JSON list of sentences.")
@click.option("--adapter", "adapter_path", type=click.Path(path_type=Path), default=None,
              help="A LoRA adapter folder from forge train (default: the base model alone).")
@click.option("--base", "compare_base", is_flag=True, help="Also show the base model's reply to each message.")
@click.option("--model", default=None, help="Base model (default: the one the adapter was trained on, as its "
                                            "train.manifest.json says; else train.model or backend.model). "
                                            "Against an endpoint: the served name, e.g. the adapter's "
                                            "(default backend.model).")
@click.option("--endpoint", default=None, metavar="URL",
              help="Talk to a served model (forge serve, vLLM, any OpenAI-compatible endpoint) instead of "
                   "loading one: backend.kind=openai with backend.base_url=URL. A recipe whose backend is "
                   "openai does the same.")
@click.option("--seed", type=int, default=0, show_default=True, help="Sampling seed.")
@click.option("--user", default=None, help="Remember this user across chats (their facts in the memory dir).")
@click.option("--memory", "memory_mode", type=click.Choice(["off", "block", "retrieve"]), default=None,
              help="With --user: no memory block, all facts, or the top-k relevant (default: memory.mode).")
@click.pass_obj
def chat(obj: Context, sub_recipe: Path | None, persona_path: Path, adapter_path: Path | None,
         compare_base: bool, model: str | None, endpoint: str | None, seed: int, user: str | None,
         memory_mode: str | None) -> None:
    """Chat with the trained persona model in the terminal; /reset starts over, /quit stops.

    Reads stdin when it is not a terminal, one message a line. Sampling follows backend.sampling.
    Against an endpoint (--endpoint URL, or backend.kind openai) --model names the served adapter.

    Example: forge chat --adapter runs/quickstart/train/sft/adapter --persona me.txt --user alice
    """
    from . import chat as chat_mod
    from .config import redact_url

    recipe = _context(obj, sub_recipe).recipe(writes=False, **{
        "backend.kind": "openai" if endpoint else None, "backend.base_url": endpoint})
    served = recipe.backend.kind == "openai"
    if served and adapter_path is not None:
        raise UserError(f"--adapter {adapter_path}: the endpoint holds the adapters, chat cannot load a folder "
                        f"into it; use --model NAME instead (the adapter's served name, see GET /v1/models)")
    if compare_base and adapter_path is None and not served:
        raise UserError("--base shows the base model beside the adapter's reply; give --adapter DIR too")
    persona = limits.check_persona(chat_mod.read_persona(limits.check_file_size(persona_path, "--persona")),
                                   persona_path)
    interactive = sys.stdin.isatty()
    if memory_mode is not None and user is None:
        raise UserError("--memory needs --user ID: the user whose memory to use")
    if served:
        name = model or recipe.backend.model
        fallback = recipe.serve.served_model_name or recipe.serve.model or chat_mod.SERVED_BASE_DEFAULT
        base_name = chat_mod.served_base(recipe.backend, name, fallback) if compare_base else None
        chat_model = chat_mod.EndpointChat(recipe.backend, name, base_name, seed,
                                           has_adapter=name != (base_name or fallback))
        tokenizer = None
        if interactive:
            ui.info(f"endpoint: {redact_url(recipe.backend.base_url) or 'the OpenAI API'}, model: {name}")
    else:
        import torch

        # The model an adapter was trained on: train.model, else the local backend's model.
        local_default = recipe.backend.model if recipe.backend.kind == "local" else "packaged:smollm2-135m-instruct"
        spec = model or chat_mod.trained_base(adapter_path) or recipe.train.model or local_default
        chat_model = chat_mod.ChatModel(spec, adapter_path, recipe.backend, progress=ui.verbosity() >= 0)
        tokenizer = chat_model.tokenizer
        torch.manual_seed(seed)
    memory = chat_mod.user_memory(recipe, user, memory_mode, tokenizer) if user else None
    if interactive:
        ui.info(f"persona: {' '.join(persona)}\n/reset starts over, /quit stops")
    try:
        chat_mod.converse(persona, chat_model.reply, compare_base, chat_mod.stdin_lines(interactive), sys.stdout,
                          interactive, chat_model.has_adapter, memory)
    finally:
        if served:
            chat_model.close()   # the endpoint's client, once, however the chat ended


def _stage_context(recipe: Recipe, obj: Context, fans_out: bool = True):
    """The StageContext of one command; `fans_out=False` for a stage that never uses the executor (a
    Ray executor would otherwise connect for nothing)."""
    from .contract import StageContext

    if not fans_out:
        return StageContext(Path(recipe.run_dir), obj.force, ui.verbosity() >= 0)
    return StageContext.for_recipe(recipe, obj.force, ui.verbosity() >= 0)


@forge.command("run")
@click.argument("recipe_path", metavar="RECIPE", type=click.Path(path_type=Path), required=False)
@_common_options
@click.option("--stages", default=None, metavar="A,B,...",
              help="Only these stages, in pipeline order (default: all of personas, pair, generate, curate, train, "
                   "eval, judge).")
@click.pass_obj
def run_pipeline(obj: Context, recipe_path: Path | None, stages: str | None) -> None:
    """The whole pipeline from one recipe: personas, pair, generate, curate, train, eval, judge,
    then report.md. Every stage resumes, so a killed run started again picks up where it stopped.

    Example: forge run recipes/quickstart.yaml
    """
    from . import pipeline

    if recipe_path is not None:
        obj.recipe_path = recipe_path
    chosen = pipeline.choose(stages or None)
    if obj.recipe_path is None:  # the built-in defaults would start personas --n 1000 on the local model
        raise click.UsageError("Missing argument 'RECIPE': the recipe to run, e.g. forge run "
                               "recipes/quickstart.yaml", click.get_current_context())
    recipe = obj.recipe()
    pipeline.run(recipe, chosen, force=obj.force, progress=ui.verbosity() >= 0,
                 on_result=lambda result: _show_stage(result, recipe))
    ui.summary("forge run", {"stages": ", ".join(chosen), "report": str(Path(recipe.run_dir) / "report.md")})


def _show_stage(result, recipe: Recipe) -> None:
    """A finished stage as its own command prints it: eval's and judge's tables, then the summary."""
    if result.stage == "eval":
        from .stages import evaluation

        click.echo(evaluation.markdown_table(result.data))
    elif result.stage == "judge":
        from .stages import judging

        for key, table in (("rubric", judging.rubric_table), ("pairwise", judging.pairwise_table),
                           ("bigfive", judging.bigfive_table)):
            if result.data.get(key):
                click.echo(table(result.data[key]))
    title = f"forge train ({recipe.train.method})" if result.stage == "train" else f"forge {result.stage}"
    ui.summary(title, result.summary)


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

    recipe = _context(obj, sub_recipe).recipe(writes=False)
    return load_nli(recipe.nli, lambda: build_backend(recipe.backend), progress=ui.verbosity() >= 0)


@nli.command("build")
@_common_options
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

    for name, text in (("PREMISE", premise), ("HYPOTHESIS", hypothesis)):
        if not text.strip():
            raise UserError(f"{name} is empty; give a sentence, e.g. forge nli check \"I have two dogs.\" "
                            f"\"I have no pets.\"")
        limits.check_text_length(text, name)
    probs = _nli_model(obj, sub_recipe).predict([(premise, hypothesis)])[0]
    for label, p in zip(LABELS, probs):
        ui.stdout.print(f"{label:14s} {p:.3f}")


@forge.group()
def models() -> None:
    """Where models come from: packaged, local folders, hub names."""


@models.command("list")
@_common_options
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
    for name, text in rows.items():  # stdout, plain: it is the command's output and can be piped
        click.echo(f"{name}\t{text}")


@models.command("prepare")
@_common_options
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
@_common_options
@click.argument("path", type=click.Path(path_type=Path))
@click.pass_obj
def recipe_check(obj: Context, path: Path) -> None:
    """Validate a recipe and print it with every default filled in, as JSON.

    Example: forge recipe check recipes/quickstart.yaml
    """
    obj.recipe_path = path
    resolved = obj.recipe(writes=False)
    ui.stdout.print_json(json.dumps(resolved.model_dump(mode="json")))


@forge.command("prompt")
@_common_options
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
    if not isinstance(variables, dict):
        raise UserError(f"--vars: a JSON object of variables is needed, not a {type(variables).__name__}; "
                        f"give e.g. '{{\"text\": \"hi\"}}'")
    rendered = render(name, **variables)
    for message in rendered.messages:
        ui.stdout.print(f"[bold]### {message['role']}[/bold]")
        ui.stdout.print(message["content"], markup=False, highlight=False)
    ui.info(f"prompt {rendered.ref.name} hash {rendered.ref.hash}")


# --- forge view / forge annotate ---
def _web_run_dir(run_dir: Path) -> Path:
    if not run_dir.is_dir():
        raise UserError(f"{run_dir}: no such run directory; give the folder a recipe's run_dir points to")
    return run_dir


def _serve_web(run_dir: Path, cfg: Any, host: str, port: int, path: str, task: str | None = None,
               annotator: str | None = None) -> None:
    import socket

    import uvicorn

    from .web.app import create_app

    loopback = host in ("127.0.0.1", "localhost", "::1")
    if not loopback:
        click.echo(f"forge: warning: --host {host}: anyone who can reach this address sees the run and can add "
                   "annotations (there is no login)", err=True)
    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
            probe.bind((host, port))
    except OSError as exc:
        raise UserError(f"cannot listen on {host}:{port} ({exc.strerror}); choose another --port") from None
    hosts = ["127.0.0.1", "localhost", "[::1]", "::1"] + ([] if loopback else [host, "*"])
    app = create_app(run_dir, cfg, task=task, annotator=annotator, allowed_hosts=hosts, warm=True)
    shown = f"[{host}]" if ":" in host else host
    click.echo(f"forge: serving {run_dir} at http://{shown}:{port}{path} (Ctrl-C to stop)", err=True)
    uvicorn.run(app, host=host, port=port, log_level="warning")


@forge.command("view")
@_stage_recipe_option
@click.argument("run_dir_arg", metavar="RUN_DIR", type=click.Path(path_type=Path))
@click.option("--port", type=click.IntRange(0, 65535), default=8765, show_default=True, help="Port to listen on.")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind; the default keeps the app on this machine.")
@click.pass_obj
def view(obj: Context, sub_recipe: Path | None, run_dir_arg: Path, port: int, host: str) -> None:
    """Look at a run in the browser: manifests and charts, every candidate with its critic scores and
    why it was kept or rejected, the curated set, eval replies beside the references.

    Example: forge view runs/quickstart --port 8765
    """
    recipe = _context(obj, sub_recipe).recipe()
    _serve_web(_web_run_dir(run_dir_arg), recipe.annotate, host, port, "/")


@forge.command("annotate")
@_stage_recipe_option
@click.argument("run_dir_arg", metavar="RUN_DIR", type=click.Path(path_type=Path))
@click.option("--task", type=click.Choice(["pairwise", "likert", "tags"]), default="pairwise", show_default=True,
              help="pairwise: which of two is better; likert: rate the recipe's traits; tags: which tags apply.")
@click.option("--annotator", default=None, help="Your name, recorded with each answer (else the page asks).")
@click.option("--export", "do_export", is_flag=True,
              help="Write annotations/preferences.jsonl and the agreement summary instead of serving.")
@click.option("--port", type=click.IntRange(0, 65535), default=8765, show_default=True, help="Port to listen on.")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind; the default keeps the app on this machine.")
@click.pass_obj
def annotate(obj: Context, sub_recipe: Path | None, run_dir_arg: Path, task: str, annotator: str | None,
             do_export: bool, port: int, host: str) -> None:
    """Judge a run by hand: pairwise, Likert or tags, answers appended to RUN_DIR/annotations.jsonl.

    Example: forge annotate runs/quickstart --task pairwise --annotator ana
    """
    from .web.annotate import export, valid_annotator

    recipe = _context(obj, sub_recipe).recipe()
    run_dir = _web_run_dir(run_dir_arg)
    if do_export:
        summary = export(run_dir, recipe.annotate)
        pairwise = summary["pairwise"]
        between = pairwise["between_annotators"]
        ui.summary("forge annotate --export", {
            "answers": summary["answers"], "annotators": ", ".join(summary["annotators"]) or "none",
            "preferences.jsonl (conversations)": summary["counts"]["preferences"],
            "reply_preferences.jsonl (replies)": summary["counts"]["reply_preferences"],
            "pairwise: Cohen's kappa / Krippendorff's alpha": f"{between.get('cohen_kappa')} / "
                                                               f"{between.get('krippendorff_alpha')} "
                                                               f"({between['shared_items']} shared items)",
            "critic agrees with humans": pairwise["critic_vs_humans"]["agreement"],
            "LLM judge agrees with humans": pairwise["judge_vs_humans"]["agreement"],
            "written to": f"{run_dir / 'annotations'} (summary.md, summary.json)"})
        return
    if annotator is not None and not valid_annotator(annotator):
        raise UserError(f"--annotator {annotator!r}: use 1-64 letters, digits, '_', '.', '-' or '@'")
    query = f"/annotate?task={task}" + (f"&annotator={annotator}" if annotator else "")
    _serve_web(run_dir, recipe.annotate, host, port, query, task=task, annotator=annotator)


# --- forge serve ---
@forge.command("serve")
@_stage_recipe_option
@config_option("--model", "serve.model")
@click.option("--adapter", "adapters", multiple=True, metavar="NAME=DIR",
              help="A LoRA adapter to serve as NAME (repeatable; DIR alone: named after the folder).")
@click.option("--adapters-dir", type=click.Path(path_type=Path), default=None,
              help="Serve every adapter under this folder (e.g. <run_dir>/train).")
@config_option("--host", "serve.host")
@config_option("--port", "serve.port")
@config_option("--engine", "serve.engine")
@config_option("--served-model-name", "serve.served_model_name")
@config_option("--max-loaded", "serve.max_loaded")
@config_option("--batching", "serve.batching")
@click.pass_obj
def serve(obj: Context, sub_recipe: Path | None, model: str | None, adapters: tuple[str, ...],
          adapters_dir: Path | None, host: str | None, port: int | None, engine: str | None,
          served_model_name: str | None, max_loaded: int | None, batching: str | None) -> None:
    """Serve the base model and persona adapters on one OpenAI-compatible endpoint; the request's
    `model` picks the adapter. Load more at runtime: POST /v1/load_lora_adapter.

    Example: forge serve --adapter sft=runs/quickstart/train/sft/adapter --port 8000
    """
    import os

    from .serve.registry import adapters_from

    recipe = _context(obj, sub_recipe).recipe(**{
        "serve.model": model, "serve.host": host, "serve.port": port, "serve.engine": engine,
        "serve.served_model_name": served_model_name, "serve.max_loaded": max_loaded, "serve.batching": batching})
    cfg = recipe.serve
    spec = cfg.model or recipe.backend.model
    if recipe.backend.kind != "local" and not cfg.model:
        spec = "packaged:smollm2-135m-instruct"
    found = adapters_from(adapters, cfg.adapters_dir if adapters_dir is None else adapters_dir, cfg.adapters)
    api_key = os.environ.get(cfg.api_key_env) or None
    if cfg.host not in ("127.0.0.1", "localhost", "::1") and not api_key:
        raise UserError(f"--host {cfg.host}: binding beyond loopback needs an API key; set ${cfg.api_key_env} "
                        "(clients send it as Bearer) or bind 127.0.0.1")
    if cfg.engine == "vllm":
        _serve_vllm(cfg, spec, found)
        return
    import uvicorn

    from .config import local_settings
    from .serve.app import build_state, create_app

    state = build_state(spec, cfg.served_model_name, found, max_loaded=cfg.max_loaded, max_rank=cfg.max_rank,
                        max_batch=cfg.max_batch, wait_ms=cfg.batch_wait_ms, max_queue=cfg.max_queue,
                        mixed=cfg.batching == "mixed", max_tokens=cfg.max_tokens,
                        repetition_penalty=cfg.repetition_penalty or local_settings(recipe.backend).repetition_penalty,
                        base_aliases=cfg.base_aliases, api_key=api_key, threads=cfg.threads,
                        lora_kernel=cfg.lora_kernel, progress=ui.verbosity() >= 0)
    ui.summary("forge serve", {"base": state.base_name, "adapters": ", ".join(found) or "(none yet)",
                               "endpoint": f"http://{cfg.host}:{cfg.port}/v1",
                               "auth": f"Bearer ${cfg.api_key_env}" if api_key else "none (loopback)"})
    try:
        uvicorn.run(create_app(state), host=cfg.host, port=cfg.port, log_level="warning")
    finally:
        state.batcher.close()


def _serve_vllm(cfg, spec: str, found: dict[str, Path]) -> None:
    import os
    import subprocess

    from .models import causal_lm_path, resolve
    from .serve import vllm

    path = spec if resolve(spec).kind == "hub" else causal_lm_path(spec, progress=ui.verbosity() >= 0)
    ranks = [json.loads((Path(p) / "adapter_config.json").read_text()).get("r", 8) for p in found.values()
             if (Path(p) / "adapter_config.json").is_file()]
    cmd = vllm.vllm_command(path, found, host=cfg.host, port=cfg.port, max_loaded=cfg.max_loaded,
                            max_rank=max(ranks, default=16), served_model_name=cfg.served_model_name or spec)
    if not vllm.vllm_installed():
        click.echo(vllm.shell_line(cmd, cfg.api_key_env))
        ui.info("vLLM is not installed here: run the command above on a machine with vLLM (pip install vllm)")
        return
    code = subprocess.call(cmd, env={**os.environ, **vllm.vllm_env(cfg.api_key_env)})
    if code:
        raise UserError(f"vllm serve exited with status {code}; its own output above says why")


# --- forge memory ---

@forge.group("memory")
def memory_group() -> None:
    """What the chat model remembers about each user (forge chat --user ID): list, edit, forget."""


def _memory_store(obj: Context, sub_recipe: Path | None):
    from .memory import MemoryStore

    return MemoryStore(_context(obj, sub_recipe).recipe().memory.dir)


@memory_group.command("list")
@_stage_recipe_option
@click.argument("user", required=False)
@click.option("--all", "show_all", is_flag=True, help="Also the facts a newer one superseded.")
@click.option("--json", "as_json", is_flag=True, help="One JSON record a line on stdout.")
@click.pass_obj
def memory_list(obj: Context, sub_recipe: Path | None, user: str | None, show_all: bool, as_json: bool) -> None:
    """The facts remembered about USER (without USER: the users with a memory).

    Example: forge memory list alice --all
    """
    store = _memory_store(obj, sub_recipe)
    if user is None:
        for name in store.users():
            ui.stdout.print(name, markup=False, highlight=False)
        return
    facts = [f for f in store.load(user) if show_all or f.status == "active"]
    for fact in facts:
        if as_json:
            ui.stdout.print(fact.model_dump_json(), markup=False, highlight=False, soft_wrap=True)
            continue
        note = f"  [superseded by {fact.superseded_by[:8]}]" if fact.status == "superseded" else ""
        if fact.supersedes:
            note += f"  [replaces {', '.join(s[:8] for s in fact.supersedes)}]"
        ui.stdout.print(f"{fact.id[:8]}  {fact.created_at}  {fact.text}{note}", markup=False, highlight=False,
                        soft_wrap=True)
    if not facts and not as_json:
        ui.info(f"nothing remembered about {user} in {store.dir}")


@memory_group.command("forget")
@_stage_recipe_option
@click.argument("user")
@click.option("--fact", "fact", default=None, help="Only this fact (its id, or a unique prefix of it).")
@click.pass_obj
def memory_forget(obj: Context, sub_recipe: Path | None, user: str, fact: str | None) -> None:
    """Delete what is remembered about USER: everything, or one fact.

    Example: forge memory forget alice --fact 3f2a9c1e
    """
    store = _memory_store(obj, sub_recipe)
    deleted = store.forget(user, fact)
    ui.info(f"forgot {deleted} fact{'s' if deleted != 1 else ''} of {user}")


@memory_group.command("edit")
@_stage_recipe_option
@click.argument("user")
@click.option("--fact", "fact", required=True, help="The fact's id (or a unique prefix of it).")
@click.option("--text", "text", required=True, help="Its new wording, in the user's voice.")
@click.pass_obj
def memory_edit(obj: Context, sub_recipe: Path | None, user: str, fact: str, text: str) -> None:
    """Reword one remembered fact of USER.

    Example: forge memory edit alice --fact 3f2a9c1e --text "I have two cats."
    """
    edited = _memory_store(obj, sub_recipe).edit(user, fact, text)
    ui.info(f"{edited.id[:8]}: {edited.text}")


# --- defaults in --help ---
# A stage option left unset takes the recipe's value, so its help shows the built-in default
# from config.py (the one place defaults live) unless the help text already states it.
_HELP_SECTIONS = {"complete": "complete", "personas": "personas", "pair": "pair", "generate": "generate",
                  "eval": "eval", "judge": "judge", "curate": "curate", "train": "train"}
_HELP_FIELDS = {"want_json": "json_replies"}


def _document_defaults() -> None:
    defaults = Recipe()
    for command_name, section_name in _HELP_SECTIONS.items():
        command = forge.commands.get(command_name)
        section = getattr(defaults, section_name)
        for param in getattr(command, "params", []):
            if not isinstance(param, click.Option) or not param.help or "default" in param.help.lower():
                continue
            name = _HELP_FIELDS.get(param.name, param.name.removesuffix("_path"))
            value = getattr(section, name, None) if name in type(section).model_fields else None
            if value is None and param.default not in (None, False) and not param.multiple:
                param.show_default = True
                continue
            if value is None or isinstance(value, (dict, list)):
                continue
            shown = ("on" if value else "off") if isinstance(value, bool) else value
            param.help = f"{param.help.rstrip()} (default: {shown})"


def _common_options_last(group: click.Group) -> None:
    """Each command's own options first in its --help, then the group options it also takes."""
    for command in group.commands.values():
        if isinstance(command, click.Group):
            _common_options_last(command)
        command.params.sort(key=lambda p: bool(p.name) and p.name.startswith(("common_", "sub_recipe")))


_document_defaults()
_common_options_last(forge)


# --- forge restyle ---
@forge.command("restyle")
@_stage_recipe_option
@config_option(("--data", "data_path"), "restyle.data")
@click.option("--styles", "styles", default=None, metavar="A,B,...",
              help="Styles to rewrite into (default: warm, witty, direct, socratic, calm; see restyle.descriptions).")
@config_option("--n", "restyle.n")
@config_option("--speaker", "restyle.speaker")
@config_option("--examples", "restyle.examples")
@config_option(("--corpus", "corpus_path"), "restyle.corpus")
@config_option("--max-tokens", "restyle.max_tokens")
@config_option("--temperature", "restyle.temperature")
@click.pass_obj
def restyle(obj: Context, sub_recipe: Path | None, data_path: Path | None, styles: str | None, n: int | None,
            speaker: str | None, examples: int | None, corpus_path: Path | None, max_tokens: int | None,
            temperature: float | None) -> None:
    """Rewrite the replies of conversations into several voices, keeping their content; every rewrite
    checked (NLI both ways, persona facts, similarity, a style classifier), failures logged with a reason.

    Example: forge --run-dir runs/styles restyle --data corpora/spc/test.jsonl.gz --styles warm,witty --n 20
    """
    from .backends import build_backend
    from .stages import restyle as stage

    chosen = None
    if styles is not None:
        chosen = [s.strip() for s in styles.split(",") if s.strip()]
        if not chosen:
            raise UserError(f"--styles {styles!r}: name at least one style, e.g. --styles warm,witty")
    recipe = _context(obj, sub_recipe).recipe(**{
        "restyle.data": str(data_path) if data_path else None, "restyle.styles": chosen, "restyle.n": n,
        "restyle.speaker": speaker, "restyle.examples": examples,
        "restyle.corpus": str(corpus_path) if corpus_path else None, "restyle.max_tokens": max_tokens,
        "restyle.temperature": temperature})
    progress = ui.verbosity() >= 0
    backend = build_backend(recipe.backend, progress=progress)

    def nli():
        from .nli.base import load_nli

        return load_nli(recipe.nli, lambda: build_backend(recipe.backend), progress)

    identity = {"backend": recipe.backend.identity(),
                "nli": recipe.nli.model_dump(mode="json", exclude={"threads", "batch_size"})}
    result = stage.run(recipe.restyle, _stage_context(recipe, obj), backend, nli, identity=identity)
    ui.summary("forge restyle", _with_last_errors(result.summary, backend))
    if result.failed:
        raise UserError(f"{result.failed} rewrite requests failed after retries{_last_error(backend)}; run the same "
                        f"command again to retry only those")


@forge.command("voices")
@_stage_recipe_option
@click.option("--generations", "generations_path", type=click.Path(path_type=Path), default=None,
              help="forge eval's generations (default <run_dir>/eval/generations.jsonl).")
@click.pass_obj
def voices(obj: Context, sub_recipe: Path | None, generations_path: Path | None) -> None:
    """How well each style adapter carries its voice: its eval replies classified by the style
    classifier (style accuracy, a confusion matrix chart), beside eval's contradiction rate per model.
    Name each adapter after its style (forge train --name warm; forge eval --adapter warm=DIR).

    Example: forge --run-dir runs/styles voices
    """
    from .stages import restyle as stage

    recipe = _context(obj, sub_recipe).recipe()
    result = stage.evaluate_voices(recipe.restyle, _stage_context(recipe, obj), generations_path)
    click.echo(stage.voices_table(result.data))
    ui.summary("forge voices", result.summary)


def _train_styles(obj: Context, sub_recipe: Path | None, overrides: dict[str, Any], styles: tuple[str, ...],
                  conflicts: list[str]) -> None:
    """forge train --style NAME ...: one SFT adapter per style in <run_dir>/adapters/<style>/."""
    if conflicts:
        raise UserError(f"--style takes its data from restyle/<style>.jsonl and writes adapters/<style>/; "
                        f"leave out {conflicts[0]}")
    from .stages import train_styles as stage

    recipe = _context(obj, sub_recipe).recipe(**overrides)
    result = stage.run(recipe.train, _stage_context(recipe, obj, fans_out=False), styles=styles,
                       base_model=recipe.backend.model, seed=recipe.seed, prompts_dir=recipe.prompts_dir)
    ui.summary("forge train --style", result.summary)


_HELP_SECTIONS["restyle"] = "restyle"


# --- forge score ---
@forge.command("score")
@_stage_recipe_option
@config_option(("--data", "data_path"), "score.data")
@config_option(("--out", "out_path"), "score.out")
@config_option("--model", "score.model")
@config_option("--limit", "score.limit")
@config_option("--positions", "score.positions")
@config_option("--nli/--no-nli", "score.nli")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON on stdout.")
@click.pass_obj
def score(obj: Context, sub_recipe: Path | None, data_path: Path | None, out_path: Path | None, model: str | None,
          limit: int | None, positions: str | None, nli: bool | None, as_json: bool) -> None:
    """Per-reply quality signals of a corpus, each in its own field: length and its z-score,
    instruction-following difficulty (IFD), reference perplexity, persona entailment and contradiction
    (docs/score.md); resumable, written beside the data (or --out) for curate --quality.

    Example: forge score --data corpora/spc/train.jsonl.gz --out runs/scores --limit 200
    """
    from .stages import score as stage

    recipe = _context(obj, sub_recipe).recipe(writes=False, **{
        "score.data": str(data_path) if data_path else None, "score.out": str(out_path) if out_path else None,
        "score.model": model, "score.limit": limit, "score.positions": positions, "score.nli": nli})
    result = stage.run(recipe.score, _stage_context(recipe, obj, fans_out=False), chat=recipe.backend,
                       nli_config=recipe.nli)
    if as_json:
        click.echo(json.dumps(result.data, indent=2, sort_keys=True))
        return
    ui.summary("forge score", result.summary)


_HELP_SECTIONS["score"] = "score"
_document_defaults()  # idempotent: options already documented are left alone
_common_options_last(forge)


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
