"""The whole loop from one recipe, callable from Python: personas -> pair -> generate -> curate -> train
-> eval -> judge, then report.md.

    from persona_forge.config import load_recipe
    from persona_forge import pipeline

    results = pipeline.run(load_recipe("recipes/quickstart.yaml"), stages=["pair", "generate"])
    results["generate"].counts["best"]

Each stage reads what the one before it wrote in the run directory (layout.py names every file), so
any stretch of the loop can run alone, and a killed run started again resumes every stage. Within one
process the NLI is loaded once and shared by personas, generate and eval; the sentence encoder is
shared through models.sentence_transformer; each stage gets its own chat backend (its usage figures
are its own). `forge run` is this function with a summary printed after each stage.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

from . import layout, ui
from .config import Recipe
from .contract import StageContext, StageResult
from .errors import UserError

PIPELINE = ("personas", "pair", "generate", "curate", "train", "eval", "judge")


def choose(stages: Iterable[str] | str | None) -> list[str]:
    """The stages asked for ("pair,generate" or a list), in pipeline order; an unknown name is a UserError."""
    if stages is None:
        return list(PIPELINE)
    if isinstance(stages, str):
        stages = stages.split(",")
    wanted = [s.strip() for s in stages if s.strip()]
    unknown = [s for s in wanted if s not in PIPELINE]
    if unknown:
        raise UserError(f"--stages: unknown stage {unknown[0]!r}; choose from {', '.join(PIPELINE)}")
    return [s for s in PIPELINE if s in wanted] or list(PIPELINE)


class Shared:
    """What the stages of one process share: the NLI, loaded on first use and then kept."""

    def __init__(self, recipe: Recipe, progress: bool):
        self.recipe, self.progress = recipe, progress
        self._nli = None

    def backend(self, config=None):
        """A chat backend for one stage: recipe.backend, or the stage's own `config` (a BackendConfig)."""
        from .backends import build_backend

        return build_backend(config or self.recipe.backend, progress=self.progress)

    def nli(self):
        if self._nli is None:
            from .backends import build_backend
            from .nli.base import load_nli

            self._nli = load_nli(self.recipe.nli, lambda: build_backend(self.recipe.backend), self.progress)
        return self._nli


def run(recipe: Recipe, stages: Sequence[str] | str | None = None, force: bool = False, progress: bool = True,
        on_result: Callable[[StageResult], None] | None = None) -> dict[str, StageResult]:
    """Run the chosen stages (all by default) in pipeline order, then write <run_dir>/report.md.

    `on_result` sees each stage's result as it finishes (the CLI prints it). A stage whose requests
    failed after retries stops the loop with a UserError, after its result was handed to `on_result`:
    the stages after it would read an unfinished input.
    """
    from . import report

    chosen = choose(stages)
    shared = Shared(recipe, progress)
    context = StageContext.for_recipe(recipe, force, progress)
    results: dict[str, StageResult] = {}
    for number, name in enumerate(chosen, 1):
        ui.info(f"[bold]forge run[/bold] {number}/{len(chosen)}: {name}")
        result = STAGES[name](recipe, shared, context)
        results[name] = result
        if on_result is not None:
            on_result(result)
        if result.failed:
            raise UserError(f"{name}: {result.failed} requests failed after retries; run the same command again "
                            f"to retry only those")
    report.write(recipe.run_dir)
    return results


# --- each stage: what it is handed, and its result --------------------------------------------------

def _personas(recipe: Recipe, shared: Shared, context: StageContext) -> StageResult:
    from .stages import personas

    backend = shared.backend() if recipe.personas.expand else None
    return personas.run(recipe.personas, context, backend, shared.nli, chat=recipe.backend, nli_config=recipe.nli,
                        prompts_dir=recipe.prompts_dir)


def _pair(recipe: Recipe, shared: Shared, context: StageContext) -> StageResult:
    from .stages import pairing

    return pairing.run(recipe.pair, context)


def _generate(recipe: Recipe, shared: Shared, context: StageContext) -> StageResult:
    from .embeddings import Embedder
    from .stages import generate

    embed = Embedder(recipe.personas.model) if recipe.generate.critic.prefilter > 0 else None
    backend = shared.backend(generate.backend_config(recipe.generate, recipe.backend))
    return generate.run(recipe.generate, context, backend, shared.nli, chat=recipe.backend, nli_config=recipe.nli,
                        embed=embed, default_profiles=recipe.pair.profiles, prompts_dir=recipe.prompts_dir)


def _curate(recipe: Recipe, shared: Shared, context: StageContext) -> StageResult:
    from .stages import curate

    return curate.run(recipe.curate, context, recipe.backend)


def _train(recipe: Recipe, shared: Shared, context: StageContext) -> StageResult:
    from .stages import train

    return train.run(recipe.train, context, base_model=recipe.backend.model, seed=recipe.seed,
                     prompts_dir=recipe.prompts_dir, nli_config=recipe.nli, eval_data=recipe.eval.data)


def _eval(recipe: Recipe, shared: Shared, context: StageContext) -> StageResult:
    from . import metrics
    from .stages import evaluation

    adapters = {folder.parent.name: folder for folder in layout.trained_adapters(context.run_dir)}
    scorers = evaluation.Scorers(lambda: metrics.load_bertscore(recipe.eval.bertscore_layer), shared.nli)
    return evaluation.run(recipe.eval, context, chat=recipe.backend, nli_config=recipe.nli, adapters=adapters,
                          scorers=scorers)


def _judge(recipe: Recipe, shared: Shared, context: StageContext) -> StageResult:
    from .stages import judging

    return judging.run(recipe.judge, context, chat=recipe.backend, nli_config=recipe.nli,
                       bootstrap=(recipe.eval.bootstrap, recipe.eval.seed), contradiction=recipe.eval.contradiction,
                       prompts_dir=recipe.prompts_dir)


def _restyle(recipe: Recipe, shared: Shared, context: StageContext) -> StageResult:
    """Not in PIPELINE: `forge restyle` runs it; from Python, STAGES["restyle"](recipe, shared, context)."""
    from .stages import restyle

    identity = {"backend": recipe.backend.identity(),
                "nli": recipe.nli.model_dump(mode="json", exclude={"threads", "batch_size"})}
    return restyle.run(recipe.restyle, context, shared.backend(), shared.nli, identity=identity)


STAGES: dict[str, Callable[[Recipe, Shared, StageContext], StageResult]] = {
    "personas": _personas, "pair": _pair, "generate": _generate, "curate": _curate, "train": _train,
    "eval": _eval, "judge": _judge, "restyle": _restyle}
