"""The NLI interface: label mapping, order, the build-once cache, awkward inputs, eval CLI."""

from __future__ import annotations

import json
from functools import partial

import numpy as np
import pytest
import torch

from persona_forge.errors import UserError
from persona_forge.nli.base import LABELS, CrossEncoderNLI, LLMJudgeNLI, label_order
from persona_forge.nli.data import chatify, contradictions_of, normalize, read_labelled
from persona_forge.nli.evaluate import metrics
from persona_forge.nli.frames import check_frames

from conftest import run_forge


def tiny_checkpoint(folder, id2label: dict[int, str], hot: int | None = None):
    """A 2-layer BERT classifier with the packaged MiniLM tokenizer; `hot` forces one raw output."""
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from persona_forge.models import sentence_model_path

    torch.manual_seed(0)
    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, num_labels=3, id2label=id2label,
                        label2id={v: k for k, v in id2label.items()})
    model = BertForSequenceClassification(config)
    with torch.no_grad():  # spread the outputs, so rows for different inputs really differ
        model.classifier.weight.mul_(200.0)
    if hot is not None:
        with torch.no_grad():
            model.classifier.weight.zero_()
            model.classifier.bias.copy_(torch.tensor([-20.0, -20.0, -20.0]))
            model.classifier.bias[hot] = 20.0
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(sentence_model_path("packaged:minilm-l6")).save_pretrained(folder)
    return str(folder)


@pytest.mark.parametrize("id2label,expected", [
    ({0: "entailment", 1: "neutral", 2: "contradiction"}, [0, 1, 2]),
    ({0: "CONTRADICTION", 1: "NEUTRAL", 2: "ENTAILMENT"}, [2, 1, 0]),      # the MNLI cross-encoder order
    ({0: "contradiction", 1: "entailment", 2: "neutral"}, [1, 2, 0]),
])
def test_label_names_map_to_our_order(id2label, expected):
    assert label_order(id2label) == expected


def test_unmappable_labels_are_refused_clearly():
    with pytest.raises(UserError, match="cannot tell which output is entailment, neutral, contradiction"):
        label_order({0: "LABEL_0", 1: "LABEL_1", 2: "LABEL_2"})


def test_hf_model_probabilities_follow_its_label_names(tmp_path):
    # Raw output 0 is CONTRADICTION in this checkpoint; it must land in our contradiction column.
    path = tiny_checkpoint(tmp_path, {0: "CONTRADICTION", 1: "NEUTRAL", 2: "ENTAILMENT"}, hot=0)
    probs = CrossEncoderNLI(path).predict([("I have a dog.", "I have no pets.")])
    assert probs.shape == (1, 3)
    assert probs[0, LABELS.index("contradiction")] > 0.99


def test_results_come_back_in_input_order_after_length_sorting(tmp_path):
    from types import SimpleNamespace

    path = tiny_checkpoint(tmp_path, {0: "entailment", 1: "neutral", 2: "contradiction"})
    model = CrossEncoderNLI(path, batch_size=2)
    seen_batches = []

    def by_length(**encoded):  # logits that encode each pair's own token count
        lengths = encoded["attention_mask"].sum(dim=1).float()
        seen_batches.append(lengths.tolist())
        return SimpleNamespace(logits=torch.stack([lengths / 10, torch.zeros_like(lengths),
                                                   torch.zeros_like(lengths)], dim=1))

    model.model = by_length
    pairs = [("a much longer premise about my three dogs and two cats and a parrot", "x"), ("a", "b"),
             ("medium length premise here", "and a hypothesis"), ("", "short")]
    probs = model.predict(pairs)
    lengths = model._lengths(pairs)
    expected = torch.softmax(torch.tensor([[n / 10, 0.0, 0.0] for n in lengths]), dim=1).numpy()
    np.testing.assert_allclose(probs, expected, rtol=1e-5)
    assert seen_batches == [sorted(lengths)[:2], sorted(lengths)[2:]]  # batched shortest first


def test_empty_and_overlong_text_are_judged_with_a_warning_not_a_crash(tmp_path, capsys):
    path = tiny_checkpoint(tmp_path, {0: "entailment", 1: "neutral", 2: "contradiction"})
    model = CrossEncoderNLI(path, max_length=32)
    probs = model.predict([("", ""), ("word " * 400, "I have a dog."), (None, "x")])
    assert probs.shape == (3, 3) and np.allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert model.truncated == 1
    assert "truncated" in capsys.readouterr().err


def test_the_truncation_warning_prints_once_per_model_not_once_per_call(tmp_path, capsys):
    path = tiny_checkpoint(tmp_path, {0: "entailment", 1: "neutral", 2: "contradiction"})
    model = CrossEncoderNLI(path, max_length=32)
    for _ in range(4):  # as a profile builder calls it, once per check
        model.predict([("word " * 400, "I have a dog.")])
    assert model.truncated == 4
    assert capsys.readouterr().err.count("truncated") == 1


