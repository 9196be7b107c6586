"""Periodic jobs of the completions app. Thin: each calls a service and is safe to run twice."""

from __future__ import annotations

import httpx

from completions import catalog_sync, reconciliation, rollups
from completions.models import Provider
from novakit.celery import app


@app.task(time_limit=600, soft_time_limit=540)
def usage_rollup_task() -> int:
    return rollups.usage_rollup()


@app.task(time_limit=1800, soft_time_limit=1700)
def usage_retention_task() -> int:
    return rollups.usage_records_purge()


@app.task(
    autoretry_for=(httpx.HTTPError,), retry_backoff=True, retry_backoff_max=600, max_retries=5,
    time_limit=300, soft_time_limit=240,
)
def catalog_sync_task(provider_slug: str = "openrouter") -> dict[str, int]:
    provider = Provider.objects.get(slug=provider_slug, kind=Provider.Kind.OPENAI)
    if not catalog_sync.provider_configured(provider):
        return {"skipped": 1}  # the embedded default: no upstream to ask
    listing = catalog_sync.fetch_provider_models(provider)
    return catalog_sync.catalog_sync(provider=provider, listing=listing)


@app.task(time_limit=300, soft_time_limit=240)
def requests_expire_task() -> int:
    from completions.services import requests_expire

    return requests_expire()


@app.task(time_limit=300, soft_time_limit=240)
def idempotency_purge_task() -> int:
    from completions.idempotency import idempotency_purge

    return idempotency_purge()


@app.task(time_limit=1800, soft_time_limit=1700)
def reconciliation_task() -> dict[str, int]:
    return reconciliation.reconciliation_window()
