"""The run directory: JSONL records in, JSONL records out, and a manifest per stage.

Contract (see HOUSE_STYLE): a stage writes `<run_dir>/<stage>.jsonl` (and any side files) plus
`<stage>.manifest.json`. Records are appended and flushed one by one, so a killed stage loses at
most the requests in flight; on restart it skips ids already written. A torn last line (the
process died inside a write) is cut off when the file is next opened for appending.
"""

from __future__ import annotations

import contextlib
import fcntl
import gzip
import hashlib
import json
import os
import tempfile
import time
from collections.abc import Iterable, Iterator
from functools import lru_cache
from pathlib import Path
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ValidationError

from .errors import UserError

R = TypeVar("R", bound=BaseModel)


@contextlib.contextmanager
def atomic_open(path: Path, mode: str = "w") -> Iterator[Any]:
    """A file to write that appears at `path` whole, or not at all (readers never see half)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        # mkstemp makes the file 0600; outputs are meant to be shared like any other file.
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    with atomic_open(path, "w") as fh:
        fh.write(text)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


def atomic_write_jsonl(path: Path, records: Iterable[BaseModel | dict]) -> int:
    """Replace `path` with these records in one step (for stages that need their whole input)."""
    lines = [_dump(r) for r in records]
    atomic_write_text(path, "".join(line + "\n" for line in lines))
    return len(lines)


def _dump(record: BaseModel | dict) -> str:
    if isinstance(record, BaseModel):
        return record.model_dump_json()
    return json.dumps(record, ensure_ascii=False)


def file_sha256(path: Path) -> str:
    """The file's SHA-256, computed once per process for a given size and modification time
    (stages compare, record and re-check their inputs; a large .jsonl.gz is read only once)."""
    stat = os.stat(path)
    return _sha256(str(path), stat.st_size, stat.st_mtime_ns)


@lru_cache(maxsize=256)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_jsonl(path: Path, model: type[R] | None = None) -> list[Any]:
    """Every record of a JSONL file; a malformed line is a UserError naming file and line."""
    return list(iter_jsonl(path, model))


def iter_jsonl(path: Path, model: type[R] | None = None) -> Iterator[Any]:
    """Each record of a JSONL file (gzipped or not), validated as `model` when given."""
    for line_no, obj in iter_json_lines(path):
        yield validate_record(obj, model, path, line_no) if model else obj


def iter_json_lines(path: Path) -> Iterator[tuple[int, Any]]:
    """(line number, object) for each non-empty line of a JSONL file, gzipped or not; a missing,
    unreadable or malformed file is a UserError naming file and line."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    gzipped = sniff_gzip(path)
    opener = gzip.open if gzipped else open
    line_no = 0
    try:
        with opener(path, "rt", encoding="utf-8-sig") as fh:
            for line_no, line in enumerate(fh, start=1):
                if line.strip():
                    yield line_no, json.loads(line)
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}:{line_no}: not valid JSON ({exc.msg}); fix or remove that line") from None
    except (UnicodeDecodeError, OSError, EOFError) as exc:
        raise UserError(f"{path}: cannot be read as {'gzipped ' if gzipped else ''}JSONL "
                        f"({type(exc).__name__}: {exc}); give a UTF-8 JSONL file") from None


def sniff_gzip(path: Path) -> bool:
    """Whether the file is gzipped (by its magic bytes, not its name); unreadable is a UserError."""
    try:
        with open(path, "rb") as fh:
            return fh.read(2) == b"\x1f\x8b"
    except OSError as exc:
        raise UserError(f"{path}: cannot be read ({exc.strerror}); check its permissions") from None


def validate_record(obj: Any, model: type[R], path: Path, line_no: int) -> R:
    """`obj` as a `model` record, or a UserError naming the file, line and field."""
    try:
        return model.model_validate(obj)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(record)"
        raise UserError(
            f"{path}:{line_no}: not a {model.__name__} record: {where}: {first['msg']}"
        ) from None


