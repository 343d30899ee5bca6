"""Can py-libp2p's bitswap carry a model?  One provider, one fetcher, two processes, loopback.

    .venv/bin/python benchmarks/bitswap_probe.py [--mb 64] [--chunk-kib 256]

The provider adds a file of ``--mb`` random megabytes to a MerkleDag (py-libp2p 0.8.1's bitswap:
dag-pb, CIDv1, ``--chunk-kib`` blocks, an in-memory block store) and prints its root CID; the
fetcher dials it and ``fetch_file``s the root.  Prints MB/s next to ``cp`` of the same file.
This measured the choice of issue 15 (docs/benchmarks.md, "Model transfer"): bitswap stayed far
below 50 MB/s, so models travel by inferad's own chunk protocol (inferad/transfer.py).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import asynccontextmanager
from pathlib import Path

import trio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from nacl.signing import SigningKey  # noqa: E402

from p2p.host import dialable, listen_addrs, make_host, peer_info, running  # noqa: E402


@asynccontextmanager
async def bitswap_node():
    """A libp2p host on loopback with a started bitswap client, and its MerkleDag."""
    from libp2p.bitswap.client import BitswapClient
    from libp2p.bitswap.dag import MerkleDag

    host = make_host(SigningKey.generate())
    async with running(host, listen_addrs(["/ip4/127.0.0.1/tcp/0"])), trio.open_nursery() as nursery:
        bitswap = BitswapClient(host)
        bitswap.set_nursery(nursery)
        await bitswap.start()
        yield host, MerkleDag(bitswap)
        nursery.cancel_scope.cancel()


async def provide(path: str, chunk: int) -> None:
    async with bitswap_node() as (host, dag):
        root = await dag.add_file(path, chunk_size=chunk)
        print(f"{dialable([str(a) for a in host.get_addrs()])[0]} {root.hex()}", flush=True)
        await trio.sleep_forever()


async def fetch(addr: str, root_hex: str) -> float:
    async with bitswap_node() as (host, dag):
        info = peer_info(addr)
        await host.connect(info)
        started = time.perf_counter()
        data, _ = await dag.fetch_file(bytes.fromhex(root_hex), peer_id=info.peer_id, timeout=60)
        elapsed = time.perf_counter() - started
        print(f"fetched {len(data)} bytes", file=sys.stderr)
        return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mb", type=int, default=64)
    parser.add_argument("--chunk-kib", type=int, default=256)
    parser.add_argument("--provide", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.provide:
        trio.run(provide, args.provide, args.chunk_kib * 1024)
        return
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.bin"
        path.write_bytes(os.urandom(args.mb << 20))
        started = time.perf_counter()
        shutil.copyfile(path, Path(tmp) / "copy.bin")
        cp_s = time.perf_counter() - started
        provider = subprocess.Popen([sys.executable, __file__, "--provide", str(path), "--chunk-kib",
                                     str(args.chunk_kib)], stdout=subprocess.PIPE, text=True)
        try:
            addr, root = provider.stdout.readline().split()
            seconds = trio.run(fetch, addr, root)
        finally:
            provider.kill()
            provider.wait()
    mb = args.mb * 1.048576
    print(f"bitswap (py-libp2p, {args.chunk_kib} KiB blocks, one provider, loopback): {args.mb} MiB in "
          f"{seconds:.1f} s = {mb / seconds:.1f} MB/s; cp {mb / cp_s:.0f} MB/s; ratio {cp_s / seconds:.4f}")


if __name__ == "__main__":
    main()
