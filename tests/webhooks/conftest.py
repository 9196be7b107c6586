"""Fixtures for the webhook tests: a real receiver on loopback, which the targets check lets in,
and (from tests/celery) a real broker and workers."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.celery.conftest import celery_broker, start_workers  # noqa: F401  (fixtures)
from tests.support.webhook_receiver import Receiver


@pytest.fixture
def receiver(settings) -> Iterator[Receiver]:  # type: ignore[no-untyped-def]
    settings.WEBHOOKS_ALLOWED_PRIVATE_NETWORKS = ["127.0.0.1/32"]
    server = Receiver()
    yield server
    server.stop()
