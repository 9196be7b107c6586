"""Sending an endpoint a test event, and redelivering a delivery: from the portal and the
management API, owners and admins only, each a delivery like any other, audited."""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import pytest
from django.contrib.auth import get_user_model
from django.test import Client

from accounts import webhooks
from accounts.models import AuditEvent, Membership, WebhookDelivery, WebhookEndpoint
from accounts.services import api_key_create, api_key_revoke, membership_add
from accounts.webhooks import signature_verify, webhook_endpoint_create
from tests.conftest import Tenant
from tests.support.webhook_receiver import Receiver

pytestmark = pytest.mark.django_db(transaction=True)

PORTAL = "/portal/webhooks"
API = "/api/v1/webhooks"


@pytest.fixture
def member(tenant: Tenant, settings) -> Callable[..., Client]:  # type: ignore[no-untyped-def]
    """A portal client signed in as a new member of `of` (default: `tenant`) with `role`."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]

    def make(role: str, *, of: Tenant | None = None, enforce_csrf_checks: bool = False
             ) -> Client:
        org = (of or tenant).org
        email = f"{role}@{org.slug}.test"
        user = get_user_model().objects.create_user(username=email, email=email,
                                                    password="a-long-test-password")
        membership_add(organization=org, user=user, role=role)
        client = Client(enforce_csrf_checks=enforce_csrf_checks)
        client.force_login(user)
        return client

    return make


def key_auth(tenant: Tenant) -> dict[str, str]:
    return {"HTTP_AUTHORIZATION": f"Bearer {tenant.secret}"}


def delivered_revocation(tenant: Tenant, endpoint: WebhookEndpoint) -> WebhookDelivery:
    key, _ = api_key_create(organization=tenant.org, name="doomed")
    api_key_revoke(key=key)
    return WebhookDelivery.objects.get(endpoint=endpoint, event="key.revoked")


# --- a test event ------------------------------------------------------------------------------


@pytest.mark.parametrize("role", [Membership.Role.OWNER, Membership.Role.ADMIN])
def test_the_portal_sends_a_signed_test_event_to_that_endpoint_only(
        tenant, receiver, member, role):
    endpoint, secret = webhook_endpoint_create(organization=tenant.org, url=receiver.url,
                                               events=["balance.low"])
    bystander = Receiver()
    try:
        webhook_endpoint_create(organization=tenant.org, url=bystander.url,
                                events=["balance.low", "key.revoked"])
        client = member(role)

        response = client.post(f"{PORTAL}/{endpoint.pk}/test", follow=True)

        assert response.redirect_chain == [(f"{PORTAL}/{endpoint.pk}/", 302)]
        assert "A test event was delivered (HTTP 200)" in response.content.decode()
        assert bystander.received == []
    finally:
        bystander.stop()
    [request] = receiver.received
    assert signature_verify(secret, request["headers"]["NovaKit-Signature"], request["body"])
    payload = json.loads(request["body"])
    assert payload["type"] == "webhook.test" and payload["id"].startswith("evt_")
    assert payload["organization"] == tenant.org.slug
    assert payload["data"] == {"endpoint_id": endpoint.pk, "url": receiver.url}
    delivery = WebhookDelivery.objects.get(endpoint=endpoint)
    assert (delivery.event, delivery.status, delivery.attempts) == ("webhook.test", "delivered", 1)
    assert f'data-delivery="{delivery.pk}"' in response.content.decode()
    audit = AuditEvent.objects.get(action="webhook.test")
    assert audit.organization == tenant.org and audit.target == receiver.url
    assert audit.after == {"delivery_id": delivery.pk, "event_id": payload["id"]}


def test_the_api_sends_a_test_event_and_lists_it_with_the_deliveries(tenant, receiver):
    endpoint, secret = webhook_endpoint_create(organization=tenant.org, url=receiver.url,
                                               events=["key.revoked"])
    client = Client()

    response = client.post(f"{API}/{endpoint.pk}/test", **key_auth(tenant))

    assert response.status_code == 202
    body = response.json()
    assert (body["event"], body["status"], body["attempts"]) == ("webhook.test", "delivered", 1)
    assert signature_verify(secret, receiver.received[0]["headers"]["NovaKit-Signature"],
                            receiver.received[0]["body"])
    listed = client.get(f"{API}/{endpoint.pk}/deliveries", **key_auth(tenant)).json()["data"]
    assert [(d["id"], d["event"]) for d in listed] == [(body["id"], "webhook.test")]


def test_a_test_event_to_a_failing_receiver_is_retried_like_any_delivery(tenant, receiver):
    receiver.statuses = [500]
    endpoint, _ = webhook_endpoint_create(organization=tenant.org, url=receiver.url,
                                          events=["key.revoked"])

    body = Client().post(f"{API}/{endpoint.pk}/test", **key_auth(tenant)).json()

    assert (body["status"], body["attempts"], body["last_status_code"]) == ("pending", 1, 500)
    assert body["next_attempt_at"] is not None
    delivery = WebhookDelivery.objects.get(pk=body["id"])
    assert webhooks.webhook_retries_due(now=delivery.next_attempt_at) == 1
    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts, len(receiver.received)) == ("delivered", 2, 2)


def test_a_disabled_endpoint_gets_no_test_event(tenant, receiver, member):
    endpoint, _ = webhook_endpoint_create(organization=tenant.org, url=receiver.url,
                                          events=["key.revoked"])
    webhooks.webhook_endpoint_set_active(endpoint=endpoint, is_active=False, actor=None)
    owner = member(Membership.Role.OWNER)

    api = Client().post(f"{API}/{endpoint.pk}/test", **key_auth(tenant))
    page = owner.post(f"{PORTAL}/{endpoint.pk}/test", follow=True).content.decode()

    assert api.status_code == 400 and "disabled" in api.json()["error"]["message"]
    assert "No test event sent: the endpoint is disabled" in page
    assert ">Send a test event<" not in page
    assert receiver.received == [] and not WebhookDelivery.objects.exists()


# --- redelivering ------------------------------------------------------------------------------


def test_redelivering_from_the_portal_sends_the_same_event_id_with_a_fresh_signature(
        tenant, receiver, member):
    endpoint, secret = webhook_endpoint_create(organization=tenant.org, url=receiver.url,
                                               events=["key.revoked"])
    original = delivered_revocation(tenant, endpoint)
    page = member(Membership.Role.ADMIN).get(f"{PORTAL}/{endpoint.pk}/").content.decode()
    assert f"/deliveries/{original.pk}/redeliver" in page and ">Redeliver<" in page
    asked_at = int(time.time())

    response = member(Membership.Role.OWNER).post(
        f"{PORTAL}/{endpoint.pk}/deliveries/{original.pk}/redeliver", follow=True)

    assert response.redirect_chain == [(f"{PORTAL}/{endpoint.pk}/", 302)]
    assert "key.revoked (again) was delivered (HTTP 200)" in response.content.decode()
    first, second = receiver.received
    assert first["body"] == second["body"]
    assert json.loads(second["body"])["id"] == original.payload["id"]
    header = second["headers"]["NovaKit-Signature"]
    assert signature_verify(secret, header, second["body"])
    assert int(header.split(",")[0].removeprefix("t=")) >= asked_at  # signed when sent again
    again = WebhookDelivery.objects.exclude(pk=original.pk).get(endpoint=endpoint)
    assert (again.event, again.status, again.payload) == (
        "key.revoked", "delivered", original.payload)
    original.refresh_from_db()
    assert (original.status, original.attempts) == ("delivered", 1)  # left as it was
    audit = AuditEvent.objects.get(action="webhook.redeliver")
    assert audit.before == {"delivery_id": original.pk, "status": "delivered"}
    assert audit.after == {"delivery_id": again.pk, "event_id": original.payload["id"]}


def test_a_failed_delivery_is_redelivered_through_the_api(tenant, receiver):
    receiver.statuses = [500]
    endpoint, _ = webhook_endpoint_create(organization=tenant.org, url=receiver.url,
                                          events=["key.revoked"])
    original = delivered_revocation(tenant, endpoint)
    # Given it failed for good: its endpoint was disabled while a retry was due
    webhooks.webhook_endpoint_set_active(endpoint=endpoint, is_active=False, actor=None)
    webhooks.webhook_retries_due(now=original.next_attempt_at)
    original.refresh_from_db()
    assert (original.status, original.last_error) == ("failed", "endpoint disabled")
    webhooks.webhook_endpoint_set_active(endpoint=endpoint, is_active=True, actor=None)

    response = Client().post(f"{API}/{endpoint.pk}/deliveries/{original.pk}/redeliver",
                             **key_auth(tenant))

    assert response.status_code == 202
    body = response.json()
    assert body["id"] != original.pk and body["status"] == "delivered"
    assert body["payload"]["id"] == original.payload["id"]
    assert [json.loads(r["body"])["id"] for r in receiver.received] == [original.payload["id"]] * 2


def test_a_pending_delivery_is_not_redelivered(tenant, receiver, member):
    receiver.statuses = [500]
    endpoint, _ = webhook_endpoint_create(organization=tenant.org, url=receiver.url,
                                          events=["key.revoked"])
    pending = delivered_revocation(tenant, endpoint)
    assert pending.status == "pending"
    owner = member(Membership.Role.OWNER)
    assert ">Redeliver<" not in owner.get(f"{PORTAL}/{endpoint.pk}/").content.decode()

    api = Client().post(f"{API}/{endpoint.pk}/deliveries/{pending.pk}/redeliver",
                        **key_auth(tenant))
    page = owner.post(f"{PORTAL}/{endpoint.pk}/deliveries/{pending.pk}/redeliver", follow=True)

    assert api.status_code == 400 and "pending" in api.json()["error"]["message"]
    assert "Not redelivered: this delivery is still pending" in page.content.decode()
    assert WebhookDelivery.objects.count() == 1 and len(receiver.received) == 1


# --- who may ------------------------------------------------------------------------------------


@pytest.mark.parametrize("role", [Membership.Role.DEVELOPER, Membership.Role.VIEWER])
def test_developers_and_viewers_can_do_neither(tenant, receiver, member, role):
    endpoint, _ = webhook_endpoint_create(organization=tenant.org, url=receiver.url,
                                          events=["key.revoked"])
    original = delivered_revocation(tenant, endpoint)
    client = member(role)
    redeliver = f"/deliveries/{original.pk}/redeliver"

    page = client.get(f"{PORTAL}/{endpoint.pk}/").content.decode()

    assert ">Send a test event<" not in page and ">Redeliver<" not in page
    assert client.post(f"{PORTAL}/{endpoint.pk}/test").status_code == 403
    assert client.post(f"{PORTAL}/{endpoint.pk}{redeliver}").status_code == 403
    assert client.post(f"{API}/{endpoint.pk}/test").status_code == 403
    assert client.post(f"{API}/{endpoint.pk}{redeliver}").status_code == 403
    assert WebhookDelivery.objects.count() == 1 and len(receiver.received) == 1
    assert not AuditEvent.objects.filter(action__in=["webhook.test", "webhook.redeliver"]
                                         ).exists()


def test_another_organizations_endpoint_and_delivery_are_404(
        tenant, other_tenant, receiver, member):
    theirs, _ = webhook_endpoint_create(organization=other_tenant.org, url=receiver.url,
                                        events=["key.revoked"])
    their_delivery = delivered_revocation(other_tenant, theirs)
    mine, _ = webhook_endpoint_create(organization=tenant.org, url=receiver.url,
                                      events=["key.revoked"])
    owner = member(Membership.Role.OWNER)
    redeliver = f"/deliveries/{their_delivery.pk}/redeliver"

    assert owner.post(f"{PORTAL}/{theirs.pk}/test").status_code == 404
    assert owner.post(f"{PORTAL}/{theirs.pk}{redeliver}").status_code == 404
    # Their delivery under my endpoint's URL is not found either
    assert owner.post(f"{PORTAL}/{mine.pk}{redeliver}").status_code == 404
    for client, auth in ((owner, {}), (Client(), key_auth(tenant))):
        assert client.post(f"{API}/{theirs.pk}/test", **auth).status_code == 404
        assert client.post(f"{API}/{theirs.pk}{redeliver}", **auth).status_code == 404
        assert client.post(f"{API}/{mine.pk}{redeliver}", **auth).status_code == 404
    assert WebhookDelivery.objects.count() == 1 and len(receiver.received) == 1


def test_the_portal_forms_refuse_a_post_without_the_csrf_token(tenant, receiver, member):
    endpoint, _ = webhook_endpoint_create(organization=tenant.org, url=receiver.url,
                                          events=["key.revoked"])
    original = delivered_revocation(tenant, endpoint)
    client = member(Membership.Role.OWNER, enforce_csrf_checks=True)

    assert client.post(f"{PORTAL}/{endpoint.pk}/test").status_code == 403
    assert client.post(f"{PORTAL}/{endpoint.pk}/deliveries/{original.pk}/redeliver"
                       ).status_code == 403
    assert WebhookDelivery.objects.count() == 1 and len(receiver.received) == 1
