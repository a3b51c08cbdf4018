"""`forge pair`: the matching on hand-made graphs with known answers, then the whole stage on real
Synthetic-Persona-Chat personas embedded with the packaged MiniLM (integration)."""

from __future__ import annotations

import gzip
import json
import shutil
from collections import Counter
from functools import partial
from pathlib import Path

import numpy as np
import pytest

from persona_forge.config import PairConfig
from persona_forge.corpora import load_profiles
from persona_forge.errors import UserError
from persona_forge.schema import Pair, Profile, record_id
from persona_forge.stages import pairing
from persona_forge.stages.pairing import (Edges, candidate_edges, drop_self, greedy_pairs,
                                          random_pairs, recall_at_k, shared_topics)
from persona_forge.store import RunDir

from conftest import REPO, Ran, one_line_error, run_forge

SPC = REPO / "corpora" / "spc" / "train.jsonl.gz"
THREADS = ("--set", "pair.threads=1")  # another engineer's torch jobs share the two cores


def edges(*triples: tuple[int, int, float]) -> Edges:
    a, b, s = zip(*triples)
    return Edges(np.array(a), np.array(b), np.array(s, dtype=float))


def degrees(pairs) -> Counter:
    return Counter(u for i, j, *_ in pairs for u in (i, j))


# --- matching on hand-made graphs ------------------------------------------------------------

def test_greedy_takes_the_most_similar_in_band_pair_first():
    graph = edges((0, 1, 0.95), (0, 2, 0.80), (1, 2, 0.70), (1, 3, 0.65), (2, 3, 0.60))
    ids = ["a", "b", "c", "d"]
    # 0.95 is above the band; (a, c) goes first, which leaves (b, d) for b and d.
    assert greedy_pairs(graph, ids, 0.5, 0.9, per_user=1) == [(0, 2, 0.80), (1, 3, 0.65)]
    # Two conversations each: (b, c) fits too, (c, d) does not (c already has two).
    assert greedy_pairs(graph, ids, 0.5, 0.9, per_user=2) == [(0, 2, 0.80), (1, 2, 0.70), (1, 3, 0.65)]


def test_band_edges_are_inclusive_and_nothing_outside_is_taken():
    graph = edges((0, 1, 0.5), (2, 3, 0.9), (4, 5, 0.49), (6, 7, 0.91))
    assert sorted(greedy_pairs(graph, list("abcdefgh"), 0.5, 0.9, 1)) == [(0, 1, 0.5), (2, 3, 0.9)]


@pytest.mark.parametrize("per_user", [1, 2, 3])
def test_random_graphs_respect_band_and_degree(per_user):
    rng = np.random.default_rng(per_user)
    n = 300
    rows = rng.integers(0, n, size=(n, 8))
    sims = rng.uniform(0, 1, size=(n, 8))
    graph = candidate_edges(rows, sims)
    pairs = greedy_pairs(graph, [f"u{i:04d}" for i in range(n)], 0.3, 0.8, per_user)
    assert pairs and all(0.3 <= s <= 0.8 for *_, s in pairs)
    assert max(degrees(pairs).values()) <= per_user
    assert all(i != j for i, j, _ in pairs)
    assert len({(i, j) for i, j, _ in pairs}) == len(pairs)


def test_ties_are_broken_by_profile_ids_not_by_row_order():
    ids = ["zed", "amy", "bob", "cat"]
    graph = edges((0, 1, 0.7), (2, 3, 0.7), (1, 2, 0.7))
    # All equal: the pair whose smaller id sorts first wins: (amy, bob), then (cat, zed) is left.
    chosen = greedy_pairs(graph, ids, 0.5, 0.9, 1)
    assert [(ids[i], ids[j]) for i, j, _ in chosen] == [("amy", "bob")]
    flipped = edges((3, 2, 0.7), (1, 2, 0.7), (0, 1, 0.7))  # the same graph listed another way
    assert [(ids[i], ids[j]) for i, j, _ in greedy_pairs(flipped, ids, 0.5, 0.9, 1)] == [("amy", "bob")]


def test_knn_graph_becomes_unique_undirected_edges_without_self_or_missing():
    rows = np.array([[1, 2], [0, -1], [0, 2]])
    sims = np.array([[0.9, 0.8], [0.9, -3e38], [0.8, 1.0]])
    graph = candidate_edges(rows, sims)
    assert sorted(zip(graph.a.tolist(), graph.b.tolist(), graph.similarity.tolist())) == [(0, 1, 0.9), (0, 2, 0.8)]


