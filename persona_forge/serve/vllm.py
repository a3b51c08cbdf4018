"""`forge serve --engine vllm`: the same base model and adapters behind vLLM's server on a GPU site.

vLLM serves LoRA adapters by name (`--enable-lora --lora-modules name=path`), chosen by the
request's `model`, with the same /v1/load_lora_adapter and /v1/unload_lora_adapter routes
(enabled by VLLM_ALLOW_RUNTIME_LORA_UPDATING=True). The API key is passed in the environment
(VLLM_API_KEY), never on the command line.
"""

from __future__ import annotations

import importlib.util
import os
import shlex
from pathlib import Path

# vLLM accepts these values for --max-lora-rank.
VLLM_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)


def vllm_rank(rank: int) -> int:
    return next((r for r in VLLM_RANKS if r >= rank), VLLM_RANKS[-1])


def vllm_command(model_path: str, adapters: dict[str, Path], *, host: str, port: int, max_loaded: int,
                 max_rank: int, served_model_name: str | None = None) -> list[str]:
    cmd = ["vllm", "serve", model_path, "--host", host, "--port", str(port)]
    if served_model_name:
        cmd += ["--served-model-name", served_model_name]
    cmd += ["--enable-lora", "--max-loras", str(max_loaded), "--max-lora-rank", str(vllm_rank(max_rank))]
    if adapters:
        cmd += ["--lora-modules", *[f"{name}={Path(path).resolve()}" for name, path in adapters.items()]]
    return cmd


def vllm_env(api_key_env: str) -> dict[str, str]:
    """What vLLM needs in its environment: runtime adapter loading on, and the key if one is set."""
    env = {"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True"}
    if os.environ.get(api_key_env):
        env["VLLM_API_KEY"] = os.environ[api_key_env]
    return env


def shell_line(cmd: list[str], api_key_env: str) -> str:
    """The command as one shell line; the key appears as a variable reference, never its value."""
    prefix = "VLLM_ALLOW_RUNTIME_LORA_UPDATING=True "
    if os.environ.get(api_key_env):
        prefix += f'VLLM_API_KEY="${api_key_env}" '
    return prefix + " ".join(shlex.quote(part) for part in cmd)


def vllm_installed() -> bool:
    return importlib.util.find_spec("vllm") is not None
