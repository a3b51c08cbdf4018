"""forge score: a known IFD ordering under a hand-built copying model (no training), the signals of
one sample worked by hand, resume after a kill, refusing a changed input, and one-line errors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from conftest import make_recipe, one_line_error
from persona_forge import metrics as M
from persona_forge.contract import StageContext
from persona_forge.errors import UserError
from persona_forge.samples import sample_id
from persona_forge.schema import ReplyScore
from persona_forge.stages import score as S
from persona_forge.store import read_jsonl

COPIED = "zebras juggle quietly"
NOVEL = "Kw! 7?"


class CopyLM:
    """A tiny causal LM built by hand (an induction head, nothing trained): at each position it puts
    logit 8 on the token that followed the latest earlier occurrence of the last 3 tokens (else of the
    last 2, else of the last one), 0 elsewhere. A reply copied from its context is then nearly free
    given the context and costly alone."""

    def __init__(self, vocab: int):
        import torch

        self.vocab = vocab
        self.weight = torch.nn.Parameter(torch.zeros(1))

    def parameters(self):
        return iter([self.weight])

    def __call__(self, input_ids, attention_mask):
        import torch

        logits = torch.zeros((*input_ids.shape, self.vocab))
        for b, row in enumerate(input_ids.tolist()):
            follow: dict[tuple[int, ...], int] = {}
            for t in range(len(row)):
                for k in (1, 2, 3):       # what followed each earlier k-gram ending at t - 1
                    if t - k >= 0:
                        follow[tuple(row[t - k:t])] = row[t]
                for k in (3, 2, 1):       # predict from the longest k-gram ending at t seen before
                    key = tuple(row[t - k + 1:t + 1])
                    if t - k + 1 >= 0 and key in follow:
                        logits[b, t, follow[key]] = 8.0
                        break

        class Out:
            pass
        out = Out()
        out.logits = logits
        return out


class KeywordNLI:
    """Entailment 0.9 when the persona sentence's last word is in the reply; contradiction 0.8 when the
    reply says "never"; else neutral."""

    def predict(self, pairs, progress=None):
        return np.array([[0.9, 0.05, 0.05] if p.split()[-1].strip(".").lower() in h.lower() else
                         [0.1, 0.1, 0.8] if "never" in h else [0.1, 0.8, 0.1] for p, h in pairs])


def _conversation(cid: str, reply: str, prompt: str) -> dict:
    texts = ["hello there", "hi, how are you", "fine thanks", "what do you do", "I teach", "nice",
             prompt, reply]
    return {"id": cid, "user1_persona": ["I like music."], "user2_persona": ["I have a cat.", "I swim."],
            "turns": [{"speaker": "user1" if i % 2 == 0 else "user2", "text": t} for i, t in enumerate(texts)]}


def _corpus(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def run_score(recipe, data=None, out=None, force: bool = False, **handed) -> dict:
    """The stage as forge score calls it, handed the recipe's backend and NLI sections; its summary."""
    return S.run(recipe.score, StageContext(recipe.run_dir, force, progress=False), chat=recipe.backend,
                 nli_config=recipe.nli, data=data, out=out, **handed).data


def _lm():
    from tiny_lm import tiny_tokenizer

    tokenizer = tiny_tokenizer()
    return CopyLM(len(tokenizer)), tokenizer


def test_ifd_is_lower_for_a_reply_copied_from_its_context(tmp_path):
    data = _corpus(tmp_path / "convs.jsonl", [
        _conversation("copy", COPIED, f"say this back: {COPIED}"),
        _conversation("novel", NOVEL, "tell me something"),
    ])
    recipe = make_recipe(tmp_path / "run", score={"nli": False})
    summary = run_score(recipe, data, tmp_path / "out", lm=_lm())
    assert summary["samples"] == 2 and summary["scored_this_run"] == 2
    by = {r.dialogue_id: r for r in read_jsonl(tmp_path / "out" / "convs.scores.jsonl", ReplyScore)}
    copy, novel = by["copy"], by["novel"]
    # the copied reply: after its first character every token is predicted from the context
    assert copy.loss_context < 0.3 * copy.loss_alone
    assert copy.ifd == pytest.approx(copy.loss_context / copy.loss_alone)
    assert copy.ifd < 0.3 < 0.8 < novel.ifd           # the known ordering: copy far below the novel reply
    assert copy.perplexity == pytest.approx(math.exp(copy.loss_context))
    assert copy.tokens == len(COPIED) and novel.tokens == len(NOVEL)   # byte-level tokenizer: one per char
    # the ids are curate's sample ids; the speaker of turn 8 (index 7) is user2
    assert copy.id == sample_id("copy", "next_reply", 7) and copy.speaker == "user2"
    assert copy.max_entailment is None and copy.c_score is None      # NLI off


