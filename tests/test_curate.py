"""forge curate: samples, cleaning, selection, exports (unit tests with a fake encoder; one
integration test with the real MiniLM and SmolLM2's chat template)."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, forge_cmd, make_recipe
from persona_forge import corpora, selection
from persona_forge.config import CurateConfig
from persona_forge.contract import StageContext
from persona_forge.errors import UserError
from persona_forge.exports import (TemplateCheck, dpo_row, openai_file_errors, openai_row_errors, sharegpt_row,
                                   transcript)
from persona_forge.schema import Dialogue, Preference, Sample, Turn, record_id
from persona_forge.stages import curate

SYSTEM_HEAD = "You are a person chatting with someone you have just met. Stay in character; this is who you are:\n"
SYSTEM_TAIL = "\nReply with one short, natural message, as this person would."
P1 = ["I have two dogs.", "I live in Ohio."]
P2 = ["I play the violin.", "I am a nurse."]


def system(persona: list[str]) -> str:
    return SYSTEM_HEAD + "\n".join(f"- {a}" for a in persona) + SYSTEM_TAIL


def turns(n: int, tag: str = "t") -> list[Turn]:
    return [Turn(speaker="user1" if i % 2 == 0 else "user2", text=f"{tag}{i + 1}") for i in range(n)]


def dialogue(did: str, n: int = 10, critic: float | None = 0.8, tag: str = "t", p1=P1, p2=P2) -> Dialogue:
    scores = {} if critic is None else {"critic": critic, "contradiction": 0.0}
    return Dialogue(id=did, pair_id=f"pair-{did}", user1_persona=list(p1), user2_persona=list(p2),
                    turns=turns(n, tag), scores=scores)


def conv(*dialogues: Dialogue) -> corpora.Conversations:
    return corpora.Conversations(list(dialogues), "test", scored=True)


class FakeEncoder:
    """Bag-of-words hashing vectors: the same words give the same vector, disjoint words orthogonal-ish."""

    spec = "fake:bow"

    def __init__(self, dim: int = 256):
        self.dim = dim
        self.calls = 0

    def encode(self, texts: list[str], label: str) -> np.ndarray:
        self.calls += 1
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            for word in re.findall(r"\w+", text.lower()):
                out[row, int(hashlib.md5(word.encode()).hexdigest(), 16) % self.dim] += 1.0
        out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-9)
        return out


# --- samples -------------------------------------------------------------------------------------

def test_next_reply_on_a_known_conversation_is_the_study_sample():
    samples, rejected = curate.build_samples(conv(dialogue("d1")), CurateConfig(), "best.jsonl")
    assert rejected == []
    assert len(samples) == 1
    s = samples[0]
    assert s.id == record_id("sample", "d1", "next_reply", 7)
    assert (s.kind, s.dialogue_id, s.pair_id, s.speaker, s.position, s.quality) == \
        ("next_reply", "d1", "pair-d1", "user2", 7, 0.8)
    assert s.persona == P2 and s.source == "best.jsonl"
    assert [(m.role, m.content) for m in s.messages] == [
        ("system", system(P2)),
        ("user", "t1"), ("assistant", "t2"), ("user", "t3"), ("assistant", "t4"),
        ("user", "t5"), ("assistant", "t6"), ("user", "t7"), ("assistant", "t8"),
    ]


def test_all_positions_gives_every_reply_of_both_speakers():
    samples, _ = curate.build_samples(conv(dialogue("d1", n=5)), CurateConfig(positions="all", context=2), "x")
    assert [(s.position, s.speaker) for s in samples] == [(1, "user2"), (2, "user1"), (3, "user2"), (4, "user1")]
    last = samples[-1]
    assert [(m.role, m.content) for m in last.messages] == [
        ("system", system(P1)), ("user", "t2"), ("assistant", "t3"), ("user", "t4"), ("assistant", "t5")]


def test_short_conversation_gives_its_last_reply_and_an_empty_one_is_logged():
    empty = Dialogue(id="e", user1_persona=P1, user2_persona=P2, turns=[])
    samples, rejected = curate.build_samples(conv(dialogue("d1", n=4), empty), CurateConfig(), "x")
    assert [(s.dialogue_id, s.position) for s in samples] == [("d1", 3)]
    assert [(r.subject_id, r.reason) for r in rejected] == [("e", "empty")]


def test_conversation_samples_play_each_persona_to_their_last_turn():
    samples, _ = curate.build_samples(conv(dialogue("d1", n=5)), CurateConfig(kind="conversation"), "x")
    by = {s.speaker: s for s in samples}
    assert [(m.role, m.content) for m in by["user2"].messages] == [
        ("system", system(P2)), ("user", "t1"), ("assistant", "t2"), ("user", "t3"), ("assistant", "t4")]
    assert [(m.role, m.content) for m in by["user1"].messages] == [
        ("system", system(P1)), ("assistant", "t1"), ("user", "t2"), ("assistant", "t3"), ("user", "t4"),
        ("assistant", "t5")]
    assert by["user1"].id == record_id("sample", "d1", "conversation", 4)


def test_spc_shaped_records_are_read_with_personas_normalised(tmp_path):
    path = tmp_path / "spc.jsonl"
    path.write_text(json.dumps({"id": "spc-1", "split": "train", "user1_persona": ["i m a nurse ."],
                                "user2_persona": ["I like tea."],
                                "turns": [{"speaker": "user1", "text": "hi"}, {"speaker": "user2", "text": "hey"}]})
                    + "\n")
    read = corpora.load_conversations(path)
    assert not read.scored
    d = read.dialogues[0]
    assert (d.id, d.user1_persona, d.scores) == ("spc-1", ["I'm a nurse."], {})


def test_a_bad_conversation_record_is_one_clear_error(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"user1_persona": ["a"], "user2_persona": ["b"], "turns": [{"speaker": "x"}]}) + "\n")
    with pytest.raises(UserError, match=r"bad.jsonl:1: turns\[0\] must be"):
        corpora.load_conversations(path)


# --- cleaning ------------------------------------------------------------------------------------

def sample(sid: str, target: str, quality: float | None = 0.7, persona=P1) -> Sample:
    from persona_forge.schema import ChatMessage

    return Sample(id=sid, kind="next_reply", dialogue_id=f"d-{sid}", speaker="user2", position=7, persona=persona,
                  messages=[ChatMessage(role="system", content="s"), ChatMessage(role="user", content="hello there"),
                            ChatMessage(role="assistant", content=target)], quality=quality, source="x")


def test_quality_floor_keeps_unscored_and_logs_the_rest():
    kept, dropped = curate.quality_floor([sample("a", "x", 0.9), sample("b", "y", 0.2), sample("c", "z", None)], 0.5)
    assert [s.id for s in kept] == ["a", "c"]
    assert [(r.subject_id, r.reason, r.detail["quality"]) for r in dropped] == [("b", "low_quality", 0.2)]


def test_exact_and_near_duplicates_are_dropped_keeping_the_better_scored():
    pool = [sample("a", "I love my dogs so much", 0.6), sample("b", "i love  my dogs so much", 0.9),
            sample("c", "I love my dogs so much!!", 0.5), sample("d", "Quantum physics lectures bore me", 0.5)]
    pool, exact = curate.exact_duplicates(pool)
    assert [(r.subject_id, r.reason, r.detail["kept"]) for r in exact] == [("a", "duplicate", "b")]
    vectors = FakeEncoder().encode([curate.embed_text(s) for s in pool], "x")
    keep, near = curate.near_duplicates(vectors, pool, 0.95)
    assert [s.id for s, k in zip(pool, keep) if k] == ["b", "d"]
    assert [(r.subject_id, r.reason, r.detail["kept"]) for r in near] == [("c", "near_duplicate", "b")]
    assert near[0].detail["similarity"] >= 0.95


# --- selection -----------------------------------------------------------------------------------

def clustered(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """One big cluster and 30 small ones: random spends its picks on the big one."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((31, 64))
    sizes = [3000] + [20] * 30
    labels = np.repeat(np.arange(31), sizes)
    v = centres[labels] + 0.35 * rng.standard_normal((len(labels), 64))
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32), labels


