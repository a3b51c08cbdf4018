"""Recipes: validation with paths and hints, overrides, defaults."""

from __future__ import annotations

import pytest

from conftest import REPO
from persona_forge.config import (FakeBackendConfig, LocalBackendConfig, OpenAIBackendConfig, load_recipe,
                                  parse_backend, parse_set_option)
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
    path = write(tmp_path, "backend:\n  kind: openai\n  concurrency: 4\n  model: from-recipe\n")
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
    served = {"backend.kind": "openai"}
    a = load_recipe(None, {**served, "backend.concurrency": 1}).backend.identity()
    b = load_recipe(None, {**served, "backend.concurrency": 64, "backend.api_key_env": "X"}).backend.identity()
    assert a == b


@pytest.mark.parametrize("url, says", [("not-a-url", "is not an http:// or https:// URL"),
                                       ("ftp://example.com/v1", "is not an http:// or https:// URL"),
                                       ("http://127.0.0.1:99999/v1", "the port is not a number from 1 to 65535"),
                                       ("http:///v1", "names no host")])
def test_a_malformed_base_url_is_a_config_error(url, says):
    with pytest.raises(UserError, match=says) as caught:
        load_recipe(None, {"backend.kind": "openai", "backend.base_url": url})
    assert "\n" not in str(caught.value) and str(caught.value).startswith("defaults: backend.base_url: ")


def test_a_key_written_into_base_url_is_masked_in_the_identity_and_errors():
    backend = load_recipe(None, {"backend.kind": "openai",
                                 "backend.base_url": "http://user:KEY123456@host:8000/v1"}).backend
    assert backend.identity()["base_url"] == "http://user:***@host:8000/v1"
    with pytest.raises(UserError) as caught:
        load_recipe(None, {"backend.kind": "openai", "backend.base_url": "ftp://user:KEY123456@host/v1"})
    assert "KEY123456" not in str(caught.value) and "user:***@host" in str(caught.value)


def test_a_bad_override_is_blamed_on_its_flag():
    with pytest.raises(UserError, match=r"^--n: curate\.n: Input should be greater than or equal to 1$"):
        load_recipe(None, {"curate.n": 0}, {"curate.n": "--n"})
    with pytest.raises(UserError, match=r"^--set curate\.nn: curate\.nn: unknown key"):
        load_recipe(None, {"curate.nn": 3}, {"curate.nn": "--set curate.nn"})


# --- the backend section: one model per kind ------------------------------------------------------

def test_each_backend_kind_reads_todays_shape(tmp_path):
    openai = load_recipe(write(tmp_path, "backend: {kind: openai, base_url: 'http://127.0.0.1:8000/v1', model: m, "
                                         "concurrency: 64}\njudge:\n  backend: {kind: fake, default_reply: A}\n"))
    assert isinstance(openai.backend, OpenAIBackendConfig) and openai.backend.concurrency == 64
    assert isinstance(openai.judge.backend, FakeBackendConfig) and openai.judge.backend.default_reply == "A"
    local = load_recipe(write(tmp_path, "backend: {model: x, batch_size: 4}\n"))  # no kind: local
    assert isinstance(local.backend, LocalBackendConfig) and local.backend.batch_size == 4
    assert isinstance(load_recipe(None).backend, LocalBackendConfig)
    assert parse_backend({"kind": "fake", "replies": ["a"]}).replies == ["a"]


@pytest.mark.parametrize("text, says", [
    ("backend: {kind: openai, batch_size: 4}",
     "backend.batch_size: not a setting of kind openai (it belongs to kind local); remove it or set "
     "backend.kind: local"),
    ("backend: {base_url: 'http://h:1/v1'}",
     "backend.base_url: not a setting of kind local (it belongs to kind openai); remove it or set "
     "backend.kind: openai"),
    ("judge: {backend: {kind: local, replies: [a]}}",
     "judge.backend.replies: not a setting of kind local (it belongs to kind fake); remove it or set "
     "judge.backend.kind: fake"),
    ("backend: {kind: openai, base_ur: x}", "backend.base_ur: unknown key (did you mean 'base_url'?)"),
    ("backend: {concurency: 3}",
     "backend.concurency: unknown key (did you mean 'concurrency', a setting of kind openai?)"),
    ("backend: {kind: openai, sampling: {temprature: 1}}",
     "backend.sampling.temprature: unknown key (did you mean 'temperature'?)"),
    ("backend: {kind: local, batch_size: 0}", "backend.batch_size: Input should be greater than or equal to 1"),
    ("backend: 5", "backend: expected a backend section, e.g. {kind: openai, model: NAME}"),
])
def test_a_setting_of_another_kind_is_one_line_naming_its_kind(tmp_path, text, says):
    path = write(tmp_path, text + "\n")
    with pytest.raises(UserError) as caught:
        load_recipe(path)
    assert str(caught.value) == f"{path}: {says}"


def test_switching_kind_on_the_command_line_leaves_out_the_old_kinds_settings(tmp_path):
    path = write(tmp_path, "backend: {kind: local, model: m, batch_size: 4, threads: 2,\n"
                           "          sampling: {temperature: 0.1}}\n")
    fake = load_recipe(path, {"backend.kind": "fake", "backend.default_reply": "hi"}).backend
    assert isinstance(fake, FakeBackendConfig) and fake.default_reply == "hi"
    assert fake.model == "m" and fake.sampling.temperature == 0.1     # the shared settings stay
    served = load_recipe(path, {"backend.kind": "openai", "backend.base_url": "http://127.0.0.1:9/v1"}).backend
    assert isinstance(served, OpenAIBackendConfig)
    # A setting of the old kind given on the command line is still refused, blamed on its flag.
    with pytest.raises(UserError, match=r"^--set backend\.threads: backend\.threads: not a setting of kind fake"):
        load_recipe(path, {"backend.kind": "fake", "backend.threads": 1}, {"backend.threads": "--set backend.threads"})


def test_backend_hashes_are_those_of_the_flat_model(tmp_path):
    """Pinned from the one flat BackendConfig before the split: run directories made then are not
    refused as changed (every stage hashes backend.identity())."""
    from persona_forge.store import config_hash

    def digest(overrides=None, path=None):
        return config_hash(load_recipe(path, overrides).backend.identity())

    assert digest() == "987df79768991f56"
    assert digest({"backend.kind": "fake"}) == "8af97d9c7f7164eb"
    assert digest({"backend.kind": "openai", "backend.base_url": "http://u:KEY@h:8000/v1",
                   "backend.model": "m"}) == "9bb4412e1ddc235a"
    assert digest({"backend.repetition_penalty": 1.3, "backend.sampling.temperature": 0.2}) == "5302b54203ff928f"
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_model.safetensors").write_bytes(b"not really weights")
    assert digest({"backend.adapter": str(adapter), "backend.model": "some/model"}) == "04ba56bcf6efac4a"
    assert digest(path=REPO / "recipes" / "quickstart.yaml") == "6f284117c3900850"
    assert digest(path=REPO / "recipes" / "openai.yaml") == "50697a1bfd3c2621"
    assert digest(path=REPO / "recipes" / "vllm.yaml") == "d023fde965a18cdd"
    judge = load_recipe(None, {"judge.backend": {"kind": "fake", "model": "j"}}).judge.identity()["backend"]
    assert judge == {"kind": "fake", "model": "j", "sampling": {"temperature": 0.8, "top_p": 0.95, "max_tokens": 256}}
