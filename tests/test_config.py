"""Recipes: validation with paths and hints, overrides, defaults."""

from __future__ import annotations

import pytest

from persona_forge.config import load_recipe, parse_set_option
from persona_forge.errors import UserError


def write(tmp_path, text: str):
    path = tmp_path / "r.yaml"
    path.write_text(text)
    return path


def test_unknown_key_names_its_path_and_the_likely_key(tmp_path):
    path = write(tmp_path, "backend:\n  modle: x\n")
    with pytest.raises(UserError, match=r"r\.yaml: backend\.modle: unknown key \(did you mean 'model'\?\)"):
        load_recipe(path)


def test_bad_value_names_its_path(tmp_path):
    path = write(tmp_path, "backend:\n  kind: vllm\n")
    with pytest.raises(UserError, match=r"backend\.kind: Input should be 'local', 'openai' or 'fake'"):
        load_recipe(path)


def test_yaml_syntax_error_gives_the_line(tmp_path):
    path = write(tmp_path, "backend:\n  kind: [local\n")
    with pytest.raises(UserError, match=r"r\.yaml:\d+: not valid YAML"):
        load_recipe(path)


def test_missing_recipe_file(tmp_path):
    with pytest.raises(UserError, match="recipe not found"):
        load_recipe(tmp_path / "nope.yaml")


def test_cli_overrides_beat_the_recipe_which_beats_defaults(tmp_path):
    path = write(tmp_path, "backend:\n  concurrency: 4\n  model: from-recipe\n")
    recipe = load_recipe(path, parse_set_option(("backend.concurrency=32",)))
    assert recipe.backend.concurrency == 32          # CLI
    assert recipe.backend.model == "from-recipe"      # recipe
    assert recipe.backend.max_retries == 6            # default


def test_set_option_parses_yaml_values_and_rejects_garbage():
    assert parse_set_option(("a.b=3", "c=true", "d=[1, 2]", "e=text")) == {"a.b": 3, "c": True, "d": [1, 2], "e": "text"}
    with pytest.raises(UserError, match="expected KEY=VALUE"):
        parse_set_option(("novalue",))


def test_shipped_recipes_validate():
    from persona_forge.resources import data_dir

    paths = sorted(data_dir("recipes").glob("*.yaml"))
    assert paths, f"no recipe found in {data_dir('recipes')}"
    for path in paths:
        load_recipe(path)


def test_identity_ignores_concurrency_and_keys():
    a = load_recipe(None, {"backend.concurrency": 1}).backend.identity()
    b = load_recipe(None, {"backend.concurrency": 64, "backend.api_key_env": "X"}).backend.identity()
    assert a == b


@pytest.mark.parametrize("url, says", [("not-a-url", "is not an http:// or https:// URL"),
                                       ("ftp://example.com/v1", "is not an http:// or https:// URL"),
                                       ("http://127.0.0.1:99999/v1", "the port is not a number from 1 to 65535"),
                                       ("http:///v1", "names no host")])
def test_a_malformed_base_url_is_a_config_error(url, says):
    with pytest.raises(UserError, match=says) as caught:
        load_recipe(None, {"backend.base_url": url})
    assert "\n" not in str(caught.value) and str(caught.value).startswith("defaults: backend.base_url: ")


def test_a_key_written_into_base_url_is_masked_in_the_identity_and_errors():
    backend = load_recipe(None, {"backend.kind": "openai",
                                 "backend.base_url": "http://user:KEY123456@host:8000/v1"}).backend
    assert backend.identity()["base_url"] == "http://user:***@host:8000/v1"
    with pytest.raises(UserError) as caught:
        load_recipe(None, {"backend.base_url": "ftp://user:KEY123456@host/v1"})
    assert "KEY123456" not in str(caught.value) and "user:***@host" in str(caught.value)


def test_a_bad_override_is_blamed_on_its_flag():
    with pytest.raises(UserError, match=r"^--n: curate\.n: Input should be greater than or equal to 1$"):
        load_recipe(None, {"curate.n": 0}, {"curate.n": "--n"})
    with pytest.raises(UserError, match=r"^--set curate\.nn: curate\.nn: unknown key"):
        load_recipe(None, {"curate.nn": 3}, {"curate.nn": "--set curate.nn"})