class JsonlStore(Generic[R]):
    """An append-only JSONL file of one record type, safe to kill and reopen."""

    def __init__(self, path: Path, model: type[R]):
        self.path = Path(path)
        self.model = model

    def exists(self) -> bool:
        return self.path.is_file()

    def read(self) -> list[R]:
        if not self.exists():
            return []
        self.repair()
        return read_jsonl(self.path, self.model)

    def ids(self) -> set[str]:
        if not self.exists():
            return set()
        self.repair()
        return {obj["id"] for obj in iter_jsonl(self.path)}

    def repair(self) -> int:
        """Cut a torn last line left by a killed writer; returns the bytes removed."""
        if not self.exists():
            return 0
        with open(self.path, "rb+") as fh:
            size = fh.seek(0, os.SEEK_END)
            if size == 0:
                return 0
            fh.seek(size - 1)
            if fh.read(1) == b"\n":
                return 0
            # Walk back to the last newline: everything after it is an unfinished record.
            pos = size - 1
            while pos > 0:
                step = min(4096, pos)
                fh.seek(pos - step)
                chunk = fh.read(step)
                cut = chunk.rfind(b"\n")
                if cut >= 0:
                    pos = pos - step + cut + 1
                    break
                pos -= step
            fh.truncate(pos)
            return size - pos

    @contextlib.contextmanager
    def appender(self) -> Iterator["Appender[R]"]:
        """Open for appending under an exclusive lock (one writer per file)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock_path = self.path.with_name(self.path.name + ".lock")
        with open(lock_path, "w") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise UserError(
                    f"{self.path}: another forge process is writing this file; wait for it or stop it"
                ) from None
            self.repair()
            with open(self.path, "a", encoding="utf-8") as fh:
                yield Appender(fh, self.model)


class Appender(Generic[R]):
    def __init__(self, fh, model: type[R]):
        self._fh = fh
        self._model = model
        self.written = 0

    def write(self, record: R) -> None:
        """One record as one compact JSON line, flushed (a kill loses at most the line being written).
        pydantic's own serializer: several times cheaper per record than model_dump + json.dumps,
        which counts when thousands of replies a second come back on one event loop."""
        if not isinstance(record, self._model):
            raise TypeError(f"expected {self._model.__name__}, got {type(record).__name__}")
        self._fh.write(record.model_dump_json() + "\n")
        self._fh.flush()
        self.written += 1


class Manifest(BaseModel):
    """What a stage ran with and what it made: the audit trail of a run directory."""

    stage: str
    status: str = "running"
    config_hash: str
    config: dict[str, Any]
    inputs: dict[str, str] = {}
    outputs: list[str] = []
    counts: dict[str, int] = {}
    figures: dict[str, Any] = {}
    models: dict[str, str] = {}
    prompts: dict[str, str] = {}
    packages: dict[str, str] = {}
    started_at: float = 0.0
    finished_at: float | None = None


def config_hash(config: dict[str, Any]) -> str:
    blob = json.dumps(config, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]


_TRACKED_PACKAGES = (
    "persona_forge", "torch", "transformers", "sentence-transformers", "peft", "trl", "datasets",
    "faiss-cpu", "openai", "bert-score", "gguf",
)


def package_versions() -> dict[str, str]:
    from importlib import metadata

    versions = {}
    for name in _TRACKED_PACKAGES:
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[name] = metadata.version(name)
    return versions


class RunDir:
    """A run directory holding every stage's outputs and manifests."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def file(self, name: str) -> Path:
        return self.path / name

    def manifest_path(self, stage: str) -> Path:
        return self.path / f"{stage}.manifest.json"

    def manifest(self, stage: str) -> Manifest | None:
        path = self.manifest_path(stage)
        if not path.is_file():
            return None
        return Manifest.model_validate_json(path.read_text(encoding="utf-8"))

    def check(self, stage: str, config: dict[str, Any], inputs: Iterable[Path] = (),
              force: bool = False) -> str:
        """Refuse, writing nothing, if `stage` ran here with another config or input (unless
        forced); returns what changed ("" when nothing did). Stages that begin late call it first.

        Inputs are compared by content, as a set: the same file named by another path is the same
        input; another file, or one more or one fewer, is a change. A stage that produced nothing
        (not finished and every output missing or empty, e.g. it failed at its first request)
        holds no claim on its config: the corrected command simply starts it again."""
        planned = Manifest(stage=stage, config_hash=config_hash(config), config=config,
                           inputs={str(p): file_sha256(p) for p in inputs})
        previous = self.held_manifest(stage)
        changed = _describe_change(previous, planned) if previous is not None else ""
        if changed and not force:
            raise UserError(
                f"{self.path}: the {stage} stage there was run with {changed}; "
                f"pass --force to redo it (old outputs go to {self.path / '.trash'}) "
                f"or choose another --run-dir"
            )
        return changed

    def held_manifest(self, stage: str) -> Manifest | None:
        """The stage's manifest if it holds its config here: it finished, or wrote something."""
        previous = self.manifest(stage)
        if previous is None or previous.status == "done":
            return previous
        if any(_has_content(self.path / name) for name in previous.outputs):
            return previous
        return None

    def begin(self, stage: str, config: dict[str, Any], inputs: Iterable[Path] = (),
              outputs: Iterable[str] = (), force: bool = False) -> "StageRun":
        """Start or resume `stage`; refuse to mix configs in one run directory unless forced."""
        inputs = list(inputs)
        changed = self.check(stage, config, inputs, force)
        self.path.mkdir(parents=True, exist_ok=True)
        self._clean_stale_temporaries(stage)
        manifest = Manifest(stage=stage, config_hash=config_hash(config), config=config,
                            inputs={str(p): file_sha256(p) for p in inputs}, outputs=list(outputs),
                            started_at=time.time())
        previous = self.held_manifest(stage)
        if previous is not None:
            if changed:
                self._trash(stage, previous)
            else:
                manifest = manifest.model_copy(update={
                    "started_at": previous.started_at, "counts": previous.counts,
                })
        manifest.packages = package_versions()
        atomic_write_json(self.manifest_path(stage), manifest.model_dump())
        return StageRun(self, manifest)

    def _clean_stale_temporaries(self, stage: str, older_than_s: float = 10.0) -> None:
        """Remove half-written manifests (`.<stage>.manifest.json.*.tmp`) a killed process left;
        a write takes milliseconds, so one older than a few seconds has no writer any more."""
        now = time.time()
        for tmp in self.path.glob(f".{stage}.manifest.json.*.tmp"):
            with contextlib.suppress(OSError):
                if now - tmp.stat().st_mtime > older_than_s:
                    tmp.unlink()

    def _trash(self, stage: str, previous: Manifest) -> None:
        """Move the old outputs to a new folder under .trash/; an existing entry is never reused."""
        trash = self.path / ".trash"
        trash.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime())
        for n in range(1, 10_000):
            target = trash / (f"{stage}-{stamp}" if n == 1 else f"{stage}-{stamp}-{n}")
            try:
                target.mkdir()
                break
            except FileExistsError:
                continue
        else:  # pragma: no cover - ten thousand forced runs in one second
            target = Path(tempfile.mkdtemp(prefix=f"{stage}-{stamp}-", dir=trash))
        for name in [*previous.outputs, f"{stage}.manifest.json"]:
            src = self.path / name
            if src.exists():
                os.replace(src, target / name)


