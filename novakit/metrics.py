"""Prometheus metrics, served at /metrics to the scraper only.

With several worker processes (novakit.runtime.serve --workers), set PROMETHEUS_MULTIPROC_DIR
to an empty directory before start (platform/serve does): each process then
writes its samples there and /metrics adds them up, whichever process answers.

The base layer: it knows no app. An app hands it plain values (`record_outcome`
reads any object with an outcome's fields) and its scrape-time collectors reach
`metrics_view` through the URLconf (novakit/urls.py).
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Callable, Sequence
from typing import Protocol

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.registry import REGISTRY, Collector

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)

REQUESTS = Counter(
    "novakit_requests_total", "Admitted chat completion requests by outcome",
    ["model", "status", "http_status"],
)
LATENCY = Histogram(
    "novakit_request_duration_seconds", "Time from admission to the end of the answer",
    ["model", "streamed"], buckets=_LATENCY_BUCKETS,
)
TIME_TO_FIRST_TOKEN = Histogram(
    "novakit_time_to_first_token_seconds", "Time from admission to the first answer chunk",
    ["model"], buckets=_LATENCY_BUCKETS,
)
UPSTREAM_ERRORS = Counter(
    "novakit_upstream_errors_total", "Failed upstream attempts by provider and kind",
    ["provider", "kind"],
)
CREDITS_CHARGED = Counter(
    "novakit_credits_charged_total", "Credits charged at settlement", ["model"],
)
REFUSALS_UNRECORDED = Counter(
    "novakit_refusals_unrecorded_total",
    "Refused requests not written to the usage records: past the per-key rate of "
    "USAGE_REFUSALS_PER_KEY_PER_SECOND", ["http_status"],
)
RATE_LIMIT_REFUSALS = Counter(
    "novakit_rate_limit_refusals_total", "Requests refused with 429 by the rate limiter",
    ["limit"],
)


class Outcome(Protocol):
    """What `record_outcome` reads of a finished request (completions' RequestOutcome has it)."""

    @property
    def model(self) -> str: ...
    @property
    def status(self) -> str: ...
    @property
    def http_status(self) -> int: ...
    @property
    def streamed(self) -> bool: ...
    @property
    def latency_ms(self) -> int: ...
    @property
    def ttft_ms(self) -> int | None: ...


def record_outcome(outcome: Outcome, *, charged: int) -> None:
    REQUESTS.labels(outcome.model, outcome.status, str(outcome.http_status)).inc()
    LATENCY.labels(outcome.model, str(outcome.streamed).lower()).observe(outcome.latency_ms / 1000)
    if outcome.ttft_ms is not None:
        TIME_TO_FIRST_TOKEN.labels(outcome.model).observe(outcome.ttft_ms / 1000)
    if charged:
        CREDITS_CHARGED.labels(outcome.model).inc(charged)


def record_upstream_error(*, provider: str, kind: str) -> None:
    UPSTREAM_ERRORS.labels(provider, kind).inc()


def _registry() -> CollectorRegistry:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    else:
        registry = REGISTRY
    return registry


def _allowed(request: HttpRequest) -> bool:
    token = settings.METRICS_TOKEN
    if token:
        import hmac

        given = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        return hmac.compare_digest(given.encode(), token.encode())
    try:
        address = ipaddress.ip_address(request.META.get("REMOTE_ADDR", ""))
    except ValueError:
        return False
    return any(address in ipaddress.ip_network(net) for net in settings.METRICS_ALLOWED_NETWORKS)


def metrics_view(request: HttpRequest, *,
                 scrape_collectors: Sequence[Callable[[], Collector]] = ()) -> HttpResponse:
    """The samples, and those of `scrape_collectors`: collectors read at scrape time (from the
    database, so every process reports the same truth), made afresh for each scrape."""
    if not _allowed(request):
        return HttpResponse("metrics are not public\n", status=403, content_type="text/plain")
    registry = _registry()
    extra = CollectorRegistry()
    for make_collector in scrape_collectors:
        extra.register(make_collector())
    body = generate_latest(registry) + generate_latest(extra)
    return HttpResponse(body, content_type=CONTENT_TYPE_LATEST)
