"""report.md for a whole run: what every stage did, from its manifest, with links to the stages'
own reports and plots. Rebuilt from the files at any time (`forge report`), so it never goes stale.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from . import layout
from .store import RunDir, atomic_write_text

STAGES = ("personas", "pair", "generate", "curate", "train", "eval", "judge")


def build(run_dir: Path) -> str:
    runs = RunDir(run_dir)
    parts = [f"# persona_forge run: `{run_dir}`", "",
             "Every figure below is read from the stage manifests (`*.manifest.json`) in this folder.", ""]
    for stage in STAGES:
        section = _SECTIONS[stage](runs)
        if section:
            parts += section + [""]
    return "\n".join(parts).rstrip() + "\n"


def write(run_dir: Path) -> Path:
    path = Path(run_dir) / layout.REPORT
    atomic_write_text(path, build(Path(run_dir)))
    return path


def _manifest(runs: RunDir, stage: str) -> dict[str, Any] | None:
    manifest = runs.manifest(stage)
    return manifest.model_dump() if manifest else None


def _status(m: dict[str, Any]) -> str:
    return "done" if m.get("status") == "done" else f"**{m.get('status')}** (run the stage again to finish it)"


def _table(rows: list[tuple[str, Any]]) -> list[str]:
    return ["| | |", "|---|---|", *[f"| {k} | {_fmt(v)} |" for k, v in rows]]


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"
    return "n/a" if value is None else str(value)


def _personas(runs: RunDir) -> list[str] | None:
    m = _manifest(runs, "personas")
    if not m:
        return None
    c, f = m["counts"], m["figures"]
    built, random = f.get("contradiction_rate_built", {}), f.get("contradiction_rate_random", {})
    return ["## 1. Personas", _status(m), "", *_table([
        ("seed attributes", c.get("seeds")), ("attributes after expansion", c.get("attributes")),
        ("expanded (new)", c.get("expanded")), ("profiles", c.get("profiles")),
        ("candidate attributes rejected as contradicting / redundant",
         f"{c.get('rejected_contradiction', 0)} / {c.get('rejected_redundant', 0)}"),
        ("contradicting attribute pairs: built profiles vs random profiles",
         f"{_fmt(built.get('rate'))} vs {_fmt(random.get('rate'))}")])]


def _pair(runs: RunDir) -> list[str] | None:
    m = _manifest(runs, "pair")
    if not m:
        return None
    c = m["counts"]
    sim = m["figures"].get("similarity", {})
    rows = [("profiles", c.get("profiles")), ("pairs", c.get("pairs")), ("unpaired users", c.get("unpaired"))]
    for name, stats in sim.items() if isinstance(sim, dict) else []:
        if isinstance(stats, dict) and "mean" in stats:
            rows.append((f"similarity, {name} (mean)", stats["mean"]))
    return ["## 2. Pairing", _status(m), "", *_table(rows), "", f"![pair similarity]({layout.PAIR_SIMILARITY})"]


def _generate(runs: RunDir) -> list[str] | None:
    m = _manifest(runs, "generate")
    if not m:
        return None
    rounds = m["figures"].get("rounds", []) + ([m["figures"]["overall"]] if "overall" in m["figures"] else [])
    lines = ["## 3. Generate (Generator-Critic)", _status(m), "",
             f"Mode `{m['config'].get('mode')}`; {m['counts'].get('candidates')} candidates, "
             f"{m['counts'].get('best')} conversations kept, {m['counts'].get('preferences')} preference pairs, "
             f"{m['counts'].get('rejections')} refusals (generate_rejections.jsonl).", "",
             "| round | pairs | candidates | mean critic: all / single-shot / selected | contradiction rate: "
             "all / single-shot / selected | kept |", "|---|---|---|---|---|---|"]
    for r in rounds:
        lines.append(f"| {r['round']} | {r['pairs']} | {r['candidates']} | {_fmt(r['critic_mean_all'])} / "
                     f"{_fmt(r['critic_mean_single_shot'])} / {_fmt(r['critic_mean_selected'])} | "
                     f"{_fmt(r['contradiction_rate_all'])} / {_fmt(r['contradiction_rate_single_shot'])} / "
                     f"{_fmt(r['contradiction_rate_selected'])} | {r['kept_pairs']} |")
    lines += ["", "Single-shot: the first candidate of each pair, what a generator without a critic keeps. "
              "Contradiction rate: the share of conversations with an utterance the NLI finds contradicting "
              "its speaker's persona."]
    best = runs.file(layout.BEST)
    if best.is_file():
        first = best.read_text(encoding="utf-8").splitlines()[:1]
        if first:
            d = json.loads(first[0])
            lines += ["", "The first kept conversation:", "",
                      "> User 1: " + " / ".join(d["user1_persona"]), ">",
                      "> User 2: " + " / ".join(d["user2_persona"]), ">",
                      *[f"> **{'User 1' if t['speaker'] == 'user1' else 'User 2'}:** {t['text']}  " for t in d["turns"]]]
    return lines


def _curate(runs: RunDir) -> list[str] | None:
    m = _manifest(runs, "curate")
    if not m:
        return None
    lines = ["## 4. Curate", _status(m), "", *_table(sorted(m["counts"].items()))]
    selection = runs.file(layout.curated("selection.json"))
    if selection.is_file():
        lines += ["", "Selection report (chosen strategy vs random, same n): `curated/selection.json`; "
                      "dataset card: [curated/README.md](curated/README.md)."]
    return lines


def _train(runs: RunDir) -> list[str] | None:
    folder = runs.file(layout.TRAIN)
    if not folder.is_dir():
        return None
    lines = ["## 5. Train"]
    for manifest in sorted(folder.glob(f"*/{layout.TRAIN_MANIFEST}")):
        m = json.loads(manifest.read_text(encoding="utf-8"))
        name = manifest.parent.name
        figures = m.get("figures", {})
        keep = {k: v for k, v in figures.items() if not isinstance(v, (dict, list))}
        lines += ["", f"### `{name}` ({_status(m)})", "", *_table(sorted(keep.items()))]
        if (manifest.parent / layout.LOSS_CURVE).is_file():
            lines += ["", f"![loss]({layout.TRAIN}/{name}/{layout.LOSS_CURVE})"]
    return lines


def _eval(runs: RunDir) -> list[str] | None:
    table = runs.file(layout.EVAL_TABLE)
    if not table.is_file():
        return None
    lines = ["## 6. Evaluate (next reply on held-out conversations)", "", table.read_text(encoding="utf-8").strip()]
    if runs.file(layout.EVAL_CHART).is_file():
        lines += ["", f"![eval]({layout.EVAL_CHART})"]
    return lines + ["", f"Details and examples: [{layout.EVAL_REPORT}]({layout.EVAL_REPORT})."]


def _judge(runs: RunDir) -> list[str] | None:
    report = runs.file(layout.JUDGE_REPORT)
    if not report.is_file():
        return None
    body = report.read_text(encoding="utf-8").strip().splitlines()
    body = [("#" + line) if line.startswith("#") else line for line in body]  # one level down
    body = [line.replace("](judge.png)", "](judge/judge.png)") for line in body]
    return ["## 7. Judge", "", *body]


_SECTIONS = {"personas": _personas, "pair": _pair, "generate": _generate, "curate": _curate, "train": _train,
             "eval": _eval, "judge": _judge}
