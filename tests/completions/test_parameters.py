"""The request's parameters on /chat/completions.

The contract's parameters: their defaults reach the upstream, their ranges are enforced, and a
bad request is refused with a 400 `invalid_request` that names the parameter (typed in the SDK).
OpenAI parameters the contract does not list reach the upstream untouched; tool calls come
back untouched, whole or as streamed deltas the SDK reassembles; `web_search` becomes
OpenRouter's web plugin and is charged for."""

from __future__ import annotations

import openai
import pytest
from asgiref.sync import sync_to_async

from accounts.services import api_key_create
from billing.models import LedgerEntry, Reservation
from completions.models import UsageRecord
from tests.completions.helpers import (
    add_model,
    add_provider,
    assert_books_balance,
    parsed_events,
    post_chat,
)
from tests.support.openai_schema import validate

HELLO = [{"role": "user", "content": "Hello!"}]
WEATHER = [{"role": "user", "content": "Weather in Paris?"}]
TOOLS = [{
    "type": "function",
    "function": {
        "name": "get_weather", "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                       "required": ["city"]},
    },
}]


def _assert_refused(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    validate(body, "ErrorResponse")
    assert body["error"]["code"] == body["code"] == code
    return body


def _assert_nothing_happened(tenant, fake_upstream, refused_with: str | None = None) -> None:
    """Nothing sent, held or charged; a refusal (402, 429, 503) is one record of 0 credits,
    an invalid request none."""
    assert fake_upstream.requests == []
    assert not Reservation.objects.exists()
    records = list(UsageRecord.objects.values_list("status", "error_code", "credits"))
    assert records == ([("refused", refused_with, 0)] if refused_with else [])
    assert_books_balance(tenant)


def test_given_only_messages_when_posted_then_only_the_budget_and_temperature_are_added(
    tenant, fake_upstream, http
):
    response = post_chat(http, tenant, {"messages": HELLO})

    assert response.status_code == 200
    assert response.json()["model"] == "openai/gpt-4o-mini"
    sent = fake_upstream.requests[-1]["body"]
    assert sent["model"] == "openai/gpt-4o-mini"
    # The contract's defaults that differ from the provider's own; the rest are not sent.
    assert sent["temperature"] == 0.7
    assert sent["max_tokens"] == 2048
    assert not {"top_p", "frequency_penalty", "presence_penalty", "max_completion_tokens"} & set(
        sent)
    assert sent["stream"] is False
    # NovaKit's own switch is not an OpenAI parameter: it never goes upstream as it is.
    assert "web_search" not in sent
    assert "stop" not in sent and "user" not in sent


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("temperature", 0), ("temperature", 2), ("top_p", 0), ("top_p", 1),
        ("frequency_penalty", -2), ("frequency_penalty", 2),
        ("presence_penalty", -2), ("presence_penalty", 2),
        ("max_tokens", 1), ("stop", "END"), ("stop", ["a", "b", "c", "d"]), ("user", "end-user-42"),
    ],
)
def test_given_a_value_at_the_edge_of_its_range_when_posted_then_it_reaches_the_upstream(
    tenant, fake_upstream, http, name, value
):
    response = post_chat(http, tenant, {"messages": HELLO, name: value})

    assert response.status_code == 200, response.text
    assert fake_upstream.requests[-1]["body"][name] == value


