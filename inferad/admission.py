"""Whether a node takes a job: the rules, as a pure function.

The order is cheap-first (clock, then model, then limits); signature and
schema were checked by the wire decoder before, replay and queue space are
checked after, against the store and the engine.  The last two rules are about
results: a worker never signs after its job expired (:func:`check_signing`),
and a gateway never delivers a result signed or arrived after it
(:func:`check_delivery`).
"""

from __future__ import annotations

import functools
import time

from inferad.models import ModelMismatch, check_label
from p2p import wire


def now_ms() -> int:
    """The wall clock in milliseconds: the ``now_ms`` every role hands these rules."""
    return int(time.time() * 1000)


class JobRejected(Exception):
    """A job the node will not run; ``code`` goes back in the error frame."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def check_timing(job: wire.JobRequest, *, now_ms: int, max_ttl_s: int, clock_skew_s: int) -> None:
    """Raise JobRejected unless ``job`` is valid now (every role checks this)."""
    skew = clock_skew_s * 1000
    if job.expires_at <= now_ms:
        raise JobRejected("expired", f"job expired {(now_ms - job.expires_at) / 1000:.1f} s ago")
    if job.created_at > now_ms + skew:
        raise JobRejected("not_yet_valid", "job is dated in the future; check the client's clock")
    if job.expires_at - job.created_at > max_ttl_s * 1000:
        raise JobRejected("ttl_too_long", f"a job may live at most {max_ttl_s} s")


def check_signing(job: wire.JobRequest, *, now_ms: int) -> int:
    """The worker's last check before it signs a result: the ``signed_at`` to put in it.

    Raises JobRejected("expired") once the job has expired: its verification beacon
    is the first block after expiry, and a worker that could have seen that block
    must not sign (DESIGN §7; docs/protocol.md, "Expiry").
    """
    if now_ms >= job.expires_at:
        raise JobRejected("expired", f"the job expired {(now_ms - job.expires_at) / 1000:.1f} s before its "
                                     f"result was ready; a result is never signed after expiry")
    return now_ms


def check_delivery(job: wire.JobRequest, result: wire.JobResult, *, now_ms: int) -> None:
    """The gateway's check on a worker's result before it is stored and delivered.

    Raises JobRejected("expired") for a result signed at or after the job's
    ``expires_at`` (by the worker's own ``signed_at``), or arriving then (by this
    gateway's clock): the client could no longer trust it, and with a chain it
    would not be paid.
    """
    if result.signed_at >= job.expires_at:
        raise JobRejected("expired", f"the worker signed its result {(result.signed_at - job.expires_at) / 1000:.1f} "
                                     f"s after the job expired")
    if now_ms >= job.expires_at:
        raise JobRejected("expired", f"the result arrived {(now_ms - job.expires_at) / 1000:.1f} s after the job "
                                     f"expired; it is not delivered")


def check_model(model: wire.ModelRef) -> None:
    """Raise JobRejected("model_mismatch") for a job that puts a catalog name on another sha256.

    Every role checks it (the gateway before routing, the worker before
    running): a catalog name is bound to its bytes (inferad.models.check_label),
    so such a job comes only from a client that mislabels what it asks for.
    """
    try:
        check_label(model.name, model.sha256)
    except ModelMismatch as exc:
        raise JobRejected("model_mismatch", str(exc)) from None


def check_served(job: wire.JobRequest, *, served: dict[str, object], max_tokens: int) -> None:
    """Raise JobRejected unless this node can run ``job`` (the worker role).

    ``served`` maps each model (or model and adapter, ``wire.served_key``) the node serves to its engine.
    A catalog name on another sha256 is refused first (:func:`check_model`).
    """
    check_model(job.model)
    if job.served_key not in served:
        with_adapter = f" with adapter {job.adapter.name} ({job.adapter.sha256[:12]}…)" if job.adapter else ""
        raise JobRejected("unknown_model", f"this node does not serve model {job.model.name} "
                                           f"({job.model.sha256[:12]}…){with_adapter}")
    if job.params.max_tokens > max_tokens:
        raise JobRejected("max_tokens", f"max_tokens {job.params.max_tokens} exceeds this node's "
                                        f"limit of {max_tokens}")


def check_context(prompt_tokens: int, max_tokens: int, n_ctx: int) -> None:
    if prompt_tokens + max_tokens > n_ctx:
        raise JobRejected(
            "context_overflow",
            f"prompt ({prompt_tokens} tokens) + max_tokens ({max_tokens}) exceeds the "
            f"context window of {n_ctx} tokens",
        )


@functools.lru_cache(maxsize=4096)
def checksummed(address: str) -> str:
    """An Ethereum address (0x + 40 hex, any case) in its EIP-55 checksum form: the one spelling
    web3 accepts, and so the one a node may key stakes, deposits and charges by."""
    from eth_utils import to_checksum_address

    return to_checksum_address(address)


def check_client_eth(job: wire.JobRequest) -> None:
    """With a chain, a client's address must be in its EIP-55 checksum form: deposits are read
    and charges reserved and settled per address, and web3 takes no other spelling."""
    if job.client_eth != (spelled := checksummed(job.client_eth)):
        raise JobRejected("schema", f"client_eth {job.client_eth} is not in its EIP-55 checksum form "
                                    f"({spelled}); sign the job with that spelling")
