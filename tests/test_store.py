"""The run directory contract: append, resume, repair, atomic replace, manifests."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from persona_forge.errors import UserError
from persona_forge.schema import Rejection
from persona_forge.store import JsonlStore, RunDir, atomic_write_jsonl, read_jsonl

from conftest import REPO, forge_cmd


def rejection(i: int) -> Rejection:
    return Rejection(id=f"r{i}", stage="test", subject_id=f"s{i}", reason="duplicate")


def test_append_then_read_returns_typed_records_and_ids(tmp_path):
    store = JsonlStore(tmp_path / "x.jsonl", Rejection)
    with store.appender() as out:
        for i in range(3):
            out.write(rejection(i))
    assert [r.id for r in store.read()] == ["r0", "r1", "r2"]
    assert store.ids() == {"r0", "r1", "r2"}
    assert isinstance(store.read()[0], Rejection)


def test_a_torn_last_line_is_cut_and_appending_goes_on(tmp_path):
    path = tmp_path / "x.jsonl"
    store = JsonlStore(path, Rejection)
    with store.appender() as out:
        out.write(rejection(0))
    with open(path, "a") as fh:  # what a process killed inside a write leaves behind
        fh.write('{"id": "r1", "stage": "te')
    assert store.ids() == {"r0"}
    with store.appender() as out:
        out.write(rejection(1))
    assert [r.id for r in store.read()] == ["r0", "r1"]
    assert path.read_text().count("\n") == 2


def test_second_writer_is_refused_with_one_clear_line(tmp_path):
    store = JsonlStore(tmp_path / "x.jsonl", Rejection)
    with store.appender():
        with pytest.raises(UserError, match="another forge process is writing"):
            with store.appender():
                pass


def test_atomic_replace_leaves_no_temporary_files(tmp_path):
    path = tmp_path / "pairs.jsonl"
    atomic_write_jsonl(path, [rejection(i) for i in range(5)])
    atomic_write_jsonl(path, [rejection(9)])
    assert [r["id"] for r in read_jsonl(path)] == ["r9"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pairs.jsonl"]


def test_malformed_line_names_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"id": "a"}\nnot json\n')
    with pytest.raises(UserError, match=r"bad\.jsonl:2: not valid JSON"):
        read_jsonl(path)


def test_wrong_record_shape_names_the_field(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"id": "a", "stage": "x", "subject_id": "s"}\n')
    with pytest.raises(UserError, match=r"bad\.jsonl:1: not a Rejection record: reason"):
        read_jsonl(path, Rejection)


def test_changed_config_is_refused_then_forced_into_trash(tmp_path):
    run = RunDir(tmp_path)
    stage = run.begin("complete", {"n": 1}, outputs=["complete.jsonl"])
    (tmp_path / "complete.jsonl").write_text("{}\n")
    stage.finish()
    run.begin("complete", {"n": 1}, outputs=["complete.jsonl"])  # same config: resumes
    with pytest.raises(UserError, match=r"another config \(n: 1 -> 2\).*--force"):
        run.begin("complete", {"n": 2}, outputs=["complete.jsonl"])
    run.begin("complete", {"n": 2}, outputs=["complete.jsonl"], force=True)
    assert not (tmp_path / "complete.jsonl").exists()
    trashed = list((tmp_path / ".trash").iterdir())
    assert len(trashed) == 1 and (trashed[0] / "complete.jsonl").read_text() == "{}\n"


def test_manifest_records_config_inputs_and_packages(tmp_path):
    source = tmp_path / "in.jsonl"
    source.write_text('{"prompt": "x"}\n')
    stage = RunDir(tmp_path / "run").begin("complete", {"a": 1}, inputs=[source])
    stage.set_count("written", 4)
    stage.record_prompt("nli/judge", "abc")
    stage.finish(rate=1.5)
    manifest = json.loads((tmp_path / "run" / "complete.manifest.json").read_text())
    assert manifest["status"] == "done"
    assert manifest["counts"] == {"written": 4}
    assert manifest["prompts"] == {"nli/judge": "abc"}
    assert manifest["inputs"][str(source)] and len(manifest["config_hash"]) == 16
    assert "torch" in manifest["packages"] and manifest["figures"] == {"rate": 1.5}


def test_changed_input_is_refused(tmp_path):
    source = tmp_path / "in.jsonl"
    source.write_text('{"prompt": "x"}\n')
    run = RunDir(tmp_path / "run")
    run.begin("complete", {"a": 1}, inputs=[source], outputs=["complete.jsonl"])
    (tmp_path / "run" / "complete.jsonl").write_text("{}\n")
    source.write_text('{"prompt": "y"}\n')
    with pytest.raises(UserError, match="another version of its input"):
        run.begin("complete", {"a": 1}, inputs=[source], outputs=["complete.jsonl"])


def _begun_with_output(run: RunDir, inputs) -> None:
    run.begin("complete", {"a": 1}, inputs=inputs, outputs=["complete.jsonl"])
    (run.path / "complete.jsonl").write_text("{}\n")


def test_another_input_file_is_refused_and_the_same_file_by_another_path_is_not(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    a.write_text('{"prompt": "a"}\n')
    b.write_text('{"prompt": "b"}\n')
    run = RunDir(tmp_path / "run")
    _begun_with_output(run, [Path("a.jsonl")])
    run.begin("complete", {"a": 1}, inputs=[a.resolve()], outputs=["complete.jsonl"])  # same file, absolute
    with pytest.raises(UserError, match=r"another input \(b\.jsonl is not a file it read\)"):
        run.begin("complete", {"a": 1}, inputs=[Path("b.jsonl")], outputs=["complete.jsonl"])
    with pytest.raises(UserError, match="other inputs"):  # one input fewer is a change too
        run.begin("complete", {"a": 1}, inputs=[], outputs=["complete.jsonl"])
    a.write_text('{"prompt": "changed"}\n')
    with pytest.raises(UserError, match="another"):  # a changed file, given by its absolute path
        run.begin("complete", {"a": 1}, inputs=[a.resolve()], outputs=["complete.jsonl"])


def test_two_forced_runs_in_one_second_keep_both_trash_entries(tmp_path):
    run = RunDir(tmp_path)
    for n in range(3):
        run.begin("complete", {"n": n}, outputs=["complete.jsonl"], force=True)
        (tmp_path / "complete.jsonl").write_text(f"run {n}\n")
    trashed = sorted((tmp_path / ".trash").iterdir())
    assert len(trashed) == 2
    assert sorted((t / "complete.jsonl").read_text() for t in trashed) == ["run 0\n", "run 1\n"]


def test_a_stage_that_produced_nothing_does_not_hold_its_config(tmp_path):
    run = RunDir(tmp_path)
    run.begin("complete", {"url": "http://127.0.0.1:9"}, outputs=["complete.jsonl", "side"])
    (tmp_path / "complete.jsonl").write_text("")  # opened for appending, nothing written
    (tmp_path / "side").mkdir()
    stage = run.begin("complete", {"url": "http://127.0.0.1:8000"}, outputs=["complete.jsonl"])
    assert stage.manifest.config == {"url": "http://127.0.0.1:8000"}
    assert not (tmp_path / ".trash").exists()
    (tmp_path / "complete.jsonl").write_text("{}\n")  # now it has produced something
    with pytest.raises(UserError, match="another config"):
        run.begin("complete", {"url": "http://127.0.0.1:9"}, outputs=["complete.jsonl"])


def test_a_manifest_temporary_left_by_a_kill_is_cleaned(tmp_path):
    run = RunDir(tmp_path)
    stale = tmp_path / ".complete.manifest.json.abc123.tmp"
    fresh = tmp_path / ".complete.manifest.json.def456.tmp"
    stale.write_text("{")
    fresh.write_text("{")
    os.utime(stale, (time.time() - 3600, time.time() - 3600))
    run.begin("complete", {"a": 1})
    assert not stale.exists() and fresh.exists()  # a fresh one may have a writer


def _write_prompts(path: Path, n: int) -> None:
    path.write_text("".join(json.dumps({"id": f"p{i:03d}", "prompt": f"question {i}"}) + "\n" for i in range(n)))


def test_sigkill_mid_stage_then_rerun_gives_every_record_exactly_once(tmp_path):
    """A real subprocess, really killed with SIGKILL while it writes, then started again."""
    prompts = tmp_path / "prompts.jsonl"
    _write_prompts(prompts, 60)
    run_dir = tmp_path / "run"
    cmd = forge_cmd() + ["-q", "--run-dir", str(run_dir), "--set", "backend.kind=fake",
                         "--set", "backend.delay_s=0.05", "complete", "--input", str(prompts)]
    output = run_dir / "complete.jsonl"
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline:
        if output.exists() and output.read_text().count("\n") >= 15:
            break
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    written_before = output.read_text().count("\n")
    assert 15 <= written_before < 60, "the kill must land mid-way for this test to mean anything"

    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    ids = [json.loads(line)["id"] for line in output.read_text().splitlines()]
    assert sorted(ids) == [f"p{i:03d}" for i in range(60)]  # all there, none twice
    manifest = json.loads((run_dir / "complete.manifest.json").read_text())
    assert manifest["status"] == "done" and manifest["counts"]["written"] == 60


def test_atomic_files_are_readable_like_any_other_output(tmp_path):
    path = tmp_path / "out.json"
    previous = os.umask(0o022)
    try:
        atomic_write_jsonl(path, [rejection(1)])
    finally:
        os.umask(previous)
    assert path.stat().st_mode & 0o777 == 0o644
