"""A small synthetic run directory for the forge view / annotate tests: every file the app reads,
in the shapes the stages write (schema.py records), with one persona that carries a <script>."""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

from persona_forge.schema import Dialogue, EvalGeneration, PairwiseJudgement, Preference, Rejection, Turn

SCRIPT = "<script>window.pwned=1</script>I like jazz."
PAIRS = 6
CANDIDATES = 3
EXAMPLES = 3


def tiny_png(width: int = 4, height: int = 3) -> bytes:
    raw = b"".join(b"\x00" + b"\x80\x40\x20" * width for _ in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def chart(path: Path, title: str, values: dict[str, float]) -> None:
    """A small bar chart like the stages draw (matplotlib), or a tiny PNG where it is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        path.write_bytes(tiny_png())
        return
    fig, ax = plt.subplots(figsize=(4.2, 2.4), dpi=80)
    ax.bar(list(values), list(values.values()), color="#4c78a8")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _jsonl(path: Path, records) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((r.model_dump_json() if hasattr(r, "model_dump_json") else json.dumps(r)) + "\n"
                            for r in records), encoding="utf-8")


def _manifest(run: Path, stage: str, counts: dict, figures: dict, where: Path | None = None) -> None:
    (where or run).mkdir(parents=True, exist_ok=True)
    ((where or run) / f"{stage}.manifest.json").write_text(json.dumps({
        "stage": stage, "status": "done", "config_hash": "abc", "config": {}, "counts": counts,
        "figures": figures, "inputs": {}, "outputs": [], "models": {"generator": "fake"}, "prompts": {},
        "packages": {}}), encoding="utf-8")


def make_run(run: Path) -> Path:
    """PAIRS pairs x CANDIDATES candidates: candidate 0 contradicts its persona (rejected), candidate
    2 scores best (kept), candidate 1 is acceptable but outscored. Pair p0's user 1 has a <script>."""
    run.mkdir(parents=True, exist_ok=True)
    dialogues, best, rejections, prefs = [], [], [], []
    for p in range(PAIRS):
        u1 = [SCRIPT if p == 0 else f"I have {p} dogs.", "I live in Ohio."]
        u2 = [f"I am nurse number {p}.", "I like hiking."]
        for c in range(CANDIDATES):
            critic = [0.4, 0.7, 0.9][c]
            text0 = f"I have no dogs at all, pair {p}." if c == 0 else f"Hi, I have {p} dogs, candidate {c}."
            turns = [Turn(speaker="user1", text=text0), Turn(speaker="user2", text=f"Nice, I am a nurse {p}."),
                     Turn(speaker="user1", text="I live in Ohio."), Turn(speaker="user2", text="I like hiking.")]
            reasons = {"coherence": "fine"}
            if c == 0:
                reasons["contradiction"] = f'"{text0}" vs persona "{u1[0]}" (0.91)'
            d = Dialogue(id=f"d{p}c{c}", pair_id=f"p{p}", user1_persona=u1, user2_persona=u2, turns=turns, round=p % 2,
                         candidate=c, scores={"critic": critic, "contradiction": 0.91 if c == 0 else 0.05,
                                              "coherence": [2.0, 3.0, 4.0][c]}, reasons=reasons)
            dialogues.append(d)
            if c == 0:
                rejections.append(Rejection(id=f"r{p}", stage="generate", subject_id=d.id, reason="contradiction",
                                            detail={"pair_id": d.pair_id, "critic": critic, **reasons}))
        best.append(dialogues[-1])
        prefs.append(Preference(id=f"pref{p}", pair_id=f"p{p}", user1_persona=u1, user2_persona=u2, round=0,
                                chosen_id=f"d{p}c2", rejected_id=f"d{p}c0", chosen_turns=dialogues[-1].turns,
                                rejected_turns=dialogues[-3].turns, chosen_score=0.9, rejected_score=0.4))
    _jsonl(run / "dialogues.jsonl", dialogues)
    _jsonl(run / "best.jsonl", best)
    _jsonl(run / "generate_rejections.jsonl", rejections)
    _jsonl(run / "preferences.jsonl", prefs)
    _manifest(run, "generate", {"candidates": PAIRS * CANDIDATES, "best": PAIRS, "rejections": PAIRS},
              {"overall": {"critic_mean_all": 0.667, "kept_pairs": PAIRS}, "rounds": [{"round": 1}]})
    chart(run / "generate_critic.png", "mean critic score", {"all": 0.67, "single-shot": 0.4, "selected": 0.9})

    cur = run / "curated"
    _jsonl(cur / "selected.jsonl", [{
        "id": f"s{p}", "kind": "next_reply", "dialogue_id": f"d{p}c2", "pair_id": f"p{p}", "speaker": "user2",
        "position": 3, "persona": [f"I am nurse number {p}."], "quality": 0.9, "scores": {}, "source": "best.jsonl",
        "messages": [{"role": "system", "content": "persona"}, {"role": "user", "content": "I live in Ohio."},
                     {"role": "assistant", "content": "I like hiking."}]} for p in range(PAIRS)])
    (cur / "selection.json").write_text(json.dumps({"measures": {
        "kcenter": {"coverage_mean_distance": 0.17, "clusters_covered": 5},
        "random": {"coverage_mean_distance": 0.21, "clusters_covered": 4}},
        "notes": {"coverage_mean_distance": "lower covers better"}}), encoding="utf-8")
    _jsonl(cur / "curate_rejections.jsonl", [{"id": "cr0", "stage": "curate", "subject_id": "x", "reason": "duplicate",
                                              "detail": {}}])
    (cur / "README.md").write_text("# Curated\n\nA card.\n", encoding="utf-8")
    _manifest(run, "curate", {"selected": PAIRS, "pool": PAIRS}, {})

    ev = run / "eval"
    gens = []
    for e in range(EXAMPLES):
        for model in ("base", "sft"):
            gens.append(EvalGeneration(
                id=f"{model}-{e}", example_id=f"ex{e}", source_id=f"s{e}", model=model, model_digest="x",
                messages=[{"role": "system", "content": "persona"}, {"role": "user", "content": f"hello {e}"}],
                persona=[f"I am person {e}."], reference=f"reference reply {e}", reply=f"{model} reply {e}",
                metrics={"bleu": 0.1}))
    _jsonl(ev / "generations.jsonl", gens)
    (ev / "table.md").write_text("| model | bleu |\n|---|---|\n| base | 0.1 |\n| sft | 0.2 |\n", encoding="utf-8")
    chart(ev / "eval.png", "BLEU", {"base": 0.1, "sft": 0.2})
    _manifest(run, "eval", {"examples": EXAMPLES}, {})
    _jsonl(run / "judge" / "pairwise.jsonl", [
        PairwiseJudgement(id=f"j{e}{o}", example_id=f"ex{e}", model_a="base" if o == 0 else "sft",
                          model_b="sft" if o == 0 else "base", order="base_first" if o == 0 else "base_second",
                          winner="B" if o == 0 else "A", winner_model="sft")
        for e in range(EXAMPLES) for o in (0, 1)])
    (run / "report.md").write_text(
        "# persona_forge run\n\n| stage | kept |\n|---|---|\n| generate | 6 |\n\n"
        "<script>window.pwned=2</script>\n\n![eval](eval/eval.png)\n\n[eval report](eval/table.md) [bad](javascript:alert(1))\n",
        encoding="utf-8")
    return run