def test_given_a_user_id_when_completed_then_the_usage_record_keeps_it(tenant, fake_upstream, http):
    response = post_chat(http, tenant, {"messages": HELLO, "user": "end-user-42"})

    record = UsageRecord.objects.get(request_id=response.json()["id"])
    assert record.end_user == "end-user-42"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("temperature", -0.01), ("temperature", 2.01), ("top_p", -0.1), ("top_p", 1.01),
        ("frequency_penalty", -2.1), ("frequency_penalty", 2.1),
        ("presence_penalty", -2.5), ("presence_penalty", 3),
        ("max_tokens", 0), ("max_tokens", -5), ("max_tokens", 12.5),
        ("temperature", "hot"), ("max_tokens", "lots"), ("top_p", [1]),
        ("stream", {"yes": 1}), ("web_search", "sometimes"),
        ("stop", ["a", "b", "c", "d", "e"]), ("stop", 7), ("model", 5), ("user", {"id": 1}),
        ("stream_options", "yes"), ("plugins", "web"), ("plugins", ["web"]),
    ],
)
def test_given_an_out_of_range_or_mistyped_parameter_then_400_names_it(
    tenant, fake_upstream, http, name, value
):
    response = post_chat(http, tenant, {"messages": HELLO, name: value})

    body = _assert_refused(response, 400, "invalid_request")
    assert body["error"]["param"] in (name, f"{name}.0")  # a list's item is named precisely
    assert name in body["error"]["message"]
    assert body["error"]["type"] == "invalid_request_error"
    _assert_nothing_happened(tenant, fake_upstream)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": []}, "messages"),
        ({}, "messages"),
        ({"messages": "Hello"}, "messages"),
        ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages.0.role"),
        ({"messages": [{"content": "hi"}]}, "messages.0.role"),
        ({"messages": [{"role": "user"}]}, "messages.0"),
        ({"messages": [{"role": "user", "content": 42}]}, "messages.0.content"),
        ({"messages": [{"role": "user", "content": "hi", "name": 7}]}, "messages.0.name"),
        ({"messages": [HELLO[0], "not a message"]}, "messages.1"),
    ],
)
def test_given_bad_messages_then_400_names_the_message(tenant, fake_upstream, http, body, param):
    response = post_chat(http, tenant, body)

    refused = _assert_refused(response, 400, "invalid_request")
    assert refused["error"]["param"] == param
    assert param in refused["error"]["message"]
    _assert_nothing_happened(tenant, fake_upstream)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"{not json", "The request body is not valid JSON"),
        (b'{"messages": [}', "The request body is not valid JSON"),
        (b"", "The request body must be a JSON object"),
        (b"[1, 2]", "The request body must be a JSON object"),
        (b'"a string"', "The request body must be a JSON object"),
        (b"null", "The request body must be a JSON object"),
    ],
)
def test_given_a_body_that_is_not_a_json_object_then_400_says_so(
    tenant, fake_upstream, http, raw, message
):
    response = post_chat(http, tenant, raw)

    body = _assert_refused(response, 400, "invalid_request")
    assert body["error"]["message"] == message
    assert body["error"]["param"] is None
    _assert_nothing_happened(tenant, fake_upstream)


def test_given_a_budget_beyond_the_context_window_then_400_names_max_tokens(
    tenant, fake_upstream, http
):
    response = post_chat(http, tenant, {"model": "deepseek/deepseek-chat", "messages": HELLO,
                                        "max_tokens": 70_000})

    body = _assert_refused(response, 400, "invalid_request")
    assert body["error"]["param"] == "max_tokens"
    assert "65536" in body["error"]["message"]
    _assert_nothing_happened(tenant, fake_upstream)


def test_given_an_unknown_model_then_the_sdk_raises_not_found(tenant, fake_upstream, client_for):
    with pytest.raises(openai.NotFoundError) as caught:
        client_for(tenant).chat.completions.create(model="acme/gpt-17", messages=HELLO)

    assert caught.value.status_code == 404
    assert caught.value.code == "model_not_found"
    assert caught.value.body["param"] == "model"
    assert "acme/gpt-17" in caught.value.message
    validate(caught.value.response.json(), "ErrorResponse")
    _assert_nothing_happened(tenant, fake_upstream)


def test_given_a_bad_parameter_then_the_sdk_raises_bad_request(tenant, fake_upstream, client_for):
    with pytest.raises(openai.BadRequestError) as caught:
        client_for(tenant).chat.completions.create(
            model="openai/gpt-4o-mini", messages=HELLO, temperature=3
        )

    assert caught.value.code == "invalid_request"
    assert caught.value.param == "temperature"


def test_given_a_wrong_key_then_the_sdk_raises_authentication_error(
    tenant, fake_upstream, client_for, live_gateway
):
    client = openai.OpenAI(api_key="sk_" + "x" * 43, base_url=live_gateway.api_base, max_retries=0)

    with pytest.raises(openai.AuthenticationError) as caught:
        client.chat.completions.create(model="openai/gpt-4o-mini", messages=HELLO)

    assert caught.value.status_code == 401
    assert caught.value.code == "unauthorized"
    assert caught.value.body["type"] == "authentication_error"
    validate(caught.value.response.json(), "ErrorResponse")


def test_given_no_key_at_all_then_401(tenant, fake_upstream, http):
    response = http.post("/chat/completions", json={"messages": HELLO})

    _assert_refused(response, 401, "unauthorized")
    assert fake_upstream.requests == []


