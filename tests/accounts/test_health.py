"""Liveness and readiness probes for load balancers and Kubernetes."""

from __future__ import annotations

import socket

import pytest


def test_given_the_process_is_up_then_healthz_is_200(client):
    response = client.get("/healthz")

    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


# transactional_db: the probe closes its database connection after checking,
# as it must in production, which a test wrapped in one transaction cannot survive.
@pytest.mark.django_db(transaction=True)
def test_given_the_database_and_redis_up_then_readyz_is_200(client, settings):
    response = client.get("/readyz")

    assert response.status_code == 200, response.content
    body = response.json()
    assert body["status"] == "ok"
    assert body["checks"]["database"] is True
    # Redis is checked exactly when it is configured (the PostgreSQL run sets REDIS_URL).
    if settings.REDIS_URL:
        assert body["checks"]["redis"] is True
    else:
        assert "redis" not in body["checks"]


@pytest.mark.django_db(transaction=True)
def test_given_redis_configured_but_down_then_readyz_is_503(client, settings):
    with socket.socket() as probe:  # a loopback port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings.REDIS_URL = f"redis://127.0.0.1:{port}/0"

    response = client.get("/readyz")

    assert response.status_code == 503
    assert response.json() == {
        "status": "unavailable", "checks": {"database": True, "redis": False}
    }