def test_words_z_and_nli_signals_hand_worked(tmp_path):
    replies = ["my cat is lovely", "I never swim", "ok", "sure thing"]
    data = _corpus(tmp_path / "c.jsonl", [_conversation(f"c{i}", r, "tell me") for i, r in enumerate(replies)])
    recipe = make_recipe(tmp_path / "run")
    run_score(recipe, data, lm=_lm(), nli=KeywordNLI())
    by = {r.dialogue_id: r for r in read_jsonl(tmp_path / "c.scores.jsonl", ReplyScore)}   # beside the data
    # words 4, 3, 1, 2: mean 2.5, population sd sqrt((2.25 + 0.25 + 2.25 + 0.25) / 4) = sqrt(1.25)
    assert [by[f"c{i}"].words for i in range(4)] == [4, 3, 1, 2]
    assert by["c0"].words_z == pytest.approx(1.5 / math.sqrt(1.25))
    assert by["c2"].words_z == pytest.approx(-1.5 / math.sqrt(1.25))
    # user2's persona: "I have a cat." is entailed by "my cat is lovely" -> +1
    assert by["c0"].max_entailment == pytest.approx(0.9) and by["c0"].c_score == 1
    # "I never swim": "I swim." ends in "swim" -> entailed (0.9) even though "never" -> entailment wins: +1
    assert by["c1"].c_score == 1 and by["c1"].max_contradiction == pytest.approx(0.8)
    assert by["c2"].c_score == 0 and by["c2"].max_contradiction == pytest.approx(0.1)
    assert S.summarise(list(by.values()))["means"]["c_score"] == pytest.approx(0.5)


def test_resumes_after_a_kill_without_duplicates(tmp_path):
    data = _corpus(tmp_path / "c.jsonl", [_conversation(f"c{i}", f"reply {i}", "and you") for i in range(3)])
    recipe = make_recipe(tmp_path / "run", score={"positions": "all", "chunk": 2})

    class Killed(Exception):
        pass

    def stop_after_5(n):
        if n == 5:
            raise Killed

    with pytest.raises(Killed):
        run_score(recipe, data, lm=_lm(), nli=KeywordNLI(), on_written=stop_after_5)
    path = tmp_path / "c.scores.jsonl"
    assert len(read_jsonl(path)) == 5
    summary = run_score(recipe, data, lm=_lm(), nli=KeywordNLI())
    records = read_jsonl(path, ReplyScore)
    # 3 conversations x 7 replies (turns 2-8 each answer the other user): 21 samples, 16 scored on resume
    assert summary["samples"] == 21 and summary["scored_this_run"] == 16
    assert len(records) == 21 and len({r.id for r in records}) == 21
    again = run_score(recipe, data, lm=_lm(), nli=KeywordNLI())
    assert again["scored_this_run"] == 0 and len(read_jsonl(path)) == 21


def test_refuses_a_changed_input_or_config_without_force(tmp_path):
    data = _corpus(tmp_path / "c.jsonl", [_conversation("c0", "hello", "hi")])
    recipe = make_recipe(tmp_path / "run", score={"nli": False})
    run_score(recipe, data, lm=_lm())
    _corpus(data, [_conversation("c0", "something else", "hi")])
    with pytest.raises(UserError, match="another version of its input.*pass --force"):
        run_score(recipe, data, lm=_lm())
    run_score(recipe, data, lm=_lm(), force=True)
    assert [r.reply for r in read_jsonl(tmp_path / "c.scores.jsonl", ReplyScore)] == ["something else"]
    with pytest.raises(UserError, match="another config"):
        run_score(make_recipe(tmp_path / "run", score={"nli": False, "context": 2}), data, lm=_lm())


def test_no_reply_to_score_is_one_clear_error(tmp_path):
    data = _corpus(tmp_path / "short.jsonl", [{"user1_persona": ["a"], "user2_persona": ["b"],
                                               "turns": [{"speaker": "user1", "text": "hi"}]}])
    with pytest.raises(UserError, match="no conversation has a reply"):
        run_score(make_recipe(tmp_path / "run"), data, lm=_lm())


def test_cli_bad_file_and_missing_data_are_one_line(tmp_path, forge):
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{not json\n")
    proc = forge("score", "--data", str(bad), cwd=tmp_path)
    assert one_line_error(proc).startswith(f"forge: error: {bad}:1: not valid JSON")
    proc = forge("score", "--data", str(tmp_path / "missing.jsonl"), cwd=tmp_path)
    assert one_line_error(proc) == f"forge: error: {tmp_path / 'missing.jsonl'}: no such file"
    proc = forge("score", cwd=tmp_path)
    assert one_line_error(proc).startswith("forge: error: forge score needs --data FILE")
    assert not list(tmp_path.glob("*.scores.jsonl"))


def test_c_score_matches_metrics_on_the_same_rows():
    rows = KeywordNLI().predict([("I have a cat.", "never"), ("I swim.", "never")])
    assert M.c_score(rows) == -1


@pytest.mark.integration
def test_forge_score_on_spc_with_the_packaged_model(tmp_path, forge):
    from conftest import REPO

    proc = forge("--set", "backend.threads=2", "score", "--data", str(REPO / "corpora" / "spc" / "test.jsonl.gz"),
                 "--out", str(tmp_path), "--limit", "3", "--no-nli", "--json", process=True)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    records = read_jsonl(tmp_path / "test.scores.jsonl", ReplyScore)
    assert summary["samples"] == len(records) == 3
    for r in records:
        assert r.tokens and 0 < r.loss_context and 0 < r.loss_alone and 1.0 < r.perplexity < 1000
        assert r.ifd == pytest.approx(r.loss_context / r.loss_alone) and r.max_entailment is None
    manifest = json.loads((tmp_path / "test.score.manifest.json").read_text())
    assert manifest["status"] == "done" and manifest["models"]["base"] == "packaged:smollm2-135m-instruct"
