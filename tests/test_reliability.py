"""Chaos on a devnet (the reliability suite): SIGKILL a worker, a gateway and the oracle mid-run.

``INFERAD_RELIABILITY_JOBS`` jobs (16 by default; ``make reliability`` runs
200) go through two gateways, two at a time, while a worker, a gateway and
the oracle (which is also a gateway) are each killed with SIGKILL at a random
moment and restarted.  At the end:

- every job a client got a signed result for is in its gateway's LevelDB,
  with that very result (acknowledged results survive kill -9);
- no job is charged twice: the client's deposit fell by exactly the sum of
  the charges of the distinct jobs the oracle settled;
- every node claims exactly what the settled jobs it ran earned (their
  charges less the protocol fee), with the proof the restarted oracle serves;
- the contract's books balance to the wei (ETH held = stakes + deposits +
  unclaimed rewards + fees).
"""

import json
import os
import random
import re
import signal
import time

import pytest
import trio

from chain.devnet import ANVIL
from inferad.client import NodeClient, model_ref, new_job
from inferad.devnet import Devnet
from inferad.home import Home
from inferad.store import Store
from p2p import wire
from tests.conftest import devnet_bug_lines, run_cli

pytestmark = [pytest.mark.integration, pytest.mark.model,
              pytest.mark.skipif(not ANVIL.exists(), reason="needs contracts/node_modules (make install)")]
JOBS = int(os.environ.get("INFERAD_RELIABILITY_JOBS", "16"))
PRICE = 1000
EPOCH_S = 10
TTL_S = 12
WINDOW_S = 20  # attestation_window: a drawn job is paid, or dropped, at the first settlement after it
FEE_BPS = 500  # the devnet's protocol fee (chain.devnet.deploy)


@pytest.fixture
def network(tmp_path):
    net = Devnet(tmp_path / "dev", nodes=4, epoch_seconds=EPOCH_S, say=lambda line: None,
                 config={"attestation_window": WINDOW_S, "verify_timeout": 20, "first_token_timeout": 30,
                         "n_ctx": 1024})  # 4 nodes, restarted often: the default 32k window doubles RSS and load time
    try:
        net.up()
        yield net
    finally:
        net.down()
    assert not devnet_bug_lines(net.directory), f"node logs show a bug: {devnet_bug_lines(net.directory)}"


