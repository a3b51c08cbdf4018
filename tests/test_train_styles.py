"""forge train --style: one LoRA adapter per style from forge restyle's kept rewrites, on a tiny random
llama built in-process (a byte-level vocabulary of 98 tokens: a training step takes milliseconds)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import KeywordNLI, one_line_error
from persona_forge import layout
from persona_forge.backends import ScriptedBackend
from persona_forge.config import RestyleConfig, TrainConfig
from persona_forge.contract import StageContext
from persona_forge.errors import UserError
from persona_forge.schema import Dialogue, Rewrite
from persona_forge.serve.registry import adapters_from
from persona_forge.stages import restyle, train, train_styles
from persona_forge.store import file_sha256, read_jsonl
from test_restyle import KeywordStyles, bag_of_words, write_data
from tiny_lm import make_tiny_model

pytestmark = pytest.mark.timeout(300)


def answer(request) -> str:
    """warm and witty rewrites of user2's line; the witty one of conversation 2 drifts (a failed check)."""
    asked = request.messages[-1]["content"]
    if "witty voice" in asked:
        return "Zebras, pianos, weather and bicycles." if "number 2" in asked else "Ha, I am a nurse."
    return "Lovely, I am a nurse."


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture
def restyled(tmp_path) -> Path:
    """A run directory where forge restyle rewrote user2's replies of 3 conversations into warm and witty:
    warm kept 3 of 3, witty 2 of 3."""
    data = write_data(tmp_path / "data.jsonl", n=3)
    run_dir = tmp_path / "run"
    restyle.run(RestyleConfig(data=data, styles=["warm", "witty"], speaker="user2"),
                StageContext(run_dir, progress=False), ScriptedBackend(default=answer), KeywordNLI(),
                embed=bag_of_words, classifier=KeywordStyles())
    return run_dir


def cfg(tiny: Path, **kw) -> TrainConfig:
    return TrainConfig(model=str(tiny), max_steps=kw.pop("max_steps", 1), batch_size=2, logging_steps=1, threads=1,
                       **kw)


def train_styles_run(run_dir: Path, config: TrainConfig, styles=("all",), force: bool = False):
    return train_styles.run(config, StageContext(run_dir, force=force, progress=False), styles=list(styles),
                            base_model="unused", seed=0)


def test_rows_target_only_the_kept_rewrites(restyled):
    rows, conversations = train_styles.rows_for(restyled, "witty")
    assert conversations == 2
    assert [row["messages"][-1] for row in rows] == [{"role": "assistant", "content": "Ha, I am a nurse."}] * 2
    first = rows[0]["messages"]
    assert [m["role"] for m in first] == ["system", "user", "assistant"]
    assert "I am a nurse." in first[0]["content"] and first[1]["content"] == "Hi! I have two dogs, number 0."
    warm, _ = train_styles.rows_for(restyled, "warm")
    assert len(warm) == 3 and {row["messages"][-1]["content"] for row in warm} == {"Lovely, I am a nurse."}
    # The failed witty rewrite of conversation 2 kept its original text there: that reply is no target.
    [styled] = [d for d in read_jsonl(restyled / layout.restyled("witty"), Dialogue) if "number 2" in d.turns[0].text]
    assert styled.turns[1].text == "Nice. I am a nurse."


