"""Flags derived from the config fields (persona_forge/flags.py): their help is the field's description,
their choices the field's values, and a value given on the command line still beats the recipe."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import click
import pytest
import yaml
from click.testing import CliRunner

from persona_forge import cli
from persona_forge.flags import _without_none, config_field


def derived_options() -> list[tuple[list[str], click.Option]]:
    """(command path, option) for every option made by config_option."""
    found = []

    def walk(group: click.Group, path: list[str]) -> None:
        for name, command in sorted(group.commands.items()):
            if isinstance(command, click.Group):
                walk(command, path + [name])
                continue
            found.extend((path + [name], p) for p in command.params if getattr(p, "config_key", None))

    walk(cli.forge, [])
    return found


DERIVED = derived_options()


def test_most_flags_that_map_to_one_field_are_derived():
    assert len(DERIVED) >= 60
    commands = {" ".join(path) for path, _ in DERIVED}
    assert {"pair", "generate", "curate", "train", "eval", "judge", "serve", "restyle", "score"} <= commands


@pytest.mark.parametrize("path, option", DERIVED, ids=[f"{' '.join(p)} {o.opts[0]}" for p, o in DERIVED])
def test_a_derived_flags_help_is_its_fields_description(path, option):
    field = config_field(option.config_key)
    default = field.default
    if "default" in field.description.lower() or default is None or isinstance(default, (list, dict)):
        assert option.help == field.description
    else:
        shown = {True: "on", False: "off"}.get(default, default) if isinstance(default, bool) else default
        if option.secondary_opts and option.secondary_opts[0] != "--no-" + option.opts[0][2:]:
            shown = option.opts[0] if default else option.secondary_opts[0]   # --sample/--greedy
        assert option.help == f"{field.description} (default: {shown})"
    annotation = _without_none(field.annotation)
    if get_origin(annotation) is Literal:
        assert list(option.type.choices) == [str(v) for v in get_args(annotation)]
    assert option.default is None   # not given: the recipe's value stands


def test_help_still_lists_every_flag():
    runner = CliRunner()
    for path in {tuple(p) for p, _ in DERIVED}:
        command = cli.forge
        for name in path:
            command = command.commands[name]
        shown = runner.invoke(cli.forge, [*path, "--help"], terminal_width=200).output
        for param in command.params:
            if isinstance(param, click.Option) and not param.hidden:
                assert all(opt in shown for opt in param.opts + param.secondary_opts), (path, param.opts)


def _value(option: click.Option, default: Any, tmp_path: Path) -> tuple[list[str], Any]:
    """Arguments giving this option a value other than the field's default, and that value as the recipe holds it."""
    flag = option.opts[0]
    if option.is_flag or option.secondary_opts:
        if option.secondary_opts:
            on = not default
            return [flag if on else option.secondary_opts[0]], on
        return [flag], True
    if isinstance(option.type, click.Choice):
        choice = next(c for c in reversed(option.type.choices) if c != default)
        return [flag, choice], choice
    if isinstance(option.type, click.Path):
        folder = tmp_path / option.name
        folder.mkdir(exist_ok=True)
        (folder / "adapter_config.json").write_text("{}")   # forge train --adapter checks for one
        return [flag, str(folder)], folder
    if option.type is click.INT:
        value = default + 4 if isinstance(default, int) and default > 0 else 7
        return [flag, str(value)], value
    if option.type is click.FLOAT:   # near the default: inside the field's range and pair's low < high
        value = round(default - 0.09 if isinstance(default, float) and default > 0.5 else (default or 0.3) + 0.11, 2)
        return [flag, str(value)], value
    text = "runs/scores/x.scores.jsonl:ifd" if option.config_key == "curate.quality" else "x-7"
    return [flag, text], text


class _Resolved(Exception):
    pass


@pytest.mark.parametrize("path, option", DERIVED, ids=[f"{' '.join(p)} {o.opts[0]}" for p, o in DERIVED])
def test_a_derived_flag_beats_the_recipe(path, option, tmp_path, monkeypatch):
    key = option.config_key
    field = config_field(key)
    args, expected = _value(option, field.default, tmp_path)
    recipe = tmp_path / "r.yaml"
    section, _, name = key.rpartition(".")
    if field.default is not None and not isinstance(field.default, (list, dict)):
        recipe.write_text(yaml.safe_dump({section: {name: field.default}}))   # the recipe says the default
    else:
        recipe.write_text("{}\n")
    real = cli.Context.recipe
    seen = {}

    def resolve(self, *a, **kw):
        seen["recipe"] = real(self, *a, **kw)
        raise _Resolved

    monkeypatch.setattr(cli.Context, "recipe", resolve)
    had_torch = "torch" in sys.modules
    result = CliRunner().invoke(cli.forge, ["--recipe", str(recipe), "--run-dir", str(tmp_path / "run"), *path, *args])
    assert isinstance(result.exception, _Resolved), (result.output, result.exception)
    value: Any = seen["recipe"]
    for part in key.split("."):
        value = getattr(value, part)
    assert value == expected
    # the command stopped before any model work (this file runs without the lock); only checkable
    # when no earlier test of the session imported torch
    assert had_torch or "torch" not in sys.modules
