"""The forge command as a user meets it: help, one-line errors, exit codes, resumable runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import REPO, one_line_error, run_forge


def test_help_lists_every_command_with_one_line(forge):
    result = forge("--help")
    assert result.returncode == 0
    for command in ("complete", "models", "nli", "prompt", "recipe"):
        assert f"  {command} " in result.stdout


def test_unknown_recipe_key_is_one_line_and_exit_2(forge, tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("backend:\n  kind: openai\n  concurency: 3\n")
    result = forge("--recipe", str(recipe), "complete", "--input", "x.jsonl")
    assert result.returncode == 2
    assert one_line_error(result) == (f"forge: error: {recipe}: backend.concurency: unknown key "
                                      f"(did you mean 'concurrency'?)")


def test_a_setting_of_another_backend_kind_is_one_line_and_exit_2(forge, tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("backend: {kind: openai, base_url: 'http://127.0.0.1:8000/v1', batch_size: 4}\n")
    result = forge("recipe", "check", str(recipe))
    assert one_line_error(result) == (f"forge: error: {recipe}: backend.batch_size: not a setting of kind openai "
                                      f"(it belongs to kind local); remove it or set backend.kind: local")


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
    assert resolved["backend"]["repetition_penalty"] == 1.15  # a default filled in
    assert "concurrency" not in resolved["backend"]  # a setting of kind openai, not of this local backend


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


# --- issue 17: nothing lost, nothing mixed -------------------------------------------------------


def forge(*args: str, cwd=REPO, **kwargs):
    """These tests run forge as a user does: a fresh process in a working directory."""
    return run_forge(*args, cwd=cwd, process=True, **kwargs)


def _one_line(result) -> str:
    return one_line_error(result, code=None)


def _prompts(path, n: int = 3, tag: str = "q"):
    path.write_text("".join(json.dumps({"prompt": f"{tag}{i}"}) + "\n" for i in range(n)))
    return path


def _closed_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_another_input_in_the_same_run_dir_is_refused_and_the_same_file_by_absolute_path_is_not(tmp_path):
    a, b = _prompts(tmp_path / "a.jsonl", tag="a"), _prompts(tmp_path / "b.jsonl", tag="b")
    base = ("--run-dir", "run", "--set", "backend.kind=fake", "complete")
    assert forge(*base, "--input", "a.jsonl", cwd=tmp_path).returncode == 0
    assert forge(*base, "--input", str(a.resolve()), cwd=tmp_path).returncode == 0  # the same file
    mixed = forge(*base, "--input", "b.jsonl", cwd=tmp_path)
    assert mixed.returncode == 2 and "b.jsonl is not a file it read" in _one_line(mixed)
    assert (tmp_path / "run" / "complete.jsonl").read_text().count("\n") == 3  # nothing of b mixed in
    a.write_text(b.read_text())
    changed = forge(*base, "--input", str(a.resolve()), cwd=tmp_path)
    assert changed.returncode == 2 and "--force" in _one_line(changed)


def test_a_failed_run_against_a_closed_port_does_not_lock_the_run_dir(tmp_path):
    from standin_server import standin

    prompts = _prompts(tmp_path / "p.jsonl")
    base = ("--run-dir", str(tmp_path / "run"), "--set", "backend.kind=openai", "--set", "backend.model=m",
            "--set", "backend.backoff_s=0.01", "--set", "backend.api_key_env=PF_TEST_UNSET_KEY")
    refused = forge("-q", *base, "--set", f"backend.base_url=http://127.0.0.1:{_closed_port()}/v1",
                    "complete", "--input", str(prompts))
    assert refused.returncode != 0 and "cannot reach" in _one_line(refused)
    with standin() as server:
        fixed = forge(*base, "--set", f"backend.base_url={server.url}", "complete", "--input", str(prompts))
    assert fixed.returncode == 0, fixed.stderr
    assert (tmp_path / "run" / "complete.jsonl").read_text().count("\n") == 3


def test_train_with_a_missing_adapter_is_one_line_and_leaves_no_manifest(tmp_path):
    result = forge("--run-dir", str(tmp_path), "train", "--adapter", "/nope")
    assert result.returncode == 2
    assert _one_line(result).startswith("forge: error: --adapter /nope: no LoRA adapter there")
    assert not list(tmp_path.rglob("*.manifest.json"))


@pytest.mark.parametrize("url, says", [("not-a-url", "is not an http:// or https:// URL"),
                                       ("ftp://example.com/v1", "is not an http:// or https:// URL"),
                                       ("http://127.0.0.1:99999/v1", "the port is not a number from 1 to 65535")])
def test_a_malformed_base_url_is_one_line_at_once(tmp_path, url, says):
    prompts = _prompts(tmp_path / "p.jsonl")
    result = forge("--run-dir", str(tmp_path / "run"), "--set", "backend.kind=openai",
                   "--set", f"backend.base_url={url}", "complete", "--input", str(prompts))
    assert result.returncode == 2
    line = _one_line(result)
    assert line.startswith("forge: error: --set backend.base_url: backend.base_url:") and says in line
    assert not (tmp_path / "run").exists()


def test_the_last_error_of_each_kind_is_shown_and_recorded_without_secrets(tmp_path, monkeypatch):
    from standin_server import standin

    secret, url_secret = "sk-test-SECRET-1234567890", "URLSECRET987"
    monkeypatch.setenv("PF_TEST_KEY17", secret)
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "fine"}\n{"prompt": "too long [[fault:400]]"}\n{"prompt": "leak [[fault:leaky]]"}\n')
    with standin() as server:
        url = server.url.replace("http://", f"http://user:{url_secret}@")
        result = forge("--run-dir", str(tmp_path / "run"), "--set", "backend.kind=openai", "--set", "backend.model=m",
                       "--set", f"backend.base_url={url}", "--set", "backend.api_key_env=PF_TEST_KEY17",
                       "--set", "backend.backoff_s=0.01", "--set", "backend.max_retries=1",
                       "complete", "--input", str(prompts))
    assert result.returncode == 2
    assert "last error (HTTP 400)" in result.stderr and "maximum context length" in result.stderr
    assert "last error (HTTP 500)" in result.stderr
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith("forge: error: 2 prompts failed after retries (last: HTTP")
    manifest_text = (tmp_path / "run" / "complete.manifest.json").read_text()
    errors = json.loads(manifest_text)["figures"]["usage"]["last_errors"]
    assert set(errors) == {"HTTP 400", "HTTP 500"} and "maximum context length" in errors["HTTP 400"]
    assert "user:***@127.0.0.1" in manifest_text
    for leaked in (secret, url_secret):
        assert leaked not in manifest_text and leaked not in result.stderr


def test_group_options_work_after_the_subcommand(tmp_path):
    prompts = _prompts(tmp_path / "p.jsonl")
    result = forge("complete", "--run-dir", str(tmp_path / "run"), "--set", "backend.kind=fake",
                   "--set", "backend.default_reply=late", "-q", "--input", str(prompts))
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""  # -q after the subcommand silences the summary
    records = [json.loads(l) for l in (tmp_path / "run" / "complete.jsonl").read_text().splitlines()]
    assert {r["text"] for r in records} == {"late"}
    changed = forge("complete", "--input", str(prompts), "--run-dir", str(tmp_path / "run"),
                    "--set", "backend.kind=fake", "--set", "backend.model=other")
    assert changed.returncode == 2
    forced = forge("complete", "--input", str(prompts), "--run-dir", str(tmp_path / "run"),
                   "--set", "backend.kind=fake", "--set", "backend.model=other", "--force")
    assert forced.returncode == 0, forced.stderr
    curate = forge("curate", "--run-dir", str(tmp_path / "run"), "--n", "0")
    assert "No such option" not in curate.stderr and "--n: curate.n" in curate.stderr


def test_run_without_a_recipe_is_a_usage_error(tmp_path):
    result = forge("--run-dir", str(tmp_path), "run")
    assert result.returncode == 2
    assert "Missing argument 'RECIPE'" in result.stderr
    assert not list(tmp_path.iterdir())


def test_a_run_dir_that_is_a_file_or_unwritable_is_one_line_before_any_work(tmp_path):
    prompts = _prompts(tmp_path / "p.jsonl")
    afile = tmp_path / "afile"
    afile.write_text("x")
    for run_dir, says in ((afile, "is a file, not a folder"), (afile / "sub", "is a file, so no folder"),
                          (Path("/proc/forge-run"), "cannot write in /proc")):
        result = forge("--run-dir", str(run_dir), "--set", "backend.kind=fake", "complete", "--input", str(prompts))
        assert result.returncode == 2, result.stderr
        assert says in _one_line(result)


def test_prompt_vars_that_are_not_an_object_are_one_line():
    result = forge("prompt", "complete/echo", "--vars", "[1,2]")
    assert result.returncode == 2
    assert _one_line(result).startswith("forge: error: --vars: a JSON object of variables is needed, not a list")


def test_range_errors_name_the_flag_and_recipe_check_blames_set(tmp_path):
    result = forge("--run-dir", str(tmp_path), "curate", "--n", "0")
    assert result.returncode == 2
    assert _one_line(result) == "forge: error: --n: curate.n: Input should be greater than or equal to 1"
    checked = forge("--set", "backend.batch_size=0", "recipe", "check", "recipes/quickstart.yaml")
    assert checked.returncode == 2
    assert _one_line(checked) == ("forge: error: --set backend.batch_size: backend.batch_size: Input should be "
                                  "greater than or equal to 1")


def test_chat_base_without_adapter_says_so(tmp_path):
    persona = tmp_path / "me.txt"
    persona.write_text("I have two dogs.\n")
    result = forge("chat", "--persona", str(persona), "--base")
    assert result.returncode == 2
    assert "--base shows the base model beside the adapter's reply; give --adapter" in _one_line(result)


def test_models_list_prints_to_stdout():
    result = forge("models", "list")
    assert result.returncode == 0, result.stderr
    assert "packaged:smollm2-135m-instruct\t" in result.stdout and result.stderr == ""


def test_help_shows_the_defaults():
    pair = forge("pair", "--help").stdout
    assert "(default: 0.5)" in " ".join(pair.split()) and "(default: greedy)" in pair
    assert "(default: 0.3)" in " ".join(forge("curate", "--help").stdout.split())