def test_a_duplicate_that_outranks_the_query_itself_still_removes_exactly_one():
    rows = np.array([[1, 0, 2], [1, 0, 2], [2, 0, 1]])  # row 0's twin (row 1) came first
    sims = np.array([[1.0, 1.0, 0.5], [1.0, 1.0, 0.5], [1.0, 0.5, 0.5]])
    kept, _ = drop_self(rows, sims, 2)
    assert kept.tolist() == [[1, 2], [0, 2], [0, 1]]
    no_self = np.array([[3, 4, 5]])
    assert drop_self(no_self, np.ones((1, 3)), 2)[0].tolist() == [[3, 4]]


def test_search_goes_past_near_copies_to_find_candidates_in_band():
    def unit(*v):
        return np.array(v, dtype=np.float32) / np.linalg.norm(v)

    emb = np.stack([unit(1, 0, 0, 0), unit(1, 0.05, 0, 0), unit(1, 0.1, 0, 0), unit(1, 0.15, 0, 0),
                    unit(0.7, 0, 0.714, 0), unit(0, 0, 0, 1)])
    found = pairing.nearest_neighbours(emb, PairConfig(k=1, low=0.5, high=0.9, index="exact"))
    # Row 0's three nearest are near-copies (above 0.9); its candidate is row 4, found deeper.
    assert found.nearest[0, 0] > 0.99 and found.index[0].tolist() == [4]
    assert 0.5 <= found.similarity[0, 0] <= 0.9 and found.near_copies[0] == 3
    assert found.depth == 4  # 1, 2, then 4 neighbours: three copies and row 4
    assert found.similarity[5, 0] < 0.5  # row 5 is near nothing: below the band already, no deeper search
    shallow = pairing.nearest_neighbours(emb, PairConfig(k=1, low=0.5, high=0.9, index="exact", search_depth=1))
    assert shallow.index[0].tolist() == [-1]  # not allowed to look further: no candidate


def test_profiles_sharing_identical_attributes_are_near_copies_too():
    def profile(*attributes):
        return Profile(id=record_id(attributes), attribute_ids=[], attributes=list(attributes))

    profiles = [profile("I ski.", "I am a nurse.", "I have a cat."), profile("i ski.", "I am a nurse.", "I bake."),
                profile("I ski.", "I paint.")]
    codes = pairing.attribute_codes(profiles)
    assert codes.shape == (3, 3) and codes[2, 2] == -1
    shared = pairing.identical_attributes(codes, np.array([0, 1]), np.array([[1, 2], [0, 2]]))
    assert shared.tolist() == [[2, 1], [2, 1]]  # word for word, ignoring case and padding
    emb = np.stack([np.array([1, 0], np.float32), np.array([0.8, 0.6], np.float32), np.array([0.6, 0.8], np.float32)])
    cfg = PairConfig(k=1, low=0.5, high=0.9, index="exact")
    assert pairing.nearest_neighbours(emb, cfg).index[0].tolist() == [1]
    found = pairing.nearest_neighbours(emb, cfg, codes)  # row 1 shares two attributes with row 0: skipped
    assert found.index[0].tolist() == [2] and found.near_copies[0] == 1


def test_recall_counts_the_share_of_exact_neighbours_found():
    assert recall_at_k(np.array([[1, 2], [0, 3]]), np.array([[1, 2], [2, 3]])) == 0.75


def test_random_baseline_respects_degree_and_follows_its_seed():
    emb = np.eye(50, dtype=np.float32)
    one = random_pairs(emb, 2, seed=7)
    assert max(degrees(one).values()) <= 2 and all(i < j for i, j, _ in one)
    assert len({(i, j) for i, j, _ in one}) == len(one)
    assert random_pairs(emb, 2, seed=7) == one
    assert random_pairs(emb, 2, seed=8) != one
    assert len(random_pairs(emb, 1, seed=0)) == 25


def test_shared_topics_are_the_most_alike_attributes_each_used_once():
    unit = lambda *v: np.array(v, dtype=np.float32) / np.linalg.norm(v)  # noqa: E731
    a = ["dogs", "cars", "tea"]
    b = ["puppies", "trucks", "opera"]
    va = np.stack([unit(1, 0, 0), unit(0, 1, 0), unit(0, 0, 1)])
    vb = np.stack([unit(1, 0.2, 0), unit(0.1, 1, 0.3), unit(-1, 0, 0.1)])
    topics = shared_topics(a, va, b, vb, top=3, floor=0.45)
    assert [(t.user1_attribute, t.user2_attribute) for t in topics] == [("dogs", "puppies"), ("cars", "trucks")]
    assert topics[0].similarity >= topics[1].similarity
    # "cars" would match "puppies" at 0.2 but is below the floor; "dogs" is not used twice.
    assert shared_topics(a, va, b, vb, top=1, floor=0.45)[0].user2_attribute == "puppies"
    assert shared_topics(a, va, b, vb, top=0, floor=0.0) == []


