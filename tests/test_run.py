"""forge run and forge report: stage selection, adapters handed to eval, and the run report."""

from __future__ import annotations

import json
import subprocess

from conftest import REPO, forge_cmd
from persona_forge import report
from persona_forge.cli import _pipeline_stages, _trained_adapters
from persona_forge.errors import UserError


def test_stages_run_in_pipeline_order_and_unknown_ones_are_refused():
    assert _pipeline_stages(None)[0] == "personas" and _pipeline_stages(None)[-1] == "judge"
    assert _pipeline_stages("eval, train") == ["train", "eval"]
    try:
        _pipeline_stages("train,evaluate")
    except UserError as exc:
        assert "unknown stage 'evaluate'" in str(exc)
    else:
        raise AssertionError("an unknown stage was accepted")


def test_eval_is_given_every_adapter_train_finished(tmp_path):
    for name in ("sft", "dpo"):
        (tmp_path / "train" / name / "adapter").mkdir(parents=True)
        (tmp_path / "train" / name / "adapter" / "adapter_config.json").write_text("{}")
    (tmp_path / "train" / "broken").mkdir()
    assert _trained_adapters(tmp_path) == (f"dpo={tmp_path / 'train/dpo/adapter'}",
                                          f"sft={tmp_path / 'train/sft/adapter'}")


def test_report_reads_generate_figures_from_the_manifest(tmp_path):
    rounds = {"round": 1, "pairs": 2, "candidates": 6, "kept_pairs": 2, "critic_mean_all": 0.5,
              "critic_mean_single_shot": 0.4, "critic_mean_selected": 0.7, "contradiction_rate_all": 0.25,
              "contradiction_rate_single_shot": 0.5, "contradiction_rate_selected": 0.0}
    manifest = {"stage": "generate", "config_hash": "x", "config": {"mode": "whole"}, "status": "done",
                "counts": {"candidates": 6, "best": 2, "preferences": 1, "rejections": 3},
                "figures": {"rounds": [rounds], "overall": {**rounds, "round": "all"}}}
    (tmp_path / "generate.manifest.json").write_text(json.dumps(manifest))
    text = report.build(tmp_path)
    assert "## 3. Generate" in text and "## 1. Personas" not in text
    assert "| 1 | 2 | 6 | 0.500 / 0.400 / 0.700 | 0.250 / 0.500 / 0.000 | 2 |" in text
    assert "| all | 2 | 6 |" in text


def test_forge_run_with_an_unknown_stage_is_one_line(tmp_path):
    result = subprocess.run([*forge_cmd(), "--run-dir", str(tmp_path), "run", "--stages", "pair,nope"],
                            capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "forge: error: --stages: unknown stage 'nope'; choose from personas, pair, generate, curate, train, eval, judge"]
