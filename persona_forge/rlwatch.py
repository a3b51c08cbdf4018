"""Watching RL for reward hacking: the reward's parts per reply, the alarm over a logged run, the curves.

Pure pieces below the stages (`forge train --method rloo` uses them; the alarm is a function of the
log rows alone, so it is tested on a scripted log).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .nli.labels import CONTRADICTION, ENTAILMENT

# Log keys the RL run writes at every logging step (besides trl's own `reward`, `kl`, `loss`, ...).
REWARD_RM, REWARD_NLI, REWARD_LENGTH = "reward/rm", "reward/nli", "reward/length"
GROUNDING, CONTRADICTING, WORDS = "watch/grounding_rate", "watch/contradiction_rate", "watch/reply_words"


def words(text: str) -> int:
    return len(text.split())


def nli_scores(nli, personas: Sequence[Sequence[str]], replies: Sequence[str]) -> list[tuple[float, float]]:
    """Per reply, (max entailment, max contradiction) over its persona's sentences (premise = the
    sentence, hypothesis = the reply, as forge eval's contradiction); (0, 0) for an empty reply."""
    pairs, owner = [], []
    for i, (persona, reply) in enumerate(zip(personas, replies)):
        if reply.strip():
            for sentence in persona:
                pairs.append((sentence, reply))
                owner.append(i)
    out = [(0.0, 0.0)] * len(replies)
    if pairs:
        probs = nli.predict(pairs)
        for i, row in zip(owner, probs):
            entail, contra = out[i]
            out[i] = (max(entail, float(row[ENTAILMENT])), max(contra, float(row[CONTRADICTION])))
    return out


def length_part(n_words: int, penalty: float, free: int) -> float:
    """Minus `penalty` per word beyond `free` (a negative penalty pays for length)."""
    return -penalty * max(0, n_words - free)


def _mean(values: Sequence[float]) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def alarms(history: Sequence[dict[str, Any]], window: int = 3, grounding_drop: float = 0.1,
           contradiction_rise: float = 0.1, length_drift: float = 0.5) -> list[str]:
    """The reward-hacking alarms of a logged run: the mean of the first `window` logged steps against
    the last `window`; when the reward rose, an alarm for each of grounding falling by more than
    `grounding_drop`, contradiction rising by more than `contradiction_rise`, and the mean reply
    length moving by more than the share `length_drift`. Empty when the reward did not rise or the
    run logged fewer than two steps."""
    rows = [row for row in history if row.get("reward") is not None]
    if len(rows) < 2:
        return []
    window = max(1, min(window, len(rows) // 2))
    first, last = rows[:window], rows[-window:]

    def change(key: str) -> tuple[float, float] | None:
        a, b = _mean([r.get(key) for r in first]), _mean([r.get(key) for r in last])
        return None if a is None or b is None else (a, b)

    reward = change("reward")
    if reward is None or reward[1] <= reward[0]:
        return []
    steps = f"steps {first[0].get('step')}-{first[-1].get('step')} -> {last[0].get('step')}-{last[-1].get('step')}"
    rose = f"reward rose {reward[0]:.3f} -> {reward[1]:.3f}"
    out = []
    grounding = change(GROUNDING)
    if grounding and grounding[0] - grounding[1] > grounding_drop:
        out.append(f"{rose} while grounding fell {grounding[0]:.2f} -> {grounding[1]:.2f} ({steps})")
    contra = change(CONTRADICTING)
    if contra and contra[1] - contra[0] > contradiction_rise:
        out.append(f"{rose} while contradiction rose {contra[0]:.2f} -> {contra[1]:.2f} ({steps})")
    length = change(WORDS)
    if length and length[0] > 0 and abs(length[1] - length[0]) / length[0] > length_drift:
        out.append(f"{rose} while reply length drifted {length[0]:.1f} -> {length[1]:.1f} words "
                   f"({(length[1] - length[0]) / length[0]:+.0%}) ({steps})")
    return out


CURVES = (("reward", "reward (total)"), (REWARD_RM, "reward model"), (REWARD_NLI, "NLI faithfulness"),
          (REWARD_LENGTH, "length part"), ("kl", "KL to reference"), (WORDS, "reply words"),
          (GROUNDING, "grounding rate"), (CONTRADICTING, "contradiction rate"))


def plot_curves(history: Sequence[dict[str, Any]], path: Path, title: str,
                curves: Sequence[tuple[str, str]] = CURVES) -> list[str]:
    """One small panel per logged key over the steps (keys never logged are left out); returns the keys drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .store import atomic_open

    drawn = [(key, label) for key, label in curves
             if any(row.get(key) is not None and "step" in row for row in history)]
    cols = 2
    rows = max(1, (len(drawn) + cols - 1) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(8, 2.2 * rows), dpi=100, squeeze=False)
    for ax, (key, label) in zip(axes.flat, drawn):
        points = [(row["step"], row[key]) for row in history if row.get(key) is not None and "step" in row]
        ax.plot(*zip(*points), marker="o" if len(points) < 40 else None, markersize=3, linewidth=1.2)
        ax.set_title(label, fontsize=9)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(drawn):]:
        ax.axis("off")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    with atomic_open(path, "wb") as fh:
        fig.savefig(fh, format="png")
    plt.close(fig)
    return [key for key, _ in drawn]