def test_given_a_key_without_the_chat_scope_then_permission_denied(
    tenant_factory, fake_upstream, client_for
):
    reader = tenant_factory("reader", scopes=("models", "usage:read"))

    with pytest.raises(openai.PermissionDeniedError) as caught:
        client_for(reader).chat.completions.create(model="openai/gpt-4o-mini", messages=HELLO)

    assert caught.value.code == "forbidden"
    assert "chat" in caught.value.message
    validate(caught.value.response.json(), "ErrorResponse")
    _assert_nothing_happened(reader, fake_upstream)


def test_given_a_key_limited_to_other_models_then_permission_denied_for_this_one(
    tenant, fake_upstream, client_for
):
    _, secret = api_key_create(organization=tenant.org, name="only-4o", scopes=("chat",),
                               allowed_models=["openai/gpt-4o"])
    tenant.secret = secret
    client = client_for(tenant)

    with pytest.raises(openai.PermissionDeniedError) as caught:
        client.chat.completions.create(model="openai/gpt-4o-mini", messages=HELLO)
    allowed = client.chat.completions.create(model="openai/gpt-4o", messages=HELLO, max_tokens=2)

    assert "openai/gpt-4o-mini" in caught.value.message
    assert allowed.model == "openai/gpt-4o"
    assert len(fake_upstream.requests) == 1


def test_given_too_few_credits_then_402_quota_exceeded_with_remaining(
    tenant_factory, fake_upstream, client_for
):
    poor = tenant_factory("poor", credits=10)

    with pytest.raises(openai.APIStatusError) as caught:
        client_for(poor).chat.completions.create(model="openai/gpt-4o", messages=HELLO)

    error = caught.value
    assert error.status_code == 402
    assert error.code == "quota_exceeded"
    assert error.body["type"] == "insufficient_quota"
    body = error.response.json()
    validate(body, "ErrorResponse")
    assert body["code"] == "quota_exceeded"
    assert body["remaining"] == 10
    _assert_nothing_happened(poor, fake_upstream, refused_with="quota_exceeded")
    assert UsageRecord.objects.get().request_id == error.response.headers["x-request-id"]
    assert not LedgerEntry.objects.filter(kind="usage").exists()


def test_given_enough_credits_for_a_small_budget_then_a_small_request_passes(
    tenant_factory, fake_upstream, client_for
):
    poor = tenant_factory("poor", credits=10)

    completion = client_for(poor).chat.completions.create(
        model="openai/gpt-4o-mini", messages=HELLO, max_tokens=5
    )

    assert completion.usage.model_extra["credits_used"] <= 10
    assert_books_balance(poor)


def test_given_a_body_over_the_size_limit_then_413_not_a_retryable_server_error(
    tenant, fake_upstream, client_for, settings
):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 64 * 1024
    huge = "word " * 20_000  # about 100 kB

    with pytest.raises(openai.APIStatusError) as caught:
        client_for(tenant).chat.completions.create(
            model="openai/gpt-4o-mini", messages=[{"role": "user", "content": huge}]
        )

    assert caught.value.status_code == 413
    assert caught.value.code == "request_too_large"
    assert str(64 * 1024) in caught.value.message
    validate(caught.value.response.json(), "ErrorResponse")
    _assert_nothing_happened(tenant, fake_upstream)


async def test_given_the_async_sdk_then_errors_are_typed_the_same_way(
    tenant_factory, fake_upstream, async_client_for
):
    poor = await sync_to_async(tenant_factory)("poor", credits=10)
    client = async_client_for(poor)

    with pytest.raises(openai.NotFoundError):
        await client.chat.completions.create(model="acme/gpt-17", messages=HELLO)
    with pytest.raises(openai.BadRequestError) as bad:
        await client.chat.completions.create(model="openai/gpt-4o", messages=[])
    with pytest.raises(openai.APIStatusError) as short:
        await client.chat.completions.create(model="openai/gpt-4o", messages=HELLO, stream=True)

    assert bad.value.param == "messages"
    assert short.value.status_code == 402
    assert short.value.response.json()["remaining"] == 10
    await client.close()


def test_given_legacy_function_calling_then_it_is_accepted_and_forwarded_as_sent(
    tenant, fake_upstream, http
):
    functions = [{"name": "get_weather", "parameters": {"type": "object", "properties": {}}}]
    messages = [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None,
         "function_call": {"name": "get_weather", "arguments": "{}"}},
        {"role": "function", "name": "get_weather", "content": '{"sky": "clear"}'},
    ]

    response = post_chat(http, tenant, {"messages": messages, "functions": functions,
                                        "function_call": "auto"})

    assert response.status_code == 200, response.text
    sent = fake_upstream.requests[-1]["body"]
    assert sent["messages"] == messages
    assert (sent["functions"], sent["function_call"]) == (functions, "auto")


