"""The daemon: builds each role with what it uses, wires them, runs them in one nursery.

Roles are not separate programs: every node is a gateway (``/inferad/submit``
from clients, ``submit`` on its control socket, the HTTP API; it routes the
job), a worker (``/inferad/exec`` from gateways, or its own jobs locally), a
member of the mesh (adverts on gossipsub, provider records in the DHT), and
with a chain a verifier and a party to settlement.  docs/architecture.md
lists the roles, what each is handed, and the path of one job through them.

This module only builds and wires: nothing below it imports it.  A
:class:`Node` opens the store, loads the models, reads the chain, starts the
host and the mesh, constructs the roles, registers their protocol handlers
(each wrapped by :func:`p2p.host.guarded`, so no exception escapes into
py-libp2p's nursery), starts their tasks in the node's one nursery, and on
SIGINT/SIGTERM drains and stops them.  Blocking work goes through
``trio.to_thread`` with limiters sized on purpose: a thread per engine
slot (each waits on its task in the engine's loop), four for LevelDB.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import KW_ONLY, dataclass
from functools import partial
from typing import Any

import trio

from chain.view import StakeTable
from inferad import __version__, api, control
from inferad.admission import JobRejected
from inferad.billing import Billing, ChainUnusable
from inferad.config import Config
from inferad.control import Commands
from inferad.gateway import Gateway, Router
from inferad.hardware import probe
from inferad.home import Home, HomeError
from inferad.membership import Dialer, Membership
from inferad.metrics import Metrics
from inferad.model_cache import ModelCache
from inferad.models import ModelError
from inferad.oracle import Oracle, Reports, fetch_proof
from inferad.reach import Reachability
from inferad.relay import RelayLimits, Relays
from inferad.service import Activity, Service
from inferad.store import AsyncStore, Store
from inferad.supply import ModelSupply, to_fetch
from inferad.transfer import PROTOCOL_MODEL
from inferad.verification import Verification
from inferad.worker import ExecService, ModelUnusable, Served, load_models, offers, total_load
from p2p import wire
from p2p.host import PROTOCOL_SUBMIT, dialable, guard_all_handlers, guarded, listen_addrs, make_host, running
from p2p.mesh import (
    PROTOCOL_EXEC,
    PROTOCOL_SETTLEMENT,
    PROTOCOL_VERIFY,
    TOPIC_ATTESTATIONS,
    GossipSettings,
    running_mesh,
)
from scheduler.peers import PeerTable

log = logging.getLogger("inferad.node")
SHUTDOWN_GRACE_S = 10
SETTLEMENT_REQUESTS = ("report_request", "proof_request", "evidence_request", "attestations_request")


class NodeError(Exception):
    """The node cannot start; the message says what to change."""


@dataclass
class Node:
    """One ``inferad start``: ``trio.run(Node(home, config).run)``.

    Args:   home: keys, the store, the control socket.
            config: every setting (``inferad start --help``).
            engine: ``llama`` (llama.cpp) or ``sim`` (the simulated engine of scale tests).
            sim_tokens_per_s: the simulated engine's speed.
            chain: the network's chain (``--chain``), or None: no stakes, deposits or verification.
            oracle: settle epochs as the contract's oracle (needs ``chain``).
    """

    home: Home
    config: Config
    _: KW_ONLY
    engine: str = "llama"
    sim_tokens_per_s: float = 50.0
    chain: Any = None  # chain.devnet.ChainInfo
    oracle: bool = False

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Serve until SIGINT/SIGTERM (or cancellation); always cleans up. Raises NodeError."""
        if self.oracle and self.chain is None:
            raise NodeError("--oracle needs --chain")
        store = AsyncStore(await trio.to_thread.run_sync(Store, self.home.db_path))
        served: dict[str, Served] = {}
        try:
            if interrupted := await store.mark_interrupted():
                log.warning("%d job(s) were interrupted by the previous shutdown", interrupted)
            hardware = await trio.to_thread.run_sync(probe)
            cache = ModelCache(limit=self.config.model_cache_limit or None)
            fetching = to_fetch(self.config.models, cache) if self.engine == "llama" else ()
            try:
                served.update(await load_models(self.config, hardware, engine=self.engine,
                                                sim_tokens_per_s=self.sim_tokens_per_s, skip=fetching))
            except (ModelUnusable, ModelError) as exc:
                raise NodeError(str(exc)) from None
            peers = PeerTable()
            billing = Billing(chain=self.chain, eth_address=self.home.eth_address,
                              node_key=bytes(self.home.node_key.verify_key),
                              peer_id=wire.peer_id_from_public_key(bytes(self.home.node_key.verify_key)),
                              peers=peers, store=store)
            if self.chain is not None:
                try:
                    await billing.connect()
                except ChainUnusable as exc:
                    raise NodeError(str(exc)) from None
                if not billing.is_staked_self() and served:
                    log.warning("this node is not staked on chain: peers will not route jobs to it "
                                "(`inferad chain stake --home %s --chain … AMOUNT`)", self.home.path)
            try:
                await self._serve(store, hardware, served, peers, billing, cache, fetching, task_status)
            except* (NodeError, ModelUnusable, api.ApiUnavailable, HomeError) as group:  # from a task: a port in use…
                raise NodeError(str(group.exceptions[0])) from None
        finally:
            self.home.node_info_path.unlink(missing_ok=True)
            for each in served.values():
                each.engine.close()
            store.sync.close()
            log.info("node stopped")

    async def _serve(self, store: AsyncStore, hardware: wire.Hardware, served: dict[str, Served], peers: PeerTable,
                     billing: Billing, cache: ModelCache, fetching: tuple[str, ...], task_status) -> None:
        from libp2p.custom_types import TProtocol

        config, key = self.config, self.home.node_key
        activity = Activity()
        service = Service(max_frame=config.max_frame, request_timeout=config.request_timeout, activity=activity)
        metrics = Metrics(peers=lambda: len(peers.fresh(time.monotonic())), active_jobs=lambda: activity.running,
                          queued_jobs=lambda: total_load(served).queued)
        host = make_host(key)
        reach = Reachability(host=host, peers=peers)
        relays = Relays(host=host, reach=lambda: reach.status, peers=peers, service=config.relay_service,
                        hole_punching=config.relay_hole_punching, limits=RelayLimits.of(config))
        dialer = Dialer(host=host, peers=peers, key=key, connect_timeout=config.connect_timeout,
                        max_frame=config.max_frame, dial_relayed=relays.dial)
        verification: Verification | None = None

        def app_score(peer: Any) -> float:  # gossipsub's P6: reputation, once verification is up
            return 0.0 if verification is None else verification.app_score(peer)

        supply = ModelSupply(key=key, config=config, hardware=hardware, served=served, cache=cache, peers=peers,
                             open_stream=partial(dialer.open, protocol=PROTOCOL_MODEL))
        try:
            listen = listen_addrs(config.listen)
        except ValueError as exc:
            raise NodeError(str(exc)) from None
        try:
            async with (running(host, listen),
                        running_mesh(host, GossipSettings(ip_colocation_limit=config.ip_colocation_limit),
                                     app_score=app_score) as (pubsub, dht),
                        trio.open_nursery() as nursery):
                guard_all_handlers(host)
                addrs = dialable([str(a) for a in host.get_addrs()])
                if self.chain is not None:
                    verification = Verification(
                        key=key, config=config, chain_view=billing.view,
                        stakes=StakeTable(billing.view.registry, self.chain.deployment_block),
                        store=store, served=served, engine_for=supply.verifying.engine_for, ask=dialer.ask_raw,
                        publish=partial(pubsub.publish, TOPIC_ATTESTATIONS),
                        is_staked=billing.peer_is_staked, attestations_counted=metrics.attestations)
                    await verification.load()
                membership = Membership(
                    host=host, pubsub=pubsub, dht=dht, peers=peers, key=key, eth_address=self.home.eth_address,
                    config=config, store=store, offers=partial(offers, served), load=partial(total_load, served),
                    engine="sim" if self.engine == "sim" else "llama.cpp", hardware=hardware, addrs=addrs,
                    reach=lambda: reach.status, relayed=relays.addrs)
                router = Router(membership.peer_id, peers, max_attempts=config.max_attempts,
                                is_staked=billing.advert_is_staked, reputation_floor=config.reputation_floor,
                                reputation_of=verification.reputation if verification else lambda peer_id: 0.5)
                worker = ExecService(key=key, config=config, served=served, store=store,
                                     settled=billing.view is not None, record_served=billing.record_served,
                                     activity=activity, load_changed=membership.load_changed)
                gateway = Gateway(key=key, config=config, peers=peers, router=router, store=store, billing=billing,
                                  local=worker, dialer=dialer, activity=activity, metrics=metrics,
                                  follow=verification.follow if verification else None, spawn=nursery.start_soon)
                reports = Reports(key=key, store=store, chain_view=billing.view, verification=verification)
                commands = Commands(store=store, peers=peers, served=served, activity=activity, membership=membership,
                                    billing=billing, verification=verification, engine=self.engine,
                                    proof=partial(fetch_proof, key=key, store=store, chain_view=billing.view,
                                                  dialer=dialer), speeds=router.speeds,
                                    connection=dialer.connection, relay_addrs=relays.addrs)
                handlers = {
                    PROTOCOL_SUBMIT: ("submit", service.handler("job", gateway.serve)),
                    PROTOCOL_EXEC: ("exec", service.handler("exec", worker.serve)),
                    PROTOCOL_SETTLEMENT: ("settlement", service.handler(SETTLEMENT_REQUESTS, reports.serve)),
                    PROTOCOL_VERIFY: ("verify", service.handler("verify_request",
                                                                verification.serve if verification else _no_chain)),
                    PROTOCOL_MODEL: ("model", supply.share.serve),
                }
                for protocol, (name, handler) in handlers.items():
                    host.set_stream_handler(TProtocol(protocol), guarded(name, handler))

                if verification is not None:
                    nursery.start_soon(verification.gossip, pubsub)
                    await verification.resume(nursery)
                await nursery.start(partial(control.serve, self.home.path / "control.sock", commands.table(),
                                            {"submit": partial(service.answer, expect="job", handle=gateway.serve),
                                             "pull": supply.fetcher.pull},
                                            max_frame=config.max_frame))
                if config.api_port >= 0:
                    commands.api_url = await api.start(nursery, api.Api(
                        home=self.home, config=config, gateway=gateway, commands=commands, metrics=metrics,
                        spawn=nursery.start_soon, max_price=config.api_max_price), config.api_host, config.api_port)
                nursery.start_soon(membership.run)
                nursery.start_soon(reach.run)
                nursery.start_soon(relays.run)
                if billing.view is not None:
                    nursery.start_soon(billing.watch)
                if self.oracle:
                    registry = billing.registry_as(self.home.eth_account())
                    nursery.start_soon(Oracle(key=key, config=config, registry=registry, billing=billing,
                                              verification=verification, store=store, peers=peers, served=served,
                                              dialer=dialer).run)
                node_info = {"peer_id": membership.peer_id, "addrs": addrs, "pid": os.getpid(),
                             "control": str(self.home.path / "control.sock"), "engine": self.engine,
                             "version": __version__, "started_at": int(time.time()), "api": commands.api_url}

                def write_node_info() -> None:
                    self.home.write_node_info({**node_info, "models": [s.describe() for s in served.values()]})

                write_node_info()
                for spec in fetching:
                    nursery.start_soon(supply.fetch_and_serve, spec, write_node_info)
                log.info("node %s listening on %s", membership.peer_id, " ".join(addrs))
                task_status.started(self)
                await activity.drain_on_signal(SHUTDOWN_GRACE_S)
                nursery.cancel_scope.cancel()
        except OSError as exc:
            raise NodeError(f"cannot listen on {' '.join(config.listen)}: {exc.strerror or exc}") from None
        finally:
            supply.close()


async def _no_chain(envelope: wire.Envelope, data: bytes, framed: Any) -> None:
    raise JobRejected("no_chain", "this node verifies only on a network with a chain")
