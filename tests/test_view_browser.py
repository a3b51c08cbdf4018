"""forge view / forge annotate in a real headless Chromium (Debian's, driven by Playwright).

The servers are the real commands (`forge view`, `forge annotate`) in subprocesses on free loopback
ports. The test run saves screenshots of the main pages to docs/img/. Skips, with the reason,
where /usr/bin/chromium or the playwright package is missing (`make test` installs both where it can).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

CHROMIUM = Path(os.environ.get("FORGE_CHROMIUM", "/usr/bin/chromium"))
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SHOTS = Path(__file__).resolve().parent.parent / "docs" / "img"
ROOT = Path(__file__).resolve().parent.parent

sync_api = pytest.importorskip("playwright.sync_api",
                               reason="playwright is not installed (pip install -e '.[dev]'): browser tests skipped")
pytestmark = [pytest.mark.browser,
              pytest.mark.skipif(not CHROMIUM.is_file(),
                                 reason=f"{CHROMIUM} is missing (apt-get install chromium): browser tests skipped")]

from persona_forge.config import AnnotateConfig  # noqa: E402
from persona_forge.web.annotate import Queue  # noqa: E402

from web_run import CANDIDATES, EXAMPLES, PAIRS, make_run  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(args: list[str]) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "persona_forge.cli", *args, "--port", str(port)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"forge {args[0]} exited: {proc.stderr.read().decode()}")
        try:
            urllib.request.urlopen(base + "/static/style.css", timeout=1).close()
            return proc, base
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"forge {args[0]} did not listen on {base} within 60 s")


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    return make_run(tmp_path_factory.mktemp("browser") / "run")


@pytest.fixture(scope="module")
def view(run: Path) -> Iterator[str]:
    proc, base = _serve(["view", str(run)])
    yield base
    proc.terminate()
    proc.wait(10)


@pytest.fixture(scope="module")
def annotate(run: Path) -> Iterator[str]:
    proc, base = _serve(["annotate", str(run), "--task", "pairwise"])
    yield base
    proc.terminate()
    proc.wait(10)


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1100, "height": 820})
    yield context.new_page()
    context.close()


def _shot(page, name: str) -> None:
    """Save a screenshot to docs/img, as a small palette PNG where Pillow is there (about 3x smaller)."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    png = page.screenshot()
    try:
        import io

        from PIL import Image
    except ImportError:
        (SHOTS / name).write_bytes(png)
        return
    Image.open(io.BytesIO(png)).convert("RGB").quantize(colors=64).save(SHOTS / name, optimize=True)


def test_overview(page, view: str) -> None:
    page.goto(view + "/")
    assert page.inner_text("h1") == "Run overview"
    stages = page.locator(".stage h3").all_inner_texts()
    assert [s.split()[0] for s in stages] == ["generate", "curate", "eval"]
    loaded = page.eval_on_selector_all(".charts img", "imgs => imgs.map(i => i.complete && i.naturalWidth > 0)")
    assert loaded and all(loaded)
    _shot(page, "view-overview.png")


def test_filter_to_rejected_dialogues_and_see_why(page, view: str) -> None:
    page.goto(view + "/dialogues")
    assert page.inner_text("#count") == f"{PAIRS * CANDIDATES} matches"
    page.select_option("#status", "rejected")
    page.click("#apply")
    page.wait_for_url("**/dialogues?status=rejected*")
    assert page.inner_text("#count") == f"{PAIRS} matches"
    assert page.locator("article.dialogue").count() == PAIRS
    first = page.locator("article.dialogue").first
    assert first.locator(".badge").inner_text() == "rejected"
    assert first.locator(".why .reason").inner_text() == "contradiction"
    assert "vs persona" in first.locator(".why").inner_text()
    _shot(page, "view-dialogues-rejected.png")


def test_script_in_a_persona_renders_as_text(page, view: str) -> None:
    page.goto(view + "/dialogues/d0c0")
    persona = page.locator(".persona.user1 li").first.inner_text()
    assert persona == "<script>window.pwned=1</script>I like jazz."
    assert page.evaluate("() => window.pwned === undefined")
    page.goto(view + "/")
    assert "<script>window.pwned=2</script>" in page.inner_text(".markdown")
    assert page.evaluate("() => window.pwned === undefined")


def test_eval_and_curated_pages(page, view: str) -> None:
    page.goto(view + "/eval")
    assert page.locator("article.example").count() == EXAMPLES
    assert "sft reply 0" in page.inner_text("article.example >> nth=0")
    _shot(page, "view-eval.png")
    page.goto(view + "/curated")
    assert page.locator("article.sample").count() == PAIRS
    assert "kcenter" in page.inner_text("table.grid")
    _shot(page, "view-curated.png")


def test_answer_five_pairwise_items_then_reload_and_continue(browser, page, annotate: str, run: Path) -> None:
    queue = Queue(run, "pairwise", AnnotateConfig())
    page.goto(annotate + "/")
    page.click("nav >> text=Annotate")
    page.fill("#annotator", "ana")  # forge annotate without --annotator asks for a name
    page.click("button[type=submit]")
    answered = []
    for i in range(5):
        assert page.inner_text("#progress").startswith(f"item {i + 1} of {len(queue.items)}")
        item = page.get_attribute("input[name=item_id]", "value")
        order = page.get_attribute("input[name=order]", "value")
        if i == 1:
            _shot(page, "view-annotate-pairwise.png")
        choice = "AB"[i % 2]
        page.click(f"#choose-{choice}")
        page.wait_for_load_state()
        answered.append((item, order, choice))
    rows = [json.loads(line) for line in (run / "annotations.jsonl").read_text().splitlines()]
    rows = [r for r in rows if r["task"] == "pairwise"]
    assert [(r["item_id"], r["order"], r["answer"]["choice"]) for r in rows] == answered
    assert {r["annotator"] for r in rows} == {"ana"}
    assert [r["item_id"] for r in rows] == [it.id for it in queue.items[:5]]

    page.reload()
    assert page.inner_text("#progress").startswith(f"item 6 of {len(queue.items)}")
    assert page.get_attribute("input[name=item_id]", "value") == queue.items[5].id

    # a browser closed and opened again: nothing lost, the same place in the queue
    fresh = browser.new_context()
    again = fresh.new_page()
    again.goto(annotate + "/annotate?task=pairwise&annotator=ana")
    assert again.get_attribute("input[name=item_id]", "value") == queue.items[5].id
    fresh.close()


def test_rate_one_likert_item_and_tag_one(page, view: str, run: Path) -> None:
    page.goto(view + "/annotate?task=likert&annotator=cy")
    for trait, value in (("warmth", 4), ("humour", 2), ("coherence", 5), ("helpfulness", 3)):
        page.check(f"input[name=rating_{trait}][value='{value}']")
    _shot(page, "view-annotate-likert.png")
    page.click("#submit")
    page.wait_for_load_state()
    assert page.inner_text("#progress").startswith("item 2 of")
    page.goto(view + "/annotate?task=tags&annotator=cy")
    page.check("input[name=tags][value='performing empathy']")
    page.click("#submit")
    page.wait_for_load_state()
    rows = [json.loads(line) for line in (run / "annotations.jsonl").read_text().splitlines()]
    mine = [r for r in rows if r["annotator"] == "cy"]
    assert [r["answer"] for r in mine] == [
        {"ratings": {"warmth": 4, "humour": 2, "coherence": 5, "helpfulness": 3}},
        {"tags": ["performing empathy"]}]
