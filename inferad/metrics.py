"""Prometheus metrics of one node (``GET /metrics`` on the HTTP API).

A registry per node (tests run several in one process); gauges that mirror
live state (peers, queue) are read when scraped, so they are never stale.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 60, 120)


class Metrics:
    """The node's counters and histograms, and gauges read from the callables given:
    ``peers()`` (peers with a fresh advert), ``active_jobs()`` (routing or running),
    ``queued_jobs()`` (waiting for an engine)."""

    def __init__(self, *, peers: Callable[[], int], active_jobs: Callable[[], int],
                 queued_jobs: Callable[[], int]) -> None:
        self.registry = registry = CollectorRegistry()
        self.jobs = Counter("inferad_jobs", "Jobs this node routed as gateway, by outcome (ok or error code)",
                            ["outcome"], registry=registry)
        self.tokens = Counter("inferad_tokens_generated", "Output tokens of jobs routed by this node",
                              registry=registry)
        self.latency = Histogram("inferad_job_seconds", "Gateway time from admission to the stored result",
                                 buckets=LATENCY_BUCKETS, registry=registry)
        self.first_token = Histogram("inferad_api_first_token_seconds", "HTTP API time to the first streamed token",
                                     buckets=LATENCY_BUCKETS, registry=registry)
        self.attestations = Counter("inferad_attestations", "Attestations this node accepted, by verdict",
                                    ["verdict"], registry=registry)
        self.api_requests = Counter("inferad_api_requests", "HTTP API requests, by path and status",
                                    ["path", "status"], registry=registry)
        for name, text, read in (("inferad_peers", "Peers with a fresh advert", peers),
                                 ("inferad_active_jobs", "Jobs this node is routing or running", active_jobs),
                                 ("inferad_queued_jobs", "Jobs waiting for this node's engines", queued_jobs)):
            Gauge(name, text, registry=registry).set_function(read)

    def job_done(self, outcome: str, tokens: int, seconds: float) -> None:
        self.jobs.labels(outcome).inc()
        if outcome == "ok":
            self.tokens.inc(tokens)
            self.latency.observe(seconds)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
