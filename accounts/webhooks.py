"""Budget and key webhooks: registering endpoints, emitting events once, signed delivery.

Signing: each delivery carries `NovaKit-Signature: t=<unix time>,v1=<hex>`
where v1 = HMAC-SHA256(endpoint secret, "<t>.<raw body>"). A receiver
recomputes it and refuses a timestamp older than five minutes, which stops
replays (`signature_verify` below does both).

Targets must be public addresses: a hostname that resolves to a loopback,
private, link-local or otherwise non-global address is refused, when the
endpoint is saved and again at every delivery, for every redirect hop
(redirects are followed by hand, never by the HTTP client). Networks listed
in WEBHOOKS_ALLOWED_PRIVATE_NETWORKS are let through, for development and
tests only.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
import socket
import time
from collections.abc import Iterable
from datetime import datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import urljoin, urlsplit

import orjson
from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction
from django.utils import timezone

from accounts.models import Organization, WebhookDelivery, WebhookEndpoint
from accounts.services import audit_record
from novakit import crypto

if TYPE_CHECKING:
    import httpx

SIGNATURE_HEADER = "NovaKit-Signature"
SIGNATURE_TOLERANCE_SECONDS = 300
_MAX_REDIRECTS = 3


class UnsafeTarget(ValueError):
    """The URL points somewhere a webhook may not go."""


class DeliveryFailed(Exception):
    """The receiver did not take the delivery; Celery retries with backoff."""


# --- targets --------------------------------------------------------------------


def _is_public(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped:
            return _is_public(str(ip.ipv4_mapped))
        # 6to4 and Teredo addresses carry an IPv4 address they can reach: judge it too.
        embedded = ip.sixtofour or (ip.teredo[1] if ip.teredo else None)
        if embedded is not None and not _is_public(str(embedded)):
            return False
    return ip.is_global and not (ip.is_multicast or ip.is_reserved)


def _is_allowed_private(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    return any(ip in ipaddress.ip_network(network)
               for network in settings.WEBHOOKS_ALLOWED_PRIVATE_NETWORKS)


def target_check(url: str) -> None:
    """Refuse a URL that is not https, or whose host resolves to a non-public address.

    Addresses in WEBHOOKS_ALLOWED_PRIVATE_NETWORKS (empty by default) are let
    through, over http too: a development receiver on loopback.
    """
    parts = urlsplit(url)
    if not parts.hostname:
        raise UnsafeTarget("webhook URL has no host")
    try:
        infos = socket.getaddrinfo(parts.hostname, parts.port or 443, proto=socket.IPPROTO_TCP)
    except (socket.gaierror, UnicodeError):
        raise UnsafeTarget(f"cannot resolve {parts.hostname}") from None
    addresses = {str(info[4][0]) for info in infos}
    allowed_private = bool(addresses) and all(_is_allowed_private(a) for a in addresses)
    if parts.scheme != "https" and not (allowed_private and parts.scheme == "http"):
        raise UnsafeTarget("webhook URLs must use https")
    if allowed_private:
        return
    blocked = sorted(address for address in addresses if not _is_public(address))
    if blocked or not addresses:
        raise UnsafeTarget(
            f"{parts.hostname} resolves to a non-public address ({', '.join(blocked)})"
        )


# --- endpoints --------------------------------------------------------------------


def _clean_events(events: Iterable[str]) -> list[str]:
    chosen = sorted(set(events))
    unknown = set(chosen) - set(WebhookEndpoint.Event.values)
    if unknown or not chosen:
        raise ValueError(
            f"events must be some of {', '.join(WebhookEndpoint.Event.values)}"
        )
    return chosen


@transaction.atomic
def webhook_endpoint_create(
    *,
    organization: Organization,
    url: str,
    events: Iterable[str],
    actor: AbstractBaseUser | None = None,
) -> tuple[WebhookEndpoint, str]:
    """Register an endpoint; returns it with its signing secret (shown to the caller once)."""
    target_check(url)
    secret = "whsec_" + secrets.token_urlsafe(32)
    endpoint = WebhookEndpoint.objects.create(
        organization=organization,
        url=url,
        secret_encrypted=crypto.encrypt(secret),
        events=_clean_events(events),
        created_by=actor if actor is not None and actor.is_authenticated else None,
    )
    audit_record(action="webhook.create", actor=actor, organization=organization,
                 target=url, after={"events": endpoint.events})
    return endpoint, secret


@transaction.atomic
def webhook_endpoint_set_active(
    *, endpoint: WebhookEndpoint, is_active: bool, actor: AbstractBaseUser | None
) -> bool:
    """Pause or resume an endpoint; False when it already was in that state.

    A paused endpoint gets no new events, and its queued retries are dropped
    at their next attempt (`webhook_deliver`). The conditional update leaves
    one audit row when two people press the same button at once.
    """
    updated = WebhookEndpoint.objects.filter(pk=endpoint.pk).exclude(
        is_active=is_active).update(is_active=is_active)
    if updated != 1:
        return False
    endpoint.is_active = is_active
    audit_record(action="webhook.enable" if is_active else "webhook.disable", actor=actor,
                 organization_id=endpoint.organization_id, target=endpoint.url,
                 after={"is_active": is_active})
    return True


@transaction.atomic
def webhook_endpoint_delete(*, endpoint: WebhookEndpoint, actor: AbstractBaseUser | None) -> None:
    audit_record(action="webhook.delete", actor=actor, organization_id=endpoint.organization_id,
                 target=endpoint.url, before={"events": endpoint.events})
    endpoint.delete()


# --- events ---------------------------------------------------------------------------


def webhook_emit(
    *, organization_id: int, event: str, event_key: str, data: dict[str, Any]
) -> list[int]:
    """Queue one delivery per subscribed endpoint; an event key already emitted is skipped.

    Safe to call twice for the same happening (a job run twice, two
    processes): the (endpoint, event key) unique constraint keeps one.
    """
    from accounts.tasks import webhook_deliver_task

    created: list[int] = []
    endpoints = WebhookEndpoint.objects.filter(organization_id=organization_id, is_active=True)
    for endpoint in endpoints:
        if event not in endpoint.events:
            continue
        payload = {
            "id": f"evt_{secrets.token_hex(12)}",
            "type": event,
            "created": int(time.time()),
            "organization": endpoint.organization.slug,
            "data": data,
        }
        delivery, is_new = WebhookDelivery.objects.get_or_create(
            endpoint=endpoint, event_key=event_key,
            defaults={"event": event, "payload": payload},
        )
        if is_new:
            created.append(delivery.pk)
            transaction.on_commit(
                lambda pk=delivery.pk: webhook_deliver_task.delay(pk)  # type: ignore[misc]
            )
    return created


# --- delivery ---------------------------------------------------------------------------


def signature_header(secret: str, body: bytes, *, timestamp: int | None = None) -> str:
    stamp = int(time.time()) if timestamp is None else timestamp
    digest = hmac.new(secret.encode(), f"{stamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={stamp},v1={digest}"


def signature_verify(
    secret: str, header: str, body: bytes, *, tolerance: int = SIGNATURE_TOLERANCE_SECONDS
) -> bool:
    """What a receiver does: the signature matches and the timestamp is recent."""
    try:
        fields = dict(part.split("=", 1) for part in header.split(","))
        stamp = int(fields["t"])
    except (ValueError, KeyError):
        return False
    if abs(time.time() - stamp) > tolerance:
        return False
    expected = signature_header(secret, body, timestamp=stamp).split("v1=", 1)[1]
    return hmac.compare_digest(expected, fields.get("v1", ""))


def _post(url: str, body: bytes, headers: dict[str, str]) -> httpx.Response:
    """POST, following redirects by hand so every hop's target is checked."""
    import httpx  # here: only Celery's workers send, and web workers need not hold it (~6 MB)

    with httpx.Client(timeout=10, follow_redirects=False) as client:
        for _ in range(_MAX_REDIRECTS + 1):
            target_check(url)
            response = client.post(url, content=body, headers=headers)
            if response.status_code in (301, 302, 303, 307, 308) and "location" in response.headers:
                url = urljoin(url, response.headers["location"])
                continue
            return response
    raise DeliveryFailed("too many redirects")


