"""Charts as PNG files, the same way for every stage (pairing's histogram, train's loss, eval's and judge's bars).

In: a matplotlib figure; out: <run_dir>/<name>.png, written atomically (a killed run never leaves
half a picture) with the figure freed afterwards (a long run draws many).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .store import atomic_open


def pyplot():
    """matplotlib's pyplot on the Agg backend: no display needed, so it draws on servers and in tests."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def grouped_offsets(j: int, count: int) -> tuple[float, float]:
    """Where series j of `count` side-by-side bar series sits within a unit slot: (offset, width)."""
    width = 0.8 / max(1, count)
    return j * width - 0.4 + width / 2, width


def save(fig: Any, path: Path) -> None:
    """Lay the figure out tightly, write it as PNG atomically and close it."""
    fig.tight_layout()
    with atomic_open(path, "wb") as fh:
        fig.savefig(fh, format="png")
    pyplot().close(fig)