def test_given_explicit_nulls_then_they_are_accepted_and_left_to_the_provider(
    tenant, fake_upstream, http
):
    body = {"messages": HELLO, "temperature": None, "top_p": None, "max_tokens": None,
            "stop": None, "stream": None}

    response = post_chat(http, tenant, body)

    assert response.status_code == 200, response.text
    sent = fake_upstream.requests[-1]["body"]
    assert not {"temperature", "top_p", "stop"} & set(sent)
    assert (sent["max_tokens"], sent["stream"]) == (2048, False)


def test_given_listed_parameters_then_missing_tuning_is_dropped_and_features_refused(
    tenant, fake_upstream, http
):
    from completions.catalog import catalog_cache
    from completions.models import CatalogModel

    CatalogModel.objects.filter(model_id="openai/gpt-4o-mini").update(
        supported_parameters=["max_tokens", "temperature"])
    catalog_cache.clear()

    tuned = post_chat(http, tenant, {"messages": HELLO, "top_p": 0.5, "seed": 7})
    tools = post_chat(http, tenant, {"messages": HELLO, "tools": [
        {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]})

    assert tuned.status_code == 200
    assert not {"top_p", "seed"} & set(fake_upstream.requests[-1]["body"])
    assert tools.status_code == 400
    assert tools.json()["error"]["param"] == "tools"
    assert len(fake_upstream.requests) == 1


# --- parameters the contract does not list ----------------------------------------------------

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
        model="openai/gpt-4o-mini", messages=WEATHER, **passthrough
    )

    sent = fake_upstream.requests[-1]["body"]
    for name, value in passthrough.items():
        assert sent[name] == value, name


def test_given_max_completion_tokens_then_it_is_the_budget_reserved_and_checked(
    tenant, fake_upstream, http
):
    too_big = post_chat(http, tenant, {"model": "deepseek/deepseek-chat", "messages": WEATHER,
                                       "max_tokens": 10, "max_completion_tokens": 70_000})
    not_positive = post_chat(http, tenant, {"messages": WEATHER, "max_completion_tokens": 0})

    assert too_big.status_code == 400
    assert not_positive.status_code == 400
    assert not_positive.json()["error"]["param"] == "max_completion_tokens"
    assert fake_upstream.requests == []


def test_given_stream_options_from_the_client_then_they_are_kept_and_usage_is_asked_for(
    tenant, fake_upstream, http
):
    response = post_chat(http, tenant, {"messages": WEATHER, "stream": True, "max_tokens": 2,
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
        model="openai/gpt-4o", messages=WEATHER, tools=TOOLS, max_tokens=50
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
        model="openai/gpt-4o", messages=WEATHER, tools=TOOLS, max_tokens=50
    ) as stream:
        for _ in stream:
            pass
        final = stream.get_final_completion()
    raw = post_chat(http, tenant, {"model": "openai/gpt-4o", "messages": WEATHER, "tools": TOOLS,
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
    response = post_chat(http, tenant, {"messages": WEATHER, "web_search": True, "max_tokens": 5})

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
        model="openai/gpt-4o-mini", messages=WEATHER, stream=True, max_tokens=3,
        extra_body={"web_search": True},
    ))

    assert fake_upstream.requests[-1]["body"]["plugins"] == [{"id": "web"}]
    assert chunks[-1].usage.model_extra["credits_breakdown"]["web_search"] == 10


def test_given_web_search_and_plugins_of_the_callers_own_then_both_reach_the_upstream(
    tenant, fake_upstream, http
):
    post_chat(http, tenant, {"messages": WEATHER, "web_search": True,
                             "plugins": [{"id": "file-parser"}]})

    assert fake_upstream.requests[-1]["body"]["plugins"] == [{"id": "file-parser"}, {"id": "web"}]


def test_given_a_model_whose_only_provider_lacks_web_search_then_web_search_is_refused(
    tenant, fake_upstream, client_for
):
    plain = add_provider("plain", fake_upstream.url, supports_web_search=False)
    add_model("plain/model", [(plain, "plain-model")])
    client = client_for(tenant)

    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="plain/model", messages=WEATHER,
                                       extra_body={"web_search": True})
    without = client.chat.completions.create(model="plain/model", messages=WEATHER, max_tokens=2)

    assert caught.value.param == "web_search"
    assert "plain/model" in caught.value.message
    assert without.choices[0].message.content == "The quick"
    assert [r["body"]["model"] for r in fake_upstream.requests] == ["plain-model"]
    assert_books_balance(tenant)
