"""Fetching a model file (inferad.transfer) between real libp2p hosts in one process, and the
model cache it fills (inferad.model_cache).  Files are random bytes: the protocol does not care
what a model holds, only what it hashes to."""

import hashlib
import json
import os
import subprocess
import time
from contextlib import AsyncExitStack
from pathlib import Path

import pytest
import trio
from nacl.signing import SigningKey

from inferad.model_cache import ModelCache
from inferad.models import ModelError
from inferad.transfer import PROTOCOL_MODEL, Fetch, FetchError, ModelShare
from p2p.host import guarded, listen_addrs, make_host, running
from proofs.chunks import CHUNK_SIZE


def random_file(path: Path, size: int) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = os.urandom(size)
    path.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


async def fetch_from(shares: list[dict], sha: str, cache: ModelCache) -> object:
    """Start one host per entry of ``shares`` (``{sha256: (label, path)}`` each shares), and fetch
    ``sha`` into ``cache`` from all of them over real libp2p connections."""
    from libp2p.custom_types import TProtocol
    from libp2p.peer.peerinfo import PeerInfo

    async with AsyncExitStack() as stack:
        fetcher = make_host(SigningKey.generate())
        await stack.enter_async_context(running(fetcher, listen_addrs(["/ip4/127.0.0.1/tcp/0"])))
        peers = []
        for files in shares:
            key = SigningKey.generate()
            host = make_host(key)
            await stack.enter_async_context(running(host, listen_addrs(["/ip4/127.0.0.1/tcp/0"])))
            share = ModelShare(key=key, files=lambda files=files: files, request_timeout=10)
            host.set_stream_handler(TProtocol(PROTOCOL_MODEL), guarded("model", share.serve))
            await fetcher.connect(PeerInfo(host.get_id(), host.get_addrs()))
            peers.append(host.get_id())

        async def open_stream(peer_id: str):
            from libp2p.peer.id import ID

            return await fetcher.new_stream(ID.from_base58(peer_id), [TProtocol(PROTOCOL_MODEL)])

        return await Fetch(sha256=sha, providers=[p.to_base58() for p in peers], open_stream=open_stream,
                           cache=cache, timeout=10).run()


def test_a_file_fetched_from_two_providers_is_whole_and_named_by_its_sha256(tmp_path):
    sha = random_file(tmp_path / "src" / "m.gguf", 5 * CHUNK_SIZE + 123)
    cache = ModelCache(tmp_path / "cache")
    files = {sha: ("mine", tmp_path / "src" / "m.gguf")}
    got = trio.run(fetch_from, [files, files], sha, cache)
    assert got.sha256 == sha and got.label == "mine" and len(got.source.split(",")) == 2
    assert hashlib.sha256(cache.path(sha).read_bytes()).hexdigest() == sha
    assert [m.sha256 for m in cache.entries() if m.source != "catalog"] == [sha]
    assert not list((tmp_path / "cache").glob("*.partial*"))


def test_a_root_whose_bytes_are_not_the_model_is_refused_and_leaves_nothing_behind(tmp_path):
    wanted = hashlib.sha256(b"the real model").hexdigest()
    random_file(tmp_path / "src" / "other.gguf", 2 * CHUNK_SIZE)  # consistent chunks, a signed root: wrong bytes
    cache = ModelCache(tmp_path / "cache")
    with pytest.raises(FetchError, match="not the model"):
        trio.run(fetch_from, [{wanted: ("fake", tmp_path / "src" / "other.gguf")}], wanted, cache)
    assert not any((tmp_path / "cache").iterdir())


def test_an_unknown_sha256_and_no_provider_are_clear_errors(tmp_path):
    sha = random_file(tmp_path / "src" / "m.gguf", 1000)
    unknown = "ab" * 32
    cache = ModelCache(tmp_path / "cache")
    with pytest.raises(FetchError, match="unknown_model"):
        trio.run(fetch_from, [{sha: ("m", tmp_path / "src" / "m.gguf")}], unknown, cache)
    with pytest.raises(FetchError, match="no peer serves model"):
        trio.run(fetch_from, [], unknown, cache)
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())


@pytest.fixture
def small_disk(tmp_path):
    """A 3 MiB tmpfs: a real full disk (needs root, as `make test` runs here)."""
    mount = tmp_path / "small"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs (not root)")
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


def test_a_model_larger_than_the_free_disk_is_refused_before_a_byte_moves(tmp_path, small_disk):
    sha = random_file(tmp_path / "src" / "m.gguf", 4 * CHUNK_SIZE)
    cache = ModelCache(small_disk / "cache")
    with pytest.raises(FetchError, match="not enough disk"):
        trio.run(fetch_from, [{sha: ("m", tmp_path / "src" / "m.gguf")}], sha, cache)
    assert not list(small_disk.rglob("*.partial*"))


def cached_file(cache: ModelCache, label: str, size: int, used: float) -> str:
    """A fetched model put in the cache as a fetch leaves it."""
    sha = random_file(cache.partial("x"), size)
    os.replace(cache.partial("x"), cache.partial(sha))
    cache.add(sha, label, "peer")
    meta = cache.root / f"{sha}.json"
    meta.write_text(json.dumps({**json.loads(meta.read_text()), "last_used": used}))
    return sha


def test_the_cache_limit_evicts_the_least_recently_used_fetched_models(tmp_path):
    cache = ModelCache(tmp_path / "cache")
    old = cached_file(cache, "old", 1000, used=time.time() - 100)
    new = cached_file(cache, "new", 1000, used=time.time())
    limited = ModelCache(cache.root, limit=1500)
    limited.room_for(400, keep="c" * 64)
    assert [m.sha256 for m in limited.entries() if m.source != "catalog"] == [new]
    with pytest.raises(ModelError, match="over the cache limit"):
        limited.room_for(2000, keep="c" * 64)
    assert old not in {m.sha256 for m in limited.entries()}


def test_a_cached_model_is_found_by_sha256_label_at_sha256_or_its_label_alone(tmp_path):
    cache = ModelCache(tmp_path / "cache")
    sha = cached_file(cache, "tiny", 100, used=time.time())
    for ref in (sha, f"sha256:{sha}", f"tiny@sha256:{sha}", f"whatever@{sha}", "tiny"):
        assert cache.find(ref).sha256 == sha, ref
    cached_file(cache, "tiny", 101, used=time.time())
    with pytest.raises(ModelError, match="label@sha256"):
        cache.find("tiny")
    cache.remove(cache.find(sha))
    assert cache.find(sha) is None


def test_a_model_over_the_cache_limit_is_refused_before_a_byte_moves(tmp_path):
    sha = random_file(tmp_path / "src" / "m.gguf", 2 * CHUNK_SIZE)
    cache = ModelCache(tmp_path / "cache", limit=CHUNK_SIZE)
    with pytest.raises(FetchError, match="over the cache limit"):
        trio.run(fetch_from, [{sha: ("m", tmp_path / "src" / "m.gguf")}], sha, cache)
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())
