"""Redemption codes (billing/codes.py): granted once per organization, never more than their
uses, race-free, stored only as a hash, and a member trying codes in a loop is stopped."""

from __future__ import annotations

import datetime as dt

import pytest
from django.utils import timezone

from accounts.models import AuditEvent
from billing.codes import CodeRefused, code_create, code_redeem
from billing.models import CodeRedemption, LedgerEntry, RedemptionCode
from tests.billing.concurrency import run_together

pytestmark = pytest.mark.django_db(transaction=True)


def _grants(tenant) -> list[int]:  # type: ignore[no-untyped-def]
    return list(LedgerEntry.objects.filter(account=tenant.refresh_account(),
                                           reason__startswith="redemption code")
                .values_list("amount", flat=True))


def test_given_a_code_then_redeeming_it_adds_its_credits_once(tenant_factory):
    tenant = tenant_factory("acme", credits=0)
    code, shown = code_create(credits=500, note="launch week")

    entry = code_redeem(organization=tenant.org, user=tenant.user, code=shown)

    assert (entry.amount, entry.kind, tenant.refresh_account().balance) == (500, "grant", 500)
    with pytest.raises(CodeRefused, match="already redeemed"):
        code_redeem(organization=tenant.org, user=tenant.user, code=shown)
    assert _grants(tenant) == [500]
    code.refresh_from_db()
    assert code.uses == 1
    assert CodeRedemption.objects.get().entry == entry


def test_given_a_code_typed_loosely_then_case_spaces_and_dashes_do_not_matter(tenant_factory):
    tenant = tenant_factory("acme", credits=0)
    _, shown = code_create(credits=7)
    typed = " " + shown.lower().replace("-", " ") + " "

    assert code_redeem(organization=tenant.org, user=tenant.user, code=typed).amount == 7


def test_given_a_code_then_only_its_hash_and_prefix_are_stored(tenant_factory):
    code, shown = code_create(credits=10)
    stored = RedemptionCode.objects.filter(pk=code.pk).values().get()
    assert shown.startswith(stored["prefix"]) and len(stored["prefix"]) == 9
    assert all(shown.replace("-", "")[4:] not in str(value) for value in stored.values())
    audit = AuditEvent.objects.get(action="credits.code_created")
    assert shown not in str(audit.after) + audit.target


def test_given_two_sessions_redeeming_one_code_at_once_then_it_is_granted_once(tenant_factory):
    tenant = tenant_factory("acme", credits=0)
    _, shown = code_create(credits=300, max_uses=5)

    results = run_together([
        lambda: code_redeem(organization=tenant.org, user=tenant.user, code=shown)
        for _ in range(2)])

    assert sorted(type(result).__name__ for result in results) == ["CodeRefused", "LedgerEntry"]
    assert _grants(tenant) == [300]
    assert tenant.refresh_account().balance == 300


def test_given_a_two_use_code_redeemed_by_four_organizations_at_once_then_two_get_it(
    tenant_factory
):
    tenants = [tenant_factory(f"org{i}", credits=0) for i in range(4)]
    code, shown = code_create(credits=100, max_uses=2)

    results = run_together([
        lambda tenant=tenant: code_redeem(organization=tenant.org, user=tenant.user, code=shown)
        for tenant in tenants])

    granted = [result for result in results if isinstance(result, LedgerEntry)]
    refused = [result for result in results if isinstance(result, CodeRefused)]
    assert (len(granted), len(refused)) == (2, 2)
    assert all("used up" in str(result) for result in refused)
    assert sorted(t.refresh_account().balance for t in tenants) == [0, 0, 100, 100]
    code.refresh_from_db()
    assert code.uses == 2


@pytest.mark.parametrize("spoil, message", [
    (lambda code: setattr(code, "expires_at", timezone.now() - dt.timedelta(seconds=1)),
     "expired"),
    (lambda code: setattr(code, "is_active", False), "not valid"),
], ids=["expired", "switched-off"])
def test_given_a_code_that_cannot_be_used_then_nothing_is_granted(tenant_factory, spoil, message):
    tenant = tenant_factory("acme", credits=0)
    code, shown = code_create(credits=50)
    spoil(code)
    code.save()

    with pytest.raises(CodeRefused, match=message):
        code_redeem(organization=tenant.org, user=tenant.user, code=shown)
    assert _grants(tenant) == [] and tenant.refresh_account().balance == 0


def test_given_an_unknown_code_then_it_reads_like_a_switched_off_one(tenant_factory):
    tenant = tenant_factory("acme", credits=0)
    with pytest.raises(CodeRefused) as unknown:
        code_redeem(organization=tenant.org, user=tenant.user, code="NOVA-AAAA-BBBB-CCCC-DDDD")
    assert str(unknown.value) == "This code is not valid."
    refusal = AuditEvent.objects.get(action="credits.code_refused")
    assert (refusal.organization_id, refusal.after) == (tenant.org.pk, {"why": "unknown"})


def test_given_too_many_wrong_codes_in_an_hour_then_even_a_good_one_waits(tenant_factory,
                                                                           settings):
    settings.REDEMPTION_FAILURES_PER_HOUR = 3
    tenant, other = tenant_factory("acme", credits=0), tenant_factory("globex", credits=0)
    _, shown = code_create(credits=10, max_uses=2)
    for attempt in range(3):
        with pytest.raises(CodeRefused, match="not valid"):
            code_redeem(organization=tenant.org, user=tenant.user, code=f"NOVA-WRONG-{attempt}")

    with pytest.raises(CodeRefused, match="Too many"):
        code_redeem(organization=tenant.org, user=tenant.user, code=shown)
    assert tenant.refresh_account().balance == 0
    # Another organization is not held back by it.
    assert code_redeem(organization=other.org, user=other.user, code=shown).amount == 10
