"""Prometheus metrics of one node (``GET /metrics`` on the HTTP API).

A registry per node (tests run several in one process); gauges that mirror
live state (peers, queue) are read when scraped, so they are never stale.
"""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 60, 120)


class Metrics:
    def __init__(self, node: Any) -> None:
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
        Gauge("inferad_peers", "Peers with a fresh advert", registry=registry).set_function(
            lambda: len(node.peers.fresh(time.monotonic())))
        Gauge("inferad_active_jobs", "Jobs this node is routing or running", registry=registry).set_function(
            lambda: node.active_jobs)
        Gauge("inferad_queued_jobs", "Jobs waiting for this node's engines", registry=registry).set_function(
            lambda: sum(s.worker.load.queued for s in node.served.values()))

    def job_done(self, outcome: str, tokens: int, seconds: float) -> None:
        self.jobs.labels(outcome).inc()
        if outcome == "ok":
            self.tokens.inc(tokens)
            self.latency.observe(seconds)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
