"""Prometheus metrics of the service, served as ``GET /metrics`` on the management address.

Requests by route, method and status, request latency histograms by route, and the index at
scrape time (vectors, catalogued images, images waiting for a reindex, index file bytes).
With several gunicorn workers, ``twice serve`` and gunicorn.conf.py point
``PROMETHEUS_MULTIPROC_DIR`` at a fresh folder before the workers start
(``twice.web.serve.prepare_multiprocess_dir``), so that a scrape answered by any worker counts
the requests of all of them (prometheus-client's multiprocess mode).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

LOG = logging.getLogger(__name__)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"  # read at import: set it before the workers start
CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4
# Seconds: a cached exact hit takes milliseconds, a cold model or a big thumbnail seconds.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class IndexCollector:
    """Gauges read at scrape time from ``stats()`` (the service's ``/stats`` counts)."""

    def __init__(self, stats: Callable[[], dict]) -> None:
        self.stats = stats

    def describe(self) -> list:
        return []  # registering must not read the stats (that would load the model)

    def collect(self):
        try:
            stats = self.stats()
        except Exception:  # a scrape must not fail because the index is not ready
            LOG.debug("metrics: no stats", exc_info=True)
            return
        for name, key, text in (
            ("twice_index_vectors", "vectors", "vectors in the loaded index"),
            ("twice_catalog_images", "images", "images in the catalog"),
            ("twice_catalog_pending", "pending", "catalogued images not yet in the index (reindex to go)"),
            ("twice_index_file_bytes", "index_file_bytes", "size of the index file"),
        ):
            yield GaugeMetricFamily(name, text, value=stats[key])
        yield GaugeMetricFamily(
            "twice_index_ready", "1 when searches can be answered", value=int(stats["ready"])
        )


class Metrics:
    """One app's request counters and latency histograms, and the registry ``/metrics`` reads."""

    def __init__(self, stats: Callable[[], dict]) -> None:
        own = CollectorRegistry()
        self.requests = Counter(
            "twice_http_requests", "HTTP requests answered", ["route", "method", "status"], registry=own
        )
        self.latency = Histogram(
            "twice_http_request_duration_seconds",
            "time to answer an HTTP request",
            ["route", "method"],
            buckets=LATENCY_BUCKETS,
            registry=own,
        )
        folder = os.environ.get(MULTIPROC_ENV)
        if folder:
            from prometheus_client import multiprocess

            self.registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(self.registry, folder)
        else:
            self.registry = own
        self.registry.register(IndexCollector(stats))

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        self.requests.labels(route, method, str(status)).inc()
        self.latency.labels(route, method).observe(seconds)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