def test_kcenter_and_facility_beat_random_on_coverage_and_clusters():
    vectors, labels = clustered()
    personas = [str(i) for i in range(len(vectors))]
    kc = selection.measure(vectors, selection.kcenter(vectors, 40), labels, None, personas)
    fl = selection.measure(vectors, selection.facility_location(vectors, 40, ground=512), labels, None, personas)
    rnd = [selection.measure(vectors, selection.random_choice(len(vectors), 40, s), labels, None, personas)
           for s in range(5)]
    best_random = min(m.coverage for m in rnd)
    assert kc.coverage < best_random and fl.coverage < best_random
    assert kc.clusters_covered == 31 and max(m.clusters_covered for m in rnd) < 31
    assert kc.worst < min(m.worst for m in rnd)


def test_kcenter_picks_distinct_rows_and_respects_exclusions():
    vectors, _ = clustered()
    exclude = np.zeros(len(vectors), dtype=bool)
    exclude[3000:3020] = True
    chosen = selection.kcenter(vectors, 50, exclude=exclude)
    assert len(chosen) == len(set(chosen)) == 50
    assert not exclude[chosen].any()
    assert len(selection.facility_location(vectors, 50, ground=256, exclude=exclude)) == 50


def test_density_weight_keeps_kcenter_off_isolated_outliers():
    vectors, _ = clustered()
    outliers = np.random.default_rng(5).standard_normal((100, 64)).astype(np.float32)
    vectors = np.concatenate([vectors, outliers / np.linalg.norm(outliers, axis=1, keepdims=True)])
    isolated = set(range(len(vectors) - 100, len(vectors)))
    labels, personas = selection.cluster_labels(vectors, 40), [str(i) for i in range(len(vectors))]
    plain, weighted = selection.kcenter(vectors, 40), selection.kcenter(vectors, 40, density_weight=0.5)
    assert len(isolated & set(weighted)) < len(isolated & set(plain))
    assert selection.measure(vectors, weighted, labels, None, personas).coverage < \
        selection.measure(vectors, plain, labels, None, personas).coverage
    dens = selection.density(vectors)
    assert dens.min() == 0.0 and dens.max() == 1.0 and dens[sorted(isolated)].max() < np.median(dens)


