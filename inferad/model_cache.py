"""The model cache: files named by their sha256, as ``inferad models list/pull/rm`` show them.

Layout, under ``<cache>/models/`` (``INFERAD_CACHE``, default ``~/.cache/inferad``)::

    gemma-3-270m.gguf          a catalog model, assembled from its PyPI package (inferad.models)
    <sha256>.gguf              a model fetched from peers (inferad.transfer), checked whole
    <sha256>.json              its label, size, source and when it was last used
    <sha256>.partial           a fetch under way or interrupted: never served, resumed by the next
    <sha256>.partial.json      its chunk root and the chunks already checked

A limit (``--model-cache-limit``, bytes) evicts fetched models, least recently used first, when a
fetch would pass it; catalog files and the model being fetched are never evicted.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from inferad.files import write_json
from inferad.models import CATALOG, LocalModel, ModelError, cache_dir, file_sha256, is_sha256, resolve, split_name

log = logging.getLogger("inferad.model_cache")


@dataclass(frozen=True)
class CachedModel:
    label: str
    sha256: str
    size: int  # bytes
    source: str  # "catalog", or the peer ids it came from
    last_used: float  # unix seconds
    path: Path

    def to_json(self) -> dict:
        return {**asdict(self), "path": str(self.path)}


class ModelCache:
    """The files of ``root`` (default ``<cache>/models``); ``limit``: bytes of fetched models kept."""

    def __init__(self, root: Path | None = None, limit: int | None = None) -> None:
        self.root = root or cache_dir() / "models"
        self.limit = limit

    def path(self, sha256: str) -> Path:
        return self.root / f"{sha256}.gguf"

    def partial(self, sha256: str) -> Path:
        return self.root / f"{sha256}.partial"

    def partial_state(self, sha256: str) -> Path:
        return self.root / f"{sha256}.partial.json"

    def _meta(self, sha256: str) -> Path:
        return self.root / f"{sha256}.json"

    def entries(self) -> list[CachedModel]:
        """Every complete model in the cache, catalog ones included, most recently used first."""
        found = []
        for entry in CATALOG.values():
            path = self.root / f"{entry.name}.gguf"
            if path.is_file():
                st = path.stat()
                found.append(CachedModel(entry.name, entry.sha256, st.st_size, "catalog", st.st_atime, path))
        for meta in self.root.glob("*.json") if self.root.is_dir() else ():
            sha = meta.name.removesuffix(".json")
            if is_sha256(sha) and self.path(sha).is_file():
                try:
                    info = json.loads(meta.read_text())
                except (OSError, ValueError):
                    continue
                found.append(CachedModel(str(info.get("label", sha[:12])), sha, self.path(sha).stat().st_size,
                                         str(info.get("source", "?")), float(info.get("last_used", 0)),
                                         self.path(sha)))
        return sorted(found, key=lambda m: -m.last_used)

    def find(self, ref: str) -> CachedModel | None:
        """The cached model ``ref`` names: ``sha256:<hex>``, ``<hex>``, ``label@sha256:<hex>`` or a label
        (which must name one file). Raises ModelError for a label several cached files share."""
        label, sha = split_name(ref)  # with a sha256, the label is only a hint
        matches = [m for m in self.entries() if (m.sha256 == sha if sha else m.label == label)]
        if sha is None and len(matches) > 1:
            raise ModelError(f"{len(matches)} cached models are labelled {label!r}: name one as label@sha256 ("
                             + ", ".join(f"{m.label}@{m.sha256}" for m in matches) + ")")
        return matches[0] if matches else None

    def touch(self, sha256: str) -> None:
        """Mark a fetched model used now (the cache limit evicts the least recently used)."""
        meta = self._meta(sha256)
        try:
            info = json.loads(meta.read_text())
        except (OSError, ValueError):
            return
        self._write_meta(sha256, {**info, "last_used": time.time()})

    def add(self, sha256: str, label: str, source: str) -> CachedModel:
        """Move the checked ``partial(sha256)`` into place as a cached model; evict down to the limit
        (again: fetches running side by side each made room only for themselves)."""
        self._write_meta(sha256, {"label": label, "source": source, "last_used": time.time()})
        os.replace(self.partial(sha256), self.path(sha256))
        self.partial_state(sha256).unlink(missing_ok=True)
        self.evict(keep=sha256)
        return self.find(sha256)

    def room_for(self, size: int, keep: str) -> None:
        """Evict fetched models (least recently used first, never ``keep``) until ``size`` more bytes
        fit under the limit.  Raises ModelError when even an empty cache could not hold them."""
        if self.limit is not None and size > self.limit:
            raise ModelError(f"the model is {size / 1e6:.0f} MB, over the cache limit of {self.limit / 1e6:.0f} MB "
                             f"(--model-cache-limit)")
        self.evict(keep=keep, extra=size)

    def evict(self, *, keep: str, extra: int = 0) -> None:
        """Remove fetched models, least recently used first, until they and ``extra`` bytes fit the limit."""
        if self.limit is None:
            return
        fetched = [m for m in self.entries() if m.source != "catalog"]
        total = sum(m.size for m in fetched) + extra
        for m in sorted(fetched, key=lambda m: m.last_used):
            if total <= self.limit:
                break
            if m.sha256 != keep:
                self.remove(m)
                total -= m.size
                log.info("model cache: evicted %s (%s, %.0f MB) to stay under %.0f MB", m.label, m.sha256[:12],
                         m.size / 1e6, self.limit / 1e6)

    def remove(self, model: CachedModel) -> None:
        model.path.unlink(missing_ok=True)
        if model.source != "catalog":
            self._meta(model.sha256).unlink(missing_ok=True)

    def discard_partial(self, sha256: str) -> None:
        self.partial(sha256).unlink(missing_ok=True)
        self.partial_state(sha256).unlink(missing_ok=True)

    def _write_meta(self, sha256: str, info: dict) -> None:
        write_json(self._meta(sha256), info)


def model_ref(spec: str) -> str | None:
    """The sha256 ``spec`` names a model by (``sha256:<hex>``, ``<hex>``, ``label@sha256:<hex>``,
    ``label@<hex>``), lowercase; None for a catalog name or a path."""
    return split_name(spec)[1]


def local_model(spec: str, cache: ModelCache | None = None) -> LocalModel:
    """The file ``spec`` names on this machine: a cached model by sha256 reference (checked again:
    the digest is cached by size and mtime), else a catalog name or GGUF path
    (:func:`inferad.models.resolve`).  Raises ModelError; :class:`NotCached` for a sha256 this
    cache lacks (the node fetches it from peers)."""
    sha = model_ref(spec)
    if sha is None:
        return resolve(spec)
    cache = cache or ModelCache()
    found = cache.find(sha)
    if found is None:
        raise NotCached(f"model {sha} is not in the cache {cache.root}: `inferad models pull sha256:{sha}` "
                        f"fetches it from the network (a node started with --model sha256:… does so itself)")
    if found.source == "catalog":
        return resolve(found.label)
    if file_sha256(found.path) != sha:
        raise ModelError(f"the cached file {found.path} no longer hashes to {sha[:16]}…: remove it "
                         f"(`inferad models rm {sha}`) and pull it again")
    cache.touch(sha)
    return LocalModel(name=found.label, path=found.path, sha256=sha)


class NotCached(ModelError):
    """A model named by sha256 that the cache does not hold (yet)."""
