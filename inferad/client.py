"""The Python client: sign a job, send it to a node, stream and verify the answer.

``inferad submit`` is a thin shell over this; programs use it directly and
keep the connection for many jobs, like an ``httpx.Client``::

    async with NodeClient.connect(addr, home.client_key) as node:
        completion = await node.submit(job, on_token=print)

A node on the same machine is reached through its control socket instead,
blocking and without trio or libp2p (``inferad submit --node-home`` starts in
a fraction of a second)::

    completion = LocalNode(node_home / "control.sock", home.client_key).submit(job)

Both carry the same conversation; :class:`Answer` checks it, without I/O.
This module imports trio and libp2p only inside :class:`NodeClient`.

A completion is returned only when the worker's signature verifies, the
result names the job that was sent, and the streamed tokens are exactly the
signed ones.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nacl.signing import SigningKey

from inferad.admission import JobRejected
from inferad.models import ModelError, UnknownModel, resolve, resolve_name
from inferad.sim import is_sim_model, sim_model_ref
from p2p import wire

__all__ = ["NodeClient", "LocalNode", "Answer", "Completion", "JobRejected", "NodeUnreachable", "BadResponse",
           "new_job", "model_ref"]
OnToken = Callable[[wire.Token], Any]


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
    signed_job: bytes = b""  # the client-signed envelope sent (with signed_result: a receipt)

    def to_json(self) -> dict:
        return {
            "job_id": self.job_id,
            "result_hash": self.result_hash,
            "worker_signature_valid": True,
            "result": wire.view(self.result),  # every field, defaults included (the signed body omits them)
        }


def model_ref(spec: str) -> wire.ModelRef:
    """The reference a job carries, for a model named without a view of the network.

    ``spec``: a catalog name (its pinned sha256), ``label@sha256`` or a bare
    sha256 (see inferad.models.resolve_name), a simulated model's name, or the
    path of a GGUF file (hashed; labelled by inferad.models.file_label).
    Raises ModelMismatch (a ModelError) for a catalog label on another sha256,
    ModelError for anything else it cannot name (a label over 128 characters too).
    """
    if is_sim_model(spec):
        return sim_model_ref(spec)
    try:
        named = resolve_name(spec, ())
    except UnknownModel:  # not a name this client can know alone: a file, or nothing
        local = resolve(spec)
        return wire.ModelRef(sha256=local.sha256, name=local.name)
    try:
        return wire.parse(wire.ModelRef, {"sha256": named.sha256, "name": named.label})
    except wire.WireError as exc:
        raise ModelError(f"model {spec!r}: {exc}") from None


def new_job(model: wire.ModelRef, client_eth: str, *, prompt: str | None = None,
            messages: list | None = None, prompt_tokens: list[int] | None = None, ttl_s: int = 60,
            max_price: int = 0, adapter: wire.ModelRef | None = None, **params: Any) -> wire.JobRequest:
    """A fresh job (random nonce, valid for ``ttl_s`` seconds from now) with one of the three prompt
    forms, on ``model`` with the LoRA ``adapter`` if given."""
    now = int(time.time() * 1000)
    return wire.JobRequest(
        model=model, params=wire.SamplingParams(**params), max_price=max_price, client_eth=client_eth,
        nonce=int.from_bytes(os.urandom(8), "big"), created_at=now, expires_at=now + ttl_s * 1000,
        prompt=prompt, messages=tuple(messages) if messages is not None else None,
        prompt_tokens=tuple(prompt_tokens) if prompt_tokens is not None else None, adapter=adapter,
    )


class Answer:
    """The client's side of a submit conversation, without I/O: feed it the node's frames in order.

    ``feed`` returns None while tokens stream (each goes to ``on_token``),
    then the Completion once the worker-signed result arrives and checks out
    (signature, job id, signer, the streamed tokens; with ``job``, its model's
    sha256 and that it was signed before expiry: docs/protocol.md, "Checking a
    result").  Raises JobRejected for an error frame (its code and message) and
    BadResponse for anything else.
    """

    def __init__(self, job_id: str, max_frame: int, on_token: OnToken | None = None,
                 job: wire.JobRequest | None = None, signed_job: bytes = b"") -> None:
        self.job_id, self._max_frame, self._on_token, self._job = job_id, max_frame, on_token, job
        self._signed_job = signed_job
        self.tokens: list[wire.Token] = []

    def feed(self, data: bytes) -> Completion | None:
        try:
            envelope = wire.decode(data, max_size=self._max_frame)
        except wire.WireError as exc:
            raise BadResponse(f"node sent an invalid frame: {exc}") from None
        if envelope.type == "token":
            self.tokens.append(envelope.message)
            if self._on_token:
                self._on_token(envelope.message)
            return None
        if envelope.type == "error":
            raise JobRejected(envelope.message.code, envelope.message.message)
        if envelope.type == "result":
            return dataclasses.replace(_check_result(envelope, data, self.job_id, self.tokens, self._job),
                                       signed_job=self._signed_job)
        raise BadResponse(f"unexpected {envelope.type} frame")


def _signed(job: wire.JobRequest, key: SigningKey) -> tuple[bytes, str]:
    """The job's signed envelope and its id."""
    return wire.sign(job, key), wire.digest(wire.unparse(job))


class NodeClient:
    """Jobs to any node over one libp2p connection, kept open across jobs (:meth:`connect`)."""

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
        """A connection to the node at multiaddr ``address`` (imports py-libp2p: about a second)."""
        import trio

        from p2p.host import make_host, peer_info, running

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

    async def submit(self, job: wire.JobRequest, *, on_token: OnToken | None = None,
                     timeout: float = 600) -> Completion:
        """Run ``job`` on the node; raises JobRejected, NodeUnreachable or BadResponse."""
        import trio

        signed_job, job_id = _signed(job, self._key)
        try:
            with trio.fail_after(timeout):
                return await self._exchange(signed_job, Answer(job_id, self._max_frame, on_token, job, signed_job))
        except trio.TooSlowError:
            raise NodeUnreachable(f"no complete answer from {self.peer_id} within {timeout} s") from None

    async def _exchange(self, signed_job: bytes, answer: Answer) -> Completion:
        from libp2p.custom_types import TProtocol

        from p2p.host import PROTOCOL_SUBMIT
        from p2p.streams import FramedStream, StreamClosed

        try:
            stream = await self._host.new_stream(self._peer.peer_id, [TProtocol(PROTOCOL_SUBMIT)])
        except Exception as exc:
            raise NodeUnreachable(f"cannot open a stream to {self.peer_id}: {exc}") from None
        framed = FramedStream(stream, self._max_frame)
        try:
            await framed.send(signed_job)
            while (completion := answer.feed(await framed.receive())) is None:
                pass
            return completion
        except StreamClosed as exc:
            raise NodeUnreachable(f"{self.peer_id} closed the stream: {exc}") from None
        finally:
            await framed.close()


class LocalNode:
    """A node on this machine, through its control socket (``<home>/control.sock``).

    Blocking, one connection per job, and neither trio nor libp2p is
    imported: the fast path of ``inferad submit --node-home``.  The
    conversation is the one :class:`NodeClient` has over libp2p
    (inferad/control.py, command ``submit``).  The socket is mode 0600: run
    as the node's user.
    """

    def __init__(self, control_path: Path, key: SigningKey, *, max_frame: int = wire.DEFAULT_MAX_FRAME) -> None:
        self.control_path = Path(control_path)
        self._key = key
        self._max_frame = max_frame

    def submit(self, job: wire.JobRequest, *, on_token: OnToken | None = None, timeout: float = 600) -> Completion:
        """Run ``job`` on the node; raises JobRejected, NodeUnreachable or BadResponse."""
        from inferad import control

        signed_job, job_id = _signed(job, self._key)
        answer, decoder = Answer(job_id, self._max_frame, on_token, job, signed_job), wire.FrameDecoder(self._max_frame)
        deadline = time.monotonic() + timeout
        try:
            with control.connect(self.control_path, "submit", timeout=timeout) as sock:
                sock.sendall(wire.encode_frame(signed_job))
                while True:
                    while (frame := decoder.next_frame()) is not None:
                        if (completion := answer.feed(frame)) is not None:
                            return completion
                    sock.settimeout(max(deadline - time.monotonic(), 0.001))
                    chunk = sock.recv(65536)
                    if not chunk:
                        raise NodeUnreachable(f"the node on {self.control_path} closed the connection before "
                                              f"the result")
                    decoder.feed(chunk)
        except control.ControlError as exc:
            raise NodeUnreachable(f"{exc} (is the node running, as this user? or pass --node MULTIADDR)") from None
        except wire.WireError as exc:  # a frame longer than max_frame
            raise BadResponse(f"node sent an invalid frame: {exc}") from None
        except TimeoutError:
            raise NodeUnreachable(f"no complete answer from the node on {self.control_path} within {timeout} s") \
                from None
        except OSError as exc:
            raise NodeUnreachable(f"the node on {self.control_path} went away: {exc.strerror or exc}") from None


def _check_result(envelope: wire.Envelope, data: bytes, job_id: str, tokens: list[wire.Token],
                  job: wire.JobRequest | None = None) -> Completion:
    result: wire.JobResult = envelope.message
    if result.job_id != job_id:
        raise BadResponse(f"result is for job {result.job_id}, not {job_id}")
    if envelope.signer_peer_id != result.worker:
        raise BadResponse(f"result claims worker {result.worker} but is signed by {envelope.signer_peer_id}")
    if job is not None and result.model.sha256 != job.model.sha256:  # the name is the worker's own label
        raise BadResponse(f"result is for model {result.model.sha256[:12]}…, not {job.model.sha256[:12]}…")
    if job is not None and result.signed_at >= job.expires_at:
        raise BadResponse("the worker signed its result after the job expired")
    if job is not None and len(result.all_choices()) != job.params.n:
        raise BadResponse(f"the result has {len(result.all_choices())} choice(s); the job asked for {job.params.n}")
    mismatch = wire.stream_mismatch(result, tokens)
    if mismatch or any("".join(t.text for t in tokens if t.choice == i) != choice.text
                       for i, choice in enumerate(result.all_choices())):
        raise BadResponse(f"the streamed tokens differ from the signed result ({mismatch or 'text'})")
    return Completion(job_id=job_id, result=result, result_hash=envelope.digest,
                      signed_result=data, worker_public_key=envelope.signer)
