"""Budget and key webhooks: signed, retried, delivered once, and never to private addresses."""

from __future__ import annotations

import datetime as dt
import json
import time

import pytest
from django.test import Client
from django.utils import timezone

from accounts import webhooks
from accounts.models import WebhookDelivery
from accounts.services import api_key_create, api_key_revoke, api_keys_expiring_notify
from accounts.webhooks import UnsafeTarget, signature_verify, target_check, webhook_endpoint_create

# Deliveries are queued when the transaction that emitted them commits.
pytestmark = pytest.mark.django_db(transaction=True)


def test_a_revoked_key_is_announced_with_a_verifiable_signature(tenant, receiver):
    endpoint, secret = webhook_endpoint_create(organization=tenant.org, url=receiver.url,
                                               events=["key.revoked"])
    key, _ = api_key_create(organization=tenant.org, name="doomed")

    api_key_revoke(key=key, reason="leaked")

    assert len(receiver.received) == 1
    request = receiver.received[0]
    assert signature_verify(secret, request["headers"]["NovaKit-Signature"], request["body"])
    assert not signature_verify("whsec_wrong", request["headers"]["NovaKit-Signature"],
                                request["body"])
    assert not signature_verify(secret, request["headers"]["NovaKit-Signature"],
                                request["body"] + b" ")
    payload = json.loads(request["body"])
    assert payload["type"] == "key.revoked"
    assert payload["data"]["key_prefix"] == key.prefix
    delivery = WebhookDelivery.objects.get(endpoint=endpoint)
    assert (delivery.status, delivery.attempts) == ("delivered", 1)


def test_an_old_signature_is_refused_as_a_replay(tenant):
    body = b'{"type": "key.revoked"}'
    stale = webhooks.signature_header("whsec_x", body, timestamp=int(time.time()) - 3600)
    assert not signature_verify("whsec_x", stale, body)
    assert signature_verify("whsec_x", webhooks.signature_header("whsec_x", body), body)


def test_a_500_is_not_retried_in_place_but_when_its_backoff_is_over(tenant, receiver):
    # Given a receiver that fails twice, without a broker (tasks eager, as `make run`)
    receiver.statuses = [500, 503]
    endpoint, _ = webhook_endpoint_create(organization=tenant.org, url=receiver.url,
                                          events=["key.revoked"])
    key, _ = api_key_create(organization=tenant.org, name="doomed")
    before = timezone.now()

    api_key_revoke(key=key)

    # One attempt, and the next one due 10 s later
    delivery = WebhookDelivery.objects.get(endpoint=endpoint)
    assert len(receiver.received) == 1
    assert (delivery.status, delivery.attempts, delivery.last_status_code) == ("pending", 1, 500)
    assert dt.timedelta(seconds=9) <= delivery.next_attempt_at - before <= dt.timedelta(seconds=12)
    # The due job before that time sends nothing
    assert webhooks.webhook_retries_due() == 0
    assert len(receiver.received) == 1

    # When the due job runs after it, the second attempt is made; the third waits 20 s more
    first_due = delivery.next_attempt_at
    assert webhooks.webhook_retries_due(now=first_due + dt.timedelta(seconds=1)) == 1
    delivery.refresh_from_db()
    assert len(receiver.received) == 2
    assert (delivery.status, delivery.attempts, delivery.last_status_code) == ("pending", 2, 503)
    assert dt.timedelta(seconds=19) <= (delivery.next_attempt_at - delivery.last_attempt_at
                                        ) <= dt.timedelta(seconds=21)
    assert webhooks.webhook_retries_due(now=first_due + dt.timedelta(seconds=2)) == 0

    assert webhooks.webhook_retries_due(now=delivery.next_attempt_at) == 1
    delivery.refresh_from_db()
    assert len(receiver.received) == 3
    assert (delivery.status, delivery.attempts, delivery.last_status_code,
            delivery.next_attempt_at) == ("delivered", 3, 200, None)
    assert webhooks.webhook_retries_due(now=timezone.now() + dt.timedelta(days=1)) == 0


def test_the_backoff_doubles_up_to_an_hour_and_the_delivery_fails_after_its_last_attempt(
        tenant, receiver):
    receiver.statuses = [500] * webhooks.MAX_ATTEMPTS
    endpoint, _ = webhook_endpoint_create(organization=tenant.org, url=receiver.url,
                                          events=["key.revoked"])
    key, _ = api_key_create(organization=tenant.org, name="doomed")
    api_key_revoke(key=key)
    delivery = WebhookDelivery.objects.get(endpoint=endpoint)
    waits = []

    while delivery.next_attempt_at is not None:
        waits.append(round((delivery.next_attempt_at - delivery.last_attempt_at).total_seconds()))
        webhooks.webhook_retries_due(now=delivery.next_attempt_at)
        delivery.refresh_from_db()

    assert waits == [10, 20, 40, 80, 160, 320, 640, 1280][:webhooks.MAX_ATTEMPTS - 1]
    assert [webhooks.retry_delay(n).total_seconds() for n in (9, 10, 20)] == [2560, 3600, 3600]
    assert (delivery.status, delivery.attempts) == ("failed", webhooks.MAX_ATTEMPTS)
    assert len(receiver.received) == webhooks.MAX_ATTEMPTS