def test_embedded_model_is_built_once_and_rebuilt_when_its_recipe_changes(tmp_path, monkeypatch):
    from persona_forge.nli import train

    monkeypatch.setenv("PERSONA_FORGE_CACHE", str(tmp_path))
    builds = []

    def fake_build(target, settings, progress):
        builds.append(settings)
        target.mkdir(parents=True)
        (target / "build.json").write_text("{}")

    monkeypatch.setattr(train, "build", fake_build)
    first = train.ensure_embedded(progress=False)
    again = train.ensure_embedded(progress=False)
    other = train.ensure_embedded(progress=False, settings=train.TrainSettings(seed=1))
    assert first == again and other != first
    assert len(builds) == 2 and first.parent == tmp_path / "nli"


def test_llm_judge_reads_json_and_counts_garbage(fake):
    # Replies in the order asked: the three pairs, then the one repair request for pair 2.
    fake.enqueue('{"label": "contradiction", "confidence": 0.9}', "not json",
                 '```json\n{"label": "Entailment"}\n```', "still not json")
    judge = LLMJudgeNLI(fake)
    probs = judge.predict([("I have a dog.", "I have no pets."), ("a", "b"), ("c", "d")])
    assert probs[0].argmax() == LABELS.index("contradiction") and probs[0].max() == pytest.approx(0.9)
    assert judge.parse_errors == 1 and np.allclose(probs[1], 1 / 3)
    assert probs[2].argmax() == LABELS.index("entailment")
    assert fake.seen[0].json and fake.seen[0].temperature == 0.0


def test_metrics_on_a_hand_checked_example():
    result = metrics(["entailment", "entailment", "neutral", "contradiction"],
                     ["entailment", "neutral", "neutral", "entailment"])
    assert result["accuracy"] == 0.5
    assert result["per_class"]["entailment"] == pytest.approx(
        {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2})
    assert result["per_class"]["neutral"]["precision"] == 0.5
    assert result["per_class"]["contradiction"]["recall"] == 0.0
    assert result["confusion"]["contradiction"]["entailment"] == 1


def test_frames_render_without_holes():
    assert check_frames(trials=20) == []


@pytest.mark.parametrize("sentence,rule,expected", [
    ("I have never been to Europe.", "unnegate", "I have been to Europe."),
    ("I do not like cats.", "unnegate", "I like cats."),
    ("I can swim.", "negate_can", "I cannot swim."),
    ("I am a nurse.", "negate_am", "I am not a nurse."),
    ("I work at a bank.", "negate_verb", "I do not work at a bank."),
])
def test_contradiction_rules(sentence, rule, expected):
    import random

    made = contradictions_of(sentence, random.Random(0), {})
    assert (rule, expected) in made


def test_place_swap_only_for_named_places():
    import random

    assert not [r for r, _ in contradictions_of("I live in a condo.", random.Random(0), {}) if r == "place_swap"]
    swaps = [t for r, t in contradictions_of("I live in Ohio.", random.Random(0), {}) if r == "place_swap"]
    assert len(swaps) == 1 and "Ohio" not in swaps[0]


def test_corpus_text_is_normalised():
    assert normalize("i m a nurse , i don t smoke .") == "I'm a nurse, I don't smoke."


def test_chatify_keeps_the_words_that_carry_meaning():
    import random

    rng = random.Random(3)
    for _ in range(20):
        assert "two dogs" in chatify("I have two dogs.", rng).lower()


def test_training_pairs_never_repeat_an_evaluation_pair():
    from persona_forge.nli.data import handwritten_pairs
    from persona_forge.resources import data_dir

    def norm(text: str) -> str:
        return " ".join(text.lower().replace(".", "").split())

    held_out = [*read_labelled(data_dir("corpora") / "nli" / "persona_test.jsonl"),
                *read_labelled(data_dir("corpora") / "nli" / "persona_dev.jsonl")]
    hypotheses = {norm(p.hypothesis) for p in held_out}
    assert not [p for p in handwritten_pairs() if norm(p.hypothesis) in hypotheses]


def test_reaction_pairs_restate_contrast_and_negate_one_persona():
    import random

    from persona_forge.nli.data import _REACTIONS, reaction_pairs

    persona = ("I have two dogs.", "I am a nurse.", "I live in Ohio.")
    pairs = reaction_pairs([persona], 30, random.Random(0))
    assert [p.label for p in pairs[:3]] == ["entailment", "neutral", "contradiction"]
    assert {p.label for p in pairs} == {"entailment", "neutral", "contradiction"}
    for p in pairs:
        assert p.premise in persona
        assert any(p.hypothesis.lower().startswith(r.strip().lower()) for r in _REACTIONS), p.hypothesis
        if p.label == "entailment":
            assert p.premise.rstrip(".").lower().split()[-1] in p.hypothesis.lower()
    # bench/nli_chat.py measures the stand-in server's fillers as unseen: training must not use them
    assert not [r for r in _REACTIONS if r.strip().lower() in ("no way!", "funny you ask,", "let me think...")]


