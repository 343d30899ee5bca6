"""The model-supply role: the model files this node shares with peers and fetches from them.

A node shares the files it serves (models and LoRA adapters) over
``/inferad/model`` (:class:`inferad.transfer.ModelShare`) and fetches files
it lacks from the peers whose adverts offer them (:class:`inferad.transfer.Fetcher`)
in three cases: ``inferad start --model sha256:…`` for a model the cache lacks
(fetched after the mesh is up, then served: :meth:`ModelSupply.fetch_and_serve`),
``inferad models pull`` (the control socket's ``pull``), and a draw that names
this node to verify a job on a model it does not serve (:class:`VerifyingModels`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import trio

from inferad.config import Config
from inferad.engine import Engine
from inferad.model_cache import ModelCache, model_ref
from inferad.models import ModelError
from inferad.transfer import Fetcher, ModelShare, OpenStream, Progress
from inferad.worker import ModelUnusable, Served, open_model
from p2p import wire
from scheduler.peers import PeerTable

log = logging.getLogger("inferad.supply")


def to_fetch(models: tuple[str, ...], cache: ModelCache) -> tuple[str, ...]:
    """The ``sha256:…`` specs of ``models`` (config ``engine.models``) that the cache lacks: the
    node fetches them from peers once its mesh is up, and serves them then."""
    return tuple(spec for spec in models if (sha := model_ref(spec)) is not None and cache.find(sha) is None)


@dataclass(kw_only=True, eq=False)
class ModelSupply:
    """Shares this node's model files and fetches the ones it lacks.

    Args:   key: the node's signing key (a share's Merkle root is signed with it).
            config: ``request_timeout``, ``advert_interval``, ``fetch_models``, ``adapters``; what
                    :func:`inferad.worker.open_model` reads.
            hardware: this machine (the speed cache's key for a model opened here).
            served: the engines this node serves, by ``wire.served_key``; a fetched model joins them.
            cache: the model cache.
            peers: the advert table: a file is fetched from the peers whose fresh adverts offer it.
            open_stream: a new ``/inferad/model`` stream to a peer.
    """

    key: Any  # nacl.signing.SigningKey
    config: Config
    hardware: wire.Hardware
    served: dict[str, Served]
    cache: ModelCache
    peers: PeerTable
    open_stream: OpenStream

    def __post_init__(self) -> None:
        self_id = wire.peer_id_from_public_key(bytes(self.key.verify_key))
        self.providers = lambda sha: [e.peer_id for e in self.peers.sharing(sha, time.monotonic())
                                      if e.peer_id != self_id]
        self.share = ModelShare(key=self.key, files=partial(model_files, self.served),
                                request_timeout=self.config.request_timeout)
        self.fetcher = Fetcher(providers=self.providers, open_stream=self.open_stream, cache=self.cache,
                               wait_s=max(30.0, 5.0 * self.config.advert_interval))
        self.verifying = VerifyingModels(fetch=lambda sha, limit: self.fetcher.fetch(sha, max_size=limit),
                                         open=partial(open_model, config=self.config, hardware=self.hardware),
                                         max_size=self.config.fetch_models)

    async def fetch_and_serve(self, spec: str, on_served: Callable[[], None]) -> None:
        """``--model sha256:…`` that the cache lacks: fetch it from the peers that serve it, then
        serve it with each of ``config.adapters`` too, and call ``on_served`` (the next advert
        offers it). Raises ModelUnusable, naming the model, when it cannot be fetched or opened."""
        sha = model_ref(spec)
        log.info("model %s is not in the cache: fetching it from the peers that serve it", spec)
        try:
            await self.fetcher.fetch(sha, on_progress=_log_progress(sha))
            self.served[sha] = await open_model(f"sha256:{sha}", self.config, self.hardware)
            for adapter in self.config.adapters:  # on the one model (load_models skipped them)
                pair = await open_model(f"sha256:{sha}", self.config, self.hardware, adapter=adapter)
                self.served[pair.engine.key] = pair
        except ModelError as exc:
            raise ModelUnusable(f"cannot serve {spec}: {exc}") from None
        on_served()
        log.info("serving %s (%s), fetched from peers", self.served[sha].engine.ref.name, sha[:12])

    def close(self) -> None:
        self.verifying.close()


@dataclass(kw_only=True, eq=False)
class VerifyingModels:
    """The engine for a model this node verifies but does not serve: fetched from peers when a
    draw names the node for a job on it (config ``verification.fetch_models``: the largest file,
    in bytes, fetched for that; 0: never), opened and kept until a job on another model needs
    the memory (one at a time).

    Args:   fetch: ``(sha256, max_size)`` -> the cached model (inferad.transfer.Fetcher.fetch).
            open: ``sha256:<hex>`` (and ``adapter=``) -> its Served (open_model), blocking the caller only.
            max_size: config ``verification.fetch_models``.
    """

    fetch: Callable[[str, int], Awaitable[Any]]
    open: Callable[..., Awaitable[Served]]
    max_size: int
    _held: dict[str, Served] = field(default_factory=dict)
    _lock: trio.Lock = field(default_factory=trio.Lock)

    async def engine_for(self, key: str) -> Served | None:
        """The engine for ``key`` (``wire.served_key``: a model, or a model and its LoRA adapter, each
        fetched if the cache lacks it); None when fetching is off; raises ModelError when a file
        cannot be fetched or opened."""
        if self.max_size <= 0:
            return None
        async with self._lock:
            if key not in self._held:
                model, _, adapter = key.partition("+")
                for sha in (model, adapter):
                    if sha:
                        await self.fetch(sha, self.max_size)
                try:
                    opened = await self.open(f"sha256:{model}", adapter=f"sha256:{adapter}" if adapter else None)
                except ModelUnusable as exc:
                    raise ModelError(str(exc)) from None
                self.close()
                self._held[key] = opened
                log.info("verifying on %s%s, fetched from peers", opened.engine.ref.name,
                         f" with adapter {opened.engine.adapter_ref.name}" if adapter else "")
            return self._held[key]

    def close(self) -> None:
        for held in self._held.values():
            held.engine.close()
        self._held.clear()


def model_files(served: dict[str, Served]) -> dict[str, tuple[str, Path]]:
    """The files of ``served``, models and adapters, as ``{sha256: (label, path)}``: what this node
    shares with peers (the simulated engine has none)."""
    files = {}
    for s in served.values():
        if isinstance(s.engine, Engine):
            files[s.engine.model.sha256] = (s.engine.model.name, s.engine.model.path)
            if s.engine.adapter is not None:
                files[s.engine.adapter.sha256] = (s.engine.adapter.name, s.engine.adapter.path)
    return files


def _log_progress(sha256: str) -> Callable[[Progress], None]:
    """A fetch's progress in the node's log, every 5 seconds."""
    last = [0.0]

    def report(progress: Progress) -> None:
        if time.monotonic() - last[0] >= 5.0 or progress.done == progress.total:
            last[0] = time.monotonic()
            log.info("fetching %s: %.0f%% of %.0f MB at %.1f MB/s from %d provider(s)", sha256[:12],
                     100 * progress.done / progress.total, progress.total / 1e6, progress.rate() / 1e6,
                     progress.providers)
    return report
