"""A lying worker for tests: the real daemon, its exec answers altered at the gateway boundary.

``python -m tests.adversaries.lying_worker start --home …`` runs ``inferad start``
unchanged except for two things:

- it advertises 10,000 tokens/s (it never measures), so gateways try it first;
- a job whose prompt starts with ``LIE: …`` (one of :data:`LIES`) gets that lie
  instead of an honest answer; any other job is served honestly.

The lies are what a worker can do to a gateway that trusts its exec stream:

``stream_differs``   streams the honest tokens, signs other token ids
``other_key``        signs the honest result with a key that is not its peer's
``other_job``        signs a result that names another job id
``other_model``      signs a result that names another model (a cheaper one)
``says_cancelled``   streams a few tokens, then answers ``error: cancelled``
                     as if the gateway's client had gone away
``ignores_prefix``   a fresh job: streams 3 tokens and goes away (the stream
                     closes, no result); a continuation (``exec.prefix`` not
                     empty): runs the job from scratch as if no prefix had
                     been delivered (tokens numbered from 0, ``continued_from`` 0)

Two ``ignores_prefix`` workers in one network give a gateway both a worker that
dies mid-stream and one asked to continue after it, whichever it tries first.

The shipped daemon has no way to do this: lying lives in tests only.
"""

from __future__ import annotations

import dataclasses
import hashlib

from nacl.signing import SigningKey

from inferad import worker as worker_module
from inferad.admission import JobRejected
from p2p import wire
from p2p.streams import StreamClosed

ADVERTISED_TOKENS_PER_S = 10_000.0
DIE_AFTER = 3  # tokens an ignores_prefix worker streams of a fresh job before it goes away
HONEST = worker_module.ExecService.execute


def lie_of(job: wire.JobRequest) -> str | None:
    head, colon, _ = (job.prompt or "").partition(":")
    return head if colon and head in LIES else None


def resign(node, result: wire.JobResult, key: SigningKey | None = None, **changes) -> tuple[bytes, wire.Envelope]:
    signed = wire.sign(dataclasses.replace(result, **changes), key or node.key)
    return signed, wire.decode(signed)


async def stream_differs(node, envelope, prefix, send_tokens):
    _, honest = await HONEST(node, envelope, prefix, send_tokens)
    tokens = list(honest.message.output_tokens)
    tokens[-1] = tokens[-1] + 1 if tokens[-1] < 1000 else tokens[-1] - 1
    return resign(node, honest.message, output_tokens=tuple(tokens))


async def other_key(node, envelope, prefix, send_tokens):
    _, honest = await HONEST(node, envelope, prefix, send_tokens)
    key = SigningKey.generate()
    return resign(node, honest.message, key, worker=wire.peer_id_from_public_key(bytes(key.verify_key)))


async def other_job(node, envelope, prefix, send_tokens):
    _, honest = await HONEST(node, envelope, prefix, send_tokens)
    return resign(node, honest.message, job_id=hashlib.sha256(b"another job").hexdigest())


async def other_model(node, envelope, prefix, send_tokens):
    _, honest = await HONEST(node, envelope, prefix, send_tokens)
    cheaper = wire.ModelRef(sha256=hashlib.sha256(b"a cheaper model").hexdigest(), name="cheaper-model")
    return resign(node, honest.message, model=cheaper)


async def says_cancelled(node, envelope, prefix, send_tokens):
    tokens: list[wire.Token] = []

    async def hold(batch):
        tokens.extend(batch)

    await HONEST(node, envelope, prefix, hold)
    await send_tokens(tokens[:DIE_AFTER])
    raise JobRejected("cancelled", "generation stopped: the client went away")


async def ignores_prefix(node, envelope, prefix, send_tokens):
    if prefix:
        return await HONEST(node, envelope, [], send_tokens)
    tokens: list[wire.Token] = []

    async def hold(batch):
        tokens.extend(batch)

    await HONEST(node, envelope, prefix, hold)
    await send_tokens(tokens[:DIE_AFTER])
    raise StreamClosed("the lying worker goes away mid-stream")


LIES = {f.__name__: f for f in (stream_differs, other_key, other_job, other_model, says_cancelled, ignores_prefix)}


async def lying_execute(self, envelope, prefix, send_tokens):
    lie = lie_of(envelope.message)
    if lie is None:
        return await HONEST(self, envelope, prefix, send_tokens)
    return await LIES[lie](self, envelope, prefix, send_tokens)


def main() -> None:
    worker_module.ExecService.execute = lying_execute
    worker_module.tokens_per_second = lambda engine, hardware, threads=0: ADVERTISED_TOKENS_PER_S
    from cli import main as cli_main

    cli_main()


if __name__ == "__main__":
    main()