def test_quality_weight_steers_the_choice_towards_better_samples():
    vectors, _ = clustered()
    quality = np.random.default_rng(3).random(len(vectors))
    plain = selection.kcenter(vectors, 40, quality, 0.0)
    weighted = selection.kcenter(vectors, 40, quality, 0.8)
    assert quality[weighted].mean() > quality[plain].mean() + 0.1
    unscored = np.full(len(vectors), np.nan)
    assert selection.kcenter(vectors, 40, unscored, 0.8) == plain  # unscored is neutral


# --- exports -------------------------------------------------------------------------------------

def preference(pid: str = "p1", chosen: float = 0.9, rejected: float = 0.4, pair: str = "pair-1") -> Preference:
    return Preference(id=pid, pair_id=pair, user1_persona=P1, user2_persona=P2, round=0, chosen_id="c", rejected_id="r",
                      chosen_turns=turns(2, "good"), rejected_turns=turns(2, "bad"),
                      chosen_score=chosen, rejected_score=rejected)


def test_dpo_row_is_the_conversation_request_and_two_transcripts():
    row = dpo_row(preference())
    assert row["prompt"] == [
        {"role": "system", "content": "You write natural conversations between two people who have just met. Write "
                                      "one line per turn, each starting with \"User 1:\" or \"User 2:\". Each person "
                                      "stays true to their persona and never contradicts it; they ask about each other "
                                      "and talk about what they have in common."},
        {"role": "user", "content": "User 1's persona:\n- I have two dogs.\n- I live in Ohio.\n\nUser 2's persona:\n"
                                    "- I play the violin.\n- I am a nurse.\n\nWrite their conversation."}]
    assert row["chosen"] == [{"role": "assistant", "content": "User 1: good1\nUser 2: good2"}]
    assert row["rejected"] == [{"role": "assistant", "content": "User 1: bad1\nUser 2: bad2"}]
    assert transcript([Turn(speaker="user2", text=" a\n b ")]) == "User 2: a b"


