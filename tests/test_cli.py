"""The forge command as a user meets it: help, one-line errors, exit codes, resumable runs."""

from __future__ import annotations

import json

from conftest import one_line_error


def test_help_lists_every_command_with_one_line(forge):
    result = forge("--help")
    assert result.returncode == 0
    for command in ("complete", "models", "nli", "prompt", "recipe"):
        assert f"  {command} " in result.stdout


def test_unknown_recipe_key_is_one_line_and_exit_2(forge, tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("backend:\n  concurency: 3\n")
    result = forge("--recipe", str(recipe), "complete", "--input", "x.jsonl")
    assert result.returncode == 2
    assert one_line_error(result) == (f"forge: error: {recipe}: backend.concurency: unknown key "
                                      f"(did you mean 'concurrency'?)")


def test_missing_input_file_is_one_line(forge, tmp_path):
    result = forge("--run-dir", str(tmp_path), "--set", "backend.kind=fake", "complete", "--input", "nope.jsonl")
    assert result.returncode == 2
    assert one_line_error(result) == "forge: error: nope.jsonl: no such file"


def test_bad_prompt_line_names_file_and_line(forge, tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "ok"}\n{"text": "wrong key"}\n')
    result = forge("--run-dir", str(tmp_path / "run"), "--set", "backend.kind=fake", "complete", "--input", str(prompts))
    assert result.returncode == 2
    assert "p.jsonl:2: needs a non-empty \"prompt\" string" in one_line_error(result)


def test_complete_writes_records_and_a_rerun_adds_nothing(forge, tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"q{i}"}) + "\n" for i in range(7)))
    args = ("--run-dir", str(tmp_path / "run"), "--set", "backend.kind=fake", "--set", "backend.default_reply=hello",
            "complete", "--input", str(prompts))
    first = forge(*args)
    assert first.returncode == 0, first.stderr
    records = [json.loads(l) for l in (tmp_path / "run" / "complete.jsonl").read_text().splitlines()]
    assert len(records) == 7 and {r["text"] for r in records} == {"hello"}
    assert records[0]["provenance"]["backend"] == "fake"
    second = forge(*args)
    assert second.returncode == 0
    assert (tmp_path / "run" / "complete.jsonl").read_text().count("\n") == 7
    assert "already done" in second.stderr and "completed now" in second.stderr


def test_changed_config_in_same_run_dir_needs_force(forge, tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "q"}\n')
    base = ("--run-dir", str(tmp_path / "run"), "--set", "backend.kind=fake")
    assert forge(*base, "complete", "--input", str(prompts)).returncode == 0
    changed = forge(*base, "--set", "backend.model=other", "complete", "--input", str(prompts))
    assert changed.returncode == 2
    assert "--force" in one_line_error(changed)
    assert forge(*base, "--set", "backend.model=other", "--force", "complete", "--input", str(prompts)).returncode == 0


def test_recipe_check_prints_the_resolved_recipe_as_json(forge):
    result = forge("recipe", "check", "recipes/quickstart.yaml")
    assert result.returncode == 0, result.stderr
    resolved = json.loads(result.stdout)
    assert resolved["backend"]["model"] == "packaged:smollm2-135m-instruct"
    assert resolved["backend"]["concurrency"] == 16  # a default filled in


def test_prompt_command_shows_the_rendered_messages(forge):
    result = forge("prompt", "nli/judge", "--vars", '{"premise": "P1", "hypothesis": "H1"}')
    assert result.returncode == 0, result.stderr
    assert "### system" in result.stdout and "Premise (known to be true of the person): P1" in result.stdout


def test_openai_backend_without_key_is_one_line(forge, tmp_path, monkeypatch):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "q"}\n')
    monkeypatch.delenv("PF_NO_SUCH_KEY", raising=False)
    result = forge("--run-dir", str(tmp_path / "run"), "--set", "backend.kind=openai",
                   "--set", "backend.api_key_env=PF_NO_SUCH_KEY", "complete", "--input", str(prompts))
    assert result.returncode == 2
    assert one_line_error(result) == ("forge: error: no API key: set the environment variable PF_NO_SUCH_KEY "
                                      "(or name another one in backend.api_key_env)")
