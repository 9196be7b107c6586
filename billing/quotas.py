"""Quotas: what they count, their periods, which apply to a request, and setting them.

Holding and counting against them happens with the credits, in
`billing.holds` and `billing.closing`; the rule of what a quota counts is
`measure`, used by both and by the quote.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from decimal import Decimal

from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction
from django.db.models import Q

from accounts.models import APIKey, Organization
from accounts.services import audit_record
from billing.models import CreditAccount, Quota, QuotaCounter
from novakit.errors import ApiError


class QuotaExceeded(ApiError):
    def __init__(self, metric: str, remaining: int) -> None:
        super().__init__(
            "quota_exceeded",
            f"Quota exceeded for {metric}",
            extras={"remaining": max(0, remaining)},
        )


def measure(metric: str, *, tokens: int, credits: int) -> int:
    """What a quota of `metric` counts for a request of `tokens` costing `credits`."""
    return tokens if metric == Quota.Metric.CHAT_TOKENS else credits


def period_start(period: str, now: dt.datetime) -> dt.datetime:
    """The start of the quota period containing `now` (UTC). Resets follow the calendar."""
    now = now.astimezone(dt.UTC)
    if period == Quota.Period.MONTHLY:
        return now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    if period == Quota.Period.DAILY:
        return now.replace(hour=0, minute=0, second=0, microsecond=0)
    return dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def period_end(period: str, start: dt.datetime) -> dt.datetime | None:
    if period == Quota.Period.MONTHLY:
        return (start + dt.timedelta(days=32)).replace(day=1)
    if period == Quota.Period.DAILY:
        return start + dt.timedelta(days=1)
    return None


@dataclass(frozen=True, slots=True)
class ReservationTargets:
    """What a reservation holds against: the credit account and the quotas that apply."""

    account_id: int | None
    quotas: tuple[Quota, ...]


def reservation_targets(*, organization_id: int, api_key_id: int | None) -> ReservationTargets:
    """Read for each reservation, or once per cached API key by the gateway.

    A cached copy stays right because quota changes invalidate the key cache
    (billing/signals.py) and an organization's account never changes.
    """
    account_id = account_id_of(organization_id)
    quotas = applicable_quotas(organization_id=organization_id, api_key_id=api_key_id)
    return ReservationTargets(account_id=account_id, quotas=tuple(quotas))


def account_id_of(organization_id: int) -> int | None:
    """The organization's credit account, perhaps created since its targets were read."""
    return CreditAccount.objects.filter(organization_id=organization_id).values_list(
        "pk", flat=True
    ).first()


def applicable_quotas(*, organization_id: int, api_key_id: int | None) -> list[Quota]:
    quotas = Quota.objects.filter(organization_id=organization_id, api_key__isnull=True)
    if api_key_id is not None:
        quotas = quotas | Quota.objects.filter(api_key_id=api_key_id)
    return list(quotas.order_by("pk"))


def current_counters(quotas: list[Quota], now: dt.datetime) -> dict[int, int]:
    """The ids of the counters the `quotas` have for the periods containing `now`, by quota
    id (a quota whose period has no counter yet is missing)."""
    if not quotas:
        return {}
    this_period = Q()
    for quota in quotas:
        this_period |= Q(quota_id=quota.pk, period_start=period_start(quota.period, now))
    return {quota_id: pk for pk, quota_id in
            QuotaCounter.objects.filter(this_period).values_list("pk", "quota_id")}


def counter_for(quota: Quota, now: dt.datetime) -> int:
    """The id of `quota`'s counter for the period containing `now`, created if new."""
    start = period_start(quota.period, now)
    QuotaCounter.objects.bulk_create(
        [QuotaCounter(quota=quota, period_start=start)], ignore_conflicts=True
    )
    return QuotaCounter.objects.filter(quota=quota, period_start=start).values_list(
        "pk", flat=True
    )[0]


def quota_refusal(counter_id: int) -> QuotaExceeded:
    """The refusal for a counter that cannot hold a request: its quota and what is left."""
    counter = QuotaCounter.objects.select_related("quota").get(pk=counter_id)
    return QuotaExceeded(counter.quota.metric,
                         counter.quota.limit - counter.used - counter.reserved)


