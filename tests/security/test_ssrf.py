"""Server-side request forgery: the gateway never fetches a URL a caller gives it.

- Image URLs in a chat completion go upstream as they are; the gateway opens no connection
  to them (a listener on loopback counts connections).
- Webhook deliveries refuse a redirect to a loopback, IPv4-mapped or link-local IPv6
  address before connecting (tests/webhooks covers 127.0.0.2 redirects and the plain forms at
  registration; here: the IPv6 forms behind a redirect, and the other spellings of loopback).
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator

import httpx
import pytest

from accounts.models import WebhookDelivery
from accounts.services import api_key_create, api_key_revoke
from accounts.webhooks import UnsafeTarget, target_check, webhook_endpoint_create
from tests.support.webhook_receiver import Receiver


class ConnectionCounter:
    """A TCP listener that only counts who connects (and hangs up on them)."""

    def __init__(self, host: str) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.bind((host, 0))
        self.sock.listen(16)
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self.host = f"[{host}]" if family == socket.AF_INET6 else host
        self.connections = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                connection, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections += 1
            connection.close()

    def url(self, scheme: str, path: str) -> str:
        return f"{scheme}://{self.host}:{self.port}{path}"

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


@pytest.fixture
def listener_on() -> Iterator[Callable[[str], ConnectionCounter]]:
    opened: list[ConnectionCounter] = []

    def open_on(host: str) -> ConnectionCounter:
        listener = ConnectionCounter(host)
        opened.append(listener)
        return listener

    yield open_on
    for listener in opened:
        listener.close()


# --- image URLs ------------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
def test_image_urls_go_upstream_unchanged_and_are_never_fetched(
        tenant, fake_upstream, live_gateway, listener_on, stream):
    listener = listener_on("127.0.0.1")
    seed_form = listener.url("http", "/internal/cat.png?token=abc")
    openai_form = listener.url("http", "/internal/dog.png")
    body = {"model": "openai/gpt-4o", "max_tokens": 5, "stream": stream, "messages": [
        {"role": "user", "content": "Describe.", "images": [seed_form]},
        {"role": "user", "content": [{"type": "text", "text": "And this?"},
                                     {"type": "image_url", "image_url": {"url": openai_form}}]},
    ]}

    response = httpx.post(f"{live_gateway.api_base}/chat/completions", json=body, timeout=20,
                          headers={"Authorization": f"Bearer {tenant.secret}"})
    time.sleep(0.3)  # room for a fetch that would run beside the answer

    assert response.status_code == 200, response.text
    sent = fake_upstream.requests[-1]["body"]["messages"]
    assert sent[0]["content"][1] == {"type": "image_url", "image_url": {"url": seed_form}}
    assert sent[1]["content"][1] == {"type": "image_url", "image_url": {"url": openai_form}}
    assert listener.connections == 0
    # The listener does see a fetch when there is one.
    socket.create_connection(("127.0.0.1", listener.port), timeout=2).close()
    deadline = time.monotonic() + 2
    while listener.connections == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert listener.connections == 1


# --- webhook targets -----------------------------------------------------------------------


def _redirector(location: str) -> Receiver:
    """A webhook receiver on 127.0.0.1 that answers every delivery with a redirect."""
    receiver = Receiver()
    receiver.redirect_to = location
    return receiver


def _deliver_a_revocation_through(redirector: Receiver, tenant) -> WebhookDelivery:  # type: ignore[no-untyped-def]
    endpoint, _ = webhook_endpoint_create(organization=tenant.org, url=redirector.url,
                                          events=["key.revoked"])
    key, _ = api_key_create(organization=tenant.org, name="doomed")
    api_key_revoke(key=key)  # the delivery runs when this commits (Celery eager here)
    return WebhookDelivery.objects.get(endpoint=endpoint)


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("host", ["::1", "::ffff:127.0.0.2"],
                         ids=["ipv6-loopback", "ipv4-mapped-loopback"])
def test_a_redirect_to_a_loopback_address_in_ipv6_form_is_never_connected_to(
        tenant, settings, listener_on, host):
    settings.WEBHOOKS_ALLOWED_PRIVATE_NETWORKS = ["127.0.0.1/32"]  # the first hop only
    # The IPv4-mapped address reaches a listener on 127.0.0.2 through a dual-stack socket.
    listener = listener_on("::1" if host == "::1" else "127.0.0.2")
    target = f"https://[{host}]:{listener.port}/steal"
    redirector = _redirector(target)
    try:
        delivery = _deliver_a_revocation_through(redirector, tenant)
    finally:
        redirector.stop()
    time.sleep(0.2)

    assert listener.connections == 0
    assert len(redirector.received) == 1
    assert delivery.status == WebhookDelivery.Status.FAILED
    assert "non-public" in delivery.last_error


@pytest.mark.django_db(transaction=True)
def test_a_redirect_to_a_link_local_ipv6_address_is_refused(tenant, settings):
    settings.WEBHOOKS_ALLOWED_PRIVATE_NETWORKS = ["127.0.0.1/32"]
    redirector = _redirector("https://[fe80::a9fe:a9fe]/latest/meta-data")
    try:
        delivery = _deliver_a_revocation_through(redirector, tenant)
    finally:
        redirector.stop()

    assert len(redirector.received) == 1
    assert delivery.status == WebhookDelivery.Status.FAILED
    assert "non-public" in delivery.last_error


@pytest.mark.parametrize("host", [
    "[fe80::1]", "[fd00::1]", "[::ffff:10.0.0.1]", "[::ffff:169.254.169.254]",
    "[::ffff:7f00:1]", "[::127.0.0.1]", "[64:ff9b::7f00:1]", "[::]",
    "2130706433", "127.1", "0x7f000001", "0177.0.0.1", "100.64.0.1", "[ff02::1]",
    # 6to4 of 127.0.0.1 and of 10.0.0.1; Teredo whose client is 10.0.0.1 (stored inverted).
    "[2002:7f00:1::]", "[2002:a00:1::1]", "[2001:0:4136:e378:8000:63bf:f5ff:fffe]",
])
def test_other_spellings_of_private_addresses_are_refused(host, settings):
    settings.WEBHOOKS_ALLOWED_PRIVATE_NETWORKS = []

    with pytest.raises(UnsafeTarget, match="non-public"):
        target_check(f"https://{host}/hook")
