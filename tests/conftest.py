"""Shared test set-up: offline, quiet, and a scripted chat backend."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))

from persona_forge.backends import ScriptedBackend  # noqa: E402


@pytest.fixture
def fake() -> ScriptedBackend:
    return ScriptedBackend()


def forge_cmd() -> list[str]:
    """The installed `forge` entry point of this interpreter's environment."""
    return [sys.executable, "-m", "persona_forge.cli"]


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

