"""Prometheus metrics of one server (own registry, so several apps can live in one process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900)


class Metrics:
    """All series exported on ``GET /metrics`` (names prefixed ``facetrust_``)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "facetrust_http_requests",
            "HTTP requests by route and status",
            ["method", "route", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "facetrust_http_request_duration_seconds",
            "HTTP request latency",
            ["method", "route"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.inference = Histogram(
            "facetrust_inference_duration_seconds",
            "analysis time in a worker (decode+detect+classify)",
            ["media_type"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_wait = Histogram(
            "facetrust_queue_wait_seconds",
            "time an admitted analysis waited for a worker",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_depth = Gauge(
            "facetrust_queue_depth", "admitted analyses waiting for a worker", registry=r
        )
        self.in_progress = Gauge("facetrust_analyses_in_progress", "analyses running in workers", registry=r)
        self.rejections = Counter(
            "facetrust_rejections", "refused requests by reason", ["reason"], registry=r
        )
        self.faces = Histogram(
            "facetrust_faces_per_frame",
            "faces found per image or sampled video frame",
            buckets=(0, 1, 2, 3, 5, 8, 13, 21, 50),
            registry=r,
        )
        self.results = Counter(
            "facetrust_results",
            "analysis results by media type and status",
            ["media_type", "status"],
            registry=r,
        )
        self.worker_restarts = Counter(
            "facetrust_worker_restarts", "worker processes replaced, by reason", ["reason"], registry=r
        )
        self.workers_ready = Gauge("facetrust_workers_ready", "warm worker processes", registry=r)
        self.jobs = Gauge("facetrust_jobs", "jobs kept, by state", ["state"], registry=r)
