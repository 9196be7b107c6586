"""With no OPENROUTER_API_KEY, OpenRouter's models answer 503 naming the setting, while the
built-in `novakit/echo` model still works, streamed and not, billed like any other."""

from __future__ import annotations

import openai
import pytest

from completions.catalog import catalog_cache
from completions.models import UsageRecord
from tests.completions.helpers import assert_books_balance, parsed_events, post_chat, sse_events
from tests.support.openai_schema import validate


@pytest.fixture
def no_upstream_key(settings, fake_upstream):
    settings.OPENROUTER_API_KEY = ""
    catalog_cache.clear()
    return fake_upstream


@pytest.mark.parametrize("stream", [False, True])
def test_given_no_openrouter_key_then_openrouter_models_answer_503_naming_the_setting(
    tenant, no_upstream_key, http, stream
):
    response = post_chat(http, tenant, {"model": "openai/gpt-4o", "stream": stream,
                                        "messages": [{"role": "user", "content": "Hi"}]})

    assert response.status_code == 503
    body = response.json()
    validate(body, "ErrorResponse")
    assert body["error"]["code"] == "upstream_unavailable"
    assert "OPENROUTER_API_KEY" in body["error"]["message"]
    assert no_upstream_key.requests == []
    # Refused, not admitted: in the usage records, charged nothing.
    refused = UsageRecord.objects.get()
    assert (refused.status, refused.http_status, refused.error_code, refused.credits) == (
        "refused", 503, "upstream_unavailable", 0)
    assert refused.request_id == response.headers["x-request-id"]
    assert_books_balance(tenant)


def test_given_no_openrouter_key_then_the_sdk_raises_a_server_error(
    tenant, no_upstream_key, client_for
):
    with pytest.raises(openai.InternalServerError) as caught:
        client_for(tenant).chat.completions.create(
            model="openai/gpt-4o-mini", messages=[{"role": "user", "content": "Hi"}]
        )

    assert caught.value.status_code == 503


def test_given_no_openrouter_key_then_echo_answers_and_is_billed(
    tenant, no_upstream_key, client_for
):
    raw = client_for(tenant).chat.completions.with_raw_response.create(
        model="novakit/echo", messages=[{"role": "user", "content": "ping pong"}]
    )
    completion = raw.parse()

    validate(raw.http_response.json(), "CreateChatCompletionResponse")
    assert completion.choices[0].message.content == "Echo: ping pong"
    assert completion.model == "novakit/echo"
    record = UsageRecord.objects.get(request_id=completion.id)
    assert (record.status, record.provider) == ("ok", "builtin")
    assert record.credits == completion.usage.model_extra["credits_used"] > 0
    assert_books_balance(tenant)


def test_given_no_openrouter_key_then_echo_streams_word_by_word(tenant, no_upstream_key, http):
    response = post_chat(http, tenant, {"model": "novakit/echo", "stream": True,
                                        "messages": [{"role": "user", "content": "one two three"}]})

    assert response.status_code == 200
    assert sse_events(response.text)[-1] == "[DONE]"
    chunks = parsed_events(response.text)
    for chunk in chunks:
        validate(chunk, "CreateChatCompletionStreamResponse")
    pieces = [c["choices"][0]["delta"].get("content") for c in chunks if c["choices"]]
    assert "".join(p or "" for p in pieces) == "Echo: one two three"
    assert len([p for p in pieces if p]) == 4
    final = chunks[-1]
    record = UsageRecord.objects.get(request_id=final["id"])
    assert record.streamed and record.credits == final["usage"]["credits_used"] > 0
    assert_books_balance(tenant)
