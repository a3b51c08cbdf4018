"""forge train --backend openai against the stand-in server's /v1/files and /v1/fine_tuning/jobs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import STANDIN_KEY_ENV, run_forge, standin_fixtures
from persona_forge.config import load_recipe
from persona_forge.contract import StageContext
from persona_forge.errors import UserError
from persona_forge.stages import train_openai

pytestmark = pytest.mark.timeout(120)

KEY_ENV = STANDIN_KEY_ENV
SECRET = "sk-test-SECRET-ft-5c1d"
ROWS = [{"messages": [{"role": "system", "content": "You are a person who surfs."},
                      {"role": "user", "content": f"hi {i}"},
                      {"role": "assistant", "content": f"hey, just back from the beach {i}"}]} for i in range(5)]


module_server, server = standin_fixtures(SECRET, api_key=SECRET)


def make_run(tmp_path: Path, url: str, model: str = "gpt-4o-mini-2024-07-18", **train):
    data = tmp_path / "run" / "curated" / "openai.jsonl"
    data.parent.mkdir(parents=True, exist_ok=True)
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    overrides = {"run_dir": str(tmp_path / "run"), "backend.kind": "openai", "backend.base_url": url,
                 "backend.api_key_env": KEY_ENV, "backend.model": model, "train.openai.poll_s": 0.01,
                 "train.openai.suffix": "persona"}
    overrides.update({f"train.{k}": v for k, v in train.items()})
    return load_recipe(None, overrides)


def run_job(recipe, force: bool = False, progress: bool = False, sleep=None) -> dict:
    """The stage as the CLI runs it (its own section, the context, the backend); its summary rows."""
    handed = {"sleep": sleep} if sleep is not None else {}
    return train_openai.run(recipe.train, StageContext(recipe.run_dir, force, progress), recipe.backend,
                            **handed).summary


def test_uploads_starts_polls_and_records_the_model(server, tmp_path):
    recipe = make_run(tmp_path, server.url, **{"openai.n_epochs": 2})
    rows = run_job(recipe, progress=False, sleep=lambda s: None)
    assert rows["status"] == "succeeded"
    assert rows["fine-tuned model"] == "ft:gpt-4o-mini-2024-07-18:standin:persona:ftjob-standin1"
    fine_tuning = server.stats()["fine_tuning"]
    assert fine_tuning["files"] == {"file-standin1": {"filename": "openai.jsonl", "purpose": "fine-tune",
                                                      "lines": 5, "bytes": (tmp_path / "run" / "curated" /
                                                                            "openai.jsonl").stat().st_size}}
    job = fine_tuning["jobs"]["ftjob-standin1"]
    assert (job["model"], job["training_file"], job["suffix"], job["status"]) == (
        "gpt-4o-mini-2024-07-18", "file-standin1", "persona", "succeeded")
    assert job["method"] == {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 2}}}
    assert job["retrieved"] == 3  # validating_files -> queued -> running -> succeeded
    folder = tmp_path / "run" / "train" / "openai"
    manifest = json.loads((folder / "train.manifest.json").read_text())
    assert manifest["status"] == "done"
    assert manifest["figures"]["fine_tuned_model"] == rows["fine-tuned model"]
    assert manifest["figures"]["trained_tokens"] == 500
    assert SECRET not in (folder / "train.manifest.json").read_text()
    events = [json.loads(line) for line in (folder / "log.jsonl").read_text().splitlines()]
    assert [e.get("status") for e in events if e["event"] == "status"] == ["queued", "running", "succeeded"]

    # Done: a re-run makes no requests to the fine-tuning API.
    assert run_job(recipe, progress=False, sleep=lambda s: None)["status"] == "already finished"
    assert len(server.stats()["fine_tuning"]["jobs"]) == 1


def test_a_rerun_polls_the_recorded_job_instead_of_starting_another(server, tmp_path):
    recipe = make_run(tmp_path, server.url)
    polls = []

    def interrupt(seconds):
        polls.append(seconds)
        raise KeyboardInterrupt  # killed while waiting for the job

    with pytest.raises(KeyboardInterrupt):
        run_job(recipe, progress=False, sleep=interrupt)
    assert server.stats()["fine_tuning"]["jobs"]["ftjob-standin1"]["status"] == "queued"  # one poll, then killed
    rows = run_job(recipe, progress=False, sleep=lambda s: None)
    assert rows["status"] == "succeeded (resumed)"
    stats = server.stats()["fine_tuning"]
    assert list(stats["jobs"]) == ["ftjob-standin1"] and list(stats["files"]) == ["file-standin1"]


def test_a_failed_job_is_one_line_and_force_starts_again(server, tmp_path):
    recipe = make_run(tmp_path, server.url, model="will-fail-model")
    with pytest.raises(UserError, match=r"fine-tuning job ftjob-standin1 failed: The base model cannot be "
                                        r"fine-tuned\.; fix the cause and re-run with --force"):
        run_job(recipe, progress=False, sleep=lambda s: None)
    with pytest.raises(UserError, match="ftjob-standin1 failed"):
        run_job(recipe, progress=False, sleep=lambda s: None)
    with pytest.raises(UserError, match="ftjob-standin2 failed"):
        run_job(recipe, force=True, progress=False, sleep=lambda s: None)


def test_bad_key_local_model_and_bad_rows(server, tmp_path, monkeypatch):
    monkeypatch.setenv(KEY_ENV, "sk-wrong-key-123")
    with pytest.raises(UserError) as info:
        run_job(make_run(tmp_path, server.url), progress=False, sleep=lambda s: None)
    assert "401" in str(info.value) and f"${KEY_ENV}" in str(info.value)
    assert "sk-wrong-key-123" not in str(info.value)
    with pytest.raises(UserError, match="is a local model; give the hosted base model"):
        run_job(make_run(tmp_path / "b", server.url, model="packaged:smollm2-135m-instruct"),
                         progress=False)
    recipe = make_run(tmp_path / "c", server.url)
    (tmp_path / "c" / "run" / "curated" / "openai.jsonl").write_text('{"messages": [{"role": "user", "content": "x"}]}\n')
    with pytest.raises(UserError, match=r"openai\.jsonl:1: no assistant message to learn from"):
        run_job(recipe, progress=False)


def test_cli_backend_openai(server, tmp_path):
    make_run(tmp_path, server.url)
    cmd = ["--run-dir", str(tmp_path / "run"), "--set", f"backend.base_url={server.url}",
                         "--set", f"backend.api_key_env={KEY_ENV}", "--set", "train.openai.poll_s=0.01",
                         "train", "--backend", "openai", "--model", "gpt-4o-mini-2024-07-18"]
    result = run_forge(*cmd, env={KEY_ENV: SECRET})
    assert result.returncode == 0, result.stderr
    assert "ft:gpt-4o-mini-2024-07-18:standin:model:ftjob-standin1" in result.stderr