forge = partial(run_forge, process=True)  # a fresh process: the NLI loads there, not here


def test_eval_with_a_missing_data_file_is_one_line(tmp_path):
    result = forge("nli", "eval", "--data", str(tmp_path / "none.jsonl"))
    assert result.returncode == 2
    assert result.stderr.strip() == f"forge: error: {tmp_path / 'none.jsonl'}: no such file"


def test_eval_with_a_bad_label_names_the_line(tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text('{"premise": "a", "hypothesis": "b", "label": "neutral"}\n'
                    '{"premise": "a", "hypothesis": "b", "label": "maybe"}\n')
    result = forge("nli", "eval", "--data", str(data))
    assert result.returncode == 2
    assert result.stderr.strip() == (f"forge: error: {data}:2: label 'maybe' is not one of entailment, "
                                     f"neutral, contradiction")


def test_eval_json_with_an_hf_checkpoint(tmp_path):
    path = tiny_checkpoint(tmp_path / "ckpt", {0: "CONTRADICTION", 1: "NEUTRAL", 2: "ENTAILMENT"}, hot=0)
    data = tmp_path / "d.jsonl"
    data.write_text('{"premise": "I have a dog.", "hypothesis": "I have no pets.", "label": "contradiction"}\n'
                    '{"premise": "I like tea.", "hypothesis": "I drink tea.", "label": "entailment"}\n')
    result = forge("--set", "nli.kind=hf", "--set", f"nli.model={path}", "nli", "eval", "--data", str(data), "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["accuracy"] == 0.5
    assert report["per_class"]["contradiction"]["recall"] == 1.0
    assert report["confusion"]["entailment"]["contradiction"] == 1


@pytest.mark.integration
def test_embedded_model_judges_persona_pairs_well_enough(embedded_nli):
    """The real embedded model (built once into the cache) on the hand-written dev set."""
    result = forge("nli", "eval", "--data", "corpora/nli/persona_dev.jsonl", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["n"] == 150
    assert report["accuracy"] >= 0.75  # measured about 0.85; a floor that catches a broken build
    assert report["per_class"]["contradiction"]["recall"] >= 0.8
    assert report["model"].startswith("embedded")


def test_traced_model_gives_the_eager_models_numbers_at_any_batch_shape(tmp_path):
    path = tiny_checkpoint(tmp_path, {0: "entailment", 1: "neutral", 2: "contradiction"})
    eager = CrossEncoderNLI(path, batch_size=3)
    traced = CrossEncoderNLI(path, batch_size=3, trace=True)
    assert traced.traced and not eager.traced
    pairs = [("a", "b"), ("I have three dogs and a very old cat named Bob.", "my dogs are loud lol"),
             ("", "x"), ("I live in Chicago.", "the weather in chicago is awful today, how is yours?"),
             ("word " * 40, "short")]
    np.testing.assert_allclose(traced.predict(pairs), eager.predict(pairs), atol=1e-4)


@pytest.mark.parametrize("precision,device,native,expected", [
    ("auto", "cpu", True, "bf16"),      # AMX / AVX512-BF16: bf16 is the fast path
    ("auto", "cpu", False, "fp32"),     # emulated bf16 would be slower than float32
    ("auto", "cuda", True, "fp32"),
    ("bf16", "cpu", False, "bf16"),     # an explicit choice is kept
    ("fp32", "cpu", True, "fp32"),
])
def test_precision_auto_picks_bf16_only_where_the_cpu_has_it(monkeypatch, precision, device, native, expected):
    from persona_forge import hardware as local
    from persona_forge.nli import base

    monkeypatch.setattr(local, "native_bf16", lambda: native)
    assert base.resolve_precision(precision, device) == expected


def test_bf16_model_agrees_with_float32_and_returns_float32_probabilities(tmp_path):
    path = tiny_checkpoint(tmp_path, {0: "entailment", 1: "neutral", 2: "contradiction"})
    pairs = [("I have two dogs.", "I have no pets."), ("I am a nurse.", "I work at a hospital lol"),
             ("I live in Ohio.", "what a nice day"), ("", "x")]
    full = CrossEncoderNLI(path, precision="fp32").predict(pairs)
    half = CrossEncoderNLI(path, precision="bf16", trace=True)
    assert half.precision == "bf16"
    probs = half.predict(pairs)
    assert probs.dtype == np.float32 and np.allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(probs, full, atol=0.05)
