"""Epoch settlement over the network: reports from nodes, the oracle's loop, reward proofs.

Every node answers ``/inferad/settlement/1.0.0``: a ``report_request`` signed
by the on-chain oracle's registered key gets the signed jobs and results the
node served in the asked epochs (prompts are not for anyone else); a
``proof_request`` from anyone gets the latest Merkle proof of an account's
cumulative rewards.

The oracle (a node started with ``--oracle``) settles every epoch that ended:
it collects reports, keeps only charges it can verify from the signatures
(``chain.settlement``), never pays a job twice, submits ``settle`` and keeps
the proofs.  If the chain is down it retries, and the next settlement covers
every epoch since the last one that landed, so nothing is lost and no epoch
is settled twice (the contract refuses, and the oracle reads ``lastEpoch``
first).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import trio

from chain.errors import ChainError
from chain.settlement import SettlementError, build_settlement, verify_served_job
from p2p import wire
from p2p.streams import FramedStream, StreamClosed

log = logging.getLogger("inferad.oracle")
REPORT_PAGE_BYTES = 512 * 1024
GRACE_S = 3  # after an epoch ends, wait for jobs finishing right at its edge


def report_pages(entries: list[tuple[bytes, bytes]], offset: int) -> tuple[list[wire.ServedEntry], int]:
    """One page of a report starting at ``offset``; the next offset (0: last page)."""
    page, size, i = [], 0, offset
    while i < len(entries) and (not page or size + len(entries[i][0]) + len(entries[i][1]) < REPORT_PAGE_BYTES):
        job, result = entries[i]
        page.append(wire.ServedEntry(job=job, result=result))
        size += len(job) + len(result)
        i += 1
    return page, (i if i < len(entries) else 0)


def amount_bytes(wei: int) -> bytes:
    return wei.to_bytes(32, "big")


class Oracle:
    """The settlement loop of the node that holds the oracle's Ethereum key."""

    def __init__(self, node: Any, registry: Any) -> None:
        self.node = node
        self.registry = registry  # sending as the oracle account
        self.limiter = trio.CapacityLimiter(1)  # one sender: nonces in order

    async def run(self) -> None:
        node = self.node
        while True:
            try:
                oracle = await trio.to_thread.run_sync(self.registry.value, "oracle")
                break
            except ChainError as exc:  # the chain is down: jobs go on, settlement waits
                log.warning("oracle waiting for the chain: %s", exc)
                await trio.sleep(5)
        if oracle != self.registry.account.address:
            log.error("this node's account %s is not the contract's oracle (%s): not settling",
                      self.registry.account.address, oracle)
            return
        length = node.chain_info.epoch_seconds
        log.info("oracle: settling every %d s epoch", length)
        while True:
            ended = int(time.time()) // length - 1  # the last epoch that is over
            wait = (ended + 2) * length + GRACE_S - time.time()
            try:
                await self.settle_through(ended)
            except (ChainError, OSError) as exc:
                log.warning("settlement of epochs up to %d postponed: %s", ended, exc)
                wait = min(wait, 5)
            await trio.sleep(max(wait, 1))

    async def settle_through(self, epoch: int) -> None:
        node = self.node
        last = await trio.to_thread.run_sync(self.registry.value, "lastEpoch", limiter=self.limiter)
        if epoch <= last:
            return
        entries = await self.collect(last, epoch)
        await node.refresh_chain()
        jobs, dropped = [], []
        for job, result in entries:
            try:
                served = verify_served_job(job, result, node.chain_view.address_of_key)
            except SettlementError as exc:
                dropped.append(str(exc))
                continue
            if not await node.db(node.store.is_settled, served.job_id):
                jobs.append(served)
        await trio.to_thread.run_sync(node.chain_view.refresh, set(), {j.client for j in jobs})
        previous_record = await node.db(node.store.latest_settlement)
        previous = {a: int(v) for a, v in (previous_record or {}).get("cumulative", {}).items()}
        fee_bps = await trio.to_thread.run_sync(self.registry.value, "protocolFeeBps")
        settlement = build_settlement(epoch, jobs, previous=previous, fee_bps=fee_bps,
                                      available=node.chain_view.deposits)
        for reason in dropped + settlement.dropped:
            log.warning("epoch %d: charge dropped: %s", epoch, reason)
        receipt = await trio.to_thread.run_sync(
            lambda: self.registry.settle(epoch, settlement.tree.root, settlement.rewards_added,
                                         settlement.charges, {}), limiter=self.limiter)
        record = {
            "epoch": epoch, "after": last, "root": settlement.tree.root,
            "cumulative": {a: str(v) for a, v in settlement.cumulative.items()},
            "proofs": {a: list(p) for a, p in settlement.tree.proofs.items()},
            "charges": {c: str(v) for c, v in settlement.charges.items()},
            "jobs": len(settlement.jobs), "tx": receipt["transactionHash"].hex(),
        }
        await node.db(node.store.save_settlement, epoch, record, [j.job_id for j in settlement.jobs])
        log.info("settled", extra={"fields": {"epochs": f"{last + 1}-{epoch}", "jobs": len(settlement.jobs),
                                              "charged_wei": settlement.income,
                                              "rewards_wei": settlement.rewards_added,
                                              "dropped": len(dropped) + len(settlement.dropped),
                                              "gas": receipt["gasUsed"]}})

    async def collect(self, after: int, upto: int) -> list[tuple[bytes, bytes]]:
        """Every fresh peer's report (and our own) for epochs (after, upto]."""
        node = self.node
        entries = list(await node.db(node.store.served_between, after, upto))
        for entry in node.peers.fresh(time.monotonic()):
            if entry.peer_id == node.peer_id:
                continue
            try:
                with trio.fail_after(30):
                    entries += await self.ask_report(entry.peer_id, after, upto)
            except Exception as exc:  # an unreachable or slow peer is paid at the next settlement
                log.warning("no report from %s: %s", entry.peer_id, exc or type(exc).__name__)
        return entries

    async def ask_report(self, peer_id: str, after: int, upto: int) -> list[tuple[bytes, bytes]]:
        out: list[tuple[bytes, bytes]] = []
        offset = 0
        while True:
            envelope = await self.node.ask_peer(peer_id, wire.ReportRequest(after=after, upto=upto, offset=offset))
            if envelope.type != "report" or envelope.signer_peer_id != peer_id:
                raise wire.WireError(f"expected {peer_id}'s signed report, got a {envelope.type}")
            out += [(e.job, e.result) for e in envelope.message.entries]
            offset = envelope.message.next_offset
            if not offset:
                return out