def test_a_due_retry_is_sent_once_when_two_due_jobs_see_it(tenant, receiver):
    """Two web processes' in-process beats: the claim on the due time lets one send it."""
    receiver.statuses = [500]
    endpoint, _ = webhook_endpoint_create(organization=tenant.org, url=receiver.url,
                                          events=["key.revoked"])
    key, _ = api_key_create(organization=tenant.org, name="doomed")
    api_key_revoke(key=key)
    due = WebhookDelivery.objects.get(endpoint=endpoint).next_attempt_at
    later = due + dt.timedelta(seconds=1)

    sent = [webhooks.webhook_retries_due(now=later), webhooks.webhook_retries_due(now=later)]

    assert sorted(sent) == [0, 1]
    assert len(receiver.received) == 2


@pytest.mark.django_db  # on-commit callbacks never run here: the first send is lost
def test_a_delivery_whose_first_attempt_never_ran_is_sent_by_the_due_job(tenant, receiver):
    """The broker was away when the event committed: the delivery waits, then goes."""
    webhook_endpoint_create(organization=tenant.org, url=receiver.url, events=["key.revoked"])
    [delivery_id] = webhooks.webhook_emit(organization_id=tenant.org.pk, event="key.revoked",
                                          event_key="lost", data={})
    delivery = WebhookDelivery.objects.get(pk=delivery_id)
    assert (delivery.attempts, len(receiver.received)) == (0, 0)
    assert webhooks.webhook_retries_due() == 0

    assert webhooks.webhook_retries_due(now=delivery.next_attempt_at) == 1

    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts, len(receiver.received)) == ("delivered", 1, 1)


def test_the_in_process_beat_sends_a_due_retry(tenant, receiver):
    """The embedded default: no broker, no worker; the web process's beat runs the due job."""
    import asyncio

    from novakit import scheduler

    receiver.statuses = [500]
    endpoint, _ = webhook_endpoint_create(organization=tenant.org, url=receiver.url,
                                          events=["key.revoked"])
    key, _ = api_key_create(organization=tenant.org, name="doomed")
    api_key_revoke(key=key)
    # Given its backoff is over (the due time moved into the past rather than waiting 10 s)
    WebhookDelivery.objects.filter(endpoint=endpoint).update(
        next_attempt_at=timezone.now() - dt.timedelta(seconds=1))

    async def beat_until_delivered() -> None:
        stop = asyncio.Event()
        runner = asyncio.create_task(scheduler.run_forever(stop, tick=0.05))
        for _ in range(200):
            if len(receiver.received) == 2:
                break
            await asyncio.sleep(0.05)
        stop.set()
        await asyncio.wait_for(runner, 30)

    asyncio.run(beat_until_delivered())

    delivery = WebhookDelivery.objects.get(endpoint=endpoint)
    assert (delivery.status, delivery.attempts, len(receiver.received)) == ("delivered", 2, 2)


def test_with_a_broker_a_worker_makes_the_attempts_and_the_due_job_queues_the_retry(
        tenant, receiver, celery_broker, start_workers):
    """Production: the first attempt and the retry run in a Celery worker, not in place."""
    celery_broker["WEBHOOKS_ALLOWED_PRIVATE_NETWORKS"] = "127.0.0.1/32"
    start_workers(1)
    receiver.statuses = [500]
    endpoint, _ = webhook_endpoint_create(organization=tenant.org, url=receiver.url,
                                          events=["key.revoked"])
    key, _ = api_key_create(organization=tenant.org, name="doomed")

    api_key_revoke(key=key)

    delivery = _wait_for(endpoint, lambda d: d.attempts == 1 and d.last_status_code == 500)
    assert delivery.status == "pending" and len(receiver.received) == 1
    assert dt.timedelta(seconds=9) <= (delivery.next_attempt_at - delivery.last_attempt_at
                                       ) <= dt.timedelta(seconds=11)
    # Beat's run of the due job, once the backoff is over: it queues, the worker sends
    assert webhooks.webhook_retries_due(now=delivery.next_attempt_at) == 1
    delivery = _wait_for(endpoint, lambda d: d.status == "delivered")
    assert (delivery.attempts, len(receiver.received)) == (2, 2)


def _wait_for(endpoint, done, timeout: float = 60) -> WebhookDelivery:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        delivery = WebhookDelivery.objects.filter(endpoint=endpoint).first()
        if delivery is not None and done(delivery):
            return delivery
        assert time.monotonic() < deadline, f"the worker did not get there: {delivery!r}"
        time.sleep(0.1)


