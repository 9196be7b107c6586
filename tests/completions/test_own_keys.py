"""Bring your own key (completions/own_keys.py): an organization's own provider key serves its
requests and no one else's, at the BYOK fee; the key is never shown again anywhere."""

from __future__ import annotations

import logging
import math
from decimal import Decimal

import openai
import pytest
from django.contrib.auth import get_user_model
from django.test import Client

from accounts.models import AuditEvent, Membership
from accounts.services import membership_add
from billing.pricing import price_request
from completions.models import ProviderKey, UsageRecord
from completions.own_keys import own_key_add
from tests.completions.helpers import (
    add_model,
    add_provider,
    assert_books_balance,
    bearer,
    openrouter,
    usage_charged,
)

HELLO = [{"role": "user", "content": "Say hello"}]
OWN_SECRET = "sk-or-acme-own-key-0123456789abcdef"


def _ask(client_for, tenant, model="openai/gpt-4o-mini"):  # type: ignore[no-untyped-def]
    return client_for(tenant).chat.completions.create(model=model, messages=HELLO, max_tokens=3)


def _authorizations(fake_upstream) -> list[str]:  # type: ignore[no-untyped-def]
    return [r["headers"].get("Authorization", "") for r in fake_upstream.requests]


def test_given_an_own_key_then_its_organization_uses_it_at_the_fee_and_another_does_not(
    tenant, other_tenant, fake_upstream, client_for, http, settings
):
    settings.BYOK_FEE_PERCENT = Decimal("5")
    own_key_add(organization=tenant.org, provider=openrouter(), label="ours",
                secret=OWN_SECRET, actor=tenant.user)

    ours = _ask(client_for, tenant)
    theirs = _ask(client_for, other_tenant)

    own, platform = _authorizations(fake_upstream)
    assert own == f"Bearer {OWN_SECRET}" and platform != own
    full = price_request(multiplier=Decimal("1"), prompt_tokens=ours.usage.prompt_tokens,
                         completion_tokens=ours.usage.completion_tokens).total
    fee = math.ceil(Decimal(full) * Decimal("0.05"))
    assert ours.usage.model_extra["credits_used"] == fee == usage_charged(tenant)
    assert ours.usage.model_extra["credits_breakdown"] == {"base": 0, "byok_fee": fee}
    assert theirs.usage.model_extra["credits_used"] == price_request(
        multiplier=Decimal("1"), prompt_tokens=theirs.usage.prompt_tokens,
        completion_tokens=theirs.usage.completion_tokens).total
    records = {r.organization_id: r for r in UsageRecord.objects.all()}
    assert records[tenant.org.pk].key_class == "organization"
    receipt = http.get(f"/generations/{records[tenant.org.pk].request_id}",
                       headers=bearer(tenant)).json()
    assert (receipt["provider_key"], receipt["credits_used"]) == ("organization", fee)
    assert records[other_tenant.org.pk].key_class == "platform"
    assert_books_balance(tenant)
    assert_books_balance(other_tenant)


def test_given_an_own_key_that_is_rate_limited_then_the_platforms_key_answers_at_the_price(
    tenant, fake_upstream, client_for, http
):
    own_key_add(organization=tenant.org, provider=openrouter(), label="ours",
                secret=OWN_SECRET, actor=tenant.user)
    fake_upstream.key_scenarios[OWN_SECRET] = "limited:30"

    answer = _ask(client_for, tenant)

    assert _authorizations(fake_upstream)[0] == f"Bearer {OWN_SECRET}"
    assert _authorizations(fake_upstream)[1] != f"Bearer {OWN_SECRET}"
    record = UsageRecord.objects.get(organization=tenant.org)
    assert record.key_class == "platform"
    assert answer.usage.model_extra["credits_used"] == record.credits == usage_charged(tenant)
    receipt = http.get(f"/generations/{record.request_id}", headers=bearer(tenant)).json()
    assert receipt["provider_key"] == "platform"


