"""Whether a node takes a job: the rules, as a pure function.

The order is cheap-first (clock, then model, then limits); signature and
schema were checked by the wire decoder before, replay and queue space are
checked after, against the store and the engine.
"""

from __future__ import annotations

from p2p import wire


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


def check_served(job: wire.JobRequest, *, served: dict[str, object], max_tokens: int) -> None:
    """Raise JobRejected unless this node can run ``job`` (the worker role).

    ``served`` maps the sha256 of each model the node serves to its engine.
    """
    if job.model.sha256 not in served:
        raise JobRejected("unknown_model",
                          f"this node does not serve model {job.model.name} ({job.model.sha256[:12]}…)")
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
