"""Requests that finish together are settled in groups, with the same books as one by one;
and the quotas the gateway keeps with a cached key follow every change at once."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from asgiref.sync import sync_to_async

from billing import commit
from billing.models import LedgerEntry, Quota
from billing.pricing import price_request
from billing.services import quota_set
from completions.models import UsageRecord
from tests.completions.helpers import assert_books_balance, post_chat

pytestmark = pytest.mark.django_db(transaction=True)

MESSAGES = [{"role": "user", "content": "Tell me a short story"}]


async def test_given_requests_finishing_together_then_they_are_settled_in_groups_exactly_once(
    tenant, fake_upstream, async_client_for, monkeypatch
):
    groups: list[int] = []
    settle_group = commit.closings.write

    def recorded(outcomes: list[Any]) -> Any:
        groups.append(len(outcomes))
        return settle_group(outcomes)

    monkeypatch.setattr(commit.closings, "write", recorded)
    client = async_client_for(tenant)
    balance_before = (await sync_to_async(tenant.refresh_account)()).balance

    answers = await asyncio.gather(*[
        client.chat.completions.create(model="openai/gpt-4o-mini", messages=MESSAGES,
                                       max_tokens=20)
        for _ in range(24)
    ])

    assert sum(groups) == 24
    assert max(groups) > 1, f"every request was settled alone: {groups}"

    def books() -> None:
        records = {r.request_id: r for r in UsageRecord.objects.filter(
            organization=tenant.org)}
        assert set(records) == {answer.id for answer in answers}
        charged = 0
        for answer in answers:
            record = records[answer.id]
            expected = price_request(multiplier=record.multiplier,
                                     prompt_tokens=answer.usage.prompt_tokens,
                                     completion_tokens=answer.usage.completion_tokens).total
            assert record.credits == expected == answer.usage.model_extra["credits_used"]
            charged += expected
        entries = LedgerEntry.objects.filter(account=tenant.account, kind=LedgerEntry.Kind.USAGE)
        assert entries.count() == 24
        assert sorted(e.request_id for e in entries) == sorted(records)
        # Each entry's balance_after follows from the one before it: one running balance.
        running = balance_before
        for entry in entries.order_by("pk"):
            running += entry.amount
            assert entry.balance_after == running
        assert tenant.refresh_account().balance == balance_before - charged
        assert_books_balance(tenant)

    await sync_to_async(books)()


def test_given_a_key_already_in_use_when_a_quota_is_set_then_its_next_request_obeys_it(
    tenant, fake_upstream, http
):
    body = {"model": "openai/gpt-4o-mini", "messages": MESSAGES, "max_tokens": 20}
    assert post_chat(http, tenant, body).status_code == 200  # the key's context is now cached

    quota_set(organization=tenant.org, limit=10, metric=Quota.Metric.CHAT_TOKENS)
    refused = post_chat(http, tenant, body)

    assert refused.status_code == 402
    assert refused.json()["error"]["message"] == "Quota exceeded for chat_tokens"

    quota_set(organization=tenant.org, limit=None, metric=Quota.Metric.CHAT_TOKENS)
    assert post_chat(http, tenant, body).status_code == 200
    assert_books_balance(tenant)