def test_preferences_need_a_margin_and_one_per_pair():
    prefs = [preference("p1", 0.9, 0.4), preference("p2", 0.9, 0.88), preference("p3", 0.8, 0.2)]
    rows, tokens, dropped = curate.preference_rows(prefs, CurateConfig(), TemplateCheck())
    assert len(rows) == 1 and rows[0]["chosen"][0]["content"].startswith("User 1: good1")
    assert sorted((r.subject_id, r.reason) for r in dropped) == [("p1", "duplicate"), ("p2", "small_margin")]


def test_openai_validator_finds_what_openai_rejects():
    good = {"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "u"},
                         {"role": "assistant", "content": "a"}]}
    assert openai_row_errors(good) == []
    assert openai_row_errors({"messages": []}) == ["missing messages list"]
    assert openai_row_errors({"messages": [{"role": "user", "content": "u"}, {"role": "user", "content": "v"},
                                           {"role": "assistant", "content": "a"}]}) == \
        ["message 1: two user messages in a row (roles must alternate)"]
    assert "message 1 has unrecognised role 'bot'" in openai_row_errors(
        {"messages": [{"role": "user", "content": "u"}, {"role": "bot", "content": "a"}]})
    assert openai_row_errors({"messages": [{"role": "user", "content": "u"}]}) == \
        ["no assistant message", "the last message is 'user', not 'assistant'"]
    assert "message 1 has empty content" in openai_row_errors(
        {"messages": [{"role": "user", "content": "u"}, {"role": "assistant", "content": " "}]})
    assert "message 0 has unknown keys ['extra']" in openai_row_errors(
        {"messages": [{"role": "user", "content": "u", "extra": 1}, {"role": "assistant", "content": "a"}]})
    assert openai_file_errors([good] * 3) == {"fewer than 10 examples": 1}
    assert openai_file_errors([good] * 10) == {}


def test_sharegpt_names_roles_as_sharegpt_does():
    row = sharegpt_row(sample("a", "bye"))
    assert [c["from"] for c in row["conversations"]] == ["system", "human", "gpt"]


# --- the stage -----------------------------------------------------------------------------------

def write_run(run_dir: Path, n: int = 40) -> None:
    """best.jsonl with n scored conversations (three of them repeats or near-copies, one below the
    floor) and preferences.jsonl."""
    run_dir.mkdir(parents=True, exist_ok=True)
    words = ["dogs", "violin", "ohio", "nursing", "hiking", "coffee", "chess", "painting", "surfing", "baking",
             "jazz", "soccer", "gardening", "physics", "poetry", "cars", "movies", "yoga", "fishing", "camping"]
    dialogues = []
    for i in range(n):
        topic = f"{words[i % 20]} {words[(i * 7 + 3) % 20]} number{i}"
        ts = [Turn(speaker="user1" if k % 2 == 0 else "user2", text=f"turn {k} about {topic}") for k in range(10)]
        dialogues.append(Dialogue(id=f"d{i}", pair_id=f"pair{i}", user1_persona=[f"I like {words[i % 20]}."],
                                  user2_persona=[f"I like {words[(i + 5) % 20]}.", f"I am person {i}."], turns=ts,
                                  scores={"critic": 0.3 if i == 0 else 0.6 + 0.01 * i, "contradiction": 0.0}))
    dialogues.append(dialogues[1].model_copy(update={"id": "copy-of-d1", "pair_id": "pairc",
                                                     "scores": {"critic": 0.55}}))
    (run_dir / "best.jsonl").write_text("".join(d.model_dump_json() + "\n" for d in dialogues))
    prefs = [Preference(id=f"pref{i}", pair_id=f"pair{i}", user1_persona=dialogues[i].user1_persona,
                        user2_persona=dialogues[i].user2_persona, round=0, chosen_id=f"d{i}", rejected_id=f"r{i}",
                        chosen_turns=dialogues[i].turns, rejected_turns=dialogues[i].turns[:4],
                        chosen_score=0.8, rejected_score=0.5 if i % 4 else 0.79) for i in range(12)]
    (run_dir / "preferences.jsonl").write_text("".join(p.model_dump_json() + "\n" for p in prefs))


