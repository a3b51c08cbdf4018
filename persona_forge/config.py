"""Recipes: YAML files that configure a run; command-line flags override them.

Precedence is CLI > recipe > defaults. Every section is a pydantic model that forbids unknown
keys, so a typo in a recipe is an error naming its path (and the key it probably meant).
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import UserError


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SamplingConfig(Section):
    temperature: float = Field(0.8, ge=0.0, le=2.0, description="Sampling temperature; 0 is greedy.")
    top_p: float = Field(0.95, gt=0.0, le=1.0, description="Nucleus sampling mass.")
    max_tokens: int = Field(256, ge=1, description="Most new tokens per reply.")


class BackendConfig(Section):
    kind: Literal["local", "openai", "fake"] = Field(
        "local", description="local: a model run in-process; openai: any OpenAI-compatible endpoint; "
                             "fake: scripted replies (tests).")
    model: str = Field("packaged:smollm2-135m-instruct",
                       description="Model: packaged:NAME, a local folder, or a hub name (local); "
                                   "the served model's name (openai).")
    base_url: str | None = Field(None, description="Endpoint, e.g. http://127.0.0.1:8000/v1 (openai).")
    api_key_env: str = Field("OPENAI_API_KEY",
                             description="Name of the environment variable that holds the API key.")
    concurrency: int = Field(16, ge=1, le=4096, description="Requests in flight at once (openai).")
    timeout_s: float = Field(120.0, gt=0, description="Seconds before one request is abandoned and retried.")
    max_retries: int = Field(6, ge=0, description="Retries per request on 429, 5xx, timeouts, dropped connections.")
    backoff_s: float = Field(0.5, ge=0, description="First retry delay; doubles each retry, with jitter.")
    backoff_max_s: float = Field(30.0, ge=0, description="Longest delay between retries.")
    json_mode: bool = Field(True, description="Ask the endpoint for response_format=json_object when JSON is wanted.")
    max_tokens_field: Literal["max_tokens", "max_completion_tokens"] = Field(
        "max_tokens", description="Which request field carries the token limit (newer OpenAI models "
                                  "want max_completion_tokens).")
    batch_size: int = Field(8, ge=1, description="Prompts generated together (local).")
    threads: int | None = Field(None, ge=1, description="torch threads (local); default: the usable cores.")
    repetition_penalty: float = Field(1.15, ge=1.0, description="Keeps small local models from looping.")
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    replies: list[str] = Field(default_factory=list, description="Scripted replies, in order (fake).")
    default_reply: str = Field("ok", description="Reply once the script runs out (fake).")
    delay_s: float = Field(0.0, ge=0, description="Seconds each reply takes (fake).")

    def identity(self) -> dict[str, Any]:
        """What decides the outputs, for config hashes: not concurrency, timeouts or keys."""
        ident = {"kind": self.kind, "model": self.model, "sampling": self.sampling.model_dump()}
        if self.kind == "openai":
            ident["base_url"] = self.base_url
        if self.kind == "local":
            ident["repetition_penalty"] = self.repetition_penalty
        return ident


class CompleteConfig(Section):
    input: Path | None = Field(None, description="JSONL of prompts: {\"prompt\": ...} or {\"messages\": [...]}.")
    json_replies: bool = Field(False, description="Ask for JSON replies and parse them.")
    seed: int = Field(0, description="Seed; each prompt's own seed derives from it and its index.")


class NLIConfig(Section):
    kind: Literal["embedded", "hf", "llm"] = Field(
        "embedded", description="embedded: the cross-encoder we train (built once into the cache); "
                                "hf: any sequence-classification NLI checkpoint; llm: the chat backend as judge.")
    model: str | None = Field(None, description="hf: a local folder or hub name, e.g. "
                                                "cross-encoder/nli-deberta-v3-base.")
    batch_size: int = Field(64, ge=1, description="Pairs per forward pass.")
    max_length: int = Field(128, ge=8, le=512, description="Tokens per pair; longer pairs are truncated with a warning.")
    quantize: bool = Field(False, description="int8 dynamic quantization on CPU: about 1.7x faster, but it cost "
                                              "the embedded model 3 points of accuracy; off by default.")
    threads: int | None = Field(None, ge=1, description="torch threads; default: the usable cores.")


class Recipe(Section):
    run_dir: Path = Field(Path("runs/default"), description="Where every stage writes.")
    seed: int = Field(0, description="Global seed.")
    prompts_dir: Path | None = Field(None, description="A folder of prompt templates that override the built-in ones.")
    backend: BackendConfig = Field(default_factory=BackendConfig)
    complete: CompleteConfig = Field(default_factory=CompleteConfig)
    nli: NLIConfig = Field(default_factory=NLIConfig)


def load_recipe(path: Path | None, overrides: dict[str, Any] | None = None) -> Recipe:
    """Read a recipe (or the defaults), apply dotted-key overrides, validate."""
    data: dict[str, Any] = {}
    where = "defaults"
    if path is not None:
        where = str(path)
        data = _read_yaml(Path(path))
        _resolve_relative(data, Path(path))
    for dotted, value in (overrides or {}).items():
        if value is not None:
            _set_dotted(data, dotted, value)
    return validate_recipe(data, where)


def validate_recipe(data: dict[str, Any], where: str) -> Recipe:
    try:
        return Recipe.model_validate(data)
    except ValidationError as exc:
        raise UserError(f"{where}: {_explain(exc.errors()[0])}") from None


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise UserError(f"{path}: recipe not found; give a YAML file (see recipes/ for examples)")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f":{mark.line + 1}" if mark else ""
        raise UserError(f"{path}{at}: not valid YAML ({getattr(exc, 'problem', exc)})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"{path}: a recipe is a YAML mapping of sections, got {type(data).__name__}")
    return data


# Paths in a recipe are relative to the working directory, as on the command line, except
# prompts_dir, which belongs with the recipe that names it.
def _resolve_relative(data: dict[str, Any], recipe_path: Path) -> None:
    prompts_dir = data.get("prompts_dir")
    if isinstance(prompts_dir, str) and not Path(prompts_dir).is_absolute():
        data["prompts_dir"] = str(recipe_path.parent / prompts_dir)


def _set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = data
    for key in keys[:-1]:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise UserError(f"cannot set {dotted}: {key} is not a section")
    node[keys[-1]] = value


def parse_set_option(items: tuple[str, ...]) -> dict[str, Any]:
    """`--set generate.candidates=5` pairs into a dict of YAML-typed values."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise UserError(f"--set {item!r}: expected KEY=VALUE, e.g. --set backend.concurrency=32")
        out[key.strip()] = yaml.safe_load(raw) if raw else ""
    return out


def _explain(error: dict[str, Any]) -> str:
    loc = [str(p) for p in error["loc"]]
    where = ".".join(loc) or "(top level)"
    if error["type"] == "extra_forbidden":
        parent = _model_at(loc[:-1])
        hint = ""
        if parent is not None:
            close = difflib.get_close_matches(loc[-1], list(parent.model_fields), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else \
                f" (known keys: {', '.join(parent.model_fields)})"
        return f"{where}: unknown key{hint}"
    return f"{where}: {error['msg']}"


def _model_at(loc: list[str]) -> type[BaseModel] | None:
    model: type[BaseModel] = Recipe
    for key in loc:
        field = model.model_fields.get(key)
        annotation = getattr(field, "annotation", None)
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return None
        model = annotation
    return model