def _has_content(path: Path) -> bool:
    """A non-empty file, or a folder holding one."""
    if path.is_file():
        return path.stat().st_size > 0
    if path.is_dir():
        return any(p.is_file() and p.stat().st_size > 0 for p in path.rglob("*"))
    return False


def _describe_change(previous: Manifest, current: Manifest) -> str:
    if previous.config_hash != current.config_hash:
        diffs = _dict_diff(previous.config, current.config)
        return "another config (" + "; ".join(diffs[:3]) + ")" if diffs else "another config"
    if sorted(previous.inputs.values()) != sorted(current.inputs.values()):
        old = set(previous.inputs.values())
        new = [path for path, digest in current.inputs.items() if digest not in old]
        for path in new:
            if path in previous.inputs:
                return f"another version of its input {path}"
        if new:
            return f"another input ({new[0]} is not a file it read)"
        return "other inputs (was: " + ", ".join(sorted(previous.inputs)) + ")"
    return ""


def _dict_diff(old: Any, new: Any, prefix: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[str] = []
        for key in sorted(set(old) | set(new)):
            out += _dict_diff(old.get(key), new.get(key), f"{prefix}{key}.")
        return out
    if old != new:
        return [f"{prefix.rstrip('.')}: {old!r} -> {new!r}"]
    return []


class StageRun:
    """A stage in progress: collects counts, models and prompts, then finishes the manifest."""

    def __init__(self, run_dir: RunDir, manifest: Manifest):
        self.run_dir = run_dir
        self.manifest = manifest

    def set_count(self, key: str, n: int) -> None:
        self.manifest.counts[key] = n

    def record_model(self, role: str, source: str) -> None:
        self.manifest.models[role] = source

    def record_prompt(self, name: str, digest: str) -> None:
        self.manifest.prompts[name] = digest

    def save(self) -> None:
        atomic_write_json(self.run_dir.manifest_path(self.manifest.stage), self.manifest.model_dump())

    def finish(self, **figures: Any) -> Manifest:
        self.manifest.figures.update(figures)
        self.manifest.status = "done"
        self.manifest.finished_at = time.time()
        self.save()
        return self.manifest
