"""Low-balance alerts: tell the owners (and webhooks) once each time the balance dips under."""

from __future__ import annotations

import datetime as dt

from django.conf import settings
from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone

from accounts.emails import owners_notify
from accounts.webhooks import webhook_emit
from billing.models import CreditAccount


def low_balance_threshold(account: CreditAccount) -> int:
    """The balance under which the organization is told: its own, else the default."""
    if account.low_balance_threshold is not None:
        return account.low_balance_threshold
    return settings.LOW_BALANCE_DEFAULT_THRESHOLD


def _notify(account: CreditAccount, threshold: int, when: dt.datetime) -> None:
    organization = account.organization
    owners_notify(
        organization=organization,
        subject=f"NovaKit: {organization.name} is low on credits",
        message=(f"The credit balance of {organization.name} is {account.balance}, "
                 f"under its alert threshold of {threshold}.\n\n"
                 "Requests are refused with 402 once the balance cannot cover them."))
    webhook_emit(
        organization_id=organization.pk, event="balance.low",
        event_key=f"balance.low:{account.pk}:{when.isoformat()}",
        data={"balance": account.balance, "reserved": account.reserved, "threshold": threshold},
    )


@transaction.atomic
def low_balance_check(*, account_id: int, now: dt.datetime | None = None) -> bool:
    """Alert once per crossing under the threshold; re-arm when the balance is back above.

    The claim is a conditional UPDATE, so two workers checking at once send one alert.
    Returns whether an alert was sent.
    """
    now = now or timezone.now()
    account = CreditAccount.objects.select_related("organization").get(pk=account_id)
    threshold = low_balance_threshold(account)
    if threshold and account.balance < threshold:
        claimed = CreditAccount.objects.filter(
            pk=account_id, low_balance_alerted_at__isnull=True).update(low_balance_alerted_at=now)
        if claimed == 1:
            _notify(account, threshold, now)
            return True
        return False
    CreditAccount.objects.filter(pk=account_id, low_balance_alerted_at__isnull=False).update(
        low_balance_alerted_at=None)
    return False


def low_balance_scan(*, now: dt.datetime | None = None) -> int:
    """Check the accounts that need it: under threshold and not yet told, or told and back above."""
    default = settings.LOW_BALANCE_DEFAULT_THRESHOLD
    under = Q(low_balance_threshold__isnull=False, balance__lt=F("low_balance_threshold"))
    if default:
        under |= Q(low_balance_threshold__isnull=True, balance__lt=default)
    to_alert = CreditAccount.objects.filter(under, low_balance_alerted_at__isnull=True)
    to_rearm = CreditAccount.objects.filter(low_balance_alerted_at__isnull=False).exclude(under)
    sent = 0
    for account_id in list(to_alert.values_list("pk", flat=True)[:1000]) + list(
        to_rearm.values_list("pk", flat=True)[:1000]
    ):
        sent += low_balance_check(account_id=account_id, now=now)
    return sent