def test_killed_workers_gateways_and_oracle_lose_no_acknowledged_job_and_charge_none_twice(network, tmp_path):
    net = network
    chain_json = net.directory / "chain.json"
    client = Home(net.home("client"))
    gateways = ["node1", "node2"]  # node1 is also the oracle
    addrs = {name: json.loads((net.home(name) / "node.json").read_text())["addrs"][0] for name in gateways}
    rng = random.Random(7)
    kills = {rng.randrange(2, JOBS - 4): victim for victim in ("node3", "node2", "node1")}
    acked: dict[str, tuple[str, str, int]] = {}  # job id -> (gateway, result hash, tokens)
    last_expiry = [0.0]  # when the last job made expires (s since the epoch)
    failures: list[str] = []
    model = model_ref("gemma-3-270m")

    async def one_job(i: int) -> None:
        """Like a real client: the same signed job, to the other gateway when one fails, until it expires."""
        job = new_job(model, client.eth_address, prompt=f"Reliability job {i}:", max_tokens=4, ttl_s=TTL_S,
                      max_price=PRICE)
        last_expiry[0] = max(last_expiry[0], job.expires_at / 1000)
        for attempt in range(6):
            gateway = gateways[(i + attempt) % 2]
            try:
                with trio.fail_after(30):
                    async with NodeClient.connect(addrs[gateway], client.client_key) as node:
                        done = await node.submit(job)
            except Exception as exc:  # the gateway was killed, or is restarting
                failures.append(f"{gateway}: {type(exc).__name__}: {exc}"[:200])
                await trio.sleep(1.5)
                continue
            acked[done.job_id] = (gateway, done.result_hash, len(done.result.output_tokens))
            return

    async def run() -> None:
        two_at_a_time = trio.Semaphore(2)

        async def job(i: int) -> None:
            try:
                await one_job(i)
            finally:
                two_at_a_time.release()

        async with trio.open_nursery() as nursery:
            for i in range(JOBS):
                if i in kills:
                    await kill_and_restart(kills[i], nursery)
                await two_at_a_time.acquire()
                nursery.start_soon(job, i)

    async def kill_and_restart(name: str, nursery) -> None:
        net.running[name].send_signal(signal.SIGKILL)
        net.running[name].wait()

        async def restart():
            await trio.sleep(rng.uniform(1, 4))
            info = await trio.to_thread.run_sync(lambda: net.start_node(
                name, chain_json, first=name == "node1",
                bootstrap=None if name == "node1" else addrs["node1"]))
            if name in addrs:
                addrs[name] = info["addrs"][0]

        nursery.start_soon(restart)

    deposit_before = chain_status(client.path, chain_json)["deposit_wei"]
    trio.run(run)
    assert len(acked) >= JOBS * 3 // 4, f"only {len(acked)} of {JOBS} jobs acknowledged: {failures}"

    # Every acknowledged result is in its gateway's database, byte for byte the one the client got.
    for job_id, (gateway, result_hash, _) in acked.items():
        record = json.loads(run_cli("jobs", job_id, "--json", home=net.home(gateway), check=True).stdout)
        assert record and record[0]["status"] == "done" and record[0]["result_hash"] == result_hash, job_id

    # Every job's fate is sealed once its verification window has closed (its beacon is the first
    # block after expiry) and an epoch that ended after that has been settled.
    sealed_epoch = int((last_expiry[0] + 1 + WINDOW_S) // EPOCH_S)
    deadline = time.monotonic() + 120
    while chain_status(client.path, chain_json)["last_settled_epoch"] < sealed_epoch:
        assert time.monotonic() < deadline, f"epoch {sealed_epoch} not settled within 120 s"
        time.sleep(2)

    # Every node claims its rewards, with the proof the (restarted) oracle serves.
    claimed = {name: claim(net.home(name), chain_json) for name in net.names}
    net.down()
    settled, charged, earned = settled_books(net)
    deposit_after = chain_status(client.path, chain_json, anvil_dir=net.directory)["deposit_wei"]
    assert deposit_before - deposit_after == charged, "a job was charged twice, or a charge is unaccounted for"
    assert set(settled) & set(acked), "nothing acknowledged was ever paid"
    assert claimed == {name: earned.get(peer_id(net, name), 0) for name in net.names}


def claim(home, chain_json) -> int:
    """``inferad chain claim`` for ``home``; the wei it claimed (0: it had earned nothing)."""
    proc = run_cli("chain", "claim", "--chain", str(chain_json), home=home)
    if proc.returncode != 0 and "no settled rewards" in proc.stderr:
        return 0
    assert proc.returncode == 0, proc.stderr
    return int(re.match(r"claimed (\d+) wei", proc.stdout).group(1))


def peer_id(net, name) -> str:
    return wire.peer_id_from_public_key(bytes(Home(net.home(name)).node_key.verify_key))


def chain_status(home, chain_json, anvil_dir=None) -> dict:
    if anvil_dir is not None:  # the devnet is down: read its saved chain state with a fresh anvil
        from chain.devnet import Anvil, ChainInfo

        info = ChainInfo.load(chain_json)
        anvil = Anvil(state=anvil_dir / "anvil-state.json", port=int(info.rpc_url.rsplit(":", 1)[1]))
        try:
            status = chain_status(home, chain_json)
            assert_books_balance(info)
            return status
        finally:
            anvil.stop()
    return json.loads(run_cli("chain", "status", "--chain", str(chain_json), "--json", home=home, check=True).stdout)


def assert_books_balance(info) -> None:
    from chain.contract import Registry

    registry = Registry(info.web3(), info.contract)
    held = registry.w3.eth.get_balance(info.contract)
    books = (registry.value("totalStaked") + registry.value("totalDeposits") + registry.value("totalRewards")
             - registry.value("totalClaimed") + registry.value("feesAccrued"))
    assert held == books, f"contract holds {held} wei, its books say {books}"


def settled_books(net) -> tuple[list[str], int, dict[str, int]]:
    """The jobs the oracle settled, the sum of their charges and what each worker (peer id) earned
    from them (charge less the protocol fee), from the signed jobs and results."""
    with Store(Home(net.home("node1")).db_path) as oracle:
        settled = oracle.settled_jobs()
    pairs = {}
    for name in net.names:
        with Store(Home(net.home(name)).db_path) as store:
            for record in store.jobs():
                if record.result is not None:
                    pairs[record.job_id] = (record.job, record.result)
    charged, earned = 0, {}
    for job_id in settled:
        job, result = (wire.decode(x).message for x in pairs[job_id])
        charge = (len(result.output_tokens) - result.continued_from) * job.max_price
        charged += charge
        earned[result.worker] = earned.get(result.worker, 0) + charge - charge * FEE_BPS // 10_000
    return settled, charged, earned