def test_auto_index_switches_to_hnsw_above_the_threshold():
    cfg = PairConfig(approximate_above=100)
    assert pairing.choose_index(cfg, 100) == "exact" and pairing.choose_index(cfg, 101) == "hnsw"
    assert pairing.choose_index(PairConfig(index="hnsw"), 5) == "hnsw"


def test_no_pair_message_says_how_to_widen_the_band():
    message = pairing.no_pair_message(PairConfig(low=0.8, high=0.9), np.array([[0.3, 0.4], [0.35, np.nan]]))
    assert "[0.80, 0.90]" in message and "median 0.35" in message and "--low 0.35" in message
    above = pairing.no_pair_message(PairConfig(low=-1, high=-0.9), np.array([[0.3, 0.4], [0.95, 0.5]]))
    assert "--high 0.85" in above


# --- reading input ---------------------------------------------------------------------------

def test_spc_personas_become_distinct_normalised_profiles(tmp_path):
    source = tmp_path / "spc.jsonl"
    persona = ["I m a teacher .", "i have two dogs ."]
    rows = [{"user1_persona": persona, "user2_persona": ["I like tea."]},
            {"user1_persona": persona, "user2_persona": ["I like tea.", "I don t drive."]}]
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    loaded = load_profiles(source)
    assert [p.attributes for p in loaded.profiles] == [["I'm a teacher.", "I have two dogs."], ["I like tea."],
                                                       ["I like tea.", "I don't drive."]]
    assert loaded.profiles[0].id == record_id(["I'm a teacher.", "I have two dogs."])
    assert "2 dialogues, 4 personas, 3 distinct profiles" in loaded.description


def test_profile_jsonl_is_read_and_gzip_is_detected(tmp_path):
    profile = Profile(id="p1", attribute_ids=["a"], attributes=["I sing."])
    source = tmp_path / "profiles.anything"
    with gzip.open(source, "wt") as fh:
        fh.write(profile.model_dump_json() + "\n")
    assert load_profiles(source).profiles == [profile]


@pytest.mark.parametrize("text, message", [
    ('{"name": "x"}\n', "neither a Profile record"),
    ('{"id": "p", "attribute_ids": [], "attributes": "no"}\n', ":1: not a Profile record: attributes"),
    ('{"user1_persona": ["a"], "user2_persona": ["b"]}\n{oops\n', ":2: not valid JSON"),
])
def test_malformed_input_is_one_clear_error(tmp_path, text, message):
    source = tmp_path / "in.jsonl"
    source.write_text(text)
    with pytest.raises(UserError, match=message):
        load_profiles(source)


# --- the command, as a user meets it ---------------------------------------------------------

forge = partial(run_forge, process=True)  # a fresh process: the sentence model loads there, not here


