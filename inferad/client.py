"""The Python client: sign a job, send it to a node, stream and verify the answer.

``inferad submit`` is a thin shell over this; programs use it directly and
keep the connection for many jobs, like an ``httpx.Client``::

    async with NodeClient.connect(addr, home.client_key) as node:
        completion = await node.submit(job, on_token=print)

A completion is returned only when the worker's signature verifies, the
result names the job that was sent, and the streamed tokens are exactly the
signed ones.
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import trio
from nacl.signing import SigningKey

from inferad.admission import JobRejected
from inferad.models import CATALOG, resolve
from inferad.sim import is_sim_model, sim_model_ref
from p2p import wire
from p2p.host import PROTOCOL_SUBMIT, make_host, peer_info, running
from p2p.streams import FramedStream, StreamClosed

__all__ = ["NodeClient", "Completion", "JobRejected", "NodeUnreachable", "BadResponse", "new_job",
           "model_ref"]


class NodeUnreachable(Exception):
    """The node could not be reached or did not answer in time."""


class BadResponse(Exception):
    """The node answered something that is not a valid, signed answer to our job."""


@dataclass(frozen=True)
class Completion:
    job_id: str
    result: wire.JobResult
    result_hash: str
    signed_result: bytes  # the worker-signed envelope, verifiable by anyone
    worker_public_key: bytes

    def to_json(self) -> dict:
        return {
            "job_id": self.job_id,
            "result_hash": self.result_hash,
            "worker_signature_valid": True,
            "result": wire.unparse(self.result),
        }


def model_ref(spec: str) -> wire.ModelRef:
    """A catalog name, a GGUF path or ``name:sha256`` -> the reference a job carries."""
    if spec in CATALOG:
        return wire.ModelRef(sha256=CATALOG[spec].sha256, name=spec)
    if is_sim_model(spec):
        return sim_model_ref(spec)
    name, _, sha = spec.rpartition(":")
    if name and len(sha) == 64:
        return wire.parse(wire.ModelRef, {"sha256": sha.lower(), "name": name})
    local = resolve(spec)
    return wire.ModelRef(sha256=local.sha256, name=local.name)


def new_job(model: wire.ModelRef, client_eth: str, *, prompt: str | None = None,
            messages: list | None = None, ttl_s: int = 60, max_price: int = 0,
            **params: Any) -> wire.JobRequest:
    now = int(time.time() * 1000)
    return wire.JobRequest(
        model=model, params=wire.SamplingParams(**params), max_price=max_price, client_eth=client_eth,
        nonce=int.from_bytes(os.urandom(8), "big"), created_at=now, expires_at=now + ttl_s * 1000,
        prompt=prompt, messages=tuple(messages) if messages is not None else None,
    )


class NodeClient:
    def __init__(self, host: Any, peer: Any, key: SigningKey, max_frame: int) -> None:
        self._host = host
        self._peer = peer
        self._key = key
        self._max_frame = max_frame

    @property
    def peer_id(self) -> str:
        return self._peer.peer_id.to_base58()

    @classmethod
    @asynccontextmanager
    async def connect(cls, address: str, key: SigningKey, *, timeout: float = 10,
                      max_frame: int = wire.DEFAULT_MAX_FRAME) -> AsyncIterator[NodeClient]:
        peer = peer_info(address)
        # A fresh transport identity per connection: jobs are signed by ``key``
        # anyway, and two processes of one client must not collide as one peer.
        host = make_host(SigningKey.generate())
        async with running(host, []):
            try:
                with trio.fail_after(timeout):
                    await host.connect(peer)
            except trio.TooSlowError:
                raise NodeUnreachable(f"cannot reach {address}: timed out after {timeout} s") from None
            except Exception as exc:  # py-libp2p raises assorted types for refused dials
                raise NodeUnreachable(f"cannot reach {address}: {exc}") from None
            try:
                yield cls(host, peer, key, max_frame)
            finally:  # py-libp2p leaves connections open when its host stops: close ours, the node frees it
                with trio.move_on_after(2) as cleanup:
                    cleanup.shield = True
                    try:
                        await host.disconnect(peer.peer_id)
                    except Exception:
                        pass

    async def submit(self, job: wire.JobRequest, *, on_token: Callable[[wire.Token], Any] | None = None,
                     timeout: float = 600) -> Completion:
        """Run ``job`` on the node; raises JobRejected, NodeUnreachable or BadResponse."""
        signed_job = wire.sign(job, self._key)
        job_id = wire.digest(wire.unparse(job))
        try:
            with trio.fail_after(timeout):
                return await self._exchange(signed_job, job_id, on_token)
        except trio.TooSlowError:
            raise NodeUnreachable(f"no complete answer from {self.peer_id} within {timeout} s") from None

    async def _exchange(self, signed_job: bytes, job_id: str,
                        on_token: Callable[[wire.Token], Any] | None) -> Completion:
        from libp2p.custom_types import TProtocol

        try:
            stream = await self._host.new_stream(self._peer.peer_id, [TProtocol(PROTOCOL_SUBMIT)])
        except Exception as exc:
            raise NodeUnreachable(f"cannot open a stream to {self.peer_id}: {exc}") from None
        framed = FramedStream(stream, self._max_frame)
        tokens: list[wire.Token] = []
        try:
            await framed.send(signed_job)
            while True:
                data = await framed.receive()
                try:
                    envelope = wire.decode(data, max_size=self._max_frame)
                except wire.WireError as exc:
                    raise BadResponse(f"node sent an invalid frame: {exc}") from None
                if envelope.type == "token":
                    tokens.append(envelope.message)
                    if on_token:
                        on_token(envelope.message)
                elif envelope.type == "error":
                    raise JobRejected(envelope.message.code, envelope.message.message)
                elif envelope.type == "result":
                    return _check_result(envelope, data, job_id, tokens)
                else:
                    raise BadResponse(f"unexpected {envelope.type} frame")
        except StreamClosed as exc:
            raise NodeUnreachable(f"{self.peer_id} closed the stream: {exc}") from None
        finally:
            await framed.close()


def _check_result(envelope: wire.Envelope, data: bytes, job_id: str, tokens: list[wire.Token]) -> Completion:
    result: wire.JobResult = envelope.message
    if result.job_id != job_id:
        raise BadResponse(f"result is for job {result.job_id}, not {job_id}")
    if envelope.signer_peer_id != result.worker:
        raise BadResponse(f"result claims worker {result.worker} but is signed by {envelope.signer_peer_id}")
    if "".join(t.text for t in tokens) != result.text or \
            tuple(t.id for t in tokens) != result.output_tokens:
        raise BadResponse("the streamed tokens differ from the signed result")
    return Completion(job_id=job_id, result=result, result_hash=envelope.digest,
                      signed_result=data, worker_public_key=envelope.signer)
