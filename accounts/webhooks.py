"""Budget and key webhooks: registering endpoints, emitting events once, signed delivery.

Signing: each delivery carries `NovaKit-Signature: t=<unix time>,v1=<hex>`
where v1 = HMAC-SHA256(endpoint secret, "<t>.<raw body>"). A receiver
recomputes it and refuses a timestamp older than five minutes, which stops
replays (`signature_verify` below does both).

Retries: an attempt is made at once; a failed one is not retried in place but
given a due time (10 s, 20 s, 40 s ... up to an hour, `MAX_ATTEMPTS` in all),
and the periodic job `webhook_retries_due` sends what is due. Celery beat runs
that job with a broker, the in-process beat without one (novakit/scheduler.py),
so a retry waits its backoff in both modes, and the page can say when it is.

Targets must be public addresses (accounts/webhook_targets.py), checked when
the endpoint is saved and again at every delivery, for every redirect hop
(redirects are followed by hand, never by the HTTP client).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import secrets
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any
from urllib.parse import urljoin

import orjson
from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction
from django.utils import timezone

from accounts.models import Organization, WebhookDelivery, WebhookEndpoint
from accounts.services import audit_record
from accounts.webhook_targets import UnsafeTarget, target_check
from novakit import crypto

if TYPE_CHECKING:
    import httpx

SIGNATURE_HEADER = "NovaKit-Signature"
SIGNATURE_TOLERANCE_SECONDS = 300
# What "send a test event" sends; no endpoint subscribes to it.
TEST_EVENT = "webhook.test"
_MAX_REDIRECTS = 3


class TooManyRedirects(Exception):
    """The receiver redirected more than `_MAX_REDIRECTS` times: a failed attempt."""


# Attempts in all, the first included; then the delivery is marked failed.
MAX_ATTEMPTS = 9
# An attempt claimed (by the due job, or by starting) that never reports back, its
# process killed, is picked up again after this. Longer than a task may run (60 s).
_ATTEMPT_LEASE = dt.timedelta(seconds=120)
# Deliveries the due job hands out per run; the rest wait for its next run.
_DUE_BATCH = 50


def retry_delay(attempts: int) -> dt.timedelta:
    """How long after its `attempts`-th failed attempt a delivery is tried again."""
    return dt.timedelta(seconds=min(3600, 10 * 2 ** (attempts - 1)))


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


def _payload(endpoint: WebhookEndpoint, event: str, data: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": f"evt_{secrets.token_hex(12)}",
        "type": event,
        "created": int(time.time()),
        "organization": endpoint.organization.slug,
        "data": data,
    }


def _first_attempt_due() -> dt.datetime:
    """When a new delivery is due should its first attempt never run (the broker was away
    at commit): the due job sends it then."""
    return timezone.now() + _ATTEMPT_LEASE


def _queue(delivery: WebhookDelivery) -> None:
    """Send the first attempt once the row, created due at `_first_attempt_due`, is committed
    (at once, eagerly, without a broker)."""
    from accounts.tasks import webhook_deliver_task

    transaction.on_commit(
        lambda pk=delivery.pk: webhook_deliver_task.delay(pk)  # type: ignore[misc]
    )


def webhook_emit(
    *, organization_id: int, event: str, event_key: str, data: dict[str, Any]
) -> list[int]:
    """Queue one delivery per subscribed endpoint; an event key already emitted is skipped.

    Safe to call twice for the same happening (a job run twice, two
    processes): the (endpoint, event key) unique constraint keeps one.
    """
    created: list[int] = []
    endpoints = WebhookEndpoint.objects.filter(organization_id=organization_id, is_active=True)
    for endpoint in endpoints:
        if event not in endpoint.events:
            continue
        delivery, is_new = WebhookDelivery.objects.get_or_create(
            endpoint=endpoint, event_key=event_key,
            defaults={"event": event, "payload": _payload(endpoint, event, data),
                      "next_attempt_at": _first_attempt_due()},
        )
        if is_new:
            created.append(delivery.pk)
            _queue(delivery)
    return created


@transaction.atomic
def webhook_test_send(*, endpoint: WebhookEndpoint, actor: AbstractBaseUser | None
                      ) -> WebhookDelivery:
    """Send a `webhook.test` event to this endpoint only, as a delivery like any other.

    Whatever it subscribes to: the point is to see a receiver verify a signed
    delivery before a real event depends on it. A disabled endpoint is refused,
    as its deliveries would be dropped.
    """
    if not endpoint.is_active:
        raise ValueError("the endpoint is disabled: enable it to send it a test event")
    event = TEST_EVENT
    delivery = WebhookDelivery.objects.create(
        endpoint=endpoint, event=event, event_key=f"{event}:{secrets.token_hex(12)}",
        payload=_payload(endpoint, event, {"endpoint_id": endpoint.pk, "url": endpoint.url}),
        next_attempt_at=_first_attempt_due(),
    )
    audit_record(action="webhook.test", actor=actor, organization_id=endpoint.organization_id,
                 target=endpoint.url, after={"delivery_id": delivery.pk,
                                             "event_id": delivery.payload["id"]})
    _queue(delivery)
    return delivery


@transaction.atomic
def webhook_redeliver(*, delivery: WebhookDelivery, actor: AbstractBaseUser | None
                      ) -> WebhookDelivery:
    """Queue a fresh delivery of the same payload: the same event id, so a receiver that
    already took it can tell, and a new signature (timestamp) when it is sent.

    A delivery still being retried is refused: it is sent already, at its due time.
    """
    endpoint = delivery.endpoint
    if delivery.status == WebhookDelivery.Status.PENDING:
        raise ValueError("this delivery is still pending: it is retried at its next attempt")
    if not endpoint.is_active:
        raise ValueError("the endpoint is disabled: enable it to redeliver to it")
    again = WebhookDelivery.objects.create(
        endpoint=endpoint, event=delivery.event,
        event_key=f"redeliver:{delivery.pk}:{secrets.token_hex(12)}",
        payload=delivery.payload, next_attempt_at=_first_attempt_due(),
    )
    audit_record(action="webhook.redeliver", actor=actor,
                 organization_id=endpoint.organization_id, target=endpoint.url,
                 before={"delivery_id": delivery.pk, "status": delivery.status},
                 after={"delivery_id": again.pk, "event_id": delivery.payload.get("id")})
    _queue(again)
    return again


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
    raise TooManyRedirects(f"more than {_MAX_REDIRECTS} redirects")


def webhook_deliver(*, delivery_id: int) -> WebhookDelivery:
    """One attempt, never retried in place: a failure sets when the next one is due
    (`retry_delay`), or fails the delivery after `MAX_ATTEMPTS`. An unsafe target
    fails for good."""
    import httpx

    delivery = WebhookDelivery.objects.select_related("endpoint").get(pk=delivery_id)
    if delivery.status != WebhookDelivery.Status.PENDING:
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
    # Should this process die mid-attempt, the due job tries again when the lease ends.
    WebhookDelivery.objects.filter(pk=delivery.pk).update(
        attempts=delivery.attempts + 1, last_attempt_at=now, next_attempt_at=now + _ATTEMPT_LEASE)
    delivery.attempts += 1
    delivery.last_attempt_at = now
    try:
        response = _post(endpoint.url, body, headers)
    except UnsafeTarget as exc:
        _record(delivery, status=WebhookDelivery.Status.FAILED, error=str(exc))
    except (httpx.HTTPError, TooManyRedirects) as exc:
        _failed(delivery, error=f"{type(exc).__name__}: {exc}"[:500])
    else:
        if 200 <= response.status_code < 300:
            _record(delivery, status=WebhookDelivery.Status.DELIVERED, code=response.status_code)
        else:
            _failed(delivery, code=response.status_code, error=f"HTTP {response.status_code}")
    return delivery


def webhook_retries_due(*, now: dt.datetime | None = None) -> int:
    """Send the deliveries whose next attempt is due; the number handed out.

    Each is claimed by moving its due time on by the lease, only where it is
    still the time read: two runs at once (two web processes' beats) send it once.
    """
    from accounts.tasks import webhook_deliver_task

    now = now or timezone.now()
    due = list(WebhookDelivery.objects.filter(
        status=WebhookDelivery.Status.PENDING, next_attempt_at__lte=now,
        endpoint__is_active=True,
    ).order_by("next_attempt_at").values_list("pk", "next_attempt_at")[:_DUE_BATCH])
    # Those of a disabled endpoint are dropped, as their attempt would drop them.
    WebhookDelivery.objects.filter(
        status=WebhookDelivery.Status.PENDING, next_attempt_at__lte=now,
        endpoint__is_active=False,
    ).update(status=WebhookDelivery.Status.FAILED, next_attempt_at=None,
             last_error="endpoint disabled")
    sent = 0
    for pk, due_at in due:
        claimed = WebhookDelivery.objects.filter(
            pk=pk, status=WebhookDelivery.Status.PENDING, next_attempt_at=due_at,
        ).update(next_attempt_at=now + _ATTEMPT_LEASE)
        if claimed:
            webhook_deliver_task.delay(pk)
            sent += 1
    return sent


def _failed(delivery: WebhookDelivery, *, code: int | None = None, error: str) -> None:
    """A failed attempt: the next one is due after the backoff, or there is none."""
    if delivery.attempts >= MAX_ATTEMPTS:
        _record(delivery, status=WebhookDelivery.Status.FAILED, code=code, error=error)
    else:
        _record(delivery, code=code, error=error,
                next_attempt_at=timezone.now() + retry_delay(delivery.attempts))


def _record(delivery: WebhookDelivery, *, status: str | None = None, code: int | None = None,
            error: str = "", next_attempt_at: dt.datetime | None = None) -> None:
    changes: dict[str, Any] = {"last_status_code": code, "last_error": error,
                               "next_attempt_at": next_attempt_at}
    if status is not None:
        changes["status"] = status
        if status == WebhookDelivery.Status.DELIVERED:
            changes["delivered_at"] = timezone.now()
    WebhookDelivery.objects.filter(pk=delivery.pk).update(**changes)
    for name, value in changes.items():
        setattr(delivery, name, value)
