"""Prometheus metrics of one server (``GET /metrics``), in a registry of its own so that several apps in one
process (tests, an embedding application) never share counters."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("lmtune_requests", "HTTP requests by route and status", ["route", "status"],
                                registry=r)
        self.latency = Histogram("lmtune_request_seconds", "Time from request to response (streams: to the end)",
                                 ["route", "status"], buckets=LATENCY_BUCKETS, registry=r)
        self.queue_depth = Gauge("lmtune_queue_depth", "Inputs waiting for a batch", ["model", "kind"], registry=r)
        self.batch_size = Histogram("lmtune_batch_size", "Inputs (or prompts) per batch run on the model",
                                    ["model", "kind"], buckets=BATCH_BUCKETS, registry=r)
        self.tokens = Counter("lmtune_tokens", "Tokens read (input) and written (generated)", ["model", "kind"],
                              registry=r)
        self.rejections = Counter("lmtune_rejections", "Requests refused or dropped, by reason", ["reason"],
                                  registry=r)
        self.in_flight = Gauge("lmtune_in_flight_requests", "Requests being answered", registry=r)
        self.ready = Gauge("lmtune_ready", "1 when every run is loaded and the server is not draining", registry=r)

    def text(self) -> bytes:
        return generate_latest(self.registry)
