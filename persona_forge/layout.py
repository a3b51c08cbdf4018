"""Every file a run directory holds, named once.

A stage declares what it reads (INPUTS) and writes (OUTPUTS) from these names, and a stage that reads
another's output (generate reads pairing's pairs, train reads curate's files, judge reads eval's
generations, the report reads them all) takes the name from here rather than spelling it again.
Paths are relative to the run directory; `<stage>.manifest.json` sits beside them (store.RunDir).

    personas   -> attributes.jsonl, profiles.jsonl, rejections.jsonl, personas_*.jsonl
    pair       -> pairs.jsonl, pair_rejections.jsonl, pair_similarity.png, pair_*embeddings.npy/.json
    generate   -> dialogues.jsonl, best.jsonl, preferences.jsonl, generate_rejections.jsonl (generate_progress.jsonl
                  while a turns-mode run is unfinished)
    curate     -> curated/ (sft.jsonl, dpo.jsonl, openai.jsonl, ..., dataset/, parquet/, README.md)
    train      -> train/<name>/ (adapter/, checkpoints/, log.jsonl, loss.png, merged/, train.manifest.json);
                  with --style: adapters/<style>/ (the same, plus sft.jsonl and styles.manifest.json)
    eval       -> eval/ (generations.jsonl, metrics.json, table.md, eval.png, report.md)
    judge      -> judge/ (judgements.jsonl, pairwise.jsonl, bigfive.jsonl, judge.json, judge.png, report.md)
    restyle    -> restyle/ (rewrites.jsonl, rejections.jsonl, <style>.jsonl, classifier.json, classifier_confusion.png)
    run        -> report.md
"""

from __future__ import annotations

from pathlib import Path

# --- complete (a one-off: prompts in, replies out) -----------------------------------------------
COMPLETIONS = "complete.jsonl"

# --- personas ------------------------------------------------------------------------------------
ATTRIBUTES = "attributes.jsonl"
PROFILES = "profiles.jsonl"
PERSONA_REJECTIONS = "rejections.jsonl"
PERSONA_QUESTIONS = "personas_questions.jsonl"
PERSONA_REPLIES = "personas_replies.jsonl"
PERSONA_CHECKS = "personas_checks.jsonl"

# --- pair ----------------------------------------------------------------------------------------
PAIRS = "pairs.jsonl"
PAIR_REJECTIONS = "pair_rejections.jsonl"
PAIR_SIMILARITY = "pair_similarity.png"
PAIR_EMBEDDINGS = "pair_embeddings"                        # .npy + .json: a cache, kept across configs
PAIR_ATTRIBUTE_EMBEDDINGS = "pair_attribute_embeddings"    # .npy + .json: a cache, kept across configs

# --- generate ------------------------------------------------------------------------------------
DIALOGUES = "dialogues.jsonl"
BEST = "best.jsonl"
PREFERENCES = "preferences.jsonl"
GENERATE_REJECTIONS = "generate_rejections.jsonl"
GENERATE_PROGRESS = "generate_progress.jsonl"             # turns mode: finished turns of unfinished conversations

# --- curate --------------------------------------------------------------------------------------
CURATED = "curated"                                        # a folder, replaced whole
CURATE_EMBEDDINGS = "curate_embeddings"                    # .npy + .json: a cache, kept across configs


def curated(name: str) -> str:
    """A file of the curated folder: sft.jsonl, dpo.jsonl, openai.jsonl, README.md, ..."""
    return f"{CURATED}/{name}"


def training_file(method: str) -> str:
    """The file curate exports for a training method (sft, dpo) or the hosted job (openai)."""
    return curated(f"{method}.jsonl")


# --- train ---------------------------------------------------------------------------------------
TRAIN = "train"                                            # train/<name>/, one folder per adapter
ADAPTER = "adapter"                                        # inside train/<name>/
LOSS_CURVE = "loss.png"                                    # inside train/<name>/
TRAIN_MANIFEST = "train.manifest.json"                     # inside train/<name>/, beside the adapter


def train_dir(run_dir: Path, name: str) -> Path:
    return Path(run_dir) / TRAIN / name


ADAPTERS = "adapters"                                      # adapters/<style>/: forge train --style, one per style
STYLE_ROWS = "sft.jsonl"                                   # inside adapters/<style>/: the rows it trained on


def style_adapter_dir(run_dir: Path, style: str) -> Path:
    """adapters/<style>/: a train folder (adapter/, checkpoints/, log.jsonl, loss.png, train.manifest.json)
    plus the rows and styles.manifest.json; `forge serve --adapters-dir <run_dir>/adapters` serves it as <style>."""
    return Path(run_dir) / ADAPTERS / style


def trained_adapters(run_dir: Path) -> list[Path]:
    """Every adapter folder that train finished in this run directory, by name."""
    return [p.parent for p in sorted(Path(run_dir).glob(f"{TRAIN}/*/{ADAPTER}/adapter_config.json"))]


# --- eval ----------------------------------------------------------------------------------------
EVAL = "eval"                                              # a folder
EVAL_GENERATIONS = f"{EVAL}/generations.jsonl"
EVAL_METRICS = f"{EVAL}/metrics.json"
EVAL_TABLE = f"{EVAL}/table.md"
EVAL_CHART = f"{EVAL}/eval.png"
EVAL_REPORT = f"{EVAL}/report.md"

# --- judge ---------------------------------------------------------------------------------------
JUDGE = "judge"                                            # a folder
JUDGE_REPORT = f"{JUDGE}/report.md"
JUDGE_CHART = f"{JUDGE}/judge.png"

# --- restyle -------------------------------------------------------------------------------------
RESTYLE = "restyle"                                        # a folder
RESTYLE_REWRITES = f"{RESTYLE}/rewrites.jsonl"             # every Rewrite, appended (the resume log)
RESTYLE_REJECTIONS = f"{RESTYLE}/rejections.jsonl"
RESTYLE_CLASSIFIER = f"{RESTYLE}/classifier.json"          # the style classifier's held-out figures
RESTYLE_CONFUSION = f"{RESTYLE}/classifier_confusion.png"


VOICES = "voices"                                          # forge voices: style adapters judged by the classifier
VOICES_REPORT = f"{VOICES}/voices.json"
VOICES_TABLE = f"{VOICES}/table.md"
VOICES_CONFUSION = f"{VOICES}/confusion.png"


def restyled(style: str) -> str:
    """The conversations rewritten into one style (Dialogue records): restyle/<style>.jsonl."""
    return f"{RESTYLE}/{style}.jsonl"


# --- the whole run -------------------------------------------------------------------------------
REPORT = "report.md"


def manifest(stage: str) -> str:
    return f"{stage}.manifest.json"
