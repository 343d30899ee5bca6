"""Gas of settling epochs on a real chain (anvil), per job.

    .venv/bin/python benchmarks/settlement_gas.py

For 10, 100, 1,000 and 10,000 jobs per epoch (20 workers, 5 clients): the
gas of `settle` and per job, and seconds from epoch end to the settlement
receipt (building the reward tree included); then the gas of one `claim`,
and per job when a worker claims once every 10 epochs at 1,000 jobs/epoch.
Charges are aggregated per client and rewards committed as one Merkle root,
so the cost grows with clients, not jobs.  Goal: <= 100 gas/job at 1,000.
"""

from __future__ import annotations

import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

WORKERS, CLIENTS = 20, 5
SIZES = (10, 100, 1_000, 10_000)
ETH = 10**18


def main() -> None:
    from chain.contract import Registry
    from chain.devnet import DEV_KEY, Anvil, deploy, fund_account
    from chain.ethereum import Account
    from chain.settlement import ServedJob, build_settlement

    rng = random.Random(7)
    anvil = Anvil()
    try:
        info = deploy(anvil.rpc_url)
        w3 = info.web3()
        oracle = Registry(w3, info.contract, Account.from_key(DEV_KEY))
        clients = [Account.create() for _ in range(CLIENTS)]
        workers = [Account.create() for _ in range(WORKERS)]
        for client in clients:
            fund_account(w3, client.address, 20 * ETH)
            oracle.using(client).deposit(10 * ETH)
        fund_account(w3, workers[0].address, ETH)
        fee_bps = oracle.value("protocolFeeBps")
        cumulative: dict[str, int] = {}
        print(f"{WORKERS} workers, {CLIENTS} clients, anvil {info.rpc_url}")
        print(f"{'jobs/epoch':>10} {'settle gas':>11} {'gas/job':>9} {'epoch end -> settled':>21}")
        settlements = {}
        for epoch, size in enumerate(SIZES, start=1):
            jobs = [ServedJob(job_id=f"{epoch:08x}{i:056x}", client=rng.choice(clients).address,
                              worker=rng.choice(workers).address, tokens=rng.randint(16, 256), price=1000)
                    for i in range(size)]
            started = time.perf_counter()
            settlement = build_settlement(epoch, jobs, previous=cumulative, fee_bps=fee_bps,
                                          available={c.address: 10 * ETH for c in clients})
            receipt = oracle.settle(epoch, settlement.tree.root, settlement.rewards_added, settlement.charges, {})
            seconds = time.perf_counter() - started
            cumulative = settlement.cumulative
            settlements[size] = settlement
            print(f"{size:>10} {receipt['gasUsed']:>11} {receipt['gasUsed'] / size:>9.1f} {seconds:>19.2f} s")
        worker = workers[0]
        last = settlements[SIZES[-1]]
        receipt = oracle.using(worker).claim(last.cumulative[worker.address], last.tree.proofs[worker.address])
        per_worker_jobs = 1_000 / WORKERS * 10
        print(f"claim: {receipt['gasUsed']} gas (proof of {len(last.tree.proofs[worker.address])} hashes); "
              f"claiming once per 10 epochs at 1,000 jobs/epoch: {receipt['gasUsed'] / per_worker_jobs:.1f} gas/job")
    finally:
        anvil.stop()


if __name__ == "__main__":
    main()
