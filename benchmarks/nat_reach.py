"""Reach: a job between two homes behind NAT, through a relay against direct (hole punched).

    .venv/bin/python benchmarks/nat_reach.py [--jobs 5] [--tokens 64] [--punches 3]     (as root)

Builds tests/netns.py's small internet (a public host; homes A and B, each behind a router that
masquerades and drops unsolicited inbound): two relays on the public host, a worker serving
gemma-3-270m in home B, and a gateway without a model, with the HTTP API, in home A.  From home A,
streamed /v1/completions of --tokens greedy tokens (after one warm-up), with the gateway reaching
the worker
(a) relayed: gateway and worker started with --no-hole-punching;
(b) direct: hole punching on, once `inferad peers` says the connection is direct.
Prints the median wall time and time to first token of each, and a/b.  Then --punches times a
fresh gateway in home A runs one job and waits up to 30 s for hole punching to make its
connection direct: the share made direct.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.conftest import INFERAD, NodeProcess, run_cli  # noqa: E402
from tests.netns import Internet, can_build  # noqa: E402
from tests.test_mesh_integration import wait_for  # noqa: E402

PROMPT = "Write a long story about a dragon who learns to cook."


def client(url: str, key: str, jobs: int, tokens: int) -> None:
    """In home A: ``jobs`` streamed completions (after a warm-up); prints [[wall s, first token s, tokens]]."""
    import httpx

    body = {"model": "gemma-3-270m", "prompt": PROMPT, "max_tokens": tokens, "temperature": 0, "stream": True}
    runs = []
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=120) as http:
        for i in range(jobs + 1):
            started, first, count = time.perf_counter(), None, 0
            with http.stream("POST", "/v1/completions", json=body) as reply:
                reply.raise_for_status()
                for line in reply.iter_lines():
                    if line.startswith("data: {") and json.loads(line[6:])["choices"][0].get("text"):
                        first = first or time.perf_counter() - started
                        count += 1
            if i:  # the first is the warm-up: it dials the worker
                runs.append([time.perf_counter() - started, first, count])
    print(json.dumps(runs))


class Homes:
    """Two relays, a worker in home B and gateways in home A, in ``net``; every node stopped by :meth:`stop`."""

    def __init__(self, net: Internet, root: Path) -> None:
        self.net, self.root, self.nodes = net, root, []
        self.relays = [self.start("pub", f"relay{i}", "--no-model") for i in (1, 2)]
        self.boot = [arg for r in self.relays for arg in ("--bootstrap", r.addr)]

    def start(self, host: str, name: str, *extra: str) -> NodeProcess:
        node = NodeProcess(self.root / name, *extra, "--n-ctx", "512", "--log-level", "warning",
                           command=(*self.net.exec(host), *INFERAD), listen=f"/ip4/{self.net.address(host)}/tcp/0")
        self.nodes.append(node)
        return node

    def pair(self, tag: str, *extra: str) -> tuple[NodeProcess, NodeProcess, str]:
        """A worker in home B and a gateway in home A (with ``extra``), the worker reachable through
        both relays; and an API key of the gateway."""
        worker = self.start("hb", f"worker-{tag}", *self.boot, *extra)
        gateway = self.start("ha", f"gateway-{tag}", "--no-model", "--api-port", "0", *self.boot, *extra)
        wait_for(lambda: len(worker.status().get("relay_addrs", [])) == 2, 120, "the worker to reserve relay slots")
        wait_for(lambda: self.knows(gateway, worker), 60, "the gateway to hear the worker's advert")
        key = run_cli("apikey", "create", home=gateway.home, check=True).stdout.strip()
        return worker, gateway, key

    @staticmethod
    def knows(gateway: NodeProcess, worker: NodeProcess) -> bool:
        """The gateway has the worker's advert with its relayed addresses."""
        return len(gateway.peer(worker.info["peer_id"]).get("addrs", [])) >= 3

    @staticmethod
    def connection(gateway: NodeProcess, worker: NodeProcess) -> str | None:
        """How the gateway reaches the worker: "direct" or "relayed" (None before its advert)."""
        return gateway.peer(worker.info["peer_id"]).get("connection")

    def jobs(self, gateway: NodeProcess, key: str, jobs: int, tokens: int) -> list[list[float]]:
        url = json.loads((gateway.home / "node.json").read_text())["api"]
        out = subprocess.run([*self.net.exec("ha"), sys.executable, __file__, "client", url, key, str(jobs),
                              str(tokens)], capture_output=True, text=True, timeout=600, cwd=ROOT)
        if out.returncode:
            sys.exit(f"the client in home A failed:\n{out.stderr}")
        return json.loads(out.stdout)

    def stop(self, *nodes: NodeProcess) -> None:
        for node in nodes or self.nodes:
            node.stop()


def summary(runs: list[list[float]]) -> tuple[float, float]:
    return statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "client":
        client(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--punches", type=int, default=3)
    args = parser.parse_args()
    if (reason := can_build()) is not None:
        sys.exit(f"cannot build the network namespaces: {reason}")
    net = Internet().build()

    try:
        with tempfile.TemporaryDirectory() as tmp:
            homes = Homes(net, Path(tmp))
            try:
                worker, gateway, key = homes.pair("relayed", "--no-hole-punching")
                relayed = homes.jobs(gateway, key, args.jobs, args.tokens)
                assert homes.connection(gateway, worker) == "relayed"
                homes.stop(worker, gateway)
                worker, gateway, key = homes.pair("direct")
                homes.jobs(gateway, key, 0, args.tokens)  # connect (relayed), then let hole punching work
                wait_for(lambda: homes.connection(gateway, worker) == "direct", 60, "a direct connection")
                direct = homes.jobs(gateway, key, args.jobs, args.tokens)
                made_direct = 1
                for i in range(args.punches - 1):
                    other = homes.start("ha", f"gateway-punch{i}", "--no-model", "--api-port", "0", *homes.boot)
                    wait_for(lambda o=other: homes.knows(o, worker), 60, "the gateway to hear the worker's advert")
                    other_key = run_cli("apikey", "create", home=other.home, check=True).stdout.strip()
                    homes.jobs(other, other_key, 0, args.tokens)
                    deadline = time.monotonic() + 30
                    while time.monotonic() < deadline and homes.connection(other, worker) != "direct":
                        time.sleep(0.5)
                    made_direct += homes.connection(other, worker) == "direct"
                    homes.stop(other)
            finally:
                homes.stop()
    finally:
        net.remove()
    (wall_r, first_r), (wall_d, first_d) = summary(relayed), summary(direct)
    tokens = statistics.median(r[2] for r in relayed + direct)
    print(f"{args.jobs} streamed jobs of {args.tokens} tokens ({tokens:.0f} text chunks), home A -> home B, medians:")
    print(f"  relayed: {wall_r * 1000:7.0f} ms wall, {first_r * 1000:6.0f} ms to the first token")
    print(f"  direct:  {wall_d * 1000:7.0f} ms wall, {first_d * 1000:6.0f} ms to the first token")
    print(f"  relayed / direct: {wall_r / wall_d:.2f} wall, {first_r / first_d:.2f} first token")
    print(f"hole punching made {made_direct} of {args.punches} connections direct")


if __name__ == "__main__":
    main()
