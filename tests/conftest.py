"""Shared test set-up: offline, quiet, and a scripted chat backend."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))

from persona_forge.backends import ScriptedBackend  # noqa: E402


class KeywordNLI:
    """A stand-in NLI for the generate and restyle tests (pairs of persona sentence and utterance):
    contradiction when one side says "no dogs" or "cats" and the other is about dogs; entailment when
    the hypothesis holds the premise's last word ("dogs", "nurse", "ohio"); neutral otherwise.
    `calls` counts predict calls, `pairs` the pairs judged."""

    name = "keyword"

    def __init__(self):
        self.calls = 0
        self.pairs = 0

    def predict(self, pairs, progress=None):
        self.calls += 1
        self.pairs += len(pairs)
        out = np.zeros((len(pairs), 3), dtype=np.float32)
        for i, (premise, hypothesis) in enumerate(pairs):
            p, h = premise.lower(), hypothesis.lower()
            last = p.rstrip(".").split()[-1]
            if ("dogs" in p and ("no dogs" in h or "cats" in h)) or ("dogs" in h and ("no dogs" in p or "cats" in p)):
                out[i] = [0.02, 0.08, 0.9]
            elif last in h:
                out[i] = [0.9, 0.08, 0.02]
            else:
                out[i] = [0.1, 0.85, 0.05]
        return out

    def describe(self):
        return "keyword test NLI"


@pytest.fixture
def fake() -> ScriptedBackend:
    return ScriptedBackend()


def forge_cmd() -> list[str]:
    """The installed `forge` entry point of this interpreter's environment."""
    return [sys.executable, "-m", "persona_forge.cli"]


def make_recipe(run_dir: Path, **sections: Any):
    """The one recipe builder of the tests: `run_dir` and sections as dicts, checked as a recipe file
    would be, e.g. make_recipe(tmp_path, backend={"kind": "fake"}, eval={"limit": 3})."""
    from persona_forge.config import load_recipe

    return load_recipe(None, {"run_dir": str(run_dir), **_dotted(sections)})


def _dotted(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_dotted(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


@dataclass
class Ran:
    """What a user sees of one `forge` command: its exit code, stdout and stderr."""

    returncode: int
    stdout: str
    stderr: str


def run_forge(*args: str, cwd: Path = REPO, env: dict[str, str] | None = None, input: str | None = None,
              process: bool = False, timeout: float = 300) -> Ran:
    """`forge ARGS` through the same entry point as the installed script (cli.main: one-line errors, exit
    codes). In this process under Click's CliRunner by default; `process=True` starts a fresh Python
    (for a terminal width, an environment or a model load that must not leak into the test process)."""
    if process:
        # A wide terminal: rich wraps the summary table to the terminal's width.
        done = subprocess.run(forge_cmd() + list(args), cwd=cwd, capture_output=True, text=True, input=input,
                              timeout=timeout, env={**os.environ, "COLUMNS": "200", **(env or {})})
        return Ran(done.returncode, done.stdout, done.stderr)
    from click.testing import CliRunner

    from persona_forge import cli

    here = Path.cwd()
    os.chdir(cwd)
    try:
        with CliRunner().isolation(input=input, env=env) as (out, err, _):
            try:
                cli.main(list(args))
                code = 0
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
            return Ran(code, out.getvalue().decode(), err.getvalue().decode())
    finally:
        os.chdir(here)


@pytest.fixture
def forge():
    """The `forge` command for a test: forge("--run-dir", str(tmp_path), "pair", ...) -> Ran."""
    return run_forge


def one_line_error(result: Ran, code: int | None = 2) -> str:
    """The single stderr line a user error must be (no traceback, exit `code`), asserted."""
    if code is not None:
        assert result.returncode == code, result.stderr
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


@pytest.fixture(scope="session")
def embedded_nli():
    """The real embedded NLI model's folder, built once per machine (about 5 minutes the first time)."""
    from persona_forge.nli.train import ensure_embedded

    return ensure_embedded(progress=False)


STANDIN_KEY_ENV = "PF_TEST_OPENAI_KEY"


def standin_fixtures(secret: str, **options):
    """A module's `module_server` (one stand-in process for the module, started with `options`)
    and `server` (that process with its counters zeroed and default behaviour, and `secret` in
    STANDIN_KEY_ENV); assign both at module level: `module_server, server = standin_fixtures(...)`."""
    from standin_server import standin

    @pytest.fixture(scope="module")
    def module_server():
        with standin(**options) as running:
            yield running

    @pytest.fixture
    def server(module_server, monkeypatch: pytest.MonkeyPatch):
        module_server.reset()
        monkeypatch.setenv(STANDIN_KEY_ENV, secret)
        return module_server

    return module_server, server


@pytest.fixture(scope="session")
def smollm2_sft(tmp_path_factory) -> Path:
    """A real LoRA SFT run on the packaged SmolLM2 (8 SPC samples x 3 epochs at batch 2: 12 steps at a high
    rate, so that a few steps visibly learn), trained once per session and shared read-only: the train
    integration tests check it, the RLHF integration test starts RLOO from its adapter. Two turns of
    context (about 100 tokens a sample instead of 230): the steps cost half as much. The run directory."""
    from train_data import write_sft

    run_dir = tmp_path_factory.mktemp("smollm2_sft") / "run"
    write_sft(run_dir / "curated" / "sft.jsonl", 8, context=2)
    run_train(make_recipe(run_dir, train={"logging_steps": 1, "save_steps": 100, "threads": 2, "lr": 1e-3,
                                          "epochs": 3}))
    return run_dir


def run_train(recipe, force: bool = False, progress: bool = False, rl: bool = False, **handed) -> dict:
    """forge train's stage (train_rl's with `rl`) as the CLI calls it, handed the recipe's base model,
    global seed, NLI and eval.data (and prompts_dir); its summary rows."""
    from persona_forge.contract import StageContext
    from persona_forge.stages import train, train_rl

    given = {"base_model": recipe.backend.model, "seed": recipe.seed, "nli_config": recipe.nli,
             "eval_data": recipe.eval.data, **({} if rl else {"prompts_dir": recipe.prompts_dir}), **handed}
    stage = train_rl if rl else train
    return stage.run(recipe.train, StageContext(recipe.run_dir, force, progress), **given).summary