_QUOTA_ALERTS = ((Decimal("0.8"), "quota.80"), (Decimal("1"), "quota.100"))


@dataclass(frozen=True, slots=True)
class CounterUse:
    """One quota counter after a settlement counted use against it."""

    counter_id: int
    quota_id: int
    organization_id: int
    api_key_id: int | None
    metric: str
    period: str
    period_start: dt.datetime
    limit: int
    used: int
    reserved: int
    added: int

    @property
    def room(self) -> int:
        return max(0, self.limit - self.used - self.reserved)


def quota_crossings_announce(uses: list[CounterUse]) -> None:
    """Tell webhooks when a settlement took a quota's use past 80 % or 100 %, once a period."""
    from accounts.webhooks import webhook_emit

    for use in uses:
        for fraction, event in _QUOTA_ALERTS:
            mark = fraction * use.limit
            if use.used - use.added < mark <= use.used:
                webhook_emit(
                    organization_id=use.organization_id, event=event,
                    event_key=f"{event}:{use.quota_id}:{use.period_start.isoformat()}",
                    data={"metric": use.metric, "limit": use.limit, "used": use.used,
                          "period": use.period, "period_start": use.period_start.isoformat(),
                          "api_key_id": use.api_key_id},
                )


@transaction.atomic
def quota_set(
    *,
    organization: Organization,
    limit: int | None,
    metric: str = Quota.Metric.CHAT_TOKENS,
    period: str = Quota.Period.MONTHLY,
    api_key_id: int | None = None,
    actor: AbstractBaseUser | None = None,
    actor_label: str = "",
    reason: str = "",
) -> Quota | None:
    """Set (or with `limit=None` remove) an organization's or a key's quota.

    A key's quota must name the key's own organization (ValidationError otherwise).
    """
    Quota(organization=organization, api_key_id=api_key_id).clean()
    existing = Quota.objects.filter(organization=organization, metric=metric, api_key_id=api_key_id)
    before = dict(first) if (first := existing.values("limit", "period").first()) else None
    quota: Quota | None = None
    if limit is None:
        existing.delete()
    else:
        if limit < 0:
            raise ValueError("a quota cannot be negative")
        quota, _ = Quota.objects.update_or_create(
            organization=organization,
            metric=metric,
            api_key_id=api_key_id,
            defaults={"limit": limit, "period": period},
        )
    audit_record(
        action="quota.set",
        actor=actor,
        actor_label=actor_label,
        organization=organization,
        target=f"{metric}" + (f" key {api_key_id}" if api_key_id else ""),
        before=before,
        after={"limit": limit, "period": period} if limit is not None else None,
        reason=reason,
    )
    return quota


def key_credit_cap(key: APIKey) -> int | None:
    """The key's monthly credit cap (its own credits quota), or None. Uses prefetched quotas."""
    quota = next((q for q in key.quotas.all() if q.metric == Quota.Metric.CREDITS), None)
    return quota.limit if quota else None


def key_credit_cap_set(*, key: APIKey, limit: int | None,
                       actor: AbstractBaseUser | None = None, actor_label: str = "") -> None:
    """Set (or with None remove) a key's monthly credit cap: a credits quota of its own."""
    quota_set(organization=key.organization, api_key_id=key.pk, limit=limit,
              metric=Quota.Metric.CREDITS, period=Quota.Period.MONTHLY,
              actor=actor, actor_label=actor_label, reason="key credit cap")


def key_quotas_copy(*, old: APIKey, new: APIKey, actor: AbstractBaseUser | None = None,
                    actor_label: str = "") -> None:
    """A rotated key keeps the old one's own quotas (its credit cap)."""
    for quota in old.quotas.all():
        quota_set(organization=old.organization, api_key_id=new.pk, limit=quota.limit,
                  metric=quota.metric, period=quota.period, actor=actor,
                  actor_label=actor_label, reason=f"rotated from {old.prefix}")
