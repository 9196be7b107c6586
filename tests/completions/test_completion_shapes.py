"""Given a tenant with credits, when the official OpenAI SDK (sync and async) asks for a
completion, it parses an answer that satisfies OpenAI's schemas, carries NovaKit's extras and
is billed once."""

from __future__ import annotations

import orjson
from asgiref.sync import sync_to_async

from billing.models import LedgerEntry
from completions.models import UsageRecord
from tests.completions.helpers import (
    assert_books_balance,
    parsed_events,
    post_chat,
    sse_events,
    usage_charged,
)
from tests.support.openai_schema import validate

HELLO = [{"role": "user", "content": "Hello!"}]


def _assert_extras(body: dict, *, tier: str) -> None:
    assert body["model_tier"] == tier
    usage = body["usage"]
    assert usage["credits_used"] > 0
    assert usage["credits_used"] == sum(usage["credits_breakdown"].values())
    assert usage["credits_breakdown"]["base"] > 0
    assert usage["tokens_remaining_estimate"] > 0
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_given_a_completion_when_created_then_it_validates_and_carries_the_extras(
    tenant, fake_upstream, client_for
):
    raw = client_for(tenant).chat.completions.with_raw_response.create(
        model="openai/gpt-4o", messages=HELLO, max_tokens=20
    )

    completion = raw.parse()
    body = raw.http_response.json()
    validate(body, "CreateChatCompletionResponse")
    _assert_extras(body, tier="standard")
    assert completion.id == raw.headers["x-request-id"]
    assert completion.model == "openai/gpt-4o"
    assert completion.choices[0].message.content == "The quick brown fox jumps over the lazy"
    assert completion.choices[0].finish_reason == "stop"
    # Extras ride along as extra fields of the SDK's own models.
    assert completion.usage.model_extra["credits_used"] == body["usage"]["credits_used"]
    # OpenAI's own usage details pass; the provider's price in dollars does not.
    assert body["usage"]["prompt_tokens_details"] == {"cached_tokens": 0}
    assert "cost" not in body["usage"]
    account = tenant.refresh_account()
    assert int(raw.headers["x-credits-remaining"]) == account.balance - account.reserved
    record = UsageRecord.objects.get(request_id=completion.id)
    assert (record.status, record.streamed, record.provider) == ("ok", False, "openrouter")
    assert record.credits == body["usage"]["credits_used"] == usage_charged(tenant)
    assert_books_balance(tenant)


def test_given_a_stream_when_read_raw_then_every_chunk_validates_and_the_last_carries_usage(
    tenant, fake_upstream, http
):
    response = post_chat(http, tenant, {"model": "openai/gpt-4o-mini", "messages": HELLO,
                                        "stream": True, "max_tokens": 5})

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    request_id = response.headers["x-request-id"]
    events = sse_events(response.text)
    assert events[-1] == "[DONE]"
    chunks = [orjson.loads(event) for event in events[:-1]]
    for chunk in chunks:
        validate(chunk, "CreateChatCompletionStreamResponse")
        assert chunk["id"] == request_id
        assert chunk["model"] == "openai/gpt-4o-mini"
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == "The quick brown fox jumps"
    final = chunks[-1]
    assert final["choices"][0]["finish_reason"] == "stop"
    _assert_extras(final, tier="basic")
    assert all("usage" not in chunk for chunk in chunks[:-1])
    record = UsageRecord.objects.get(request_id=request_id)
    assert (record.status, record.streamed) == ("ok", True)
    assert record.credits == final["usage"]["credits_used"] == usage_charged(tenant)
    assert_books_balance(tenant)


