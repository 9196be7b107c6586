"""The inference API runs a short middleware chain on the event loop, not Django's thread hops."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from asgiref.sync import SyncToAsync

from tests.completions.helpers import post_chat

pytestmark = pytest.mark.django_db(transaction=True)

ECHO = {"model": "novakit/echo", "messages": [{"role": "user", "content": "ping"}]}


@pytest.fixture
def http(live_gateway: Any) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=live_gateway.api_base, timeout=10) as client:
        yield client


def test_a_completion_makes_no_more_thread_hops_than_djangos_request_signals(
    tenant, http, monkeypatch
):
    for _ in range(3):  # warm: the key is cached, the catalog loaded
        assert post_chat(http, tenant, ECHO).status_code == 200
    hops: list[str] = []
    call = SyncToAsync.__call__

    def counted(self: SyncToAsync, *args: Any, **kwargs: Any) -> Any:
        if self._thread_sensitive:  # the request's own thread, not the database pool
            hops.append(getattr(self.func, "__qualname__", repr(self.func)))
        return call(self, *args, **kwargs)

    monkeypatch.setattr(SyncToAsync, "__call__", counted)

    for _ in range(5):
        assert post_chat(http, tenant, ECHO).status_code == 200

    # Django's request_started signal (sync receivers) and response.close() take one hop
    # each; the full chain's MiddlewareMixin hooks would add about a dozen more.
    assert len(hops) <= 3 * 5, hops


def test_inference_answers_keep_the_security_request_id_and_length_headers(tenant, http):
    response = post_chat(http, tenant, ECHO)

    assert response.status_code == 200
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Referrer-Policy"] == "same-origin"
    assert response.headers["X-Request-ID"] == response.json()["id"]
    assert int(response.headers["Content-Length"]) == len(response.content)  # not chunked
    assert "csrftoken" not in response.headers.get("Set-Cookie", "")
