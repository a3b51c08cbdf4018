"""forge run and forge report: stage selection, adapters handed to eval, and the run report."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import make_recipe, one_line_error
from persona_forge import report
from persona_forge.layout import trained_adapters
from persona_forge.pipeline import choose
from persona_forge.errors import UserError


def test_stages_run_in_pipeline_order_and_unknown_ones_are_refused():
    assert choose(None)[0] == "personas" and choose(None)[-1] == "judge"
    assert choose(["eval", " train"]) == ["train", "eval"] == choose("eval, train")
    try:
        choose(["train", "evaluate"])
    except UserError as exc:
        assert "unknown stage 'evaluate'" in str(exc)
    else:
        raise AssertionError("an unknown stage was accepted")


def test_every_stage_takes_its_own_section_and_a_context_and_returns_a_stage_result():
    """The stage contract: run(<its section>, StageContext, ...handed) -> StageResult, never the Recipe."""
    import importlib
    import typing

    from persona_forge import config
    from persona_forge.contract import StageContext, StageResult

    sections = {"personas": config.PersonasConfig, "pairing": config.PairConfig, "generate": config.GenerateConfig,
                "curate": config.CurateConfig, "train": config.TrainConfig, "train_reward": config.TrainConfig,
                "train_rl": config.TrainConfig, "train_openai": config.TrainConfig, "train_styles": config.TrainConfig,
                "evaluation": config.EvalConfig, "judging": config.JudgeConfig, "complete": config.CompleteConfig, "score": config.ScoreConfig,
                "restyle": config.RestyleConfig}
    for name, section in sections.items():
        module = importlib.import_module(f"persona_forge.stages.{name}")
        hints = typing.get_type_hints(module.run)
        first, second = list(hints)[:2]
        assert (hints[first], hints[second], hints["return"]) == (section, StageContext, StageResult), name
        assert config.Recipe not in hints.values(), name


def test_eval_is_given_every_adapter_train_finished(tmp_path):
    for name in ("sft", "dpo"):
        (tmp_path / "train" / name / "adapter").mkdir(parents=True)
        (tmp_path / "train" / name / "adapter" / "adapter_config.json").write_text("{}")
    (tmp_path / "train" / "broken").mkdir()
    assert trained_adapters(tmp_path) == [tmp_path / "train/dpo/adapter", tmp_path / "train/sft/adapter"]


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


def test_forge_run_with_an_unknown_stage_is_one_line(tmp_path, forge):
    result = forge("--run-dir", str(tmp_path), "run", "--stages", "pair,nope")
    assert one_line_error(result) == ("forge: error: --stages: unknown stage 'nope'; choose from personas, pair, "
                                      "generate, curate, train, eval, judge")


def cached_pair_inputs(tmp_path: Path) -> tuple[Path, Path]:
    """Six profiles and a run directory whose vector caches already hold every text pairing embeds,
    so pairing runs without loading a model. Returns (profiles file, run directory)."""
    import numpy as np

    from persona_forge.embeddings import VectorCache
    from persona_forge.schema import Profile, record_id

    profiles = [Profile(id=f"p{i}", attribute_ids=[f"a{i}", f"b{i}"], attributes=[f"I like {i}.", f"I own {i} cats."])
                for i in range(6)]
    path = tmp_path / "profiles.jsonl"
    path.write_text("".join(p.model_dump_json() + "\n" for p in profiles))
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    rng = np.random.default_rng(0)
    spec = "packaged:minilm-l6"
    attributes = [a for p in profiles for a in p.attributes]
    for name, label, texts, labels in (
            ("pair_embeddings", "ids", [" ".join(p.attributes) for p in profiles], [p.id for p in profiles]),
            ("pair_attribute_embeddings", "texts", attributes, attributes)):
        cache = VectorCache(run_dir, name, label)
        keys = [record_id(spec, t) for t in texts]
        vectors = rng.normal(size=(len(texts), 8)).astype(np.float32)
        cache.vectors = dict(zip(keys, vectors / np.linalg.norm(vectors, axis=1, keepdims=True)))
        cache.labels = dict(zip(keys, labels))
        cache.save(keys, spec)
    return path, run_dir


def test_pipeline_runs_from_python_and_returns_typed_results(tmp_path):
    """pipeline.run without the CLI: each stage's result carries its manifest's counts and its outputs,
    and report.md is written. The vectors are cached beforehand, so no model is loaded."""
    from persona_forge import pipeline

    path, run_dir = cached_pair_inputs(tmp_path)
    recipe = make_recipe(run_dir, pair={"profiles": str(path), "low": -1.0, "high": 1.0, "threads": 1})

    seen = []
    results = pipeline.run(recipe, ["pair"], progress=False, on_result=seen.append)

    result = results["pair"]
    assert list(results) == ["pair"] and seen == [result]
    assert (result.stage, result.failed, result.counts["profiles"]) == ("pair", 0, 6)
    assert result.counts["pairs"] == 3 == len((run_dir / "pairs.jsonl").read_text().splitlines())
    assert result.counts["profiles_embedded"] == 0  # every vector came from the cache
    assert all(p.is_file() for p in result.outputs) and (run_dir / "report.md").is_file()


def test_forge_run_prints_each_stage_and_a_rerun_finds_it_done(tmp_path, forge):
    path, run_dir = cached_pair_inputs(tmp_path)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"run_dir: {run_dir}\npair: {{profiles: {path}, low: -1, high: 1, threads: 1}}\n")
    args = ("run", str(recipe), "--stages", "pair")
    first = forge(*args)
    assert first.returncode == 0, first.stderr
    assert "forge pair" in first.stderr and "forge run" in first.stderr
    manifest = json.loads((run_dir / "pair.manifest.json").read_text())
    assert manifest["status"] == "done" and manifest["counts"]["pairs"] == 3
    pairs = (run_dir / "pairs.jsonl").read_bytes()
    assert forge(*args).returncode == 0 and (run_dir / "pairs.jsonl").read_bytes() == pairs


def test_forge_pair_alone_hands_the_stage_its_section(tmp_path, forge):
    path, run_dir = cached_pair_inputs(tmp_path)
    result = forge("--run-dir", str(run_dir), "--set", "pair.threads=1", "pair", "--profiles", str(path),
                   "--low", "-1", "--high", "1")
    assert result.returncode == 0, result.stderr
    assert json.loads((run_dir / "pair.manifest.json").read_text())["counts"]["pairs"] == 3
