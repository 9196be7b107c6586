"""Given an organization with a low-balance threshold, its owners hear once per crossing."""

from __future__ import annotations

import pytest
from django.core import mail

from billing.alerts import low_balance_scan
from billing.services import credits_adjust, credits_grant
from billing.tasks import low_balance_alerts_task

pytestmark = pytest.mark.django_db(transaction=True)


def _set_threshold(tenant, value: int) -> None:
    tenant.account.low_balance_threshold = value
    tenant.account.save(update_fields=["low_balance_threshold"])


def test_owners_are_emailed_once_per_crossing(tenant_factory):
    tenant = tenant_factory("lowco", credits=1_000)
    _set_threshold(tenant, 500)

    assert low_balance_alerts_task.apply().get() == 0  # above the threshold: nothing
    credits_adjust(account=tenant.account, amount=-600, reason="spend")
    assert low_balance_alerts_task.apply().get() == 1
    assert low_balance_alerts_task.apply().get() == 0  # same crossing: no second email
    assert len(mail.outbox) == 1
    assert mail.outbox[0].to == ["owner@lowco.test"]
    assert "low on credits" in mail.outbox[0].subject

    credits_grant(account=tenant.account, amount=1_000, reason="top up")
    assert low_balance_scan() == 0  # back above: re-armed, nothing sent
    credits_adjust(account=tenant.account, amount=-1_200, reason="spend again")
    assert low_balance_scan() == 1  # a new crossing: a new email
    assert len(mail.outbox) == 2


def test_an_account_without_a_threshold_is_never_alerted(tenant_factory, settings):
    settings.LOW_BALANCE_DEFAULT_THRESHOLD = 0
    tenant_factory("nothreshold", credits=10)
    assert low_balance_scan() == 0
    assert mail.outbox == []


def test_the_default_threshold_applies_to_accounts_without_their_own(tenant_factory, settings):
    settings.LOW_BALANCE_DEFAULT_THRESHOLD = 100
    tenant_factory("poor", credits=10)
    tenant_factory("rich", credits=10_000)
    assert low_balance_scan() == 1
    assert [message.to for message in mail.outbox] == [["owner@poor.test"]]
