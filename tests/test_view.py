"""forge view / forge annotate, through FastAPI's TestClient on a small synthetic run directory."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from persona_forge.cli import main  # noqa: E402
from persona_forge.config import AnnotateConfig, load_recipe  # noqa: E402
from persona_forge.errors import UserError  # noqa: E402
from persona_forge.schema import Preference  # noqa: E402
from persona_forge.web import index as jidx  # noqa: E402
from persona_forge.web.annotate import Queue, cohen_kappa, krippendorff_alpha, spearman  # noqa: E402
from persona_forge.web.app import create_app  # noqa: E402

from web_run import CANDIDATES, EXAMPLES, PAIRS, make_run  # noqa: E402


@pytest.fixture
def run(tmp_path: Path) -> Path:
    jidx.clear_cache()
    return make_run(tmp_path / "run")


@pytest.fixture
def client(run: Path) -> TestClient:
    return TestClient(create_app(run), follow_redirects=False)


def _count(html: str) -> int:
    return int(re.search(r'id="count">(\d+) match', html).group(1))


def _hidden(html: str, name: str) -> str:
    return re.search(rf'name="{name}" value="([^"]*)"', html).group(1)


def _lines(run: Path) -> list[dict]:
    path = run / "annotations.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_every_page_answers_and_unknowns_are_404(client: TestClient) -> None:
    for url in ("/", "/dialogues", "/dialogues/d1c0", "/curated", "/eval", "/doc/report.md",
                "/doc/curated/README.md", "/annotate", "/annotate?annotator=ana&task=likert"):
        assert client.get(url).status_code == 200, url
    image = client.get("/files/eval/eval.png")
    assert image.status_code == 200 and image.headers["content-type"] == "image/png"
    for url in ("/dialogues/nope", "/files/../../etc/passwd", "/files/%2e%2e/%2e%2e/etc/passwd",
                "/files/dialogues.jsonl", "/doc/dialogues.jsonl", "/doc/missing.md"):
        assert client.get(url).status_code == 404, url


def test_overview_shows_manifests_charts_and_the_report(client: TestClient) -> None:
    html = client.get("/").text
    for stage in ("generate", "curate", "eval"):
        assert f"<h3>{stage} " in html
    assert "overall.critic_mean_all" in html and "0.667" in html
    assert '<img src="/files/generate_critic.png"' in html and '<img src="/files/eval/eval.png"' in html
    assert "<table>" in html and "<td>generate</td>" in html  # report.md's table rendered
    assert '<a href="/doc/eval/table.md">' in html


def test_dialogue_filters_count_what_they_should(client: TestClient) -> None:
    assert _count(client.get("/dialogues").text) == PAIRS * CANDIDATES
    rejected = client.get("/dialogues?status=rejected").text
    assert _count(rejected) == PAIRS
    assert "contradiction" in rejected and "vs persona" in rejected  # the reason and its detail
    assert _count(client.get("/dialogues?status=kept").text) == PAIRS
    assert _count(client.get("/dialogues?status=not_chosen").text) == PAIRS
    assert _count(client.get("/dialogues?reason=contradiction").text) == PAIRS
    assert _count(client.get("/dialogues?score=critic&lo=0.6&hi=0.8").text) == PAIRS
    assert _count(client.get("/dialogues?score=coherence&lo=3.5").text) == PAIRS
    assert _count(client.get("/dialogues?q=nurse+3").text) == CANDIDATES
    assert _count(client.get("/dialogues?q=no+dogs&status=kept").text) == 0
    for bad in ("/dialogues?status=bogus", "/dialogues?lo=abc"):
        assert client.get(bad).status_code == 400


def test_dialogue_list_pages(run: Path) -> None:
    client = TestClient(create_app(run, AnnotateConfig(page_size=4)))
    first, last = client.get("/dialogues").text, client.get("/dialogues?page=5").text
    assert first.count("<article") == 4 and "page 1 of 5" in first
    assert last.count("<article") == 2 and "page 5 of 5" in last


def test_data_text_is_escaped_and_scripts_are_blocked(client: TestClient) -> None:
    for url in ("/dialogues", "/dialogues/d0c0", "/"):
        response = client.get(url)
        assert "<script>window.pwned" not in response.text, url
        assert "script-src 'none'" in response.headers["content-security-policy"]
    assert "&lt;script&gt;window.pwned=1&lt;/script&gt;I like jazz." in client.get("/dialogues/d0c0").text
    overview = client.get("/").text
    assert "&lt;script&gt;window.pwned=2&lt;/script&gt;" in overview  # raw HTML in report.md
    assert "href=\"javascript" not in overview  # no script link either


def test_a_post_from_another_site_is_refused(run: Path, client: TestClient) -> None:
    html = client.get("/annotate?task=pairwise&annotator=ana").text
    form = {"task": "pairwise", "annotator": "ana", "item_id": _hidden(html, "item_id"),
            "order": _hidden(html, "order"), "choice": "A"}
    assert client.post("/annotate", data=form, headers={"origin": "http://evil.example"}).status_code == 403
    assert _lines(run) == []
    assert client.post("/annotate", data=form, headers={"origin": "http://testserver"}).status_code == 303
    assert len(_lines(run)) == 1


def test_curated_and_eval_pages(client: TestClient) -> None:
    cur = client.get("/curated").text
    assert "coverage_mean_distance" in cur and "kcenter" in cur and "duplicate" in cur
    assert cur.count('class="sample"') == PAIRS
    ev = client.get("/eval").text
    assert ev.count('class="example"') == EXAMPLES
    for text in ("reference reply 1", "base reply 1", "sft reply 1"):
        assert text in ev


def _answer(client: TestClient, who: str, task: str, **fields) -> tuple[str, str, object]:
    html = client.get(f"/annotate?task={task}&annotator={who}").text
    item, order = _hidden(html, "item_id"), _hidden(html, "order")
    response = client.post("/annotate", data={"task": task, "annotator": who, "item_id": item, "order": order,
                                              **fields})
    return item, order, response


def test_pairwise_answers_are_appended_with_who_when_and_order(run: Path, client: TestClient) -> None:
    item, order, response = _answer(client, "ana", "pairwise", choice="A")
    assert response.status_code == 303 and response.headers["location"] == "/annotate?task=pairwise&annotator=ana"
    [row] = _lines(run)
    assert row["annotator"] == "ana" and row["task"] == "pairwise" and row["item_id"] == item
    assert row["answer"] == {"choice": "A"} and row["order"] == order and row["time"].endswith("+00:00")
    assert row["winner"] == row["shown"]["A"]
    first, second = row["item"]["refs"]
    assert row["shown"] == ({"A": first, "B": second} if order == "AB" else {"A": second, "B": first})
    assert _hidden(client.get("/annotate?task=pairwise&annotator=ana").text, "item_id") != item


def test_bad_answers_are_400_and_write_nothing(run: Path, client: TestClient) -> None:
    html = client.get("/annotate?task=pairwise&annotator=ana").text
    item, order = _hidden(html, "item_id"), _hidden(html, "order")
    ok = {"task": "pairwise", "annotator": "ana", "item_id": item, "order": order, "choice": "A"}
    for change in ({"choice": "C"}, {"choice": ""}, {"item_id": "nope"}, {"task": "vote"},
                   {"annotator": "<b>"}, {"annotator": ""}, {"order": "BA" if order == "AB" else "AB"}):
        assert client.post("/annotate", data={**ok, **change}).status_code == 400, change
    likert = client.get("/annotate?task=likert&annotator=ana").text
    base = {"task": "likert", "annotator": "ana", "item_id": _hidden(likert, "item_id"), "order": ""}
    ratings = {f"rating_{t}": "3" for t in ("warmth", "humour", "coherence", "helpfulness")}
    for change in ({"rating_warmth": "6"}, {"rating_warmth": "x"}, {"rating_humour": ""}):
        assert client.post("/annotate", data={**base, **ratings, **change}).status_code == 400, change
    tags = client.get("/annotate?task=tags&annotator=ana").text
    assert client.post("/annotate", data={"task": "tags", "annotator": "ana", "item_id": _hidden(tags, "item_id"),
                                          "tags": ["playful", "evil"]}).status_code == 400
    assert _lines(run) == []


def test_likert_and_tags_answers(run: Path, client: TestClient) -> None:
    ratings = {"rating_warmth": "5", "rating_humour": "1", "rating_coherence": "4", "rating_helpfulness": "3"}
    assert _answer(client, "ana", "likert", **ratings)[2].status_code == 303
    assert _answer(client, "ana", "tags", tags=["empathetic", "performing empathy"])[2].status_code == 303
    assert _answer(client, "ana", "tags")[2].status_code == 303  # no tag applies: an answer too
    likert, tags, none = _lines(run)
    assert likert["answer"] == {"ratings": {"warmth": 5, "humour": 1, "coherence": 4, "helpfulness": 3}}
    assert "order" not in likert
    assert tags["answer"] == {"tags": ["empathetic", "performing empathy"]} and none["answer"] == {"tags": []}


def test_reload_and_restart_continue_at_the_first_unanswered_item(run: Path, client: TestClient) -> None:
    queue = Queue(run, "pairwise", AnnotateConfig())
    answered = [_answer(client, "ana", "pairwise", choice="tie")[0] for _ in range(2)]
    assert answered == [it.id for it in queue.items[:2]]
    restarted = TestClient(create_app(run))
    html = restarted.get("/annotate?task=pairwise&annotator=ana").text
    assert _hidden(html, "item_id") == queue.items[2].id and f"item 3 of {len(queue.items)}" in html
    # another annotator starts at the beginning
    assert _hidden(restarted.get("/annotate?task=pairwise&annotator=bob").text, "item_id") == queue.items[0].id


def test_queue_has_both_kinds_and_the_swap_is_seeded(run: Path) -> None:
    queue = Queue(run, "pairwise", AnnotateConfig())
    kinds = [it.kind for it in queue.items]
    assert kinds.count("dialogues") == PAIRS and kinds.count("replies") == EXAMPLES
    for it in queue.items:
        if it.kind == "dialogues":  # the critic's best first, its lowest-scored readable sibling second
            assert it.refs == (f"{it.group.replace('p', 'd')}c2", f"{it.group.replace('p', 'd')}c0")
    swaps = [queue.swapped(who, it) for who in ("ana", "bob", "cy") for it in queue.items]
    assert 0 < sum(swaps) < len(swaps)  # both orders are shown
    again = Queue(run, "pairwise", AnnotateConfig())
    assert [again.swapped("ana", it) for it in again.items] == swaps[:len(queue.items)]
    other_seed = Queue(run, "pairwise", AnnotateConfig(seed=1))
    assert [it.id for it in other_seed.items] != [it.id for it in queue.items]


def _answer_all(client: TestClient, queue: Queue, who: str, pick) -> None:
    """Answer every pairwise item, choosing the canonical 'first' or 'second' as pick(item) says."""
    for _ in queue.items:
        html = client.get(f"/annotate?task=pairwise&annotator={who}").text
        item = queue.by_id[_hidden(html, "item_id")]
        want = pick(item)
        shown = queue.shown(who, item)
        choice = "tie" if want == "tie" else next(k for k, v in shown.items() if v == item.refs[want == "second"])
        client.post("/annotate", data={"task": "pairwise", "annotator": who, "item_id": item.id,
                                       "order": _hidden(html, "order"), "choice": choice})


def test_export_writes_preferences_and_agreement(run: Path, client: TestClient) -> None:
    before = (run / "preferences.jsonl").read_text()
    queue = Queue(run, "pairwise", AnnotateConfig())
    dialogue_items = [it for it in queue.items if it.kind == "dialogues"]
    odd = dialogue_items[0].id
    # ana agrees with the critic everywhere and prefers the adapter; bob differs on one conversation
    _answer_all(client, queue, "ana", lambda it: "first" if it.kind == "dialogues" else "second")
    _answer_all(client, queue, "bob", lambda it: ("second" if it.id == odd else "first")
                if it.kind == "dialogues" else "second")
    assert len(_lines(run)) == 2 * len(queue.items)
    main(["annotate", str(run), "--export"])  # returns (no SystemExit) on success
    assert (run / "preferences.jsonl").read_text() == before  # generate's file is left alone
    out = run / "annotations"
    prefs = [Preference.model_validate_json(line) for line in (out / "preferences.jsonl").read_text().splitlines()]
    assert len(prefs) == PAIRS - 1  # the split item has no majority
    assert all(p.chosen_id.endswith("c2") and p.rejected_id.endswith("c0") for p in prefs)
    assert all(p.chosen_score == 1.0 and p.rejected_score == 0.0 for p in prefs)
    from persona_forge.stages.curate import load_preferences  # curate's DPO export takes the file as is

    assert [p.id for p in load_preferences(out / "preferences.jsonl")] == [p.id for p in prefs]
    replies = [json.loads(line) for line in (out / "reply_preferences.jsonl").read_text().splitlines()]
    assert len(replies) == EXAMPLES and all(r["chosen_model"] == "sft" for r in replies)
    assert replies[0]["chosen"][0]["role"] == "assistant" and replies[0]["prompt"][-1]["role"] == "user"
    summary = json.loads((out / "summary.json").read_text())
    pw = summary["pairwise"]
    ana = ["first"] * PAIRS + ["second"] * EXAMPLES
    bob = ["second"] + ["first"] * (PAIRS - 1) + ["second"] * EXAMPLES
    assert pw["between_annotators"]["shared_items"] == PAIRS + EXAMPLES
    assert pw["between_annotators"]["cohen_kappa"] == pytest.approx(round(cohen_kappa(ana, bob), 4))
    assert pw["critic_vs_humans"]["agreement"] == 1.0 and pw["critic_vs_humans"]["items"] == PAIRS - 1
    assert pw["critic_vs_humans"]["answer_agreement"] == pytest.approx(round(11 / 12, 4))
    assert pw["judge_vs_humans"] == {**pw["judge_vs_humans"], "items": EXAMPLES, "agreement": 1.0}
    assert "Cohen's kappa" in (out / "summary.md").read_text()


def test_kappa_and_alpha_on_hand_worked_examples() -> None:
    # Cohen: 50 items, both yes 20, A yes B no 5, A no B yes 10, both no 15.
    # p_o = 35/50 = 0.7; p_e = 0.5*0.6 + 0.5*0.4 = 0.5; kappa = (0.7 - 0.5) / (1 - 0.5) = 0.4
    a = ["y"] * 20 + ["y"] * 5 + ["n"] * 10 + ["n"] * 15
    b = ["y"] * 20 + ["n"] * 5 + ["y"] * 10 + ["n"] * 15
    assert cohen_kappa(a, b) == pytest.approx(0.4)
    assert cohen_kappa(["x", "y"], ["x", "y"]) == pytest.approx(1.0)
    assert cohen_kappa(["x", "x"], ["x", "x"]) is None  # undefined, not 1 or 0
    # Krippendorff (nominal), units (1,1), (1,2), (2,2): coincidences o11 = 2, o12 = o21 = 1, o22 = 2;
    # n = 6, D_o = 2/6, D_e = 2*3*3 / (6*5) = 0.6, alpha = 1 - (1/3)/0.6 = 4/9
    assert krippendorff_alpha([[1, 1], [1, 2], [2, 2]]) == pytest.approx(4 / 9)
    assert krippendorff_alpha([[1, 1], [2, 2], [3]]) == pytest.approx(1.0)  # a lone value is not pairable
    # interval, units (1,2), (3,3): o12=o21=1, o33=2; n=4; D_o = 2*1/4 = 0.5;
    # D_e = (1*1*1 + 1*2*4 + 1*2*1) * 2 / (4*3) = 11*2/12; alpha = 1 - 0.5 / (22/12) = 8/11
    assert krippendorff_alpha([[1, 2], [3, 3]], "interval") == pytest.approx(8 / 11)
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)


def test_index_is_built_once_per_file_version(run: Path) -> None:
    path = run / "dialogues.jsonl"
    first = jidx.index(path, lambda o: o["id"], "ids-test")
    assert jidx.index(path, lambda o: o["id"], "ids-test") is first
    with open(path, "a") as fh:
        fh.write(path.read_text().splitlines()[0] + "\n{torn")
    again = jidx.index(path, lambda o: o["id"], "ids-test")
    assert again is not first and len(again) == len(first) + 1 and again.bad_lines == 1
    assert again.read([len(again) - 1])[0]["id"] == "d0c0"


def test_cli_refuses_a_missing_run_dir_and_a_bad_annotator(tmp_path: Path, run: Path, capsys) -> None:
    for argv in (["annotate", str(tmp_path / "nope"), "--export"], ["view", str(tmp_path / "nope")],
                 ["annotate", str(run), "--annotator", "a b"]):
        with pytest.raises(SystemExit) as exit_:
            main(argv)
        assert exit_.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("forge: error:")


def test_annotate_section_in_a_recipe(tmp_path: Path) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text("annotate:\n  traits: [warmth, wit]\n  scale_max: 7\n  tags: [playful]\n")
    cfg = load_recipe(recipe).annotate
    assert cfg.traits == ["warmth", "wit"] and cfg.scale_max == 7 and cfg.tags == ["playful"]
    assert load_recipe(None).annotate.traits == ["warmth", "humour", "coherence", "helpfulness"]
    for bad in ("annotate:\n  trait: [x]\n", "annotate:\n  scale_min: 5\n  scale_max: 5\n"):
        recipe.write_text(bad)
        with pytest.raises(UserError):
            load_recipe(recipe)


def test_export_with_no_answers_writes_empty_files(run: Path) -> None:
    main(["annotate", str(run), "--export"])
    out = run / "annotations"
    assert (out / "preferences.jsonl").read_text() == "" and (out / "reply_preferences.jsonl").read_text() == ""
    summary = json.loads((out / "summary.json").read_text())
    assert summary["answers"] == 0 and summary["pairwise"]["between_annotators"]["shared_items"] == 0
    assert "cohen_kappa" not in summary["pairwise"]["between_annotators"]


def test_host_header_is_checked_when_asked(run: Path) -> None:
    app = create_app(run, allowed_hosts=["127.0.0.1", "localhost"])
    assert TestClient(app, base_url="http://127.0.0.1:8765").get("/").status_code == 200
    assert TestClient(app, base_url="http://evil.example:8765").get("/").status_code == 400


def test_a_grown_file_is_seen_without_a_restart(run: Path, client: TestClient) -> None:
    assert _count(client.get("/dialogues?q=brand+new").text) == 0
    record = json.loads((run / "dialogues.jsonl").read_text().splitlines()[1])
    record.update(id="fresh", turns=[{"speaker": "user1", "text": "A brand new line."}])
    with open(run / "dialogues.jsonl", "a") as fh:
        fh.write(json.dumps(record) + "\n")
    html = client.get("/dialogues?q=brand+new").text
    assert _count(html) == 1 and "not chosen" in html


def test_a_run_with_nothing_to_annotate_says_so(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    client = TestClient(create_app(tmp_path / "empty"))
    for task in ("pairwise", "likert", "tags"):
        html = client.get(f"/annotate?task={task}&annotator=ana").text
        assert "Nothing to annotate" in html
    assert client.get("/").status_code == 200 and "No stage manifests" in client.get("/").text
    assert "no dialogues.jsonl yet" in client.get("/dialogues").text


def test_view_on_a_port_in_use_is_one_line(run: Path, capsys) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        with pytest.raises(SystemExit) as exit_:
            main(["view", str(run), "--port", str(busy.getsockname()[1])])
    assert exit_.value.code == 2
    assert "choose another --port" in capsys.readouterr().err


def test_export_agreement_on_likert_and_tags(run: Path, client: TestClient) -> None:
    for who in ("ana", "bob"):
        for i, warmth in enumerate((1, 3, 5)):
            humour = warmth if who == "ana" else 6 - warmth  # same warmth, opposite humour
            assert _answer(client, who, "likert", rating_warmth=str(warmth), rating_humour=str(humour),
                           rating_coherence="3", rating_helpfulness="3")[2].status_code == 303
            tags = ["playful"] if i == 0 else (["empathetic"] if who == "ana" else [])
            assert _answer(client, who, "tags", tags=tags)[2].status_code == 303
    main(["annotate", str(run), "--export"])
    summary = json.loads((run / "annotations" / "summary.json").read_text())
    traits = summary["likert"]["traits"]
    assert summary["likert"]["items"] == 3
    assert traits["warmth"]["between_annotators"] == {"annotators": ["ana", "bob"], "shared_items": 3,
                                                      "cohen_kappa": 1.0, "krippendorff_alpha": 1.0,
                                                      "alpha_metric": "interval"}
    # humour 1,3,5 against 5,3,1: coincidences o15 = o51 = o33 = 2, n_1 = n_3 = n_5 = 2, n = 6;
    # D_o = (2*16 + 2*16) / 6 = 32/3; D_e = 2*(2*2*4 + 2*2*16 + 2*2*4) / (6*5) = 192/30; alpha = 1 - D_o/D_e = -2/3
    assert traits["humour"]["between_annotators"]["krippendorff_alpha"] == pytest.approx(-2 / 3, abs=1e-4)
    tags = summary["tags"]
    assert tags["tag_counts"]["playful"] == 2 and tags["tag_counts"]["empathetic"] == 2
    assert tags["between_annotators"]["playful"]["cohen_kappa"] == 1.0
    assert tags["between_annotators"]["empathetic"]["cohen_kappa"] == 0.0  # ana: 0,1,1; bob: 0,0,0