def recipe(run_dir: Path, **curate_cfg):
    return make_recipe(run_dir, curate=curate_cfg)


def run_curate(recipe, force: bool = False, **handed) -> dict:
    """The stage as the CLI runs it; its summary rows."""
    return curate.run(recipe.curate, StageContext(recipe.run_dir, force, progress=False), recipe.backend,
                      **handed).summary


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_the_stage_writes_every_export_and_each_loads_with_its_consumer(tmp_path):
    from datasets import load_dataset, load_from_disk
    from trl.data_utils import is_conversational

    write_run(tmp_path)
    encoder = FakeEncoder()
    rows = run_curate(recipe(tmp_path, n=20, heldout=5), encoder=encoder, check=TemplateCheck())
    out = tmp_path / "curated"
    assert rows["pool after cleaning"] == 39  # 41 built, one below the floor, one exact copy
    rejections = read_jsonl(out / "curate_rejections.jsonl")
    reasons = {(r["subject_id"], r["reason"]) for r in rejections}
    assert (record_id("sample", "d0", "next_reply", 7), "low_quality") in reasons
    assert (record_id("sample", "copy-of-d1", "next_reply", 7), "duplicate") in reasons
    assert {r["reason"] for r in rejections} == {"low_quality", "duplicate", "small_margin"}

    selected = read_jsonl(out / "selected.jsonl")
    assert len(selected) == 20 and len({s["dialogue_id"] for s in selected}) == 20
    assert len(read_jsonl(out / "samples.jsonl")) == 41
    sft = read_jsonl(out / "sft.jsonl")
    assert sft == [{"messages": s["messages"]} for s in selected]
    assert all(is_conversational(r) for r in sft)
    assert read_jsonl(out / "openai.jsonl") == sft and openai_file_errors(sft) == {}
    dpo = read_jsonl(out / "dpo.jsonl")
    assert len(dpo) == 9 and all(is_conversational(r) and set(r) == {"prompt", "chosen", "rejected"} for r in dpo)
    assert openai_file_errors(read_jsonl(out / "openai_dpo.jsonl"), dpo=True) == {"fewer than 10 examples": 1}
    assert read_jsonl(out / "sharegpt.jsonl")[0]["conversations"][-1]["from"] == "gpt"

    ds = load_from_disk(str(out / "dataset"))
    assert set(ds) == {"train", "heldout"} and ds["train"].num_rows == 20 and ds["heldout"].num_rows == 5
    assert ds["train"][0]["messages"] == sft[0]["messages"]
    held = {r["messages"][-1]["content"] for r in ds["heldout"]}
    assert not held & {r["messages"][-1]["content"] for r in sft}
    parquet = load_dataset("parquet", data_files={"train": str(out / "parquet" / "train.parquet")})
    assert parquet["train"].num_rows == 20
    assert load_dataset("parquet", data_files=str(out / "parquet" / "dpo.parquet"))["train"].num_rows == 9

    report = json.loads((out / "selection.json").read_text())
    assert set(report["measures"]) == {"kcenter", "random"} and report["pool"] == 39
    assert report["measures"]["kcenter"]["chosen"] == 20
    card = (out / "README.md").read_text()
    assert "license: cc-by-4.0" in card and "| coverage: mean distance" in card and "| low_quality | 1 |" in card
    from huggingface_hub import DatasetCard

    metadata = DatasetCard(card).data  # the Hub reads the card's metadata: licence and the parquet split
    assert metadata.license == "cc-by-4.0"
    assert metadata.configs == [{"config_name": "default", "data_files": [{"split": "train",
                                                                          "path": "parquet/train.parquet"}]}]
    manifest = json.loads((tmp_path / "curate.manifest.json").read_text())
    assert manifest["status"] == "done" and manifest["counts"]["selected"] == 20
    assert manifest["prompts"]["curate/dpo_conversation"]

    again = run_curate(recipe(tmp_path, n=20, heldout=5), encoder=encoder, check=TemplateCheck())
    assert again["status"].startswith("already done")
    with pytest.raises(UserError, match="pass --force"):
        run_curate(recipe(tmp_path, n=10), encoder=encoder, check=TemplateCheck())
    calls = encoder.calls
    smaller = run_curate(recipe(tmp_path, n=10), force=True, encoder=encoder, check=TemplateCheck())
    assert smaller["chosen"].startswith("10 by kcenter") and encoder.calls == calls  # embeddings came from the cache


