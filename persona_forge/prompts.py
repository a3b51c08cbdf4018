"""Prompt templates: Jinja2 files under prompts/<stage>/<name>.j2, rendered strictly.

A template may split itself into chat messages with section lines `### system`, `### user` and
`### assistant`; without them the whole text is one user message. Every rendering carries the
template's name and a hash of its source, which stages record in their manifests and records.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import jinja2

from .errors import UserError
from .resources import data_dir

_SECTION = re.compile(r"^### (system|user|assistant)[ \t]*$", re.MULTILINE)


@dataclass(frozen=True)
class PromptRef:
    name: str
    hash: str


@dataclass(frozen=True)
class RenderedPrompt:
    ref: PromptRef
    messages: tuple[dict[str, str], ...]

    @property
    def text(self) -> str:
        return "\n\n".join(m["content"] for m in self.messages)


class PromptLibrary:
    """Templates from an optional user folder first, then the built-in prompts/."""

    def __init__(self, override_dir: Path | None = None):
        folders = [str(override_dir)] if override_dir else []
        folders.append(str(data_dir("prompts")))
        self._env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(folders),
            undefined=jinja2.StrictUndefined,
            keep_trailing_newline=False,
            trim_blocks=True,
            lstrip_blocks=True,
            autoescape=False,
        )

    def source(self, name: str) -> str:
        try:
            text, _, _ = self._env.loader.get_source(self._env, _file(name))
        except jinja2.TemplateNotFound:
            raise UserError(f"prompt '{name}' not found (looked for {_file(name)} in "
                            f"{', '.join(self._env.loader.searchpath)})") from None
        return text

    def ref(self, name: str) -> PromptRef:
        return PromptRef(name, hashlib.sha256(self.source(name).encode("utf-8")).hexdigest()[:16])

    def render(self, name: str, **variables: Any) -> RenderedPrompt:
        template = self._template(name)
        try:
            text = template.render(**variables)
        except jinja2.UndefinedError as exc:
            raise UserError(f"prompt '{name}': {exc}; the template uses a variable the stage does not "
                            f"provide (check {_file(name)})") from None
        return RenderedPrompt(self.ref(name), split_messages(text))

    def _template(self, name: str) -> jinja2.Template:
        try:
            return self._env.get_template(_file(name))
        except jinja2.TemplateNotFound:
            self.source(name)  # raises the readable error
            raise
        except jinja2.TemplateSyntaxError as exc:
            raise UserError(f"prompt '{name}': template syntax error at line {exc.lineno}: {exc.message}") from None


def _file(name: str) -> str:
    return name if name.endswith(".j2") else f"{name}.j2"


def split_messages(text: str) -> tuple[dict[str, str], ...]:
    parts = _SECTION.split(text)
    if len(parts) == 1:
        return ({"role": "user", "content": text.strip()},)
    if parts[0].strip():
        raise UserError("prompt text before the first '### <role>' section line")
    messages = []
    for role, content in zip(parts[1::2], parts[2::2]):
        messages.append({"role": role, "content": content.strip()})
    return tuple(messages)


@lru_cache(maxsize=4)
def library(override_dir: str | None = None) -> PromptLibrary:
    return PromptLibrary(Path(override_dir) if override_dir else None)


def render(name: str, **variables: Any) -> RenderedPrompt:
    """Render a built-in prompt: `render("generate/turn", persona=..., history=...)`."""
    return library().render(name, **variables)
