"""Given a tenant with credits, when the OpenAI SDK calls the gateway, it gets a billed answer."""

from __future__ import annotations

from billing.models import LedgerEntry
from completions.models import UsageRecord
from tests.support.openai_schema import validate


def test_completion_through_the_sdk_is_billed_once(tenant, fake_upstream, client_for):
    client = client_for(tenant)

    raw = client.chat.completions.with_raw_response.create(
        model="openai/gpt-4o-mini", messages=[{"role": "user", "content": "Hello!"}], max_tokens=50
    )
    completion = raw.parse()

    assert completion.choices[0].message.content.startswith("The quick")
    body = raw.http_response.json()
    validate(body, "CreateChatCompletionResponse")
    assert body["model_tier"] == "basic"
    usage = body["usage"]
    assert usage["credits_used"] == sum(usage["credits_breakdown"].values()) > 0
    record = UsageRecord.objects.get(request_id=completion.id)
    assert record.credits == usage["credits_used"]
    entry = LedgerEntry.objects.get(request_id=completion.id, kind="usage")
    assert entry.amount == -usage["credits_used"]
    assert tenant.refresh_account().reserved == 0


def test_streaming_through_the_sdk_ends_with_usage(tenant, fake_upstream, client_for):
    client = client_for(tenant)

    chunks = list(client.chat.completions.create(
        model="openai/gpt-4o-mini", messages=[{"role": "user", "content": "Hi"}], stream=True,
        max_tokens=50,
    ))

    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.startswith("The quick brown fox")
    final = chunks[-1]
    assert final.usage is not None
    extras = final.usage.model_extra
    assert extras["credits_used"] == sum(extras["credits_breakdown"].values())
    record = UsageRecord.objects.get(request_id=final.id)
    assert record.streamed and record.status == "ok"
    assert record.credits == extras["credits_used"]
