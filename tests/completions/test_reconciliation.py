"""Reconciliation (completions/reconciliation.py): records held against OpenRouter's own account
of each generation (the fake's `GET /v1/generation`), and estimated usage, listed for staff."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

from django.utils import timezone

from completions.models import ReconciliationFinding, UsageRecord
from completions.reconciliation import reconcile
from completions.tasks import reconciliation_task

HELLO = [{"role": "user", "content": "Say hello"}]


def _ask(client, marker: str = ""):  # type: ignore[no-untyped-def]
    return client.chat.completions.create(
        model="openai/gpt-4o-mini", max_tokens=4,
        messages=[{"role": "user", "content": f"Say hello {marker}"}])


def test_drift_and_estimates_are_found_once_and_listed_for_staff(
    tenant, fake_upstream, client_for, admin_client
):
    start = timezone.now()
    client = client_for(tenant)
    agreeing, drifting = _ask(client), _ask(client)
    estimated = _ask(client, "[[fault:no_usage]]")
    clamped = _ask(client, "[[fault:huge_usage]]")
    by_answer = {record.request_id: record for record in UsageRecord.objects.all()}
    # Each record keeps the provider's generation id beside NovaKit's own request id.
    assert by_answer[drifting.id].upstream_id in fake_upstream.generations
    account = fake_upstream.generations[by_answer[drifting.id].upstream_id]
    account.update(total_cost=0.0042, tokens_completion=account["tokens_completion"] + 7)

    counts = reconcile(since=start, until=timezone.now() + dt.timedelta(seconds=1))
    again = reconcile(since=start, until=timezone.now() + dt.timedelta(seconds=1))

    found = {(f.request_id, f.kind) for f in ReconciliationFinding.objects.all()}
    drift = by_answer[drifting.id].request_id
    assert {(drift, "cost_drift"), (drift, "token_drift")} <= found
    assert (by_answer[estimated.id].request_id, "estimated") in found
    assert (by_answer[clamped.id].request_id, "beyond_hold") in found
    assert not any(request_id == by_answer[agreeing.id].request_id for request_id, _ in found)
    # The estimated one was costed from the catalog, which is not what OpenRouter charged.
    assert (by_answer[estimated.id].request_id, "cost_drift") in found
    assert counts["checked"] == 4 and counts["cost_drift"] == 2
    assert again == {"checked": 4, "lookup_failed": 0}  # nothing new the second time
    finding = ReconciliationFinding.objects.get(request_id=drift, kind="cost_drift")
    assert Decimal(finding.theirs["total_cost"]).quantize(Decimal("1e-4")) == Decimal("0.0042")
    assert finding.ours["upstream_cost_usd"] == "0.0000420000"
    page = admin_client.get("/staff/").content.decode()
    assert 'id="reconciliation"' in page and drift in page


def test_the_periodic_job_looks_at_settled_records_only_and_skips_what_it_cannot_ask(
    tenant, fake_upstream, client_for, settings
):
    _ask(client_for(tenant), "[[fault:no_usage]]")
    # Just settled: OpenRouter's account may lag, so the job leaves it for its next run.
    assert reconciliation_task.apply().get() == {"checked": 0, "lookup_failed": 0}
    UsageRecord.objects.update(created_at=timezone.now() - dt.timedelta(minutes=5))
    settings.OPENROUTER_API_KEY = ""  # no key: OpenRouter is not asked, estimates still found

    assert reconciliation_task.apply().get() == {"checked": 0, "lookup_failed": 0,
                                                 "estimated": 1}