def test_given_the_sdk_stream_when_iterated_then_the_final_chunk_holds_the_extras(
    tenant, fake_upstream, client_for
):
    raw = client_for(tenant).chat.completions.with_raw_response.create(
        model="openai/gpt-4o-mini", messages=HELLO, stream=True, max_tokens=3
    )
    assert raw.headers["x-request-id"].startswith("chatcmpl-")
    chunks = list(raw.parse())

    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "The quick brown"
    assert chunks[-1].usage.completion_tokens == 3
    assert chunks[-1].model_extra["model_tier"] == "basic"
    assert chunks[-1].usage.model_extra["credits_used"] == usage_charged(tenant)


def test_given_an_upstream_without_usage_when_completed_then_the_tokenizer_counts_it(
    tenant, fake_upstream, client_for
):
    fake_upstream.scenario = "no_usage"

    completion = client_for(tenant).chat.completions.create(
        model="openai/gpt-4o-mini", messages=HELLO, max_tokens=4
    )

    assert completion.usage.completion_tokens == 4  # "The quick brown fox" is 4 o200k tokens
    record = UsageRecord.objects.get(request_id=completion.id)
    assert record.usage_source == "tokenizer"
    assert record.credits == completion.usage.model_extra["credits_used"] > 0
    assert_books_balance(tenant)


def test_given_an_upstream_without_usage_when_streamed_then_the_final_chunk_still_has_usage(
    tenant, fake_upstream, http
):
    fake_upstream.scenario = "no_usage"

    response = post_chat(http, tenant, {"messages": HELLO, "stream": True, "max_tokens": 4})

    chunks = parsed_events(response.text)
    assert sse_events(response.text)[-1] == "[DONE]"
    final = chunks[-1]
    validate(final, "CreateChatCompletionStreamResponse")
    assert final["usage"]["completion_tokens"] == 4
    assert final["usage"]["credits_used"] == usage_charged(tenant) > 0
    assert_books_balance(tenant)


async def test_given_the_async_sdk_when_it_creates_a_completion_then_it_is_billed_once(
    tenant, fake_upstream, async_client_for
):
    client = async_client_for(tenant)

    raw = await client.chat.completions.with_raw_response.create(
        model="anthropic/claude-3-opus", messages=HELLO, max_tokens=10
    )
    completion = raw.parse()

    validate(raw.http_response.json(), "CreateChatCompletionResponse")
    assert completion.model_extra["model_tier"] == "powerful"
    assert raw.headers["x-credits-remaining"].isdigit()
    record = await UsageRecord.objects.aget(request_id=completion.id)
    assert record.credits == completion.usage.model_extra["credits_used"]
    await sync_to_async(assert_books_balance)(tenant)
    await client.close()


async def test_given_the_async_sdk_when_it_streams_then_chunks_arrive_and_settle_once(
    tenant, fake_upstream, async_client_for
):
    client = async_client_for(tenant)

    stream = await client.chat.completions.create(
        model="google/gemini-1.5-pro", messages=HELLO, stream=True, max_tokens=6
    )
    chunks = [chunk async for chunk in stream]

    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "The quick brown fox jumps over"
    final = chunks[-1]
    assert final.model_extra["model_tier"] == "standard"
    record = await UsageRecord.objects.aget(request_id=final.id)
    assert (record.status, record.streamed, record.completion_tokens) == ("ok", True, 6)
    assert record.credits == final.usage.model_extra["credits_used"]
    await sync_to_async(assert_books_balance)(tenant)
    await client.close()


def test_given_a_stream_requested_by_query_string_then_the_answer_is_sse(
    tenant, fake_upstream, http
):
    response = post_chat(http, tenant, {"messages": HELLO, "max_tokens": 2},
                         params={"stream": "true"})

    assert response.headers["content-type"].startswith("text/event-stream")
    assert sse_events(response.text)[-1] == "[DONE]"
    assert fake_upstream.requests[-1]["body"]["stream"] is True
    # The upstream is always asked for usage in its last chunk.
    assert fake_upstream.requests[-1]["body"]["stream_options"] == {"include_usage": True}
    assert UsageRecord.objects.get(request_id=response.headers["x-request-id"]).streamed


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
