"""The mesh at scale, with the SIMULATED engine: 20 node processes, 500 jobs, 4 gateways.

    .venv/bin/python benchmarks/swarm.py [--nodes 20] [--jobs 500] [--tokens 16]

Every node runs `inferad start --engine sim` (no model: deterministic tokens
at a set rate, mixed speeds), joined through the first one.  A client keeps
one connection to each of 4 gateways and keeps enough jobs in flight to fill
every worker.  Prints: advert convergence time after the last node started;
throughput as a fraction of the ideal (sum of the workers' speeds); p50/p99
job latency; Jain fairness of the load relative to speed (1 = every worker
busy in proportion to its speed); and a pure micro-benchmark of one
scheduling decision over 10,000 adverts.  Goals: >= 0.85, < 5 s, < 1 ms.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from inferad.devnet import ONE_MACHINE_ARGS  # noqa: E402  (20 nodes on 127.0.0.1: one IP)


def start(home: Path, speed: float, bootstrap: str | None, advert_interval: int) -> subprocess.Popen:
    args = [sys.executable, "-m", "cli", "start", "--home", str(home), "--listen", "/ip4/127.0.0.1/tcp/0",
            "--engine", "sim", "--sim-tokens-per-s", str(speed), "--log-level", "warning",
            "--advert-interval", str(advert_interval), *ONE_MACHINE_ARGS]
    if bootstrap:
        args += ["--bootstrap", bootstrap]
    log = open(home.parent / f"{home.name}.log", "w")
    return subprocess.Popen(args, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)


def wait_info(home: Path, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            return json.loads((home / "node.json").read_text())
        except (OSError, ValueError):
            time.sleep(0.1)
    sys.exit(f"{home} did not start; see {home.parent / (home.name + '.log')}")


def decision_benchmark() -> float:
    from scheduler.ranking import Candidate, JobShape, rank_candidates

    rng = random.Random(1)
    candidates = [Candidate(peer_id=f"peer{i:05d}", tokens_per_s=rng.uniform(5, 200), n_ctx=4096,
                            queued=rng.randrange(4), running=rng.randrange(2), capacity=9,
                            rtt_s=rng.uniform(0.001, 0.1), reputation=rng.random()) for i in range(10_000)]
    shape = JobShape(prompt_tokens=50, max_tokens=64)
    times = []
    for _ in range(30):
        started = time.perf_counter()
        rank_candidates(shape, candidates, rng=rng, reputation_floor=0.1)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=20)
    parser.add_argument("--jobs", type=int, default=500)
    parser.add_argument("--tokens", type=int, default=16)
    parser.add_argument("--gateways", type=int, default=4)
    parser.add_argument("--advert-interval", type=int, default=5,
                        help="seconds between adverts (2 is the default of a node; 20 nodes on 2 cores want 5)")
    parser.add_argument("--speeds", default="5,10,20", help="simulated tokens/s, cycled over the nodes")
    args = parser.parse_args()

    import trio

    from inferad import control
    from inferad.client import NodeClient, model_ref, new_job
    from inferad.home import Home

    cycle = [float(x) for x in args.speeds.split(",")]
    speeds = [cycle[i % len(cycle)] for i in range(args.nodes)]
    ideal = sum(speeds)
    print(f"{args.nodes} sim nodes (speeds {dict(Counter(speeds))} tok/s, ideal {ideal:.0f} tok/s), "
          f"{args.jobs} jobs of {args.tokens} tokens via {args.gateways} gateways", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        homes = [Path(tmp) / f"n{i:02d}" for i in range(args.nodes)]
        procs = [start(homes[0], speeds[0], None, args.advert_interval)]
        try:
            first = wait_info(homes[0])
            procs += [start(h, s, first["addrs"][0], args.advert_interval)
                      for h, s in zip(homes[1:], speeds[1:], strict=True)]
            infos = [first] + [wait_info(h) for h in homes[1:]]
            all_up = time.monotonic()
            print(f"all {args.nodes} nodes started", flush=True)
            ids = {i["peer_id"] for i in infos}
            speed_of = {i["peer_id"]: s for i, s in zip(infos, speeds, strict=True)}

            async def converge() -> float:
                pending = set(range(args.nodes))
                while pending and time.monotonic() - all_up < 120:
                    for i in list(pending):
                        peers = await control.ask(homes[i] / "control.sock", "peers")
                        if {p["peer_id"] for p in peers} == ids:
                            pending.discard(i)
                    await trio.sleep(0.2)
                return time.monotonic() - all_up

            convergence = trio.run(converge)
            if convergence >= 120:
                sys.exit("adverts did not converge within 120 s")
            print(f"advert convergence: {convergence:.1f} s after the last node started (goal < 5 s)", flush=True)

            client = Home(Path(tmp) / "client")
            client.ensure()
            ref = model_ref("sim")
            gateways = [infos[i * args.nodes // args.gateways] for i in range(args.gateways)]
            latencies: list[float] = []
            served: Counter[str] = Counter()
            failures: Counter[str] = Counter()

            async def run_jobs() -> float:
                in_flight = trio.CapacityLimiter(int(args.nodes * 2))
                async with NodeClient.connect(gateways[0]["addrs"][0], client.client_key) as g0, \
                        NodeClient.connect(gateways[1 % len(gateways)]["addrs"][0], client.client_key) as g1, \
                        NodeClient.connect(gateways[2 % len(gateways)]["addrs"][0], client.client_key) as g2, \
                        NodeClient.connect(gateways[3 % len(gateways)]["addrs"][0], client.client_key) as g3:
                    clients = [g0, g1, g2, g3][: args.gateways]

                    async def one(i: int) -> None:
                        async with in_flight:
                            job = new_job(ref, client.eth_address, prompt=f"job {i}", max_tokens=args.tokens)
                            started = time.perf_counter()
                            try:
                                done = await clients[i % len(clients)].submit(job, timeout=120)
                            except Exception as exc:
                                failures[type(exc).__name__ + ": " + str(exc)[:80]] += 1
                                return
                            latencies.append(time.perf_counter() - started)
                            served[done.result.worker] += len(done.result.output_tokens)

                    started = time.perf_counter()
                    async with trio.open_nursery() as nursery:
                        for i in range(args.jobs):
                            nursery.start_soon(one, i)
                    return time.perf_counter() - started

            elapsed = trio.run(run_jobs)
            tokens = sum(served.values())
            throughput = tokens / elapsed
            load = [served[p] / speed_of[p] for p in ids]
            jain = sum(load) ** 2 / (len(load) * sum(x * x for x in load))
            latencies.sort()
            p99 = latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))]
            print(f"jobs: {len(latencies)} ok, {sum(failures.values())} failed {dict(failures) or ''}")
            print(f"throughput: {throughput:.0f} tok/s of an ideal {ideal:.0f} = {throughput / ideal:.2f} "
                  f"(goal >= 0.85); {elapsed:.1f} s for {tokens} tokens")
            print(f"latency: p50 {statistics.median(latencies):.2f} s, p99 {p99:.2f} s "
                  f"(one job alone: {args.tokens / max(speeds):.2f}-{args.tokens / min(speeds):.2f} s)")
            print(f"Jain fairness of load / speed over {len(ids)} workers: {jain:.3f}")
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
    print(f"one scheduling decision over 10,000 adverts: {decision_benchmark() * 1000:.2f} ms (goal < 1 ms)")


if __name__ == "__main__":
    main()
