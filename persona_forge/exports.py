"""Training files that trainers accept, from curated samples and preference pairs.

Formats (one JSON object per line):
  sft.jsonl        TRL conversational language modelling: {"messages": [{"role", "content"}, ...]}
  dpo.jsonl        TRL conversational preference: {"prompt": [messages], "chosen": [assistant message],
                   "rejected": [assistant message]}
  openai.jsonl     OpenAI chat fine-tuning: {"messages": [...]} (checked by `openai_row_errors`)
  openai_dpo.jsonl OpenAI preference fine-tuning: {"input": {"messages": [...]}, "preferred_output":
                   [assistant message], "non_preferred_output": [assistant message]}
  sharegpt.jsonl   {"conversations": [{"from": "system"|"human"|"gpt", "value": ...}]}

Before anything is written, each row goes through the target model's chat template with trl's own
`apply_chat_template` (what SFTTrainer and DPOTrainer do to conversational rows), so a row a trainer
would reject, or one longer than the limit, is dropped here with its reason instead.
"""

from __future__ import annotations

import json
import shutil
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .prompts import PromptLibrary, library
from .samples import SYSTEM_PROMPT
from .schema import Preference, Sample, Turn

DPO_PROMPT = "curate/dpo_conversation"
SHAREGPT_ROLES = {"system": "system", "user": "human", "assistant": "gpt"}
SPEAKER_NAMES = {"user1": "User 1", "user2": "User 2"}


# --- rows ----------------------------------------------------------------------------------------

def messages_of(sample: Sample) -> list[dict[str, str]]:
    return [{"role": m.role, "content": m.content} for m in sample.messages]


def sft_row(sample: Sample) -> dict[str, Any]:
    return {"messages": messages_of(sample)}


def sharegpt_row(sample: Sample) -> dict[str, Any]:
    return {"conversations": [{"from": SHAREGPT_ROLES[m.role], "value": m.content} for m in sample.messages]}


def transcript(turns: Sequence[Turn]) -> str:
    """A conversation as "User 1: ..." / "User 2: ..." lines."""
    return "\n".join(f"{SPEAKER_NAMES[t.speaker]}: {' '.join(t.text.split())}" for t in turns)


def dpo_prompt(user1_persona: Sequence[str], user2_persona: Sequence[str],
               prompts: PromptLibrary | None = None) -> list[dict[str, str]]:
    rendered = (prompts or library()).render(DPO_PROMPT, user1_persona=list(user1_persona),
                                             user2_persona=list(user2_persona))
    return [dict(m) for m in rendered.messages]


def dpo_row(preference: Preference, prompts: PromptLibrary | None = None) -> dict[str, Any]:
    """The critic's preference as a TRL conversational preference row: the request to write a
    conversation between these two personas, and the two conversations as assistant answers."""
    return {"prompt": dpo_prompt(preference.user1_persona, preference.user2_persona, prompts),
            "chosen": [{"role": "assistant", "content": transcript(preference.chosen_turns)}],
            "rejected": [{"role": "assistant", "content": transcript(preference.rejected_turns)}]}


def openai_dpo_row(row: dict[str, Any]) -> dict[str, Any]:
    return {"input": {"messages": row["prompt"]}, "preferred_output": row["chosen"],
            "non_preferred_output": row["rejected"]}


# --- the OpenAI fine-tuning checks ---------------------------------------------------------------
# The rules of OpenAI's chat fine-tuning files (the fine-tuning guide and the cookbook's
# "Data preparation and analysis for chat model fine-tuning" checks): each line an object with a
# `messages` list; each message has `role` and `content` and no keys beyond role, content, name,
# weight (0 or 1), function_call, tool_calls; roles system, user, assistant (tool/function are not
# used here); every example has an assistant message; a file needs at least 10 examples; examples
# longer than the model's training context (16,385 tokens for gpt-3.5-turbo, 65,536 for gpt-4o and
# gpt-4o-mini) are truncated. We add what a chat trainer assumes too: the system message comes
# first if at all, user and assistant alternate, contents are non-empty, the last message is the
# assistant's (the trained target).

OPENAI_ROLES = ("system", "user", "assistant")
OPENAI_MESSAGE_KEYS = {"role", "content", "name", "weight", "function_call", "tool_calls"}
OPENAI_MIN_EXAMPLES = 10


