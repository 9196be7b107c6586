"""Reads of credits and quotas shared by the API, the portal and the admin."""

from __future__ import annotations

import datetime as dt
from typing import Any

from django.db.models import F, Q, QuerySet
from django.utils import timezone

from billing.models import CreditAccount, LedgerEntry, Payment, Quota, QuotaCounter, Reservation
from billing.quotas import applicable_quotas, measure, period_end, period_start


def quota_usage(*, organization_id: int, now: dt.datetime | None = None) -> list[dict[str, Any]]:
    now = now or timezone.now()
    rows = []
    quotas = list(Quota.objects.filter(organization_id=organization_id)
                  .select_related("api_key").order_by("pk"))
    # Every quota's counter for its current period, in one query.
    starts = {quota.pk: period_start(quota.period, now) for quota in quotas}
    counters = {(counter.quota_id, counter.period_start): counter
                for counter in QuotaCounter.objects.filter(
                    quota__in=quotas, period_start__in=set(starts.values()))}
    for quota in quotas:
        start = starts[quota.pk]
        counter = counters.get((quota.pk, start))
        used = counter.used if counter else 0
        reserved = counter.reserved if counter else 0
        end = period_end(quota.period, start)
        rows.append({
            "metric": quota.metric,
            "scope": "key" if quota.api_key_id else "organization",
            "key_prefix": quota.api_key.prefix if quota.api_key else None,
            "period": quota.period,
            "limit": quota.limit,
            "used": used,
            "reserved": reserved,
            "remaining": max(0, quota.limit - used - reserved),
            "resets_at": end.isoformat() if end else None,
        })
    return rows


def credit_summary(*, organization_id: int) -> dict[str, Any]:
    account = CreditAccount.objects.filter(organization_id=organization_id).first()
    balance = account.balance if account else 0
    reserved = account.reserved if account else 0
    return {
        "balance": balance,
        "reserved": reserved,
        "available": balance - reserved,
        # Owed for reversed payments (refunds, lost disputes): the next credits repay it.
        "debt": account.debt if account else 0,
        "currency": "credits",
        "quotas": quota_usage(organization_id=organization_id),
    }


def ledger_entries(*, organization_id: int) -> QuerySet[LedgerEntry]:
    return LedgerEntry.objects.filter(account__organization_id=organization_id).order_by(
        "-created_at", "-id"
    )


def payments(*, organization_id: int) -> QuerySet[Payment]:
    """The organization's top-ups, newest first (those still open at Stripe included)."""
    return Payment.objects.filter(organization_id=organization_id).order_by("-created_at", "-id")


def open_reservations(*, organization_id: int) -> QuerySet[Reservation]:
    return Reservation.objects.filter(
        account__organization_id=organization_id, status=Reservation.Status.OPEN
    ).order_by("created_at")


def organizations_near_limits(*, fraction: float = 0.8, limit: int = 50) -> list[dict[str, Any]]:
    """Organizations whose balance is under its threshold, or whose quota use is past `fraction`.

    Bounded: accounts are found by an indexed comparison and quota counters of
    the current periods only; at most `limit` rows of each kind.
    """
    from django.conf import settings

    now = timezone.now()
    rows: list[dict[str, Any]] = []
    default = settings.LOW_BALANCE_DEFAULT_THRESHOLD
    accounts = CreditAccount.objects.select_related("organization")
    low = accounts.filter(low_balance_threshold__isnull=False,
                          balance__lt=F("low_balance_threshold") + F("reserved"))
    if default:
        low = low | accounts.filter(low_balance_threshold__isnull=True,
                                    balance__lt=F("reserved") + default)
    for account in low.order_by("balance")[:limit]:
        rows.append({"organization": account.organization.slug,
                     "organization_id": account.organization_id, "reason": "low balance",
                     "value": account.balance - account.reserved,
                     "limit": account.low_balance_threshold or default})
    current = Q()
    for period in Quota.Period.values:
        current |= Q(quota__period=period, period_start=period_start(period, now))
    crowded = (
        QuotaCounter.objects.filter(current, quota__limit__gt=0)
        .annotate(in_use=F("used") + F("reserved"))
        .filter(in_use__gte=F("quota__limit") * fraction)
        .select_related("quota__organization", "quota__api_key")
        .order_by("-in_use")[:limit]
    )
    for counter in crowded:
        quota = counter.quota
        subject = quota.api_key.prefix if quota.api_key else "organization"
        rows.append({"organization": quota.organization.slug,
                     "organization_id": quota.organization_id,
                     "reason": f"{quota.metric} quota ({subject})",
                     "value": counter.in_use, "limit": quota.limit})
    return rows


def stale_reservations(*, older_than: dt.timedelta, limit: int = 50) -> QuerySet[Reservation]:
    """Open reservations older than a request should ever take: a process may have died."""
    return (
        Reservation.objects.filter(status=Reservation.Status.OPEN,
                                   created_at__lt=timezone.now() - older_than)
        .select_related("account__organization")
        .order_by("created_at")[:limit]
    )


def admission_check(
    *, organization_id: int, api_key_id: int | None, credits: int, tokens: int
) -> dict[str, Any]:
    """Would a reservation of `credits` and `tokens` succeed now? Reads only; holds nothing.

    The same conditions `credits_reserve` applies, evaluated without taking
    anything, so a quote agrees with the reservation made right after it.
    """
    now = timezone.now()
    account = CreditAccount.objects.filter(organization_id=organization_id).first()
    available = (account.balance - account.reserved) if account else 0
    if available < credits:
        return {"admitted": False, "reason": "Insufficient credits", "available": available}
    quotas = applicable_quotas(organization_id=organization_id, api_key_id=api_key_id)
    this_period = Q()
    for quota in quotas:
        this_period |= Q(quota=quota, period_start=period_start(quota.period, now))
    counters = {c.quota_id: c for c in QuotaCounter.objects.filter(this_period)} if quotas else {}
    for quota in quotas:
        need = measure(quota.metric, tokens=tokens, credits=credits)
        counter = counters.get(quota.pk)
        room = quota.limit - ((counter.used + counter.reserved) if counter else 0)
        if room < need:
            return {"admitted": False, "reason": f"Quota exceeded for {quota.metric}",
                    "available": available, "quota_remaining": max(0, room)}
    return {"admitted": True, "reason": None, "available": available}
