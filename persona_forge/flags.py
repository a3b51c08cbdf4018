"""Click options derived from the recipe's config fields: one source for a flag's help, type and default.

`config_option("--n", "curate.n")` is `click.option("--n", type=int, default=None, help=...)` with the
help taken from the field's `Field(description=...)`, a Literal's values as `click.Choice`, a path as
`click.Path`, a bool as a flag, and the field's default shown after the help. The option's own default
stays None, so a flag that is not given leaves the recipe's value alone (CLI > recipe > defaults); the
command passes the value on under the same dotted key.
"""

from __future__ import annotations

import types
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import click
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from .config import Recipe


def config_option(decls: str | tuple[str, ...], key: str, **kwargs: Any):
    """A click option for the recipe field at dotted `key` ("curate.n"): `decls` as click.option takes
    them ("--n", ("--data", "data_path") or "--rubric/--no-rubric"); `kwargs` go to click.option as they
    are. The option keeps `key` as its `config_key`."""
    field = config_field(key)
    decls = (decls,) if isinstance(decls, str) else tuple(decls)
    annotation = _without_none(field.annotation)
    options: dict[str, Any] = {"default": None, "help": field_help(key, decls)}
    if annotation is bool:
        if not any("/" in d for d in decls):
            options["is_flag"] = True
    else:
        options["type"] = _click_type(annotation, key)
    options.update(kwargs)
    option = click.option(*decls, **options)

    def decorate(f):
        f = option(f)
        f.__click_params__[-1].config_key = key  # the option click.option just added
        return f

    return decorate


def config_field(key: str) -> FieldInfo:
    """The recipe's field at dotted `key`, e.g. "generate.critic.judge"."""
    model: Any = Recipe
    field = None
    for part in key.split("."):
        if not (isinstance(model, type) and issubclass(model, BaseModel)) or part not in model.model_fields:
            raise KeyError(f"{key}: no such recipe field")
        field = model.model_fields[part]
        model = _without_none(field.annotation)
    assert field is not None
    return field


def field_help(key: str, decls: tuple[str, ...] = ()) -> str:
    """The field's description, and its default where the description does not give one."""
    field = config_field(key)
    text = (field.description or "").strip()
    default = field.default
    if "default" in text.lower() or default is None or not isinstance(default, (bool, int, float, str)):
        return text
    if isinstance(default, bool):
        shown = "on" if default else "off"
        pair = next((d for d in decls if "/" in d), None)
        if pair is not None:
            on, off = (s.strip() for s in pair.split("/", 1))
            if off != "--no-" + on.removeprefix("--"):
                shown = on if default else off
    else:
        shown = str(default)
    return f"{text} (default: {shown})"


def _without_none(annotation: Any) -> Any:
    if get_origin(annotation) in (Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def _click_type(annotation: Any, where: str) -> Any:
    if get_origin(annotation) is Literal:
        return click.Choice([str(v) for v in get_args(annotation)])
    if annotation is Path:
        return click.Path(path_type=Path)
    if annotation in (int, float, str):
        return annotation
    raise TypeError(f"{where}: no flag type for {annotation!r}; write this option by hand")
