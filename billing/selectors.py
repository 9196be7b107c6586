"""Reads of credits and quotas shared by the API, the portal and the admin."""

from __future__ import annotations

import datetime as dt
from typing import Any

from django.db.models import QuerySet
from django.utils import timezone

from billing.models import CreditAccount, LedgerEntry, Quota, QuotaCounter, Reservation
from billing.services import period_end, period_start


def quota_usage(*, organization_id: int, now: dt.datetime | None = None) -> list[dict[str, Any]]:
    now = now or timezone.now()
    rows = []
    quotas = Quota.objects.filter(organization_id=organization_id).select_related("api_key")
    for quota in quotas.order_by("pk"):
        start = period_start(quota.period, now)
        counter = QuotaCounter.objects.filter(quota=quota, period_start=start).first()
        used = counter.used if counter else 0
        reserved = counter.reserved if counter else 0
        end = period_end(quota.period, start)
        rows.append({
            "metric": quota.metric,
            "scope": "key" if quota.api_key_id else "organization",
            "key_prefix": quota.api_key.prefix if quota.api_key_id else None,
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
        "currency": "credits",
        "quotas": quota_usage(organization_id=organization_id),
    }


def ledger_entries(*, organization_id: int) -> QuerySet[LedgerEntry]:
    return LedgerEntry.objects.filter(account__organization_id=organization_id).order_by(
        "-created_at", "-id"
    )


def open_reservations(*, organization_id: int) -> QuerySet[Reservation]:
    return Reservation.objects.filter(
        account__organization_id=organization_id, status=Reservation.Status.OPEN
    ).order_by("created_at")