async def answer(node: Any, envelope: wire.Envelope, framed: FramedStream) -> None:
    """Serve one settlement request (report for the oracle, proof for anyone)."""
    from inferad.admission import JobRejected

    request = envelope.message
    if envelope.type == "proof_request":
        record = await node.db(node.store.latest_settlement)
        if record is None or request.account not in record["cumulative"]:
            raise JobRejected("no_rewards", f"no settled rewards for {request.account} here")
        proof = wire.RewardProof(account=request.account, epoch=record["epoch"], root=record["root"],
                                 cumulative=amount_bytes(int(record["cumulative"][request.account])),
                                 proof=tuple(record["proofs"][request.account]))
        await framed.send(wire.sign(proof, node.key))
        return
    view = node.chain_view
    if view is None or view.oracle_key is None or envelope.signer != view.oracle_key:
        raise JobRejected("forbidden", "reports are for the oracle registered on chain")
    entries = await node.db(node.store.served_between, request.after, request.upto)
    page, next_offset = report_pages(entries, request.offset)
    report = wire.Report(after=request.after, upto=request.upto, entries=tuple(page), next_offset=next_offset)
    await framed.send(wire.sign(report, node.key))


async def fetch_proof(node: Any, account: str) -> dict:
    """The latest reward proof of ``account``, from our own store if we are the oracle, else from it."""
    view = node.chain_view
    if view is None or view.oracle_key is None:
        raise ChainError("no chain, or the oracle has no node key registered on chain")
    oracle_peer = wire.peer_id_from_public_key(view.oracle_key)
    try:
        if oracle_peer == node.peer_id:
            record = await node.db(node.store.latest_settlement)
            if record is None or account not in record["cumulative"]:
                raise ChainError(f"no settled rewards for {account} yet")
            return {"epoch": record["epoch"], "cumulative": int(record["cumulative"][account]),
                    "proof": [p.hex() for p in record["proofs"][account]]}
        envelope = await node.ask_peer(oracle_peer, wire.ProofRequest(account=account))
    except StreamClosed as exc:
        raise ChainError(f"the oracle {oracle_peer} did not answer: {exc}") from None
    if envelope.type == "error":
        raise ChainError(f"the oracle says: {envelope.message.message}")
    if envelope.type != "proof" or envelope.signer != view.oracle_key:
        raise ChainError("the oracle's answer is not a signed proof")
    proof = envelope.message
    return {"epoch": proof.epoch, "cumulative": int.from_bytes(proof.cumulative, "big"),
            "proof": [p.hex() for p in proof.proof]}