def test_given_a_provider_only_an_organization_has_a_key_for_then_only_it_can_use_the_model(
    tenant, other_tenant, fake_upstream, client_for
):
    byok_only = add_provider("byok-only", fake_upstream.url)
    byok_only.api_key_encrypted = ""
    byok_only.save()
    add_model("test/byok-only", [(byok_only, "their-model")])
    own_key_add(organization=tenant.org, provider=byok_only, label="ours", secret=OWN_SECRET,
                actor=tenant.user)

    assert _ask(client_for, tenant, "test/byok-only").choices[0].message.content
    with pytest.raises(openai.APIStatusError) as refused:
        _ask(client_for, other_tenant, "test/byok-only")
    assert refused.value.status_code == 503
    assert _authorizations(fake_upstream) == [f"Bearer {OWN_SECRET}"]
    # /models says so too: available to the organization with the key, not to the other.
    ours = client_for(tenant).models.retrieve("test/byok-only")
    theirs = client_for(other_tenant).models.retrieve("test/byok-only")
    assert (ours.model_extra["available"], theirs.model_extra["available"]) == (True, False)
    listed = {m.id: m.model_extra["available"] for m in client_for(tenant).models.list()}
    assert listed["test/byok-only"] is True


def _member(tenant, role: str):  # type: ignore[no-untyped-def]
    """A client signed in as a new member of `tenant`'s organization with `role`."""
    email = f"{role}@{tenant.org.slug}.test"
    user = get_user_model().objects.create_user(username=email, email=email,
                                                password="a-long-test-password")
    membership_add(organization=tenant.org, user=user, role=role)
    client = Client()
    client.force_login(user)
    return client


@pytest.mark.django_db
def test_an_owner_adds_and_removes_an_own_key_in_the_portal_and_never_sees_it_again(
    tenant, admin_client, caplog
):
    caplog.set_level(logging.INFO)
    owner = _member(tenant, Membership.Role.OWNER)
    page = "/portal/provider-keys/"

    response = owner.post(page, {"provider": openrouter().pk, "label": "team key",
                                 "secret": OWN_SECRET}, follow=True)

    html = response.content.decode()
    assert "Added team key" in html and 'data-provider-key="team key"' in html
    key = ProviderKey.objects.get(organization=tenant.org)
    assert key.get_api_key() == OWN_SECRET and OWN_SECRET not in key.api_key_encrypted
    admin_page = admin_client.get(f"/admin/completions/providerkey/{key.pk}/change/")
    audit = AuditEvent.objects.get(action="provider_key.own.add")
    for shown in (html, owner.get(page).content.decode(), admin_page.content.decode(),
                  caplog.text, str(audit.after)):
        assert OWN_SECRET not in shown

    viewer = _member(tenant, Membership.Role.VIEWER)
    assert "Add the key" not in viewer.get(page).content.decode()
    assert viewer.post(page, {"provider": openrouter().pk, "label": "x",
                              "secret": "sk-x"}).status_code == 403
    assert viewer.post(f"/portal/provider-keys/{key.pk}/remove").status_code == 403

    removed = owner.post(f"/portal/provider-keys/{key.pk}/remove", follow=True)
    assert "Removed team key" in removed.content.decode()
    assert not ProviderKey.objects.exists()
    assert AuditEvent.objects.filter(action="provider_key.own.remove").count() == 1


@pytest.mark.django_db
def test_an_organizations_key_cannot_be_removed_by_another(tenant, other_tenant):
    key = own_key_add(organization=other_tenant.org, provider=openrouter(), label="theirs",
                      secret=OWN_SECRET, actor=other_tenant.user)
    owner = _member(tenant, Membership.Role.ADMIN)
    assert owner.post(f"/portal/provider-keys/{key.pk}/remove").status_code == 404
    assert "theirs" not in owner.get("/portal/provider-keys/").content.decode()
    assert ProviderKey.objects.filter(pk=key.pk).exists()