def test_the_same_event_is_delivered_once(tenant, receiver):
    webhook_endpoint_create(organization=tenant.org, url=receiver.url, events=["key.expiring"])
    key, _ = api_key_create(organization=tenant.org, name="short-lived",
                            expires_at=timezone.now() + dt.timedelta(days=3))

    assert api_keys_expiring_notify() == 1
    assert api_keys_expiring_notify() == 0
    assert len(receiver.received) == 1
    assert json.loads(receiver.received[0]["body"])["data"]["key_id"] == key.pk


def test_endpoints_not_subscribed_to_an_event_hear_nothing(tenant, receiver):
    webhook_endpoint_create(organization=tenant.org, url=receiver.url, events=["balance.low"])
    key, _ = api_key_create(organization=tenant.org, name="doomed")
    api_key_revoke(key=key)
    assert receiver.received == []


@pytest.mark.parametrize("url", [
    "https://127.0.0.1/hook", "https://localhost/hook", "https://10.1.2.3/hook",
    "https://192.168.0.10/hook", "https://169.254.169.254/latest/meta-data",
    "https://[::1]/hook", "https://[::ffff:127.0.0.1]/hook", "http://8.8.8.8/hook",
    "https://0.0.0.0/hook",
])
def test_private_loopback_link_local_and_plain_http_targets_are_refused(url, settings):
    settings.WEBHOOKS_ALLOWED_PRIVATE_NETWORKS = []
    with pytest.raises(UnsafeTarget):
        target_check(url)


def test_a_public_https_target_passes_the_check(settings):
    settings.WEBHOOKS_ALLOWED_PRIVATE_NETWORKS = []
    target_check("https://8.8.8.8/hook")  # a literal public address: no DNS needed


def test_a_redirect_to_a_private_address_is_not_followed(tenant, receiver):
    receiver.redirect_to = "http://127.0.0.2:9/steal"  # outside the allowed 127.0.0.1/32
    endpoint, _ = webhook_endpoint_create(organization=tenant.org, url=receiver.url,
                                          events=["key.revoked"])
    key, _ = api_key_create(organization=tenant.org, name="doomed")

    api_key_revoke(key=key)

    delivery = WebhookDelivery.objects.get(endpoint=endpoint)
    assert delivery.status == "failed"
    assert "non-public" in delivery.last_error or "https" in delivery.last_error
    assert len(receiver.received) == 1  # only the first hop was contacted


def test_registering_a_private_target_through_the_api_is_refused(tenant, settings):
    settings.WEBHOOKS_ALLOWED_PRIVATE_NETWORKS = []
    client = Client()
    response = client.post("/api/v1/webhooks", {"url": "https://127.0.0.1/x",
                                                "events": ["balance.low"]},
                           content_type="application/json",
                           HTTP_AUTHORIZATION=f"Bearer {tenant.secret}")
    assert response.status_code == 400
    assert response.json()["code"] == "invalid_request"


def test_the_api_shows_endpoints_and_attempts_to_their_organization_only(
    tenant, other_tenant, receiver
):
    client = Client()
    auth = {"HTTP_AUTHORIZATION": f"Bearer {tenant.secret}"}
    created = client.post("/api/v1/webhooks", {"url": receiver.url, "events": ["key.revoked"]},
                          content_type="application/json", **auth).json()
    assert created["secret"].startswith("whsec_")
    key, _ = api_key_create(organization=tenant.org, name="doomed")
    api_key_revoke(key=key)

    attempts = client.get(f"/api/v1/webhooks/{created['id']}/deliveries", **auth).json()["data"]
    foreign = client.get(f"/api/v1/webhooks/{created['id']}/deliveries",
                         HTTP_AUTHORIZATION=f"Bearer {other_tenant.secret}")

    assert [a["status"] for a in attempts] == ["delivered"]
    assert foreign.status_code == 404
    assert "whsec_" not in foreign.content.decode()


def test_quota_webhooks_fire_at_80_and_100_percent_once_a_period(tenant, receiver):
    from billing.services import credits_reserve, credits_settle, quota_set

    webhook_endpoint_create(organization=tenant.org, url=receiver.url,
                            events=["quota.80", "quota.100"])
    quota_set(organization=tenant.org, limit=1_000)

    for number, tokens in enumerate([500, 200, 150, 100, 50]):
        credits_reserve(organization_id=tenant.org.pk, api_key_id=tenant.key.pk,
                        request_id=f"q{number}", amount=1, tokens=tokens)
        credits_settle(request_id=f"q{number}", credits=1, tokens=tokens)

    events = [json.loads(item["body"])["type"] for item in receiver.received]
    assert events == ["quota.80", "quota.100"]  # 850 crossed 80 %, 1,000 reached 100 %
    assert json.loads(receiver.received[1]["body"])["data"]["used"] == 1_000