def test_empty_input_is_one_line(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    line = one_line_error(forge("--run-dir", str(tmp_path / "run"), "pair", "--profiles", str(empty)))
    assert line == f"forge: error: {empty}: no profiles in it; pairing needs at least two"


def test_one_profile_is_one_line(tmp_path):
    source = tmp_path / "one.jsonl"
    source.write_text(Profile(id="p1", attribute_ids=["a"], attributes=["I sing."]).model_dump_json() + "\n")
    line = one_line_error(forge("--run-dir", str(tmp_path / "run"), "pair", "--profiles", str(source)))
    assert "only one profile in it" in line and "pairing needs at least two" in line


def test_missing_default_profiles_and_unreadable_files_are_one_line(tmp_path):
    line = one_line_error(forge("--run-dir", str(tmp_path / "run"), "pair"))
    assert "profiles.jsonl: no profiles here yet" in line and "--profiles FILE" in line
    garbage = tmp_path / "x.jsonl.gz"
    garbage.write_bytes(b"\x1f\x8b\x08\x00garbage")
    assert "cannot be read as gzipped JSONL" in one_line_error(
        forge("--run-dir", str(tmp_path / "run"), "pair", "--profiles", str(garbage)))


def test_unfinished_personas_stage_is_refused(tmp_path):
    profile = Profile(id="p1", attribute_ids=["a"], attributes=["I sing."])
    (tmp_path / "profiles.jsonl").write_text(profile.model_dump_json() + "\n")
    RunDir(tmp_path).begin("personas", {"n": 10})  # started, never finished
    line = one_line_error(forge("--run-dir", str(tmp_path), "pair"))
    assert "the personas stage has not finished there" in line and "--profiles" in line


def test_band_upside_down_is_one_line(tmp_path):
    line = one_line_error(forge("--run-dir", str(tmp_path), "pair", "--low", "0.8", "--high", "0.7"))
    assert "low (0.8) is above high (0.7)" in line


# --- the whole stage on real personas (integration: the packaged MiniLM) ----------------------

@pytest.fixture(scope="module")
def spc_small(tmp_path_factory) -> Path:
    """The first 100 dialogues of the SPC train split: about 200 personas."""
    path = tmp_path_factory.mktemp("spc") / "spc100.jsonl.gz"
    with gzip.open(SPC, "rt") as src, gzip.open(path, "wt") as dst:
        for _, line in zip(range(100), src):
            dst.write(line)
    return path


@pytest.fixture(scope="module")
def spc_run(tmp_path_factory, spc_small) -> tuple[Path, Ran]:
    run_dir = tmp_path_factory.mktemp("run") / "pair"
    result = forge("--run-dir", str(run_dir), *THREADS, "pair", "--profiles", str(spc_small))
    assert result.returncode == 0, result.stderr
    return run_dir, result


@pytest.fixture(scope="module")
def spc_embeddings(spc_run, spc_small) -> tuple[list[Profile], np.ndarray]:
    """The profiles and the vectors the CLI run cached (no second model load in this process)."""
    import faiss

    faiss.omp_set_num_threads(1)
    profiles = load_profiles(spc_small).profiles
    emb = np.load(spc_run[0] / "pair_embeddings.npy")
    assert json.loads((spc_run[0] / "pair_embeddings.json").read_text())["ids"] == [p.id for p in profiles]
    return profiles, emb


def copy_caches(src: Path, dst: Path) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    for name in ("pair_embeddings", "pair_attribute_embeddings"):
        for ext in (".npy", ".json"):
            shutil.copy(src / f"{name}{ext}", dst / f"{name}{ext}")


def read_pairs(run_dir: Path) -> list[Pair]:
    return [Pair.model_validate_json(line) for line in (run_dir / "pairs.jsonl").read_text().splitlines()]


@pytest.mark.integration
def test_stage_writes_pairs_in_band_with_topics_histogram_and_manifest(spc_run):
    run_dir, result = spc_run
    pairs = read_pairs(run_dir)
    assert len(pairs) > 20
    assert all(0.5 <= p.similarity <= 0.75 for p in pairs)
    assert max(Counter(u for p in pairs for u in (p.user1, p.user2)).values()) == 1
    assert all(p.user1 < p.user2 for p in pairs)
    with_topics = [p for p in pairs if p.shared_topics]
    assert len(with_topics) > len(pairs) / 2
    for p in with_topics:
        sims = [t.similarity for t in p.shared_topics]
        assert len(sims) <= 3 and sims == sorted(sims, reverse=True) and min(sims) >= 0.45
    png = run_dir / "pair_similarity.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    manifest = json.loads((run_dir / "pair.manifest.json").read_text())
    assert manifest["status"] == "done"
    assert manifest["config"]["pair"]["model"] == "packaged:minilm-l6"
    counts = manifest["counts"]
    assert counts["pairs"] == len(pairs) and counts["profiles"] == 198
    assert counts["unpaired"] == counts["profiles"] - 2 * len(pairs)
    assert len((run_dir / "pair_rejections.jsonl").read_text().splitlines()) == counts["unpaired"]
    sim = manifest["figures"]["similarity"]
    assert sim["greedy"]["mean"] > sim["random"]["mean"] + 0.2
    assert "198 distinct profiles" in result.stderr and "greedy 0." in result.stderr


@pytest.mark.integration
def test_rerun_with_the_same_config_and_input_is_a_no_op(spc_run, spc_small):
    run_dir, _ = spc_run
    before = {name: (run_dir / name).stat().st_mtime_ns for name in ("pairs.jsonl", "pair.manifest.json")}
    again = forge("--run-dir", str(run_dir), *THREADS, "pair", "--profiles", str(spc_small))
    assert again.returncode == 0, again.stderr
    assert "already done with this config and input" in again.stderr
    assert {name: (run_dir / name).stat().st_mtime_ns for name in before} == before


@pytest.mark.integration
def test_greedy_beats_random_and_respects_band_and_degree_on_real_personas(spc_embeddings):
    profiles, emb = spc_embeddings
    ids = [p.id for p in profiles]
    found = pairing.nearest_neighbours(emb, PairConfig(index="exact"))
    graph = candidate_edges(found.index, found.similarity)
    for per_user in (1, 2):
        greedy = greedy_pairs(graph, ids, 0.5, 0.75, per_user)
        assert all(0.5 <= s <= 0.75 for *_, s in greedy)
        assert max(degrees(greedy).values()) == per_user
        baseline = random_pairs(emb, per_user, seed=0)
        assert max(degrees(baseline).values()) <= per_user
        assert np.mean([s for *_, s in greedy]) > np.mean([s for *_, s in baseline]) + 0.2


@pytest.mark.integration
def test_pairing_is_deterministic_for_a_seed_and_random_follows_the_seed(spc_embeddings):
    profiles, emb = spc_embeddings
    ids = [p.id for p in profiles]

    def greedy() -> list:
        found = pairing.nearest_neighbours(emb.copy(), PairConfig(index="exact"))
        return greedy_pairs(candidate_edges(found.index, found.similarity), ids, 0.5, 0.75, 1)

    assert greedy() == greedy()
    assert random_pairs(emb, 1, seed=3) == random_pairs(emb, 1, seed=3)
    assert random_pairs(emb, 1, seed=3) != random_pairs(emb, 1, seed=4)


@pytest.mark.integration
def test_hnsw_index_reports_its_recall_against_exact(spc_embeddings):
    _, emb = spc_embeddings
    found = pairing.nearest_neighbours(emb, PairConfig(index="auto", approximate_above=50, recall_sample=100))
    assert found.kind == "hnsw" and found.recall_queries == 100
    assert 0.9 <= found.recall <= 1.0


RANDOM_ARGS = (*THREADS, "--set", "pair.approximate_above=50", "pair", "--strategy", "random", "--seed", "5")


@pytest.fixture(scope="module")
def random_run(tmp_path_factory, spc_run, spc_small) -> tuple[Path, Ran]:
    """The random strategy from the greedy run's cached vectors. Random pairs take every user, so its
    attribute cache ends up holding every profile's attributes: the runs copied from it load no model."""
    run_dir = tmp_path_factory.mktemp("random") / "a"
    copy_caches(spc_run[0], run_dir)
    return run_dir, forge("--run-dir", str(run_dir), *RANDOM_ARGS, "--profiles", str(spc_small))


@pytest.mark.integration
def test_cli_on_cached_embeddings_random_strategy_and_approximate_index(random_run, spc_small, tmp_path):
    run_a, first = random_run
    assert first.returncode == 0, first.stderr
    assert "0 embedded, 198 from the cache" in first.stderr and "HNSW" in first.stderr
    manifest = json.loads((run_a / "pair.manifest.json").read_text())
    assert manifest["figures"]["index"] == "hnsw"
    assert 0.9 <= manifest["figures"]["approximate_recall_at_k"]["recall"] <= 1.0
    assert manifest["figures"]["similarity"]["random"]["mean"] < manifest["figures"]["similarity"]["greedy"]["mean"]
    # The same seed again, in another run directory: the same pairs, byte for byte.
    copy_caches(run_a, tmp_path / "b")
    assert forge("--run-dir", str(tmp_path / "b"), *RANDOM_ARGS, "--profiles", str(spc_small)).returncode == 0
    assert (run_a / "pairs.jsonl").read_bytes() == (tmp_path / "b" / "pairs.jsonl").read_bytes()
    assert len(read_pairs(run_a)) == 99  # 198 users, one random partner each


@pytest.mark.integration
def test_profile_jsonl_in_the_run_dir_and_no_pair_in_band_is_one_line(random_run, spc_small, tmp_path):
    run_dir = tmp_path / "run"
    copy_caches(random_run[0], run_dir)  # vectors are keyed by model and text, so they carry over
    profiles = load_profiles(spc_small).profiles
    (run_dir / "profiles.jsonl").write_text("".join(p.model_dump_json() + "\n" for p in profiles))
    line = one_line_error(forge("--run-dir", str(run_dir), *THREADS, "pair", "--low", "-1", "--high", "-0.9"))
    assert "has a similarity within [-1.00, -0.90]" in line and "widen the band, e.g. --high" in line
    assert not (run_dir / "pair.manifest.json").exists()  # a corrected re-run needs no --force
    ok = forge("--run-dir", str(run_dir), *THREADS, "pair", "--per-user", "2")
    assert ok.returncode == 0, ok.stderr
    assert "Profile JSONL: 198 profiles" in ok.stderr
    assert max(Counter(u for p in read_pairs(run_dir) for u in (p.user1, p.user2)).values()) == 2
