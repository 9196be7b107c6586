"""OpenAI parameters the contract does not list reach the upstream untouched; tool calls come
back untouched, whole or as streamed deltas the SDK reassembles; `web_search` becomes
OpenRouter's web plugin and is charged for."""

from __future__ import annotations

import openai
import pytest

from completions.models import UsageRecord
from tests.completions.helpers import (
    add_model,
    add_provider,
    assert_books_balance,
    parsed_events,
    post_chat,
)
from tests.support.openai_schema import validate

HELLO = [{"role": "user", "content": "Weather in Paris?"}]
TOOLS = [{
    "type": "function",
    "function": {
        "name": "get_weather", "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                       "required": ["city"]},
    },
}]


def test_given_openai_parameters_the_contract_does_not_list_then_they_reach_the_upstream(
    tenant, fake_upstream, client_for
):
    passthrough = {
        "tools": TOOLS,
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
        "response_format": {"type": "json_schema", "json_schema": {
            "name": "answer", "schema": {"type": "object", "properties": {}}}},
        "seed": 42,
        "n": 2,
        "logprobs": True,
        "top_logprobs": 3,
        "logit_bias": {"50256": -100},
        "max_completion_tokens": 7,
        "parallel_tool_calls": False,
        "metadata": {"team": "search"},
    }

    client_for(tenant).chat.completions.create(
        model="openai/gpt-4o-mini", messages=HELLO, **passthrough
    )

    sent = fake_upstream.requests[-1]["body"]
    for name, value in passthrough.items():
        assert sent[name] == value, name


def test_given_max_completion_tokens_then_it_is_the_budget_reserved_and_checked(
    tenant, fake_upstream, http
):
    too_big = post_chat(http, tenant, {"model": "deepseek/deepseek-chat", "messages": HELLO,
                                       "max_tokens": 10, "max_completion_tokens": 70_000})
    not_positive = post_chat(http, tenant, {"messages": HELLO, "max_completion_tokens": 0})

    assert too_big.status_code == 400
    assert not_positive.status_code == 400
    assert not_positive.json()["error"]["param"] == "max_completion_tokens"
    assert fake_upstream.requests == []


def test_given_stream_options_from_the_client_then_they_are_kept_and_usage_is_asked_for(
    tenant, fake_upstream, http
):
    response = post_chat(http, tenant, {"messages": HELLO, "stream": True, "max_tokens": 2,
                                        "stream_options": {"include_usage": False,
                                                           "include_obfuscation": False}})

    assert response.status_code == 200
    assert fake_upstream.requests[-1]["body"]["stream_options"] == {
        "include_usage": True, "include_obfuscation": False}
    # We asked for usage on the caller's behalf: the last chunk carries it regardless.
    assert parsed_events(response.text)[-1]["usage"]["credits_used"] > 0


def test_given_a_tool_call_answer_then_it_comes_back_unchanged(tenant, fake_upstream, client_for):
    fake_upstream.scenario = "tools"

    raw = client_for(tenant).chat.completions.with_raw_response.create(
        model="openai/gpt-4o", messages=HELLO, tools=TOOLS, max_tokens=50
    )
    completion = raw.parse()

    validate(raw.http_response.json(), "CreateChatCompletionResponse")
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    call = choice.message.tool_calls[0]
    assert (call.id, call.type, call.function.name) == ("call_1", "function", "get_weather")
    assert call.function.arguments == '{"city": "Paris"}'
    assert_books_balance(tenant)


def test_given_a_streamed_tool_call_then_the_sdk_reassembles_the_deltas(
    tenant, fake_upstream, client_for, http
):
    fake_upstream.scenario = "tools"

    with client_for(tenant).chat.completions.stream(
        model="openai/gpt-4o", messages=HELLO, tools=TOOLS, max_tokens=50
    ) as stream:
        for _ in stream:
            pass
        final = stream.get_final_completion()
    raw = post_chat(http, tenant, {"model": "openai/gpt-4o", "messages": HELLO, "tools": TOOLS,
                                   "stream": True})

    call = final.choices[0].message.tool_calls[0]
    assert final.choices[0].finish_reason == "tool_calls"
    assert (call.id, call.function.name) == ("call_1", "get_weather")
    assert call.function.arguments == '{"city": "Paris"}'
    for chunk in parsed_events(raw.text):
        validate(chunk, "CreateChatCompletionStreamResponse")
    assert_books_balance(tenant)


def test_given_web_search_then_the_upstream_gets_the_web_plugin_and_it_is_charged(
    tenant, fake_upstream, http
):
    response = post_chat(http, tenant, {"messages": HELLO, "web_search": True, "max_tokens": 5})

    assert response.status_code == 200, response.text
    sent = fake_upstream.requests[-1]["body"]
    assert sent["plugins"] == [{"id": "web"}]
    assert "web_search" not in sent
    usage = response.json()["usage"]
    assert usage["credits_breakdown"]["web_search"] == 10
    assert usage["credits_used"] == usage["credits_breakdown"]["base"] + 10
    record = UsageRecord.objects.get(request_id=response.json()["id"])
    assert record.credits_breakdown == usage["credits_breakdown"]
    assert_books_balance(tenant)


def test_given_web_search_on_a_stream_then_the_final_chunk_shows_the_surcharge(
    tenant, fake_upstream, client_for
):
    chunks = list(client_for(tenant).chat.completions.create(
        model="openai/gpt-4o-mini", messages=HELLO, stream=True, max_tokens=3,
        extra_body={"web_search": True},
    ))

    assert fake_upstream.requests[-1]["body"]["plugins"] == [{"id": "web"}]
    assert chunks[-1].usage.model_extra["credits_breakdown"]["web_search"] == 10


def test_given_web_search_and_plugins_of_the_callers_own_then_both_reach_the_upstream(
    tenant, fake_upstream, http
):
    post_chat(http, tenant, {"messages": HELLO, "web_search": True,
                             "plugins": [{"id": "file-parser"}]})

    assert fake_upstream.requests[-1]["body"]["plugins"] == [{"id": "file-parser"}, {"id": "web"}]


def test_given_a_model_whose_only_provider_lacks_web_search_then_web_search_is_refused(
    tenant, fake_upstream, client_for
):
    plain = add_provider("plain", fake_upstream.url, supports_web_search=False)
    add_model("plain/model", [(plain, "plain-model")])
    client = client_for(tenant)

    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="plain/model", messages=HELLO,
                                       extra_body={"web_search": True})
    without = client.chat.completions.create(model="plain/model", messages=HELLO, max_tokens=2)

    assert caught.value.param == "web_search"
    assert "plain/model" in caught.value.message
    assert without.choices[0].message.content == "The quick"
    assert [r["body"]["model"] for r in fake_upstream.requests] == ["plain-model"]
    assert_books_balance(tenant)