def webhook_deliver(*, delivery_id: int) -> WebhookDelivery:
    """One attempt. DeliveryFailed means retry later; an unsafe target fails for good."""
    import httpx

    delivery = WebhookDelivery.objects.select_related("endpoint").get(pk=delivery_id)
    if delivery.status == WebhookDelivery.Status.DELIVERED:
        return delivery
    endpoint = delivery.endpoint
    if not endpoint.is_active:
        _record(delivery, status=WebhookDelivery.Status.FAILED, error="endpoint disabled")
        return delivery
    body = orjson.dumps(delivery.payload)
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "NovaKit-Webhooks/1",
        SIGNATURE_HEADER: signature_header(crypto.decrypt(endpoint.secret_encrypted), body),
    }
    now = timezone.now()
    WebhookDelivery.objects.filter(pk=delivery.pk).update(
        attempts=delivery.attempts + 1, last_attempt_at=now, next_attempt_at=None)
    delivery.attempts += 1
    delivery.last_attempt_at, delivery.next_attempt_at = now, None
    try:
        response = _post(endpoint.url, body, headers)
    except UnsafeTarget as exc:
        _record(delivery, status=WebhookDelivery.Status.FAILED, error=str(exc))
        return delivery
    except httpx.HTTPError as exc:
        _record(delivery, error=f"{type(exc).__name__}: {exc}"[:500])
        raise DeliveryFailed(str(exc)) from exc
    if 200 <= response.status_code < 300:
        _record(delivery, status=WebhookDelivery.Status.DELIVERED, code=response.status_code)
        return delivery
    _record(delivery, code=response.status_code, error=f"HTTP {response.status_code}")
    raise DeliveryFailed(f"receiver answered {response.status_code}")


def webhook_retry_scheduled(*, delivery_id: int, at: datetime) -> None:
    """Note when the next attempt is due, for the portal's list of attempts."""
    WebhookDelivery.objects.filter(pk=delivery_id, status=WebhookDelivery.Status.PENDING).update(
        next_attempt_at=at)


def webhook_give_up(*, delivery_id: int) -> None:
    WebhookDelivery.objects.filter(pk=delivery_id).exclude(
        status=WebhookDelivery.Status.DELIVERED).update(status=WebhookDelivery.Status.FAILED,
                                                        next_attempt_at=None)


def _record(delivery: WebhookDelivery, *, status: str | None = None, code: int | None = None,
            error: str = "") -> None:
    changes: dict[str, Any] = {"last_status_code": code, "last_error": error}
    if status is not None:
        changes["status"] = status
        if status == WebhookDelivery.Status.DELIVERED:
            changes["delivered_at"] = timezone.now()
    WebhookDelivery.objects.filter(pk=delivery.pk).update(**changes)
    for name, value in changes.items():
        setattr(delivery, name, value)
