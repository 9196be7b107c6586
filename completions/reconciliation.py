"""Reconciliation: NovaKit's usage records held against the providers' own accounts.

A periodic job (completions.tasks) looks at the requests settled in a recent
window and records a finding for staff (`ReconciliationFinding`, on the staff
dashboard) where:
- the record's usage was estimated: counted by the tokenizer (the provider
  reported none), held to the request's bounds (it reported more than the
  request could use), or charged its hold because settlement failed;
- the provider keeps a per-generation account (OpenRouter's
  `GET /generation?id=`) and its tokens or its cost differ from the record's.

Findings are written once per request and kind, so overlapping windows or a
rerun add nothing; the provider is asked about each request at most once
per run, and a failed lookup is logged and left for the next run.
"""

from __future__ import annotations

import datetime as dt
import logging
from decimal import Decimal, InvalidOperation
from typing import Any

import httpx
from django.conf import settings
from django.utils import timezone

from completions.catalog import OPENROUTER, provider_endpoint
from completions.models import Provider, ReconciliationFinding, UsageRecord

logger = logging.getLogger(__name__)
Kind = ReconciliationFinding.Kind
# A provider's account of a generation lags it by seconds (OpenRouter's by up to a minute).
SETTLE_DELAY = dt.timedelta(seconds=60)
# Costs this close agree: the provider rounds, and the catalog's prices are per million.
COST_TOLERANCE = Decimal("0.01")
ESTIMATES: dict[str, str] = {"tokenizer": Kind.ESTIMATED, "clamped": Kind.BEYOND_HOLD,
             "fallback": Kind.FALLBACK}


def _ours(record: UsageRecord) -> dict[str, Any]:
    return {"prompt_tokens": record.prompt_tokens, "completion_tokens": record.completion_tokens,
            "upstream_cost_usd": str(record.upstream_cost_usd), "credits": record.credits,
            "credits_reserved": record.credits_reserved, "usage_source": record.usage_source}


def _finding(record: UsageRecord, kind: str, theirs: dict[str, Any] | None = None) -> bool:
    _, created = ReconciliationFinding.objects.get_or_create(
        request_id=record.request_id, kind=kind,
        defaults={"organization_id": record.organization_id, "provider": record.provider,
                  "model": record.model, "ours": _ours(record), "theirs": theirs or {}})
    return created


def generation_lookup(provider: Provider, generation_id: str) -> dict[str, Any] | None:
    """OpenRouter's account of one generation, or None when it has none (yet)."""
    base_url, keys, _ = provider_endpoint(provider)
    headers = {"Authorization": f"Bearer {keys[0].api_key}"} if keys else {}
    response = httpx.get(f"{base_url}/generation", params={"id": generation_id},
                         headers=headers, timeout=15)
    if response.status_code == 404:
        return None
    response.raise_for_status()
    data = response.json().get("data")
    return data if isinstance(data, dict) else None


def _drift(record: UsageRecord, theirs: dict[str, Any]) -> list[str]:
    found: list[str] = []
    if (theirs.get("tokens_prompt"), theirs.get("tokens_completion")) != (
            record.prompt_tokens, record.completion_tokens):
        found.append(Kind.TOKEN_DRIFT)
    try:
        cost = Decimal(str(theirs.get("total_cost")))
    except InvalidOperation:
        return found
    if abs(cost - record.upstream_cost_usd) > COST_TOLERANCE * max(cost, Decimal("0.000001")):
        found.append(Kind.COST_DRIFT)
    return found


def reconcile(*, since: dt.datetime, until: dt.datetime | None = None,
              limit: int | None = None) -> dict[str, int]:
    """Reconcile the records settled in [since, until); returns what it found, by kind."""
    until = until or timezone.now() - SETTLE_DELAY
    limit = limit or settings.RECONCILIATION_BATCH
    counts: dict[str, int] = {"checked": 0, "lookup_failed": 0}
    records = UsageRecord.objects.filter(created_at__gte=since, created_at__lt=until)
    for record in records.exclude(usage_source="upstream").order_by("pk")[:limit]:
        kind = ESTIMATES.get(record.usage_source)
        if kind is not None and _finding(record, kind):
            counts[kind] = counts.get(kind, 0) + 1
    openrouter = Provider.objects.filter(slug=OPENROUTER, is_active=True).first()
    if openrouter is None or not provider_endpoint(openrouter)[1]:
        return counts  # no OpenRouter to ask (the embedded default has no key)
    answered = records.filter(provider=OPENROUTER, status=UsageRecord.Status.OK,
                              key_class="platform").exclude(upstream_id="")
    for record in answered.order_by("pk")[:limit]:
        try:
            theirs = generation_lookup(openrouter, record.upstream_id)
        except (httpx.HTTPError, ValueError) as exc:
            counts["lookup_failed"] += 1
            logger.warning("could not look up generation %s of %s: %s", record.upstream_id,
                           record.request_id, type(exc).__name__)
            continue
        counts["checked"] += 1
        for drift in _drift(record, theirs) if theirs else ():
            if _finding(record, drift, theirs):
                counts[drift] = counts.get(drift, 0) + 1
    return counts


def reconciliation_window(*, now: dt.datetime | None = None) -> dict[str, int]:
    """The periodic job's run: the records of the last RECONCILIATION_LOOKBACK_SECONDS."""
    now = now or timezone.now()
    until = now - SETTLE_DELAY
    return reconcile(since=until - dt.timedelta(seconds=settings.RECONCILIATION_LOOKBACK_SECONDS),
                     until=until)


def recent_findings(*, limit: int = 50) -> list[ReconciliationFinding]:
    return list(ReconciliationFinding.objects.all()[:limit])