def test_rows_the_template_rejects_are_replaced(tmp_path):
    write_run(tmp_path)

    class Picky(TemplateCheck):
        def tokens(self, row):
            if "messages" in row and row["messages"][-1]["content"].endswith(" number3"):
                from persona_forge.exports import RenderError
                raise RenderError("no")
            return 10

    run_curate(recipe(tmp_path, n=39), encoder=FakeEncoder(), check=Picky())
    out = tmp_path / "curated"
    assert len(read_jsonl(out / "sft.jsonl")) == 38
    assert [r["subject_id"] for r in read_jsonl(out / "curate_rejections.jsonl")
            if r["reason"] == "template_rejected"] == [record_id("sample", "d3", "next_reply", 7)]


def test_n_larger_than_the_pool_says_so(tmp_path):
    write_run(tmp_path)
    rows = run_curate(recipe(tmp_path, n=1000), encoder=FakeEncoder(), check=TemplateCheck())
    assert rows["chosen"].startswith("39 by kcenter")
    assert "fewer than the 1,000 asked for (--n): the pool after cleaning holds 39" in rows["chosen"]


def test_cli_without_conversations_is_one_line(tmp_path):
    result = subprocess.run(forge_cmd() + ["--run-dir", str(tmp_path), "curate"], cwd=REPO, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 2
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "best.jsonl: no conversations here yet" in lines[0]


# --- integration: the real embedding model and SmolLM2's chat template ----------------------------

@pytest.mark.integration
def test_real_curate_on_spc_renders_through_smollm2_and_trl(tmp_path):
    import gzip

    from trl.data_utils import apply_chat_template, maybe_apply_chat_template

    from persona_forge.lm import load_tokenizer
    from persona_forge.models import causal_lm_path

    spc = tmp_path / "spc.jsonl"
    with gzip.open(REPO / "corpora" / "spc" / "test.jsonl.gz", "rt") as fh:
        spc.write_text("".join(line for _, line in zip(range(150), fh)))
    run_dir = tmp_path / "run"
    result = subprocess.run(forge_cmd() + ["--run-dir", str(run_dir), "--set", "curate.threads=2", "curate", "--n",
                                           "40", "--data", str(spc), "--heldout", "10"],
                            cwd=REPO, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr
    out = run_dir / "curated"
    sft = read_jsonl(out / "sft.jsonl")
    assert len(sft) == 40 and openai_file_errors(sft) == {}
    report = json.loads((out / "selection.json").read_text())
    assert report["tokens"]["counted_with"].startswith("rendered with the chat template of packaged:smollm2")
    kc, rnd = report["measures"]["kcenter"], report["measures"]["random"]
    assert kc["chosen"] == rnd["chosen"] == 40 and 0 < kc["coverage_mean_distance"] < 1
    assert kc["clusters_covered"] >= rnd["clusters_covered"]
    tokenizer = load_tokenizer(causal_lm_path("packaged:smollm2-135m-instruct"), padding_side="right")
    for row in sft:
        text = maybe_apply_chat_template(row, tokenizer)["text"]
        assert text.startswith("<|im_start|>system\nYou are a person chatting")
        assert text.endswith(row["messages"][-1]["content"] + "<|im_end|>\n")
    # A DPO row built from two SPC conversations of the same file goes through trl's formatting as well.
    from persona_forge.corpora import load_conversations

    dialogues = load_conversations(spc).dialogues
    pref = Preference(id="p", pair_id="x", user1_persona=dialogues[0].user1_persona,
                      user2_persona=dialogues[0].user2_persona, round=0, chosen_id=dialogues[0].id,
                      rejected_id=dialogues[1].id, chosen_turns=dialogues[0].turns, rejected_turns=dialogues[1].turns,
                      chosen_score=0.9, rejected_score=0.2)
    rendered = apply_chat_template(dpo_row(pref), tokenizer)
    assert rendered["prompt"].endswith("Write their conversation.<|im_end|>\n<|im_start|>assistant\n")
    assert rendered["chosen"].startswith("User 1: ") and rendered["rejected"].startswith("User 1: ")


def test_random_strategy_is_compared_with_kcenter_and_conversations_export_too(tmp_path):
    write_run(tmp_path)
    rows = run_curate(recipe(tmp_path, n=8, strategy="random", kind="conversation"), encoder=FakeEncoder(),
                      check=TemplateCheck())
    out = tmp_path / "curated"
    report = json.loads((out / "selection.json").read_text())
    assert report["strategy"] == "random" and set(report["measures"]) == {"random", "kcenter"}
    selected = read_jsonl(out / "selected.jsonl")
    assert len(selected) == 8 and {s["kind"] for s in selected} == {"conversation"}
    assert all(openai_row_errors(r) == [] for r in read_jsonl(out / "openai.jsonl"))
    counts = json.loads((tmp_path / "curate.manifest.json").read_text())["counts"]
    assert counts["samples"] == 82 and "samples built" in rows  # 41 conversations, one sample per persona


# --- quality from a forge score file ---------------------------------------------------------------------

def _score_file(path: Path, values: dict[str, float | None]) -> Path:
    from persona_forge.schema import ReplyScore

    path.write_text("".join(ReplyScore(id=record_id("sample", did, "next_reply", 7), dialogue_id=did, position=7,
                                       speaker="user2", reply="r", words=1, max_entailment=v,
                                       perplexity=v).model_dump_json() + "\n" for did, v in values.items()))
    return path


def test_score_quality_is_the_percentile_rank_of_the_signal(tmp_path):
    samples, _ = curate.build_samples(conv(*(dialogue(f"d{i}") for i in range(5))), CurateConfig(), "x")
    path = _score_file(tmp_path / "s.jsonl", {"d0": 0.9, "d1": 0.1, "d2": 0.5, "d3": 0.5})   # d4 unscored
    out, found = curate.score_quality(samples, f"{path}:max_entailment")
    # sorted 0.1 < 0.5 = 0.5 < 0.9: ranks 0, (1+2)/2 = 1.5, 1.5, 3; divided by 4 - 1 = 3
    assert found == 4 and [s.quality for s in out] == [1.0, 0.0, 0.5, 0.5, None]
    assert out[0].scores["score.max_entailment"] == 0.9 and out[0].scores["critic"] == 0.8
    lower, _ = curate.score_quality(samples, f"{path}:-perplexity")      # lower is better: reversed
    assert [s.quality for s in lower] == [0.0, 1.0, 0.5, 0.5, None]
    with pytest.raises(UserError, match="expected FILE:FIELD"):
        curate.parse_quality(f"{path}:nonsense")
    with pytest.raises(UserError, match="no such file"):
        curate.parse_quality(f"{tmp_path / 'none.jsonl'}:ifd")
    with pytest.raises(UserError, match="none of the 5 samples"):
        curate.score_quality(samples, f"{_score_file(tmp_path / 'o.jsonl', {'other': 1.0})}:ifd")


def test_curate_quality_from_a_score_file_steers_selection(tmp_path):
    write_run(tmp_path)
    top = {f"d{i}" for i in range(30, 40)}
    path = _score_file(tmp_path / "best.scores.jsonl", {f"d{i}": (1.0 + i if f"d{i}" in top else 0.01 * i)
                                                        for i in range(40)})
    run_curate(recipe(tmp_path, n=5, quality_weight=1.0, density_weight=0.0, quality=f"{path}:max_entailment"),
               encoder=FakeEncoder(), check=TemplateCheck())
    selected = read_jsonl(tmp_path / "curated" / "selected.jsonl")
    assert len(selected) == 5 and all(s["dialogue_id"] in top for s in selected)
    assert all(s["quality"] > 0.7 and "score.max_entailment" in s["scores"] for s in selected)
    manifest = json.loads((tmp_path / "curate.manifest.json").read_text())
    assert str(path) in manifest["inputs"] and manifest["config"]["curate"]["quality"] == "max_entailment"
