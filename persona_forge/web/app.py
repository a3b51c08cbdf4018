"""The `forge view` / `forge annotate` web app: server-rendered pages over one run directory.

Safe by default: the CLI binds 127.0.0.1 and checks the Host header (no DNS rebinding); every text
from the data goes through Jinja's autoescape; markdown is rendered with raw HTML off; files are
served only from inside the run directory and only as images; the one write is an append to
<run_dir>/annotations.jsonl, after the answer is validated (400 otherwise).
"""

from __future__ import annotations

import posixpath
import threading
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import jinja2
from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from markdown_it import MarkdownIt

from ..config import AnnotateConfig
from .annotate import TASKS, AnnotationStore, AnswerError, Queue, answer_row, valid_annotator
from .run import IMAGE_TYPES, STATUS_TEXT, STATUSES, RunView, score_rows

HERE = Path(__file__).parent


def create_app(run_dir: Path, cfg: AnnotateConfig | None = None, task: str | None = None,
               annotator: str | None = None, allowed_hosts: list[str] | None = None, warm: bool = False) -> FastAPI:
    """The app for one run directory. `task` and `annotator` are the defaults of the annotation
    pages (forge annotate); `allowed_hosts` turns on the Host-header check; `warm` builds the
    dialogue index in the background at once, so the first list page does not wait for it."""
    cfg = cfg or AnnotateConfig()
    run = RunView(run_dir, cfg.page_size)
    store = AnnotationStore(run.path)
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(HERE / "templates"), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["num"] = _num
    env.globals.update(status_text=STATUS_TEXT, run_name=run.path.name, default_task=task or "pairwise",
                       tasks=TASKS)
    queues: dict[str, tuple[tuple, Queue]] = {}

    if warm:
        threading.Thread(target=run.dialogue_facets, name="forge-view-index", daemon=True).start()

    app = FastAPI(title="forge view", docs_url=None, redoc_url=None, openapi_url=None)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    @app.middleware("http")
    async def no_scripts(request: Request, call_next):
        # the pages need no JavaScript: a script that slipped past escaping still could not run
        response = await call_next(request)
        response.headers["Content-Security-Policy"] = ("default-src 'self'; script-src 'none'; object-src 'none'; "
                                                       "base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
        response.headers["X-Content-Type-Options"] = "nosniff"
        return response

    if allowed_hosts:
        from starlette.middleware.trustedhost import TrustedHostMiddleware

        app.add_middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts)

    def page(name: str, request: Request, status: int = 200, **context: Any) -> HTMLResponse:
        html = env.get_template(name).render(request=request, path=request.url.path, **context)
        return HTMLResponse(html, status_code=status)

    def bad(request: Request, message: str, status: int = 400) -> HTMLResponse:
        return page("error.html", request, status=status, message=message)

    def queue_for(name: str) -> Queue:
        # rebuilt when an input file changes (a stage ran again while the app was up)
        files = [run.path / "dialogues.jsonl", run.path / "best.jsonl", run.path / "eval" / "generations.jsonl"]
        stamp = tuple((f.stat().st_size, f.stat().st_mtime_ns) if f.is_file() else None for f in files)
        cached = queues.get(name)
        if cached is None or cached[0] != stamp:
            queues[name] = (stamp, Queue(run.path, name, cfg))
        return queues[name][1]

    @app.get("/", response_class=HTMLResponse)
    def overview(request: Request) -> HTMLResponse:
        report = run.path / "report.md"
        return page("overview.html", request, manifests=run.manifests(), charts=run.charts(),
                    reports=run.reports(),
                    report_html=render_markdown(report.read_text(encoding="utf-8"), "") if report.is_file() else None)

    @app.get("/dialogues", response_class=HTMLResponse)
    def dialogues(request: Request, status: str = "", reason: str = "", score: str = "critic", lo: str = "",
                  hi: str = "", q: str = "") -> HTMLResponse:
        number = _int(request.query_params.get("page"), 1)
        if status and status not in STATUSES:
            return bad(request, f"status must be one of {', '.join(STATUSES)}")
        try:
            low, high = _float(lo), _float(hi)
        except ValueError:
            return bad(request, "score range: lo and hi must be numbers")
        facets = run.dialogue_facets()
        result = run.dialogues(status, reason, score, low, high, q, number)
        filters = {"status": status, "reason": reason, "score": score, "lo": lo, "hi": hi, "q": q}
        return page("dialogues.html", request, facets=facets, result=result, filters=filters,
                    statuses=STATUSES, link=lambda n: "/dialogues?" + urlencode({**filters, "page": n}))

    @app.get("/dialogues/{dialogue_id}", response_class=HTMLResponse)
    def dialogue(request: Request, dialogue_id: str) -> HTMLResponse:
        record = run.dialogue(dialogue_id)
        if record is None:
            return bad(request, "no dialogue with that id in dialogues.jsonl", 404)
        _, rejected = run.verdicts()
        item = {"record": record, "status": run.status_of(record["id"]), "rejections": rejected.get(record["id"], []),
                "scores": score_rows(record)}
        return page("dialogue.html", request, item=item)

    @app.get("/curated", response_class=HTMLResponse)
    def curated(request: Request) -> HTMLResponse:
        number = _int(request.query_params.get("page"), 1)
        return page("curated.html", request, cur=run.curated(number), link=lambda n: f"/curated?page={n}")

    @app.get("/eval", response_class=HTMLResponse)
    def eval_examples(request: Request) -> HTMLResponse:
        number = _int(request.query_params.get("page"), 1)
        ev = run.eval_examples(number)
        table = run.path / "eval" / "table.md"
        return page("eval.html", request, ev=ev, link=lambda n: f"/eval?page={n}",
                    table_html=render_markdown(table.read_text(encoding="utf-8"), "eval") if table.is_file() else None)

    @app.get("/doc/{rel:path}", response_class=HTMLResponse)
    def doc(request: Request, rel: str) -> HTMLResponse:
        target = run.safe_path(rel)
        if target is None or target.suffix != ".md":
            return bad(request, "no such report in this run directory", 404)
        folder = posixpath.dirname(rel)
        return page("doc.html", request, title=rel, body=render_markdown(target.read_text(encoding="utf-8"), folder))

    @app.get("/files/{rel:path}")
    def files(rel: str) -> Response:
        target = run.safe_path(rel)
        if target is None or target.suffix.lower() not in IMAGE_TYPES:
            return Response("not found", status_code=404, media_type="text/plain")
        return FileResponse(target, media_type=IMAGE_TYPES[target.suffix.lower()],
                            headers={"X-Content-Type-Options": "nosniff"})

    @app.get("/annotate", response_class=HTMLResponse)
    def annotate(request: Request) -> Response:
        params = request.query_params
        name = params.get("task") or task or "pairwise"
        who = params.get("annotator") or annotator or ""
        if name not in TASKS:
            return bad(request, f"task must be one of {', '.join(TASKS)}")
        if not who:
            return page("annotator.html", request, task=name)
        if not valid_annotator(who):
            return bad(request, "annotator: 1-64 letters, digits, '_', '.', '-' or '@'")
        queue = queue_for(name)
        done = store.answered(who, name)
        pending = [it for it in queue.items if it.id not in done]
        answered = len(queue.items) - len(pending)
        if not pending:
            return page("annotate_done.html", request, task=name, annotator=who, total=len(queue.items))
        item = pending[0]
        shown = queue.shown(who, item)
        context: dict[str, Any] = {"task": name, "annotator": who, "item": item, "answered": answered,
                                   "total": len(queue.items), "cfg": cfg}
        if shown:
            context["order"] = "BA" if queue.swapped(who, item) else "AB"
            context["sides"] = [("A", queue.record(shown["A"])), ("B", queue.record(shown["B"]))]
        else:
            context["order"] = ""
            context["record"] = queue.record(item.refs[0])
        return page("annotate.html", request, **context)

    @app.post("/annotate")
    async def annotate_post(request: Request) -> Response:
        # a form on another site could post here (no preflight for forms): browsers say where from
        origin = request.headers.get("origin")
        if origin and origin != "null" and urlsplit(origin).netloc != request.headers.get("host"):
            return bad(request, "answers are taken only from this app's own pages", 403)
        form = await request.form()
        values: dict[str, Any] = {k: form.get(k) for k in form.keys()}
        values["tags"] = form.getlist("tags")
        name, who = str(values.get("task") or ""), str(values.get("annotator") or "")
        if name not in TASKS:
            return bad(request, f"task must be one of {', '.join(TASKS)}")
        if not valid_annotator(who):
            return bad(request, "annotator: 1-64 letters, digits, '_', '.', '-' or '@'")
        queue = queue_for(name)
        try:
            item, answer = queue.validate(values)
            row = answer_row(queue, who, item, answer, values.get("order") or None)
        except AnswerError as exc:
            return bad(request, str(exc))
        store.append(row)
        return RedirectResponse("/annotate?" + urlencode({"task": name, "annotator": who}), status_code=303)

    return app


def _int(raw: str | None, default: int) -> int:
    try:
        return int(raw) if raw else default
    except ValueError:
        return default


def _float(raw: str) -> float | None:
    return float(raw) if raw.strip() else None


def _num(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return "n/a" if value is None else str(value)
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) >= 1e-3 or value == 0 else f"{value:.2e}"
    return str(value)


def render_markdown(text: str, folder: str) -> str:
    """Markdown to HTML with raw HTML off (it is escaped), tables on, and links and images that
    point into the run directory turned into this app's URLs (`folder`: the file's own folder)."""
    md = MarkdownIt("commonmark", {"html": False}).enable("table")
    tokens = md.parse(text)
    for token in tokens:
        for child in token.children or []:
            attr = "src" if child.type == "image" else "href" if child.type == "link_open" else None
            if attr is None:
                continue
            target = str(child.attrGet(attr) or "")
            if not target or "://" in target or target.startswith(("/", "#", "mailto:")):
                continue
            rel = posixpath.normpath(posixpath.join(folder, target))
            if rel.startswith(".."):
                continue
            prefix = "/doc/" if rel.endswith(".md") else "/files/"
            child.attrSet(attr, prefix + rel)
    return md.renderer.render(tokens, md.options, {})