def message_errors(messages: Any, last_role: str | None = "assistant") -> list[str]:
    if not isinstance(messages, list) or not messages:
        return ["missing messages list"]
    errors = []
    previous = None
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            errors.append(f"message {i} is not an object")
            continue
        if "role" not in message or "content" not in message:
            errors.append(f"message {i} lacks role or content")
            continue
        extra = set(message) - OPENAI_MESSAGE_KEYS
        if extra:
            errors.append(f"message {i} has unknown keys {sorted(extra)}")
        role = message["role"]
        if role not in OPENAI_ROLES:
            errors.append(f"message {i} has unrecognised role {role!r}")
        if role == "system" and i != 0:
            errors.append(f"message {i}: a system message only comes first")
        if not isinstance(message["content"], str) or not message["content"].strip():
            errors.append(f"message {i} has empty content")
        if "weight" in message and message["weight"] not in (0, 1):
            errors.append(f"message {i}: weight must be 0 or 1")
        if role in ("user", "assistant") and role == previous:
            errors.append(f"message {i}: two {role} messages in a row (roles must alternate)")
        previous = role
    roles = [m.get("role") for m in messages if isinstance(m, dict)]
    if last_role == "assistant" and "assistant" not in roles:
        errors.append("no assistant message")
    if last_role and roles and roles[-1] != last_role:
        errors.append(f"the last message is {roles[-1]!r}, not {last_role!r}")
    return errors


def openai_row_errors(row: Any) -> list[str]:
    """What is wrong with one OpenAI chat fine-tuning line ([] when nothing is)."""
    if not isinstance(row, dict):
        return ["not a JSON object"]
    extra = set(row) - {"messages", "tools", "parallel_tool_calls"}
    errors = [f"unknown top-level keys {sorted(extra)}"] if extra else []
    return errors + message_errors(row.get("messages"))


def openai_dpo_row_errors(row: Any) -> list[str]:
    """What is wrong with one OpenAI preference fine-tuning line ([] when nothing is)."""
    if not isinstance(row, dict) or not isinstance(row.get("input"), dict):
        return ["missing input object"]
    errors = message_errors(row["input"].get("messages"), last_role="user")
    for key in ("preferred_output", "non_preferred_output"):
        out = row.get(key)
        if not (isinstance(out, list) and len(out) == 1 and isinstance(out[0], dict)
                and out[0].get("role") == "assistant" and isinstance(out[0].get("content"), str)
                and out[0]["content"].strip()):
            errors.append(f"{key} must be one non-empty assistant message")
    return errors


def openai_file_errors(rows: Sequence[Any], dpo: bool = False) -> dict[str, int]:
    """Error kinds and their counts over a whole file ({} when it is valid)."""
    counts: dict[str, int] = {}
    check = openai_dpo_row_errors if dpo else openai_row_errors
    for row in rows:
        for error in check(row):
            kind = error.split(": ", 1)[-1] if error.startswith("message ") else error
            counts[kind] = counts.get(kind, 0) + 1
    if 0 < len(rows) < OPENAI_MIN_EXAMPLES:
        counts[f"fewer than {OPENAI_MIN_EXAMPLES} examples"] = 1
    return counts


# --- the render check ----------------------------------------------------------------------------

class RenderError(Exception):
    pass


