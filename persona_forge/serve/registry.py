"""The adapters a server knows (name -> folder) and which of them are loaded, with an LRU bound.

Every adapter is checked before it is accepted, from its files alone (no model work): a LoRA
adapter folder, a rank the server accepts, made for this base model (the name its
adapter_config.json declares, and every weight's shape against the base model's layers). A refusal
is one line (a UserError). An accepted adapter is loaded into the model on first use; past
`max_loaded` the least recently used one that the next batch does not need is unloaded (it stays
known and is loaded again when asked for).
"""

from __future__ import annotations

import json
import re
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import UserError

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:/-]{0,127}$")


@dataclass
class AdapterInfo:
    name: str
    path: str
    rank: int
    alpha: float
    targets: list[str]
    created: int


def _norm(name: str) -> str:
    """A model name reduced to what survives a move: its last path part, lowercased."""
    return name.strip().rstrip("/").replace("\\", "/").split("/")[-1].lower()


class AdapterRegistry:
    def __init__(self, base_name: str, base_aliases: list[str], base_model: Any, max_loaded: int, max_rank: int):
        self.base_name = base_name
        self.aliases = {_norm(a) for a in [base_name, *base_aliases] if a}
        self.max_loaded = max_loaded
        self.max_rank = max_rank
        self.known: dict[str, AdapterInfo] = {}
        self.lru: OrderedDict[str, None] = OrderedDict()   # loaded adapters, least recently used first
        # name -> (in_features, out_features) of every Linear in the base model, for the shape check
        self.linears: dict[str, tuple[int, int]] = {}
        import torch

        for name, module in base_model.named_modules():
            if isinstance(module, torch.nn.Linear):
                self.linears[name] = (module.in_features, module.out_features)

    # --- what is known (any thread; the app holds no lock: dict operations are atomic enough) ---
    def check(self, name: str, path: str | Path) -> AdapterInfo:
        """The adapter at `path` as `name`, or a UserError saying in one line why it is refused."""
        if not NAME_RE.match(name or ""):
            raise UserError(f"adapter name {name!r}: use letters, digits and _ . - : / (up to 128 characters)")
        if name == self.base_name:
            raise UserError(f"adapter name {name!r} is the base model's name; choose another")
        folder = Path(path).expanduser()
        config_file = folder / "adapter_config.json"
        if not config_file.is_file():
            raise UserError(f"{folder}: not a LoRA adapter folder (no adapter_config.json); give the `adapter` "
                            "folder that forge train wrote")
        try:
            config = json.loads(config_file.read_text())
        except ValueError as exc:
            raise UserError(f"{config_file}: not valid JSON ({exc})") from None
        if str(config.get("peft_type", "LORA")).upper() != "LORA":
            raise UserError(f"{folder}: a {config.get('peft_type')} adapter; only LoRA adapters are served")
        rank = int(config.get("r") or 0)
        if not 1 <= rank <= self.max_rank:
            raise UserError(f"{folder}: LoRA rank {rank} is not supported (1 to {self.max_rank}); raise "
                            f"serve.max_rank or retrain with a smaller lora.r")
        declared = str(config.get("base_model_name_or_path") or "")
        if declared and _norm(declared) not in self.aliases:
            raise UserError(f"{folder}: made for base model '{declared}', but this server serves "
                            f"'{self.base_name}'; serve it with its own base (or add the name to serve.base_aliases "
                            f"if they are the same model)")
        targets = config.get("target_modules") or []
        targets = [targets] if isinstance(targets, str) else list(targets)
        self._check_shapes(folder, rank)
        return AdapterInfo(name=name, path=str(folder.resolve()), rank=rank,
                           alpha=float(config.get("lora_alpha") or rank), targets=targets, created=int(time.time()))

    def _check_shapes(self, folder: Path, rank: int) -> None:
        weights = folder / "adapter_model.safetensors"
        if not weights.is_file():
            raise UserError(f"{folder}: no adapter_model.safetensors; give the `adapter` folder that forge train wrote")
        from safetensors import safe_open

        with safe_open(str(weights), framework="pt") as f:
            for key in f.keys():
                shape = tuple(f.get_slice(key).get_shape())
                match = re.match(r"^(?:base_model\.model\.)?(.*)\.(lora_A|lora_B)(?:\.[^.]+)?\.weight$", key)
                if not match:
                    continue
                module, part = match.groups()
                if module not in self.linears:
                    raise UserError(f"{folder}: it adapts layer '{module}', which the base model '{self.base_name}' "
                                    "does not have: an adapter of another base model")
                in_f, out_f = self.linears[module]
                # A is (r, in), B is (out, r); r may differ per layer (rank_pattern), the sides may not.
                fits = len(shape) == 2 and (shape[1] == in_f if part == "lora_A" else shape[0] == out_f)
                if not fits:
                    want = f"[r, {in_f}]" if part == "lora_A" else f"[{out_f}, r]"
                    raise UserError(f"{folder}: layer '{module}' {part} has shape {list(shape)} where the base "
                                    f"model '{self.base_name}' needs {want}: an adapter of another base model")
                layer_rank = shape[0] if part == "lora_A" else shape[1]
                if layer_rank > self.max_rank:
                    raise UserError(f"{folder}: layer '{module}' has LoRA rank {layer_rank}, above the "
                                    f"{self.max_rank} this server accepts; raise serve.max_rank")

    def add(self, info: AdapterInfo) -> None:
        self.known[info.name] = info

    def remove(self, name: str) -> AdapterInfo | None:
        return self.known.pop(name, None)

    # --- what is loaded (the model thread only) ---
    def plan(self, needed: list[str]) -> tuple[list[str], list[str]]:
        """(to unload, to load) so that every adapter in `needed` is resident, at most max_loaded
        in all; `needed` must not exceed max_loaded. Marks them most recently used."""
        to_load = [n for n in dict.fromkeys(needed) if n not in self.lru]
        to_unload: list[str] = []
        excess = len(self.lru) + len(to_load) - self.max_loaded
        for name in list(self.lru):
            if excess <= 0:
                break
            if name not in needed:
                to_unload.append(name)
                excess -= 1
        for name in to_unload:
            del self.lru[name]
        for name in needed:
            self.lru[name] = None
            self.lru.move_to_end(name)
        return to_unload, to_load

    def forget_loaded(self, name: str) -> None:
        self.lru.pop(name, None)


