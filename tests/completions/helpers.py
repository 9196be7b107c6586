"""Helpers for the chat completions tests: raw requests, SSE parsing, the books, test providers."""

from __future__ import annotations

import socket
import time
from decimal import Decimal
from typing import Any

import httpx
import orjson
from django.db.models import Sum

from billing.models import LedgerEntry, Reservation
from completions.catalog import catalog_cache
from completions.models import CatalogModel, ModelRoute, Provider, UsageRecord
from tests.conftest import Tenant


def bearer(tenant: Tenant) -> dict[str, str]:
    return {"Authorization": f"Bearer {tenant.secret}"}


def post_chat(http: httpx.Client, tenant: Tenant, body: Any, **kwargs: Any) -> httpx.Response:
    """POST a body as it is (a dict is sent as JSON, bytes as they are)."""
    content = body if isinstance(body, bytes) else orjson.dumps(body)
    headers = {**bearer(tenant), "Content-Type": "application/json"}
    return http.post("/chat/completions", content=content, headers=headers, **kwargs)


def sse_events(raw: str) -> list[str]:
    """The `data:` payloads of an SSE body, in order ("[DONE]" included as it is)."""
    events = []
    for block in raw.split("\n\n"):
        lines = [line[5:].strip() for line in block.split("\n") if line.startswith("data:")]
        if lines:
            events.append("\n".join(lines))
    return events


def parsed_events(raw: str) -> list[dict[str, Any]]:
    return [orjson.loads(event) for event in sse_events(raw) if event != "[DONE]"]


def assert_books_balance(tenant: Tenant) -> None:
    """The ledger adds up to the balance and nothing is left reserved."""
    account = tenant.refresh_account()
    total = LedgerEntry.objects.filter(account=account).aggregate(total=Sum("amount"))["total"]
    assert total == account.balance
    assert account.reserved == 0
    assert not Reservation.objects.filter(account=account, status=Reservation.Status.OPEN).exists()


def usage_charged(tenant: Tenant) -> int:
    """Credits taken by usage entries (positive)."""
    entries = LedgerEntry.objects.filter(account=tenant.account, kind=LedgerEntry.Kind.USAGE)
    total = entries.aggregate(total=Sum("amount"))["total"]
    return -(total or 0)


def wait_for_usage(request_id: str, timeout: float = 5.0) -> UsageRecord:
    """The usage record of a request whose settlement may still be running on the server."""
    deadline = time.monotonic() + timeout
    while True:
        record = UsageRecord.objects.filter(request_id=request_id).first()
        if record is not None:
            return record
        if time.monotonic() > deadline:
            raise AssertionError(f"no usage record for {request_id} after {timeout}s")
        time.sleep(0.02)


def only_usage_record(tenant: Tenant, timeout: float = 5.0) -> UsageRecord:
    """The single usage record the tenant has, waiting for it when settlement is in flight."""
    deadline = time.monotonic() + timeout
    while not UsageRecord.objects.filter(organization=tenant.org).exists():
        if time.monotonic() > deadline:
            raise AssertionError("no usage record was written")
        time.sleep(0.02)
    records = list(UsageRecord.objects.filter(organization=tenant.org))
    assert len(records) == 1, records
    return records[0]


def dead_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def add_provider(slug: str, base_url: str, *, supports_web_search: bool = True,
                 kind: str = "openai", api_version: str = "", keyed: bool = True) -> Provider:
    """A provider of `kind`, with the key `<slug>-key` unless not `keyed`."""
    provider = Provider(slug=slug, name=slug.title(), base_url=base_url, kind=kind,
                        api_version=api_version, supports_web_search=supports_web_search)
    if keyed:
        provider.set_api_key(f"{slug}-key")
    provider.full_clean()
    provider.save()
    return provider


def add_model(model_id: str, routes: list[tuple[Provider, str]], *, tier: str = "basic",
              multiplier: str = "1", vision: bool = False) -> CatalogModel:
    """A catalog model served by `routes`, tried in the order given."""
    model = CatalogModel.objects.create(
        model_id=model_id, name=model_id, owned_by=model_id.split("/")[0], tier=tier,
        multiplier=Decimal(multiplier), context_length=32_000, supports_vision=vision,
    )
    for priority, (provider, upstream_model) in enumerate(routes):
        ModelRoute.objects.create(model=model, provider=provider, upstream_model=upstream_model,
                                  priority=priority)
    catalog_cache.clear()
    return model


def openrouter() -> Provider:
    return Provider.objects.get(slug="openrouter")