@dataclass
class TemplateCheck:
    """Renders rows through a model's chat template (trl's apply_chat_template) and counts tokens;
    without a local model, checks the OpenAI rules and estimates tokens (about 4 characters each)."""

    tokenizer: Any = None
    source: str = ""

    @property
    def kind(self) -> str:
        return "chat template" if self.tokenizer is not None else "format only"

    def describe(self) -> str:
        if self.tokenizer is None:
            return (f"format check only ({self.source}: no local chat template); token counts are "
                    f"estimates (characters / 4)")
        return f"rendered with the chat template of {self.source} (trl.data_utils.apply_chat_template)"

    def tokens(self, row: dict[str, Any]) -> int:
        """Render a {"messages"} or {"prompt", "chosen", "rejected"} row; its longest rendering's
        token count. RenderError if the template (or the format) rejects it."""
        if "messages" in row:
            errors = message_errors(row["messages"])
        else:
            errors = message_errors(row["prompt"], last_role="user") + \
                [e for key in ("chosen", "rejected") for e in message_errors(row[key])]
        if errors:
            raise RenderError(errors[0])
        if self.tokenizer is None:
            texts = [" ".join(m["content"] for m in row["messages"])] if "messages" in row else \
                [" ".join(m["content"] for m in row["prompt"] + row[k]) for k in ("chosen", "rejected")]
            return max(len(t) // 4 + 1 for t in texts)
        from trl.data_utils import apply_chat_template

        try:
            rendered = apply_chat_template(row, self.tokenizer)
        except Exception as exc:  # a template's own error (e.g. "roles must alternate"): the row is unusable
            raise RenderError(f"{type(exc).__name__}: {exc}") from None
        if "text" in rendered:
            texts = [rendered["text"]]
            target = row["messages"][-1]["content"].strip()
            if target not in rendered["text"]:
                raise RenderError("the chat template dropped the assistant target")
        else:
            texts = [rendered["prompt"] + rendered["chosen"], rendered["prompt"] + rendered["rejected"]]
            if not rendered["chosen"].strip() or not rendered["rejected"].strip():
                raise RenderError("the chat template left chosen or rejected empty")
        return max(len(self.tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts)


def template_check(spec: str, backend_kind: str, progress: bool = True) -> TemplateCheck:
    """The target model's chat template when the model is local (packaged, a folder, or a cached
    hub model); otherwise (an OpenAI-served model, say) the format check alone."""
    from .errors import UserError
    from .models import causal_lm_path, resolve

    if backend_kind == "openai":
        return TemplateCheck(None, spec)
    try:
        source = resolve(spec)
        if source.kind == "hub":
            from huggingface_hub import snapshot_download

            path = snapshot_download(source.name, local_files_only=True)
        else:
            path = causal_lm_path(spec, progress=progress)
    except (UserError, Exception):  # not local: say so in the report, check the format alone
        return TemplateCheck(None, spec)
    from .lm import load_tokenizer

    tokenizer = load_tokenizer(path, padding_side="right")
    if not getattr(tokenizer, "chat_template", None):
        return TemplateCheck(None, f"{spec} (it has no chat template)")
    return TemplateCheck(tokenizer, spec)


# --- the curated folder: datasets, parquet and the dataset card -----------------------------------

def write_datasets(out: Path, train: list[dict], heldout: list[dict], dpo: list[dict]) -> None:
    """dataset/ (DatasetDict.save_to_disk) and parquet/, each replaced whole: built beside, then swapped in."""
    import datasets
    from datasets import Dataset, DatasetDict

    datasets.disable_progress_bars()
    splits = {"train": Dataset.from_list(train)}
    if heldout:
        splits["heldout"] = Dataset.from_list(heldout)
    for name, write in (("dataset", lambda tmp: DatasetDict(splits).save_to_disk(str(tmp))),
                        ("parquet", lambda tmp: _write_parquet(tmp, splits, dpo))):
        tmp = out / f".{name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        write(tmp)
        final = out / name
        old = out / f".{name}.old"
        shutil.rmtree(old, ignore_errors=True)
        if final.exists():
            final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old, ignore_errors=True)


def _write_parquet(folder: Path, splits: dict[str, Any], dpo: list[dict]) -> None:
    from datasets import Dataset

    folder.mkdir(parents=True)
    for name, ds in splits.items():
        ds.to_parquet(str(folder / f"{name}.parquet"))
    if dpo:
        Dataset.from_list(dpo).to_parquet(str(folder / "dpo.parquet"))


def dataset_card(cfg: Any, conv: Any, data: Path, prefs: Path | None, counts: dict[str, int],
                 report: dict[str, Any], check: TemplateCheck, prompts, reasons: Counter, dpo_tokens: list[int]) -> str:
    """README.md for the curated folder: Hugging Face metadata (licence, the parquet split) and what
    was chosen, from what, how, and what was dropped (`cfg` is the CurateConfig, `conv` the corpora.Conversations)."""
    from huggingface_hub import DatasetCard, DatasetCardData

    measures = report["measures"]
    names = list(measures)
    header = "| measure | " + " | ".join(names) + " |\n|---|" + "---|" * len(names) + "\n"
    body = ""
    for key, label in (("coverage_mean_distance", "coverage: mean distance to the nearest chosen (lower is better)"),
                       ("max_distance", "worst-covered sample's distance"),
                       ("clusters_covered", f"clusters covered (of {report['clusters']})"),
                       ("mean_quality", "mean critic score"), ("distinct_personas", "distinct personas")):
        body += f"| {label} | " + " | ".join(measure_cell(measures[n][key]) for n in names) + " |\n"
    drops = "\n".join(f"| {reason} | {n:,} |" for reason, n in sorted(reasons.items())) or "| (none) | 0 |"
    models = ", ".join(conv.models) if conv.models else "none recorded (conversations read from a file)"
    tokens = report.get("tokens", {})
    sample_form = ("next reply: the replying user's persona as the system prompt, up to "
                   f"{cfg.context} earlier turns, the other user's turn as the last user message, the reply as "
                   f"the assistant target ({'one per conversation, the reply at turn index ' + str(cfg.position) if cfg.positions == 'study' else 'every reply of both speakers'})"
                   if cfg.kind == "next_reply" else
                   "whole conversation played from one persona's side: that persona as the system prompt, the other "
                   "user's turns as user messages, the persona's own turns as assistant messages")
    heldout_line = f"- `dataset/` split `heldout`, `heldout_sft.jsonl`: {counts['heldout']:,} held-out samples " \
                   f"from conversations the chosen samples do not come from\n" if counts["heldout"] else ""
    metadata = DatasetCardData(license=cfg.licence, language=["en"], task_categories=["text-generation"],
                               tags=["persona", "dialogue", "synthetic", "persona_forge"],
                               configs=[{"config_name": "default",
                                         "data_files": [{"split": "train", "path": "parquet/train.parquet"}]}])
    return str(DatasetCard(f"---\n{metadata.to_yaml()}\n---\n\n" + f"""# Persona chat samples curated by persona_forge

{counts['selected']:,} samples chosen from {report['pool']:,} (after cleaning) built from {conv.description}.
Sample form: {sample_form}.

## Files

- `sft.jsonl`, `dataset/` (a `datasets.DatasetDict`, `load_from_disk`), `parquet/train.parquet`: {counts['selected']:,} rows of `{{"messages": [...]}}` (TRL conversational SFT)
{heldout_line}- `dpo.jsonl` (and `parquet/dpo.parquet`): {counts['dpo_rows']:,} rows of `{{"prompt", "chosen", "rejected"}}` (TRL conversational preference): the request to write a conversation between two personas, and two conversations the critic ranked
- `openai.jsonl`, `openai_dpo.jsonl`: OpenAI chat and preference fine-tuning format (checked: {_plain(report['openai_check'])})
- `sharegpt.jsonl`: `{{"conversations": [{{"from", "value"}}]}}`
- `samples.jsonl` (every sample built), `selected.jsonl` (the chosen, with ids, personas and scores), `curate_rejections.jsonl` (everything dropped, and why), `selection.json` (the figures below)

## Sources and licences

- Conversations: `{data}`{f'; preferences: `{prefs}`' if prefs else ''}.
- Personas and, for `--data` corpora, conversations derive from Synthetic-Persona-Chat (Jandaghi et al. 2023,
  Google Research), CC-BY 4.0: attribution required. This dataset: `{cfg.licence}`.
- Conversation models: {models}.
- Embeddings for duplicates and selection: {cfg.model}.
- Render check: {check.describe()}; tokens per row: {_plain({k: v for k, v in tokens.items() if k != "counted_with"})}.

## Prompts

- `{SYSTEM_PROMPT}` (hash {prompts.ref(SYSTEM_PROMPT).hash}): the persona system prompt, shared with evaluation and chat.
- `{DPO_PROMPT}` (hash {prompts.ref(DPO_PROMPT).hash}): the DPO request.

## Cleaning

Critic-score floor {cfg.min_quality} (unscored samples kept), exact duplicates, near-duplicates at cosine
similarity >= {cfg.dedup_threshold} (FAISS range search; the better-scored sample kept), rows the chat
template rejects or longer than {cfg.max_tokens} tokens. Dropped:

| reason | samples |
|---|---|
{drops}

## Selection

Strategy `{cfg.strategy}`, quality weight {cfg.quality_weight} (a candidate's gain times
(1 - w) + w * quality; unscored counts 0.5){f", density weight {cfg.density_weight} (k-center: distance times (1 - d) + d * density)" if cfg.strategy == "kcenter" else ""}, seed {cfg.seed}.
Compared on the same pool:

{header}{body}"""))


def measure_cell(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.4f}" if isinstance(value, float) else f"{value:,}"


def _plain(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False)
