"""The daemon: the one place where store, engines, host, mesh and protocols meet.

Roles are not separate programs: every node is a gateway (``/inferad/submit``
from clients, or ``submit`` on its control socket from clients on the same
machine; it routes the job), a worker (``/inferad/exec`` from gateways,
or its own jobs locally) and a member of the mesh (adverts on gossipsub,
provider records in the DHT).

A :class:`Node` owns one trio nursery for its own tasks (adverts, membership,
DHT, control socket, signals); py-libp2p runs stream handlers in the host's
nursery, every one of them (py-libp2p's own pubsub and DHT handlers too)
wrapped by :func:`p2p.host.guarded` so no exception escapes into the host.
Blocking work goes through ``trio.to_thread`` with limiters sized on purpose:
one per engine (llama.cpp is single-threaded per context), four for LevelDB.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import trio

from inferad import __version__, control
from inferad.admission import (
    JobRejected,
    check_context,
    check_delivery,
    check_model,
    check_served,
    check_signing,
    check_timing,
)
from inferad.config import Config
from inferad.engine import Engine, EngineError, check_vocabulary
from inferad.gateway import Admitted, AttemptFailed, ClientGone, Routed, Router
from inferad.hardware import probe
from inferad.home import Home
from inferad.metrics import Metrics
from inferad.models import ModelError, check_label, name_models, naming_note, resolve
from inferad.sim import SimEngine
from inferad.speed import tokens_per_second
from inferad.store import Store
from inferad.worker import Worker
from p2p import wire
from p2p.host import PROTOCOL_SUBMIT, guard_all_handlers, guarded, make_host, peer_info, running
from p2p.mesh import (
    PROTOCOL_EXEC,
    PROTOCOL_SETTLEMENT,
    PROTOCOL_VERIFY,
    TOPIC_ADVERTS,
    TOPIC_ATTESTATIONS,
    GossipSettings,
    running_mesh,
)
from p2p.streams import FramedStream, StreamClosed
from scheduler.peers import PeerTable
from scheduler.ranking import Candidate, JobShape, estimate_prompt_tokens

log = logging.getLogger("inferad.node")
SHUTDOWN_GRACE_S = 10
REPROVIDE_S = 60
MEMBERSHIP_S = 3
MAX_DIALED_PEERS = 8


class NodeError(Exception):
    """The node cannot start; the message says what to change."""


@dataclass
class Served:
    engine: Any  # Engine | SimEngine
    worker: Worker
    tokens_per_s: float


class Node:
    def __init__(self, home: Home, config: Config, *, engine: str = "llama", sim_tokens_per_s: float = 50.0,
                 chain: Any = None, oracle: bool = False) -> None:
        self.home = home
        self.config = config
        self.engine_kind = engine
        self.sim_tokens_per_s = sim_tokens_per_s
        self.key = home.node_key
        self.eth_address = home.eth_address
        self.peer_id = wire.peer_id_from_public_key(bytes(self.key.verify_key))
        self.served: dict[str, Served] = {}
        self.store: Store | None = None
        self.peers = PeerTable()
        self.chain_info = chain  # chain.devnet.ChainInfo, or None: no chain, no gating
        self.chain_view = None
        self.run_oracle = oracle
        self._pending_charges: dict[str, int] = {}  # client -> worst-case wei of jobs not yet settled
        self._clients_seen: set[str] = set()
        self.verification = None  # inferad.verification.Verification, with a chain
        self.router = Router(self.peer_id, self.peers, max_attempts=config.max_attempts,
                             is_staked=self._advert_is_staked, reputation_of=self.reputation,
                             reputation_floor=config.reputation_floor)
        self.addrs: list[str] = []
        self._db_limiter = trio.CapacityLimiter(4)
        self.draining = False
        self.active_jobs = 0
        self.nursery: trio.Nursery | None = None  # the node's own, for tasks that outlive a request
        self._advert_seq = 0
        self._load_changed = trio.Event()
        self.adverts_rejected = 0
        self.started_at = time.time()
        self.metrics = Metrics(self)
        self.api_url: str | None = None
        self.control_commands: dict = {}

    # ------------------------------------------------------------------ lifecycle

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Serve until SIGINT/SIGTERM (or cancellation); always cleans up."""
        from libp2p.custom_types import TProtocol

        self.store = await trio.to_thread.run_sync(Store, self.home.db_path)
        try:
            interrupted = await trio.to_thread.run_sync(self.store.mark_interrupted)
            if interrupted:
                log.warning("%d job(s) were interrupted by the previous shutdown", interrupted)
            self.hardware = await trio.to_thread.run_sync(probe)
            await self._load_models()
            if self.chain_info is not None:
                await self._connect_chain()
                from inferad.verification import Verification

                self.verification = Verification(self)
                await self.verification.load()
            host = make_host(self.key)
            host.set_stream_handler(TProtocol(PROTOCOL_SUBMIT), guarded("submit", self._serve_submit))
            host.set_stream_handler(TProtocol(PROTOCOL_EXEC), guarded("exec", self._serve_exec))
            host.set_stream_handler(TProtocol(PROTOCOL_SETTLEMENT), guarded("settlement", self._serve_settlement))
            host.set_stream_handler(TProtocol(PROTOCOL_VERIFY), guarded("verify", self._serve_verify))
            listen = [_multiaddr(a) for a in self.config.listen]
            try:
                async with (running(host, listen),
                            running_mesh(host, self._gossip_settings(), app_score=self._app_score) as (pubsub, dht)):
                    self.host, self.pubsub, self.dht = host, pubsub, dht
                    guard_all_handlers(host)
                    self.addrs = _dialable([str(a) for a in host.get_addrs()])
                    await self._serve_mesh(task_status)
            except OSError as exc:
                raise NodeError(f"cannot listen on {' '.join(self.config.listen)}: {exc.strerror or exc}") \
                    from None
        finally:
            self.home.node_info_path.unlink(missing_ok=True)
            for served in self.served.values():
                served.engine.close()
            self.store.close()
            log.info("node stopped")

    def _gossip_settings(self) -> GossipSettings:
        settings = GossipSettings(ip_colocation_limit=self.config.ip_colocation_limit)
        if not settings.ip_colocation_protection:
            log.warning("gossip IP-colocation (eclipse) protection is off (gossip.ip_colocation_limit = 0): "
                        "right for a network on one machine only; remove the setting for the internet")
        return settings

    async def _serve_mesh(self, task_status) -> None:
        self.pubsub.set_topic_validator(TOPIC_ADVERTS, self._validate_advert, is_async_validator=False)
        adverts = await self.pubsub.subscribe(TOPIC_ADVERTS)
        self.pubsub.set_topic_validator(TOPIC_ATTESTATIONS, self._validate_attestation, is_async_validator=True)
        attestations = await self.pubsub.subscribe(TOPIC_ATTESTATIONS)
        async with trio.open_nursery() as nursery:
            self.nursery = nursery
            nursery.start_soon(self._receive_attestations, attestations)
            if self.verification is not None:
                await self.verification.resume(nursery)
            self.control_commands = self._control_commands()
            await nursery.start(partial(control.serve, self.home.path / "control.sock", self.control_commands,
                                        {"submit": self._control_submit}, max_frame=self.config.max_frame))
            if self.config.api_port >= 0:
                await self._start_api(nursery)
            nursery.start_soon(self._receive_adverts, adverts)
            nursery.start_soon(self._publish_adverts)
            nursery.start_soon(self._maintain_membership)
            nursery.start_soon(self._provide_models)
            if self.chain_view is not None:
                nursery.start_soon(self._watch_chain)
            if self.run_oracle:
                nursery.start_soon(self._oracle().run)
            self._write_node_info()
            log.info("node %s listening on %s", self.peer_id, " ".join(self.addrs))
            task_status.started(self)
            await self._until_signalled()
            nursery.cancel_scope.cancel()

    async def _start_api(self, nursery: trio.Nursery) -> None:
        from inferad.api import Api, serve

        port = self.config.api_port
        try:
            self.api_url = await nursery.start(serve, Api(self, max_price=self.config.api_max_price),
                                               self.config.api_host, port)
        except OSError as exc:
            raise NodeError(f"cannot serve the HTTP API on {self.config.api_host}:{port}: "
                            f"{exc.strerror or exc} (is another node or program using that port? "
                            f"choose another with --api-port)") from None
        log.info("OpenAI-compatible API on %s/v1 (keys: `inferad apikey create --home %s`)", self.api_url,
                 self.home.path)

    async def _load_models(self) -> None:
        for spec in self.config.models:
            try:
                if self.engine_kind == "sim":
                    engine = SimEngine(spec, tokens_per_s=self.sim_tokens_per_s, n_ctx=self.config.n_ctx)
                else:
                    model = await trio.to_thread.run_sync(resolve, spec)
                    check_label(model.name, model.sha256)  # holds for resolve's labels (models.file_label)
                    if note := naming_note(model):
                        log.warning("%s", note)
                    log.info("loading %s with llama.cpp (%s)…", model.name, model.path)
                    engine = await trio.to_thread.run_sync(
                        lambda m=model: Engine(m, n_ctx=self.config.n_ctx, n_threads=self.config.n_threads,
                                               n_gpu_layers=self.config.n_gpu_layers))
                speed = await trio.to_thread.run_sync(
                    lambda e=engine: tokens_per_second(e, self.hardware, threads=self.config.n_threads))
            except (ModelError, EngineError, ValueError) as exc:
                raise NodeError(f"cannot serve model {spec}: {exc}") from None
            worker = Worker(engine, queue_size=self.config.queue_size, batch_ms=self.config.stream_batch_ms)
            self.served[engine.ref.sha256] = Served(engine, worker, speed)

    async def _until_signalled(self) -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for signum in signals:
                log.info("%s received: refusing new jobs, finishing %d running",
                         signal.Signals(signum).name, self.active_jobs)
                self.draining = True
                with trio.move_on_after(SHUTDOWN_GRACE_S):
                    while self.active_jobs:
                        await trio.sleep(0.05)
                return

    def _write_node_info(self) -> None:
        info = {
            "peer_id": self.peer_id,
            "addrs": self.addrs,
            "pid": os.getpid(),
            "control": str(self.home.path / "control.sock"),
            "engine": self.engine_kind,
            "models": [{"name": s.engine.ref.name, "sha256": sha} for sha, s in self.served.items()],
            "version": __version__,
            "started_at": int(self.started_at),
            "api": self.api_url,
        }
        tmp = self.home.node_info_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(info, indent=2) + "\n")
        os.replace(tmp, self.home.node_info_path)

    # ------------------------------------------------------------------ chain

    def _oracle(self):
        from chain.contract import Registry
        from inferad.home import HomeError
        from inferad.oracle import Oracle

        if self.chain_view is None:
            raise NodeError("--oracle needs --chain")
        try:
            account = self.home.eth_account()
        except HomeError as exc:
            raise NodeError(str(exc)) from None
        return Oracle(self, Registry(self.chain_view.registry.w3, self.chain_info.contract, account))

    def current_epoch(self) -> int:
        return int(time.time()) // self.chain_info.epoch_seconds if self.chain_info else 0

    async def _record_served(self, job_id: str) -> None:
        """Index a job this node ran under the current epoch, for the oracle's report."""
        if self.chain_info is not None:
            await self.db(self.store.record_served, job_id, self.current_epoch())

    async def ask_peer(self, peer_id: str, message: Any) -> wire.Envelope:
        """One signed request on /inferad/settlement and its one answer (error frames included)."""
        return wire.decode(await self.ask_peer_raw(peer_id, wire.sign(message, self.key)),
                           max_size=self.config.max_frame)

    async def ask_peer_raw(self, peer_id: str, request: bytes, protocol: str = PROTOCOL_SETTLEMENT, *,
                           timeout: float = 30) -> bytes:
        """Send one signed request on ``protocol``; the one frame that answers it."""
        from libp2p.custom_types import TProtocol
        from libp2p.peer.id import ID

        entry = self.peers.get(peer_id)
        with trio.fail_after(self.config.connect_timeout):
            if entry is not None:
                await self.host.connect(peer_info(entry.advert.addrs[0]))
            stream = await self.host.new_stream(ID.from_base58(peer_id), [TProtocol(protocol)])
        framed = FramedStream(stream, self.config.max_frame)
        try:
            await framed.send(request)
            with trio.fail_after(timeout):
                return await framed.receive()
        finally:
            await framed.close()

    async def _serve_settlement(self, stream: Any) -> None:
        from inferad.oracle import answer

        await self._handle_request(stream, ("report_request", "proof_request", "evidence_request",
                                            "attestations_request"),
                                   lambda envelope, data, framed: answer(self, envelope, framed))

    async def _connect_chain(self) -> None:
        from chain.contract import Registry
        from chain.errors import ChainError
        from chain.view import ChainView

        try:
            w3 = await trio.to_thread.run_sync(self.chain_info.web3)
            self.chain_view = ChainView(Registry(w3, self.chain_info.contract))
            await self.refresh_chain()
        except ChainError as exc:
            raise NodeError(f"chain: {exc}") from None
        if not self.chain_view.is_staked(self.eth_address, bytes(self.key.verify_key)) and self.served:
            log.warning("this node is not staked on chain: peers will not route jobs to it "
                        "(`inferad chain stake --home %s --chain … AMOUNT`)", self.home.path)

    async def _chain_status(self) -> dict:
        """Stake and this epoch's gross earnings (charges of the jobs this node ran, before fee and checks)."""
        epoch = self.current_epoch()
        earned = 0
        for job, result in await self.db(self.store.served_between, epoch - 1, epoch):
            request, outcome = wire.decode(job).message, wire.decode(result).message
            earned += (len(outcome.output_tokens) - outcome.continued_from) * request.max_price
        bound = self.chain_view.stakes.get(self.eth_address)
        return {"eth": self.eth_address, "staked": self.is_staked_self(), "stake_wei": bound[1] if bound else 0,
                "epoch": epoch, "epoch_seconds": self.chain_info.epoch_seconds, "earned_this_epoch_wei": earned,
                "last_settled_epoch": self.chain_view.last_epoch}

    async def refresh_chain(self) -> None:
        nodes = {e.advert.eth for e in self.peers.fresh(time.monotonic())} | {self.eth_address}
        await trio.to_thread.run_sync(self.chain_view.refresh, nodes, set(self._clients_seen))

    async def _watch_chain(self) -> None:
        while True:
            await trio.sleep(3)
            settled = self.chain_view.last_epoch
            await self.refresh_chain()
            if self.chain_view.last_epoch != settled:
                self._pending_charges.clear()  # settled charges now show in the deposits

    def _advert_is_staked(self, advert: wire.Advert) -> bool:
        if self.chain_view is None:
            return True
        return self.chain_view.is_staked(advert.eth, wire.public_key_from_peer_id(advert.peer_id))

    def is_staked_self(self) -> bool:
        return self.chain_view is None or self.chain_view.is_staked(self.eth_address, bytes(self.key.verify_key))

    def peer_is_staked(self, peer_id: str) -> bool:
        """Staked, by the peer's advert (its Ethereum address) and its key."""
        if peer_id == self.peer_id:
            return self.is_staked_self()
        entry = self.peers.get(peer_id)
        return entry is not None and self._advert_is_staked(entry.advert)

    async def _check_deposit(self, job: wire.JobRequest) -> int:
        """Refuse a job its client cannot pay for; returns the worst-case cost reserved."""
        if self.chain_view is None:
            return 0
        client = job.client_eth
        if client not in self._clients_seen:
            _check_client_eth(job)
            if not await trio.to_thread.run_sync(self.chain_view.refresh, set(), {client}):
                raise JobRejected("chain_unavailable", "the chain is unreachable, so this gateway cannot check "
                                                       "your deposit yet; retry later")
            self._clients_seen.add(client)
        worst = job.max_price * job.params.max_tokens
        pending = self._pending_charges.get(client, 0)
        available = self.chain_view.deposits.get(client, 0)
        if worst + pending > available:
            raise JobRejected("insufficient_deposit",
                              f"insufficient deposit: client {client} has {available} wei on deposit, this job may "
                              f"cost {worst} wei and {pending} wei are pending; deposit more with "
                              f"`inferad chain deposit`")
        self._pending_charges[client] = pending + worst
        return worst

    def _release_charge(self, client: str, amount: int) -> None:
        """A reserved job cost that will not be charged (the job failed or was a replay)."""
        if amount:
            self._pending_charges[client] = max(self._pending_charges.get(client, 0) - amount, 0)

    # ------------------------------------------------------------------ verification

    def reputation(self, peer_id: str) -> float:
        return 0.5 if self.verification is None else self.verification.reputation(peer_id)

    def _app_score(self, peer: Any) -> float:
        return 0.0 if self.verification is None else self.verification.app_score(peer)

    async def _serve_verify(self, stream: Any) -> None:
        async def handle(envelope: wire.Envelope, data: bytes, framed: FramedStream) -> None:
            if self.verification is None:
                raise JobRejected("no_chain", "this node verifies only on a network with a chain")
            await self.verification.serve(envelope, data, framed)

        await self._handle_request(stream, "verify_request", handle)

    async def publish_attestation(self, data: bytes) -> None:
        try:
            await self.pubsub.publish(TOPIC_ATTESTATIONS, data)
        except Exception as exc:  # no peers on the topic yet: the verifier's answer still reached the gateway
            log.debug("attestation not gossiped: %r", exc)

    async def _validate_attestation(self, forwarder: Any, msg: Any) -> bool:
        """Gossipsub topic validator (asynchronous: the draw check reads the chain, cached per block)."""
        try:
            envelope = wire.decode(msg.data, max_size=GossipSettings.max_message_bytes)
            if self.verification is None:
                raise wire.WireError("no chain: attestations are not checked here")
            await trio.to_thread.run_sync(self.verification.validate, envelope)
        except (wire.WireError, ValueError) as exc:
            log.debug("rejected attestation from %s: %s", forwarder, exc)
            return False
        return True

    async def _receive_attestations(self, subscription: Any) -> None:
        while True:
            msg = await subscription.get()
            try:
                envelope = wire.decode(msg.data, max_size=GossipSettings.max_message_bytes)  # validated on the way in
                await self.verification.record(msg.data, envelope)
            except Exception as exc:  # one bad attestation (or a full disk) must not stop the node
                log.warning("attestation not kept: %r", exc)

    # ------------------------------------------------------------------ adverts

    def advert(self) -> wire.Advert:
        loads = [s.worker.load for s in self.served.values()]
        self._advert_seq = max(self._advert_seq + 1, _now_ms())  # grows across restarts too
        return wire.Advert(
            peer_id=self.peer_id, addrs=tuple(self.addrs[:16]), eth=self.eth_address,
            engine="sim" if self.engine_kind == "sim" else "llama.cpp",
            models=tuple(wire.ModelOffer(sha256=sha, name=s.engine.ref.name, tokens_per_s=float(s.tokens_per_s),
                                         n_ctx=s.engine.n_ctx, n_vocab=s.engine.n_vocab)
                         for sha, s in self.served.items()),
            hardware=self.hardware,
            load=wire.Load(queued=sum(x.queued for x in loads), running=sum(x.running for x in loads),
                           capacity=sum(x.capacity for x in loads)),
            version=__version__, seq=self._advert_seq, ts=_now_ms(), interval=self.config.advert_interval,
            limits=wire.Limits(max_tokens=self.config.max_tokens, max_ttl_s=self.config.max_job_ttl,
                               clock_skew_s=self.config.clock_skew, max_frame=self.config.max_frame),
        )

    def _load_change(self) -> None:
        self._load_changed.set()

    async def _publish_adverts(self) -> None:
        while True:
            try:
                await self.pubsub.publish(TOPIC_ADVERTS, wire.sign(self.advert(), self.key))
            except Exception as exc:  # no peers yet, or a router hiccup: the next period retries
                log.debug("advert not published: %r", exc)
            # On load changes too, but at most twice per interval however busy:
            # gossip costs every node CPU, and gateways count what they send.
            spacing = self.config.advert_interval / 2
            await trio.sleep(spacing)
            self._load_changed = trio.Event()
            with trio.move_on_after(self.config.advert_interval - spacing):
                await self._load_changed.wait()

    def _validate_advert(self, forwarder: Any, msg: Any) -> bool:
        """Gossipsub topic validator: False rejects (and feeds peer scoring)."""
        try:
            envelope = wire.decode(msg.data, max_size=GossipSettings.max_message_bytes)
            advert = envelope.message
            if envelope.type != "advert":
                raise wire.WireError("not an advert")
            from libp2p.peer.id import ID

            if advert.peer_id != envelope.signer_peer_id or advert.peer_id != ID(msg.from_id).to_base58():
                raise wire.WireError("advert is not by the peer that signed and sent it")
            now = _now_ms()
            if advert.ts < now - 3 * advert.interval * 1000:
                raise wire.WireError("stale advert")
            if advert.ts > now + self.config.clock_skew * 1000:
                raise wire.WireError("advert from the future")
            for offer in advert.models:  # a catalog name on other bytes: an impostor (DESIGN §2c)
                check_label(offer.name, offer.sha256)
            if advert.eth != _checksummed(advert.eth):  # stakes are read by address; web3 takes EIP-55 only
                raise wire.WireError(f"advert's eth address {advert.eth} is not in its EIP-55 checksum form")
        except (wire.WireError, ValueError, ModelError) as exc:
            self.adverts_rejected += 1
            log.debug("rejected advert from %s: %s", forwarder, exc)
            return False
        return True

    async def _receive_adverts(self, subscription: Any) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._expire_peers)
            while True:
                msg = await subscription.get()
                try:
                    advert = wire.decode(msg.data).message  # validated on the way in
                except wire.WireError:
                    continue
                known = self.peers.get(advert.peer_id) is not None
                if self.peers.update(advert, time.monotonic()) and not known and advert.peer_id != self.peer_id:
                    log.info("peer %s joined", advert.peer_id)
                    self._load_change()  # advertise soon, so the newcomer learns of us within seconds
                    await self.db(self.store.remember_peer, advert.peer_id, list(advert.addrs))

    async def _expire_peers(self) -> None:
        while True:
            await trio.sleep(1)
            for peer_id in self.peers.expire(time.monotonic()):
                log.info("peer %s left (missed 3 adverts)", peer_id)

    # ------------------------------------------------------------------ membership and DHT

    async def _maintain_membership(self) -> None:
        """Stay connected: bootstrap nodes (retry with backoff), peers known before a restart
        until one answers, and a few advertised peers."""
        retry_at: dict[str, tuple[float, float]] = {}  # addr -> (when, delay)
        remembered = [f"{addrs[0]}" for addrs in (await self.db(self.store.remembered_peers)).values() if addrs]
        while True:
            now = time.monotonic()
            connected = {p.to_base58() for p in self.host.get_connected_peers()}
            alone = not [e for e in self.peers.fresh(now) if e.peer_id != self.peer_id]
            wanted = list(self.config.bootstrap) + (remembered if alone else [])
            for entry in self.peers.fresh(now):
                if (entry.peer_id > self.peer_id and entry.peer_id not in connected  # one side dials
                        and entry.advert.addrs and len(connected) < MAX_DIALED_PEERS):
                    wanted.append(entry.advert.addrs[0])
            for addr in wanted:
                when, delay = retry_at.get(addr, (0.0, 1.0))
                if when > now or addr.rsplit("/p2p/", 1)[-1] in connected:
                    continue
                if await self._dial(addr):
                    retry_at.pop(addr, None)
                else:
                    retry_at[addr] = (now + delay, min(delay * 2, 60.0))
            await trio.sleep(MEMBERSHIP_S)

    async def _dial(self, addr: str) -> bool:
        try:
            info = peer_info(addr)
            with trio.fail_after(self.config.connect_timeout):
                await self.host.connect(info)
            await self.dht.add_peer(info.peer_id)
            log.debug("connected to %s", addr)
            return True
        except Exception as exc:  # unreachable, refused, timed out: retried with backoff
            log.info("cannot reach %s: %s", addr, exc or type(exc).__name__)
            return False

    async def _provide_models(self) -> None:
        while True:
            for sha in self.served:
                try:
                    with trio.move_on_after(30):
                        await self.dht.provide(wire.provider_key(sha))
                except Exception as exc:
                    log.debug("provide %s failed: %r", sha[:12], exc)
            await trio.sleep(REPROVIDE_S if self.host.get_connected_peers() else MEMBERSHIP_S)

    # ------------------------------------------------------------------ gateway: /inferad/submit

    async def _serve_submit(self, stream: Any) -> None:
        await self._handle_request(stream, "job", self._route_job)

    async def _control_submit(self, framed: FramedStream) -> None:
        """``submit`` on the control socket: the same conversation as /inferad/submit, for a
        client on this machine (``inferad submit --node-home``), without a libp2p connection."""
        await self._handle_framed(framed, "job", self._route_job)

    async def _route_job(self, envelope: wire.Envelope, data: bytes, framed: FramedStream) -> None:
        async def relay(tokens: list[wire.Token]) -> None:
            try:
                await framed.send_tokens(tokens)
            except StreamClosed:
                raise ClientGone() from None

        try:
            routed = await self.route_job(envelope, data, relay)
        except ClientGone:
            return
        await framed.send(routed.data)

    async def route_job(self, envelope: wire.Envelope, data: bytes, relay) -> Routed:
        """As the job's gateway: admit, route and record a client-signed job.

        ``relay(tokens)`` gets the tokens as they come and raises ClientGone
        when the client left.  Returns once the worker-signed result is stored
        (acknowledged); raises JobRejected with a typed code otherwise.
        """
        return await self.run_admitted(await self.admit(envelope, data), relay)

    async def admit(self, envelope: wire.Envelope, data: bytes) -> Admitted:
        """Decide whether this gateway takes a job, before any token is promised to its client.

        Clock, model, prompt (tokens in the vocabulary, a chat the template can render),
        context, worker eligibility, replay and deposit: every refusal a client could fix
        is raised here as JobRejected.  An admitted job is recorded and its worst-case
        charge reserved: hand it to :meth:`run_admitted`, or to :meth:`abandon`.
        """
        job: wire.JobRequest = envelope.message
        started = time.perf_counter()
        job_id = envelope.digest
        self._check_timing(job)
        check_model(job.model)
        now = time.monotonic()
        local = self._local_candidate(job)
        candidates = self.router.candidates(job.model.sha256, now, local)
        if not candidates:
            raise JobRejected("unknown_model", f"no node in this network serves {job.model.name} "
                                               f"({job.model.sha256[:12]}…)")
        prompt_tokens = self._prompt_size(job, local is not None, [c.peer_id for c in candidates])
        plan = self.router.plan(JobShape(prompt_tokens, job.params.max_tokens), candidates, now)
        if not plan.order:
            raise JobRejected(plan.common_code() if plan.common_code() in ("context_overflow", "busy", "unstaked")
                              else "no_worker", f"no eligible worker for {job.model.name}: {plan.explain()}")
        if await self.db(self.store.has_job, job_id):
            raise JobRejected("replay", f"job {job_id[:16]}… was already submitted")
        reserved = await self._check_deposit(job)
        if not await self.db(self.store.accept_job, job_id, data, role="gateway"):
            self._release_charge(job.client_eth, reserved)
            raise JobRejected("replay", f"job {job_id[:16]}… was already submitted")
        return Admitted(envelope, data, plan, reserved, started)

    def _prompt_size(self, job: wire.JobRequest, local: bool, candidates: list[str]) -> int:
        """Prompt tokens of a job: exact with the model at hand or token ids, else an estimate."""
        if local:
            try:
                return len(self.served[job.model.sha256].engine.prompt_tokens(job))
            except EngineError as exc:
                raise JobRejected("invalid_prompt", str(exc)) from None
        if job.prompt_tokens is not None:
            vocabularies = [offer.n_vocab for entry in map(self.peers.get, candidates) if entry is not None
                            for offer in [entry.advert.offers(job.model.sha256)] if offer and offer.n_vocab]
            if vocabularies:
                try:
                    check_vocabulary(job.prompt_tokens, min(vocabularies))
                except EngineError as exc:
                    raise JobRejected("invalid_prompt", str(exc)) from None
            return len(job.prompt_tokens)
        return estimate_prompt_tokens(len(job.prompt or "") + sum(len(m.content) for m in job.messages or ()))

    async def run_admitted(self, admitted: Admitted, relay) -> Routed:
        """Route an admitted job to its workers until one delivers a signed result (see route_job)."""
        envelope, data, job_id = admitted.envelope, admitted.data, admitted.envelope.digest
        job: wire.JobRequest = envelope.message

        async def attempt(peer_id: str, prefix: list[int], relay):
            if peer_id == self.peer_id:
                signed = await self._execute(envelope, prefix, relay)
            else:
                signed = await self._attempt_remote(peer_id, data, prefix, relay)
            check_delivery(job, signed[1].message, now_ms=_now_ms())  # never deliver after expiry
            return signed

        self.active_jobs += 1
        try:
            routed = await self.router.route(job_id, admitted.plan, attempt, relay, job=job)
        except (JobRejected, ClientGone) as exc:
            await self.abandon(admitted, exc.code if isinstance(exc, JobRejected) else "client_gone")
            raise
        finally:
            self.active_jobs -= 1
        await self.db(lambda: self.store.finish_job(job_id, routed.data, workers=routed.workers))
        if routed.workers[-1]["peer"] == self.peer_id:  # this node ran (the end of) the job itself
            await self._record_served(job_id)
        if self.verification is not None:
            self.nursery.start_soon(self.verification.follow, job_id, data, routed.data)
        result: wire.JobResult = routed.envelope.message
        self._log_job(job_id, job, outcome="ok", tokens=len(result.output_tokens),
                      workers=",".join(w["peer"][-8:] for w in routed.workers))
        self.metrics.job_done("ok", len(result.output_tokens) - result.continued_from,
                              time.perf_counter() - admitted.started)
        return routed

    async def abandon(self, admitted: Admitted, code: str) -> None:
        """An admitted job that will not be (or was not) delivered: release its charge, record why."""
        job: wire.JobRequest = admitted.envelope.message
        self._release_charge(job.client_eth, admitted.reserved)
        await self.db(self.store.fail_job, admitted.envelope.digest, code)
        self._log_job(admitted.envelope.digest, job, outcome=code)
        self.metrics.job_done(code, 0, time.perf_counter() - admitted.started)

    def _local_candidate(self, job: wire.JobRequest) -> Candidate | None:
        served = self.served.get(job.model.sha256)
        if served is None:
            return None
        load = served.worker.load
        return Candidate(peer_id=self.peer_id, tokens_per_s=served.tokens_per_s, n_ctx=served.engine.n_ctx,
                         queued=load.queued, running=load.running, capacity=load.capacity, rtt_s=0.0,
                         staked=self.is_staked_self(), reputation=self.reputation(self.peer_id))

    async def _attempt_remote(self, peer_id: str, job: bytes, prefix: list[int], relay) -> tuple[bytes, wire.Envelope]:
        from libp2p.custom_types import TProtocol
        from libp2p.peer.id import ID

        entry = self.peers.get(peer_id)
        stream, error = None, None
        with trio.move_on_after(self.config.connect_timeout):
            for retry in range(3):  # a dial racing the peer's own dial to us can lose both connections
                try:
                    if entry is not None:
                        await self.host.connect(peer_info(entry.advert.addrs[0]))
                    started = time.perf_counter()
                    stream = await self.host.new_stream(ID.from_base58(peer_id), [TProtocol(PROTOCOL_EXEC)])
                    self.router.record_rtt(peer_id, time.perf_counter() - started)
                    break
                except Exception as exc:
                    error = exc
                    await trio.sleep(0.1 * (retry + 1))
        if stream is None:
            reason = f"{type(error).__name__}: {error}" if error else f"timed out after {self.config.connect_timeout} s"
            raise AttemptFailed(f"cannot reach worker ({reason})")
        framed = FramedStream(stream, self.config.max_frame)
        try:
            await framed.send(wire.sign(wire.ExecRequest(job=job, prefix=tuple(prefix)), self.key))
            got_token = False
            while True:
                limit = self.config.stall_timeout if got_token else self.config.first_token_timeout
                with trio.fail_after(limit):
                    first = await framed.receive()
                tokens: list[wire.Token] = []
                for data in [first, *framed.buffered_frames()]:  # a worker's batch: relay it in one write
                    envelope = wire.decode(data, max_size=self.config.max_frame)
                    if envelope.type == "token":
                        tokens.append(envelope.message)
                        continue
                    if tokens:
                        await relay(tokens)
                        tokens = []
                    if envelope.type == "error":
                        raise JobRejected(envelope.message.code, envelope.message.message)
                    if envelope.type == "result":
                        return data, envelope
                    raise AttemptFailed(f"worker sent an unexpected {envelope.type}")
                if tokens:
                    got_token = True
                    await relay(tokens)
        except trio.TooSlowError:
            raise AttemptFailed("worker stalled") from None
        except StreamClosed as exc:
            raise AttemptFailed(f"worker went away: {exc}") from None
        except wire.WireError as exc:
            raise AttemptFailed(f"worker sent an invalid frame: {exc}") from None
        finally:
            await framed.close()

    # ------------------------------------------------------------------ worker: /inferad/exec

    async def _serve_exec(self, stream: Any) -> None:
        await self._handle_request(stream, "exec", self._run_exec)

    async def _run_exec(self, envelope: wire.Envelope, data: bytes, framed: FramedStream) -> None:
        request: wire.ExecRequest = envelope.message
        job_envelope = wire.decode(request.job, max_size=self.config.max_frame)
        if job_envelope.type != "job":
            raise JobRejected("unexpected", "an exec request must carry a client-signed job")
        job_id = job_envelope.digest
        self._check_timing(job_envelope.message)
        if len(request.prefix) > job_envelope.message.params.max_tokens:  # no continuation can be that long
            raise JobRejected("schema", f"exec.prefix holds {len(request.prefix)} tokens, more than the job's "
                                        f"max_tokens ({job_envelope.message.params.max_tokens})")
        if self.chain_view is not None:  # it will be settled: its client must have one spelling
            _check_client_eth(job_envelope.message)
        if not await self.db(self.store.accept_job, job_id, request.job, role="worker",
                              gateway=envelope.signer_peer_id, prefix=len(request.prefix)):
            raise JobRejected("replay", f"job {job_id[:16]}… was already run here")
        self.active_jobs += 1
        try:
            signed, _ = await self._execute(job_envelope, list(request.prefix), framed.send_tokens)
        except JobRejected as exc:
            await self.db(self.store.fail_job, job_id, exc.code)
            raise
        finally:
            self.active_jobs -= 1
        await self.db(self.store.finish_job, job_id, signed)
        await self._record_served(job_id)
        await framed.send(signed)

    async def _execute(self, envelope: wire.Envelope, prefix: list[int], send_tokens) -> tuple[bytes, wire.Envelope]:
        """Run a job on this node's engine (continuing after ``prefix``); the signed result."""
        job: wire.JobRequest = envelope.message
        check_served(job, served=self.served, max_tokens=self.config.max_tokens)
        served = self.served[job.model.sha256]
        try:
            prompt = served.engine.prompt_tokens(job)
        except EngineError as exc:
            raise JobRejected("invalid_prompt", str(exc)) from None
        check_context(len(prompt), job.params.max_tokens, served.engine.n_ctx)
        self._load_change()
        try:
            generation, queue_ms = await served.worker.run(prompt, job.params, send_tokens, prefix)
        finally:
            self._load_change()
        result = wire.JobResult(
            job_id=envelope.digest, model=served.engine.ref, output_tokens=tuple(generation.tokens),
            text=generation.text, finish_reason=generation.finish_reason,
            usage=wire.Usage(prompt_tokens=generation.prompt_tokens, completion_tokens=len(generation.tokens)),
            timings=wire.Timings(queue_ms=queue_ms, prompt_ms=generation.prompt_ms, decode_ms=generation.decode_ms),
            engine=served.engine.info, worker=self.peer_id, signed_at=check_signing(job, now_ms=_now_ms()),
            continued_from=len(prefix),
        )
        signed = wire.sign(result, self.key)
        log.info("ran job", extra={"fields": {"id": envelope.digest[:16], "model": served.engine.ref.name,
                                              "tokens": len(generation.tokens) - len(prefix),
                                              "tokens_per_s": round(generation.tokens_per_second, 1),
                                              "continued_from": len(prefix)}})
        return signed, wire.decode(signed)

    # ------------------------------------------------------------------ shared request handling

    async def _handle_request(self, stream: Any, expect: str | tuple[str, ...], handle) -> None:
        """Read one signed request of type ``expect`` from a libp2p stream, hand it to ``handle``."""
        await self._handle_framed(FramedStream(stream, self.config.max_frame), expect, handle)

    async def _handle_framed(self, framed: FramedStream, expect: str | tuple[str, ...], handle) -> None:
        """Read one signed request of type ``expect``, hand it to ``handle``; typed errors for the rest."""
        try:
            with trio.fail_after(self.config.request_timeout):
                data = await framed.receive()
            envelope = wire.decode(data, max_size=self.config.max_frame)
            if envelope.type not in ((expect,) if isinstance(expect, str) else expect):
                raise JobRejected("unexpected", f"expected a {expect} message, got a {envelope.type}")
            if self.draining:
                raise JobRejected("shutting_down", "this node is shutting down")
            await handle(envelope, data, framed)
        except wire.FrameTooLarge as exc:
            await framed.send_error(exc.code, str(exc))
            await framed.reset()
            return
        except wire.WireError as exc:
            await framed.send_error(exc.code, str(exc))
        except JobRejected as exc:
            await framed.send_error(exc.code, exc.message)
        except trio.TooSlowError:
            await framed.send_error("timeout", f"no complete request within {self.config.request_timeout} s")
        except StreamClosed:
            pass
        await framed.close()

    def _check_timing(self, job: wire.JobRequest) -> None:
        check_timing(job, now_ms=_now_ms(), max_ttl_s=self.config.max_job_ttl, clock_skew_s=self.config.clock_skew)

    def _log_job(self, job_id: str, job: wire.JobRequest, **fields: Any) -> None:
        log.info("job", extra={"fields": {"id": job_id[:16], "model": job.model.name, **fields}})

    async def db(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return await trio.to_thread.run_sync(lambda: fn(*args, **kwargs), limiter=self._db_limiter)

    # ------------------------------------------------------------------ control socket

    def _control_commands(self) -> dict[str, Callable[..., Awaitable[Any]]]:
        async def jobs(job_id: str | None = None) -> list[dict]:
            if job_id:
                record = await self.db(self.store.job, job_id)
                records = [record] if record else []
            else:
                records = await self.db(lambda: list(self.store.jobs()))
            views = [r.to_json() for r in records]
            return views if self.verification is None else [self.verification.describe(v["job_id"], v) for v in views]

        async def status() -> dict:
            return {
                "peer_id": self.peer_id, "addrs": self.addrs, "version": __version__, "engine": self.engine_kind,
                "uptime_s": int(time.time() - self.started_at), "active_jobs": self.active_jobs,
                "peers": len(self.peers.fresh(time.monotonic())), "adverts_rejected": self.adverts_rejected,
                "models": [{"name": s.engine.ref.name, "sha256": sha, "tokens_per_s": s.tokens_per_s,
                            "queued": s.worker.load.queued, "running": s.worker.load.running}
                           for sha, s in self.served.items()],
                "reputation": round(self.reputation(self.peer_id), 4),
                "verification": None if self.verification is None else self.verification.summary(),
                "chain": None if self.chain_view is None else await self._chain_status(),
                "api": self.api_url,
            }

        async def peers() -> list[dict]:
            now = time.monotonic()
            return [dict(wire.view(e.advert), advert_age_s=round(now - e.received_at, 1),
                         reputation=round(self.reputation(e.peer_id), 4), self=e.peer_id == self.peer_id)
                    for e in sorted(self.peers.fresh(now), key=lambda e: e.peer_id)]

        async def models() -> list[dict]:
            """One entry per file (sha256) on offer: its id and label (models.name_models), its providers."""
            offers: list[tuple[str, str]] = []
            providers: dict[str, list[dict]] = {}
            for entry in self.peers.fresh(time.monotonic()):
                for offer in entry.advert.models:
                    offers.append((offer.sha256, offer.name))
                    providers.setdefault(offer.sha256, []).append({
                        "peer_id": entry.peer_id, "tokens_per_s": offer.tokens_per_s, "n_ctx": offer.n_ctx,
                        "queued": entry.advert.load.queued})
            return [{"id": m.id, "name": m.label, "sha256": m.sha256,
                     "providers": sorted(providers[m.sha256], key=lambda p: p["peer_id"])}
                    for m in sorted(name_models(offers).values(), key=lambda m: m.id)]

        async def proof(account: str) -> dict:
            from inferad.oracle import fetch_proof

            return await fetch_proof(self, account)

        async def evidence(key: str) -> dict:
            if self.verification is None:
                raise NodeError("evidence needs a chain (start the node with --chain)")
            return await self.verification.fetch_and_check(key)

        return {"jobs": jobs, "status": status, "peers": peers, "models": models, "proof": proof,
                "evidence": evidence}


def _now_ms() -> int:
    return int(time.time() * 1000)


@functools.lru_cache(maxsize=4096)
def _checksummed(address: str) -> str:
    """An Ethereum address (0x + 40 hex, any case) in its EIP-55 checksum form: the one spelling
    web3 accepts, and so the one a node may key stakes, deposits and charges by."""
    from eth_utils import to_checksum_address

    return to_checksum_address(address)


def _check_client_eth(job: wire.JobRequest) -> None:
    """With a chain, a client's address must be in its EIP-55 checksum form: deposits are read
    and charges reserved and settled per address, and web3 takes no other spelling."""
    if job.client_eth != (checksummed := _checksummed(job.client_eth)):
        raise JobRejected("schema", f"client_eth {job.client_eth} is not in its EIP-55 checksum form "
                                    f"({checksummed}); sign the job with that spelling")


def _multiaddr(text: str):
    import multiaddr

    try:
        return multiaddr.Multiaddr(text)
    except Exception as exc:
        raise NodeError(f"bad listen address {text!r}: {exc}") from None


def _dialable(addrs: list[str]) -> list[str]:
    """Wildcard listen addresses are not dialable; offer loopback for local clients first."""
    local = [a.replace("/ip4/0.0.0.0/", "/ip4/127.0.0.1/", 1) for a in addrs if "/ip4/0.0.0.0/" in a]
    return local + [a for a in addrs if "/ip4/0.0.0.0/" not in a]

