"""Billing's Prometheus collectors, read at scrape time (novakit/urls.py hands them to /metrics)."""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from billing.models import Reservation


class OpenReservationsCollector(Collector):
    """Read at scrape time from the database, so every process reports the same truth."""

    def collect(self) -> Iterable[GaugeMetricFamily]:
        gauge = GaugeMetricFamily(
            "novakit_open_reservations", "Credit reservations not yet settled or released"
        )
        gauge.add_metric([], Reservation.objects.filter(status=Reservation.Status.OPEN).count())
        yield gauge
