"""The webhooks pages: every member reads, owners and admins change; the secret is shown once."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterator

import pytest
from django.utils import timezone

from accounts import webhooks
from accounts.models import AuditEvent, Membership, WebhookDelivery, WebhookEndpoint
from accounts.services import api_key_create, api_key_revoke
from accounts.tasks import webhook_deliver_task
from accounts.webhooks import webhook_endpoint_create
from novakit import crypto
from tests.portal.conftest import csrf_token_from
from tests.support.webhook_receiver import Receiver

pytestmark = pytest.mark.django_db

WEBHOOKS = "/portal/webhooks/"
# Resolves to loopback wherever the tests run: refused unless the development setting allows it.
LOOPBACK_URL = "http://127.0.0.1:9/novakit-hook"


@pytest.fixture
def loopback_allowed(settings) -> None:  # type: ignore[no-untyped-def]
    settings.WEBHOOKS_ALLOWED_PRIVATE_NETWORKS = ["127.0.0.1/32"]


@pytest.fixture
def receiver(loopback_allowed: None) -> Iterator[Receiver]:
    server = Receiver()
    yield server
    server.stop()


def endpoint_of(tenant, url: str = LOOPBACK_URL, events=("key.revoked",)) -> WebhookEndpoint:  # type: ignore[no-untyped-def]
    return WebhookEndpoint.objects.create(
        organization=tenant.org, url=url, events=list(events),
        secret_encrypted=crypto.encrypt("whsec_test"))


def secret_in(html: str) -> str:
    found = re.search(r'data-testid="webhook-secret">(whsec_[^<]+)<', html)
    assert found, "no signing secret on the page"
    return found.group(1)


# --- registering ---------------------------------------------------------------------------


@pytest.mark.parametrize("role", [Membership.Role.OWNER, Membership.Role.ADMIN])
def test_an_owner_or_admin_registers_an_endpoint_and_sees_its_secret_once(
        member_client, tenant, loopback_allowed, role):
    client = member_client(role)

    response = client.post(WEBHOOKS, {"url": LOOPBACK_URL,
                                      "events": ["balance.low", "key.revoked"]}, follow=True)

    assert response.redirect_chain[0][1] == 302
    assert response["Cache-Control"] == "no-store"
    html = response.content.decode()
    secret = secret_in(html)
    assert "shown this once" in html
    endpoint = WebhookEndpoint.objects.get(organization=tenant.org)
    assert (endpoint.url, endpoint.events, endpoint.is_active) == (
        LOOPBACK_URL, ["balance.low", "key.revoked"], True)
    assert crypto.decrypt(endpoint.secret_encrypted) == secret
    assert AuditEvent.objects.get(action="webhook.create").organization == tenant.org
    # Never again: not on the list, not on the endpoint's page, not in the session.
    assert secret not in client.get(WEBHOOKS).content.decode()
    assert secret not in client.get(f"{WEBHOOKS}{endpoint.pk}/").content.decode()
    assert secret not in str(dict(client.session))


@pytest.mark.parametrize("url", ["https://127.0.0.1/hook", "https://localhost/hook",
                                 "https://10.1.2.3/hook", "http://169.254.169.254/latest"])
def test_a_private_target_is_refused_in_the_form(owner, tenant, url):
    response = owner.post(WEBHOOKS, {"url": url, "events": ["key.revoked"]})

    assert response.status_code == 400
    errors = response.context["form"].errors["url"]
    assert any("non-public address" in error or "https" in error for error in errors), errors
    assert 'class="errorlist"' in response.content.decode()
    assert not WebhookEndpoint.objects.exists()


def test_plain_http_to_a_public_host_is_refused(owner, settings):
    response = owner.post(WEBHOOKS, {"url": "http://93.184.215.14/hook",
                                     "events": ["key.revoked"]})

    assert response.status_code == 400
    assert response.context["form"].errors["url"] == ["webhook URLs must use https"]
    assert not WebhookEndpoint.objects.exists()


def test_the_development_setting_lets_a_loopback_receiver_through(owner, settings):
    settings.WEBHOOKS_ALLOWED_PRIVATE_NETWORKS = []
    assert owner.post(WEBHOOKS, {"url": LOOPBACK_URL,
                                 "events": ["key.revoked"]}).status_code == 400

    settings.WEBHOOKS_ALLOWED_PRIVATE_NETWORKS = ["127.0.0.1/32"]

    assert owner.post(WEBHOOKS, {"url": LOOPBACK_URL,
                                 "events": ["key.revoked"]}).status_code == 302


@pytest.mark.parametrize("data, field", [
    ({"url": LOOPBACK_URL, "events": []}, "events"),
    ({"url": LOOPBACK_URL, "events": ["no.such.event"]}, "events"),
    ({"url": "not a url", "events": ["key.revoked"]}, "url"),
])
def test_an_invalid_form_shows_the_field_error(owner, loopback_allowed, data, field):
    response = owner.post(WEBHOOKS, data)

    assert response.status_code == 400
    assert field in response.context["form"].errors
    assert not WebhookEndpoint.objects.exists()


# --- who may do what ---------------------------------------------------------------------------


@pytest.mark.parametrize("role", [Membership.Role.DEVELOPER, Membership.Role.VIEWER])
def test_developers_and_viewers_read_but_every_change_is_refused(
        member_client, tenant, loopback_allowed, role):
    endpoint = endpoint_of(tenant)
    client = member_client(role)

    listing = client.get(WEBHOOKS).content.decode()
    detail = client.get(f"{WEBHOOKS}{endpoint.pk}/")

    assert LOOPBACK_URL in listing and "Register the endpoint" not in listing
    assert detail.status_code == 200
    assert ">Disable<" not in detail.content.decode() and ">Delete<" not in detail.content.decode()
    assert client.post(WEBHOOKS, {"url": "http://127.0.0.1:9/other",
                                  "events": ["key.revoked"]}).status_code == 403
    assert client.post(f"{WEBHOOKS}{endpoint.pk}/active", {"is_active": "0"}).status_code == 403
    assert client.post(f"{WEBHOOKS}{endpoint.pk}/delete").status_code == 403
    endpoint.refresh_from_db()
    assert endpoint.is_active and WebhookEndpoint.objects.count() == 1
    assert not AuditEvent.objects.filter(action__startswith="webhook.").exists()


def test_another_organizations_endpoints_are_invisible_and_untouchable(
        owner, tenant, other_tenant):
    mine = endpoint_of(tenant, url="https://hooks.acme.test/in")
    theirs = endpoint_of(other_tenant, url="https://hooks.globex.test/in")

    listing = owner.get(WEBHOOKS).content.decode()

    assert mine.url in listing and theirs.url not in listing
    assert owner.get(f"{WEBHOOKS}{theirs.pk}/").status_code == 404
    assert owner.post(f"{WEBHOOKS}{theirs.pk}/active", {"is_active": "0"}).status_code == 404
    assert owner.post(f"{WEBHOOKS}{theirs.pk}/delete").status_code == 404
    theirs.refresh_from_db()
    assert theirs.is_active


def test_every_form_refuses_a_post_without_the_csrf_token(member_client, tenant,
                                                          loopback_allowed):
    endpoint = endpoint_of(tenant)
    client = member_client(enforce_csrf_checks=True)

    assert client.post(WEBHOOKS, {"url": LOOPBACK_URL,
                                  "events": ["key.revoked"]}).status_code == 403
    assert client.post(f"{WEBHOOKS}{endpoint.pk}/active", {"is_active": "0"}).status_code == 403
    assert client.post(f"{WEBHOOKS}{endpoint.pk}/delete").status_code == 403
    assert WebhookEndpoint.objects.filter(is_active=True).count() == 1

    token = csrf_token_from(client.get(WEBHOOKS).content.decode())
    response = client.post(WEBHOOKS, {"url": LOOPBACK_URL, "events": ["key.revoked"],
                                      "csrfmiddlewaretoken": token})
    assert response.status_code == 302 and WebhookEndpoint.objects.count() == 2


def test_given_an_endpoint_just_registered_when_its_page_is_reloaded_then_no_other_endpoint(
        owner, tenant, loopback_allowed):
    response = owner.post(WEBHOOKS, {"url": LOOPBACK_URL, "events": ["key.revoked"]})

    assert response.status_code == 302, "the POST must redirect, or a reload repeats it"
    shown = owner.get(response["Location"])
    assert shown.status_code == 200 and shown["Cache-Control"] == "no-store"
    secret = secret_in(shown.content.decode())
    reloaded = owner.get(response["Location"], follow=True).content.decode()
    assert secret not in reloaded and 'data-testid="webhook-secret"' not in reloaded
    assert WebhookEndpoint.objects.filter(organization=tenant.org).count() == 1
    assert crypto.decrypt(WebhookEndpoint.objects.get().secret_encrypted) == secret
    assert secret not in str(dict(owner.session))


# --- pausing and deleting ----------------------------------------------------------------------


def test_disabling_stops_new_events_and_enabling_brings_them_back(owner, tenant):
    endpoint = endpoint_of(tenant)
    page = f"{WEBHOOKS}{endpoint.pk}/"

    response = owner.post(f"{page}active", {"is_active": "0"}, follow=True)

    assert response.redirect_chain == [(page, 302)]
    assert "disabled: it gets no more events" in response.content.decode()
    endpoint.refresh_from_db()
    assert not endpoint.is_active
    assert webhooks.webhook_emit(organization_id=tenant.org.pk, event="key.revoked",
                                 event_key="k1", data={}) == []
    again = owner.post(f"{page}active", {"is_active": "0"}, follow=True).content.decode()
    assert "was already disabled" in again
    assert AuditEvent.objects.filter(action="webhook.disable").count() == 1

    owner.post(f"{page}active", {"is_active": "1"})

    endpoint.refresh_from_db()
    assert endpoint.is_active
    assert len(webhooks.webhook_emit(organization_id=tenant.org.pk, event="key.revoked",
                                     event_key="k2", data={})) == 1
    assert AuditEvent.objects.get(action="webhook.enable").actor == tenant.user


def test_a_queued_retry_to_a_disabled_endpoint_is_dropped(tenant):
    endpoint = endpoint_of(tenant)
    [delivery_id] = webhooks.webhook_emit(organization_id=tenant.org.pk, event="key.revoked",
                                          event_key="k1", data={})
    webhooks.webhook_endpoint_set_active(endpoint=endpoint, is_active=False, actor=None)

    delivery = webhooks.webhook_deliver(delivery_id=delivery_id)

    assert (delivery.status, delivery.attempts, delivery.last_error) == (
        "failed", 0, "endpoint disabled")


def test_deleting_an_endpoint_removes_it_and_its_history(owner, tenant):
    endpoint = endpoint_of(tenant)
    webhooks.webhook_emit(organization_id=tenant.org.pk, event="key.revoked", event_key="k1",
                          data={})

    response = owner.post(f"{WEBHOOKS}{endpoint.pk}/delete", follow=True)

    assert response.redirect_chain == [(WEBHOOKS, 302)]
    assert f"Deleted {endpoint.url}" in response.content.decode()
    assert not WebhookEndpoint.objects.exists() and not WebhookDelivery.objects.exists()
    assert AuditEvent.objects.get(action="webhook.delete").actor == tenant.user


# --- delivery attempts ----------------------------------------------------------------------


def delivery_row(html: str, delivery_id: int) -> str:
    found = re.search(rf'<tr data-delivery="{delivery_id}">.*?</tr>', html, re.S)
    assert found, html
    return found.group(0)


def test_the_endpoint_page_lists_attempts_with_status_code_attempts_and_time(
        viewer, tenant, receiver, django_capture_on_commit_callbacks):
    endpoint, _ = webhook_endpoint_create(organization=tenant.org, url=receiver.url,
                                          events=["key.revoked"])
    first, _ = api_key_create(organization=tenant.org, name="first")
    second, _ = api_key_create(organization=tenant.org, name="second")
    # Given a receiver that takes the first event, then fails
    receiver.statuses = [200, 500]
    with django_capture_on_commit_callbacks(execute=True):
        api_key_revoke(key=first)
    with django_capture_on_commit_callbacks(execute=True):
        api_key_revoke(key=second)
    delivered, failed = (WebhookDelivery.objects.get(event_key=f"key.revoked:{key.pk}")
                         for key in (first, second))

    html = viewer.get(f"{WEBHOOKS}{endpoint.pk}/").content.decode()

    ok_row = delivery_row(html, delivered.pk)
    assert "key.revoked" in ok_row and "delivered" in ok_row and "HTTP 200" in ok_row
    assert re.search(r'class="num">1<', ok_row)
    failed_row = delivery_row(html, failed.pk)
    assert "pending" in failed_row and "HTTP 500" in failed_row
    assert re.search(r'class="num">1<', failed_row)  # retried when its backoff is over
    assert failed.last_attempt_at is not None
    assert failed.last_attempt_at.strftime("%Y-%m-%d %H:%M:%S") in failed_row
    # Newest first
    assert html.index(f'data-delivery="{failed.pk}"') < html.index(
        f'data-delivery="{delivered.pk}"')


def test_a_failed_attempt_records_when_the_next_retry_is_due_and_the_page_shows_it(
        viewer, tenant, receiver):
    endpoint, _ = webhook_endpoint_create(organization=tenant.org, url=receiver.url,
                                          events=["key.revoked"])
    [delivery_id] = webhooks.webhook_emit(organization_id=tenant.org.pk, event="key.revoked",
                                          event_key="k1", data={})
    receiver.statuses = [503]
    before = timezone.now()
    # One attempt, as the task runs it (eagerly here): the failure schedules a retry in 10 s.
    assert webhook_deliver_task.apply(args=[delivery_id]).get() == "pending"

    delivery = WebhookDelivery.objects.get(pk=delivery_id)
    assert (delivery.status, delivery.attempts, delivery.last_status_code) == ("pending", 1, 503)
    assert delivery.next_attempt_at is not None
    assert dt.timedelta(seconds=9) <= delivery.next_attempt_at - before <= dt.timedelta(seconds=12)
    row = delivery_row(viewer.get(f"{WEBHOOKS}{endpoint.pk}/").content.decode(), delivery_id)
    assert "pending" in row and "HTTP 503" in row
    assert delivery.next_attempt_at.strftime("%Y-%m-%d %H:%M:%S") in row

    # The next attempt, when due, succeeds and clears the schedule
    webhooks.webhook_retries_due(now=delivery.next_attempt_at)
    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts, delivery.next_attempt_at) == ("delivered", 2, None)


def test_the_list_shows_events_status_and_the_low_balance_threshold(owner, tenant, settings):
    settings.LOW_BALANCE_DEFAULT_THRESHOLD = 0
    endpoint_of(tenant, url="https://hooks.acme.test/a", events=["quota.80", "quota.100"])
    paused = endpoint_of(tenant, url="https://hooks.acme.test/b")
    paused.is_active = False
    paused.save(update_fields=["is_active"])

    html = owner.get(WEBHOOKS).content.decode()

    row = re.search(r'<tr[^>]*data-endpoint="\d+">.*?hooks\.acme\.test/a.*?</tr>', html, re.S)
    assert row and "quota.80" in row.group(0) and "enabled" in row.group(0)
    paused_row = re.search(rf'<tr[^>]*data-endpoint="{paused.pk}">.*?</tr>', html, re.S)
    assert paused_row and "disabled" in paused_row.group(0)
    assert "balance.low</span> is not sent" in html

    tenant.account.low_balance_threshold = 25_000
    tenant.account.save(update_fields=["low_balance_threshold"])
    assert "falls under 25,000 credits" in owner.get(WEBHOOKS).content.decode()


@pytest.mark.parametrize("role", Membership.Role.values)
def test_every_member_reads_an_endpoints_page(member_client, tenant, role):
    endpoint = endpoint_of(tenant)

    response = member_client(role).get(f"{WEBHOOKS}{endpoint.pk}/")

    assert response.status_code == 200
    assert endpoint.url in response.content.decode()
