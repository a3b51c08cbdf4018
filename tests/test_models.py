"""Where models come from: specs, packaged files, the hub without a network."""

from __future__ import annotations

import time

import pytest

from persona_forge.errors import UserError
from persona_forge.models import resolve, sentence_model_path, hub_model_path


def test_specs_are_classified(tmp_path):
    assert resolve("packaged:minilm-l6").kind == "packaged"
    assert resolve(str(tmp_path)).kind == "path"
    assert resolve("org/some-model").kind == "hub"


def test_unknown_packaged_name_gets_did_you_mean():
    with pytest.raises(UserError, match="did you mean 'packaged:smollm2-135m-instruct'"):
        resolve("packaged:smollm2-135m")


def test_missing_folder_is_one_clear_line(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        resolve(str(tmp_path / "nothing"))


def test_hub_name_offline_fails_at_once(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    started = time.time()
    with pytest.raises(UserError, match="not in the local Hugging Face cache and HF_HUB_OFFLINE is set"):
        hub_model_path("someone/not-cached-model-xyz")
    assert time.time() - started < 5


def test_packaged_minilm_is_a_sentence_transformers_folder():
    from pathlib import Path

    folder = Path(sentence_model_path("packaged:minilm-l6"))
    assert (folder / "model.safetensors").is_file() and (folder / "modules.json").is_file()