def adapters_from(options: list[str] | tuple[str, ...], adapters_dir: Path | None,
                  configured: dict[str, Path]) -> dict[str, Path]:
    """NAME -> folder from the recipe's serve.adapters, then --adapters-dir, then --adapter NAME=DIR
    (later ones win a name). A folder under adapters_dir is an adapter if it holds adapter_config.json;
    forge train's <name>/adapter/ is named <name>."""
    found: dict[str, Path] = {name: Path(path) for name, path in configured.items()}
    if adapters_dir is not None:
        folder = Path(adapters_dir)
        if not folder.is_dir():
            raise UserError(f"--adapters-dir {folder}: no such folder")
        for config in sorted(folder.glob("**/adapter_config.json")):
            where = config.parent
            inside = where.relative_to(folder)
            if "checkpoint-" in str(inside) or any(part.startswith(".") for part in inside.parts):
                continue  # training checkpoints, --force's .trash/ and half-written .adapter.tmp are not to serve
            name = where.parent.name if where.name == "adapter" and where.parent != folder else where.name
            found[name] = where
    for value in options:
        name, sep, path = value.partition("=")
        if not sep:
            path = value
            name = Path(value).parent.name if Path(value).name == "adapter" else Path(value).name
        if not name or not path:
            raise UserError(f"--adapter {value!r}: expected NAME=DIR or DIR")
        found[name] = Path(path)
    return found