def test_each_style_gets_an_adapter_that_serve_finds_then_resumes_and_refuses_changed_data(
        restyled, tiny, forge, monkeypatch):
    ran = forge("--run-dir", str(restyled), "-q", "train", "--style", "all", "--model", str(tiny), "--max-steps", "1",
                "--set", "train.threads=1", "--set", "train.batch_size=2")
    assert ran.returncode == 0, ran.stderr
    adapters = restyled / layout.ADAPTERS
    for style, n in (("warm", 3), ("witty", 2)):
        folder = adapters / style
        assert (folder / "adapter" / "adapter_model.safetensors").is_file()
        assert len(read_jsonl(folder / "sft.jsonl")) == n
        manifest = json.loads((folder / "styles.manifest.json").read_text())
        source = restyled / layout.restyled(style)
        assert manifest["status"] == "done" and manifest["config"]["style"] == style
        assert manifest["inputs"] == {str(source): file_sha256(source)} and manifest["counts"]["rows"] == n
        assert manifest["figures"]["data_sha256"] == file_sha256(source) and manifest["figures"]["rows"] == n
        trained = json.loads((folder / "train.manifest.json").read_text())
        assert trained["counts"]["samples"] == n and trained["figures"]["steps"] == 1
    # forge serve --adapters-dir <run_dir>/adapters serves each under its style's name.
    assert adapters_from([], adapters, {}) == {"warm": adapters / "warm" / "adapter",
                                               "witty": adapters / "witty" / "adapter"}

    # The same data and config again: nothing is trained (train.run is not even called).
    monkeypatch.setattr(train, "run", lambda *a, **k: pytest.fail("trained again"))
    again = train_styles_run(restyled, cfg(tiny))
    assert again.counts == {"styles": 2, "trained": 0, "skipped": 2}
    assert {row["status"] for row in again.data.values()} == {"already trained (same config and data)"}
    monkeypatch.undo()

    # restyle/warm.jsonl changed (a conversation fewer): refused in one line, unless --force (the old
    # adapter goes to .trash/).
    source = restyled / layout.restyled("warm")
    source.write_text("".join(source.read_text().splitlines(keepends=True)[:2]))
    with pytest.raises(UserError, match=r"another version of its input .*warm\.jsonl; pass --force"):
        train_styles_run(restyled, cfg(tiny), styles=["warm"])
    line = one_line_error(forge("--run-dir", str(restyled), "train", "--style", "warm", "--model", str(tiny),
                                "--max-steps", "1", "--set", "train.threads=1", "--set", "train.batch_size=2"))
    assert "another version of its input" in line and "--force" in line
    forced = train_styles_run(restyled, cfg(tiny), styles=["warm"], force=True)
    assert forced.counts["trained"] == 1 and forced.data["warm"]["rows"] == 2
    assert json.loads((adapters / "warm" / "styles.manifest.json").read_text())["inputs"][str(source)] == \
        file_sha256(source)
    assert any((adapters / "warm" / ".trash").iterdir())
    # Trashed adapters are not served.
    assert sorted(adapters_from([], adapters, {})) == ["warm", "witty"]


def test_a_changed_train_config_is_refused_too(restyled, tiny):
    train_styles_run(restyled, cfg(tiny), styles=["witty"])
    with pytest.raises(UserError, match=r"another config \(train\.lr"):
        train_styles_run(restyled, cfg(tiny, lr=1e-3), styles=["witty"])


def test_bad_input_is_one_line(forge, restyled, tmp_path):
    empty = one_line_error(forge("--run-dir", str(tmp_path / "empty"), "train", "--style", "warm"))
    assert "no restyled conversations here" in empty and "forge restyle" in empty
    unknown = one_line_error(forge("--run-dir", str(restyled), "train", "--style", "calm"))
    assert unknown == (f"forge: error: --style calm: no restyle/calm.jsonl in {restyled} (restyled there: warm, "
                       f"witty); run forge restyle --styles calm first, or use --style all")
    dpo = one_line_error(forge("--run-dir", str(restyled), "train", "--style", "warm", "--dpo"))
    assert "--style trains SFT adapters" in dpo
    data = one_line_error(forge("--run-dir", str(restyled), "train", "--style", "warm", "--data", "x.jsonl"))
    assert "leave out --data" in data


def test_a_style_whose_rewrites_all_failed_is_refused(tmp_path):
    data = write_data(tmp_path / "data.jsonl", n=1)
    run_dir = tmp_path / "run"
    restyle.run(RestyleConfig(data=data, styles=["warm"], speaker="user2"), StageContext(run_dir, progress=False),
                ScriptedBackend(default="Zebras, pianos, weather and bicycles."), KeywordNLI(), embed=bag_of_words,
                classifier=KeywordStyles())
    assert not any(r.passed for r in read_jsonl(run_dir / layout.RESTYLE_REWRITES, Rewrite))
    with pytest.raises(UserError, match="no kept rewrites of style 'warm'"):
        train_styles_run(run_dir, TrainConfig(), styles=["warm"])
