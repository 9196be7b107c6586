"""Each kind of provider spoken to in its own way (completions/kinds.py, completions/anthropic.py),
against the fake upstream's Anthropic Messages API, Azure deployment and key-less server, through
the official `openai` SDK: the client sees OpenAI's API whichever answered."""

from __future__ import annotations

import json
from decimal import Decimal

import openai
import pytest
from django.core.exceptions import ValidationError

from billing.pricing import price_request
from completions.models import Provider, UsageRecord
from tests.completions.helpers import (
    add_model,
    add_provider,
    assert_books_balance,
    openrouter,
    parsed_events,
    post_chat,
    usage_charged,
    wait_for_usage,
)

WEATHER = [{"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]}}}]


@pytest.fixture
def claude(fake_upstream):  # type: ignore[no-untyped-def]
    provider = add_provider("anthropic", fake_upstream.anthropic_url, kind="anthropic",
                            supports_web_search=False)
    add_model("anthropic/claude-fake", [(provider, "claude-fake-4")])
    return provider


def _sent(fake_upstream, path_part: str) -> list[dict]:  # type: ignore[no-untyped-def]
    return [r for r in fake_upstream.requests if path_part in r["path"]]


def test_an_anthropic_answer_comes_back_as_a_chat_completion_billed_on_its_usage(
    tenant, claude, fake_upstream, client_for
):
    answer = client_for(tenant).chat.completions.create(
        model="anthropic/claude-fake", max_tokens=6, temperature=0.2, stop="never",
        messages=[{"role": "system", "content": "Be brief."},
                  {"role": "user", "content": "Say hello"}], user="end-user-7")

    [request] = _sent(fake_upstream, "/messages")
    assert request["headers"]["x-api-key"] == "anthropic-key"
    assert request["headers"]["anthropic-version"] == "2023-06-01"
    assert "Authorization" not in request["headers"]
    body = request["body"]
    assert body["system"] == "Be brief."
    assert body["messages"] == [{"role": "user", "content": [
        {"type": "text", "text": "Say hello"}]}]
    assert (body["model"], body["max_tokens"], body["temperature"]) == ("claude-fake-4", 6, 0.2)
    assert body["stop_sequences"] == ["never"] and body["metadata"] == {"user_id": "end-user-7"}
    assert answer.object == "chat.completion" and answer.model == "anthropic/claude-fake"
    assert answer.choices[0].message.content.split()[0] == "The"
    assert answer.choices[0].finish_reason == "stop"
    # Cache reads are prompt tokens too, and said to be cached.
    assert answer.usage.prompt_tokens_details.cached_tokens == 3
    charged = price_request(multiplier=Decimal("1"), prompt_tokens=answer.usage.prompt_tokens,
                            completion_tokens=answer.usage.completion_tokens).total
    assert answer.usage.model_extra["credits_used"] == charged == usage_charged(tenant)
    record = UsageRecord.objects.get()
    assert (record.provider, record.usage_source, record.cost_source) == (
        "anthropic", "upstream", "catalog")
    assert_books_balance(tenant)


def test_an_anthropic_stream_comes_back_as_openai_chunks_with_the_usage_last(
    tenant, claude, client_for
):
    stream = client_for(tenant).chat.completions.create(
        model="anthropic/claude-fake", max_tokens=5, stream=True,
        stream_options={"include_usage": True},
        messages=[{"role": "user", "content": "Say hello"}])
    chunks = list(stream)

    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "The quick brown fox jumps"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 5
    assert {c.id for c in chunks} == {chunks[0].id} and chunks[0].id.startswith("chatcmpl-")
    assert wait_for_usage(chunks[0].id).completion_tokens == 5
    assert_books_balance(tenant)


def test_tools_go_to_anthropic_and_back_both_ways_streamed_or_not(
    tenant, claude, fake_upstream, client_for
):
    client = client_for(tenant)
    first = client.chat.completions.create(
        model="anthropic/claude-fake", tools=WEATHER, tool_choice="required", max_tokens=50,
        messages=[{"role": "user", "content": "Weather in Paris?"}])

    [call] = first.choices[0].message.tool_calls
    assert first.choices[0].finish_reason == "tool_calls"
    assert call.function.name == "get_weather" and "city" in json.loads(call.function.arguments)
    sent = _sent(fake_upstream, "/messages")[0]["body"]
    assert sent["tools"][0]["input_schema"] == WEATHER[0]["function"]["parameters"]
    assert sent["tool_choice"] == {"type": "any"}

    # The call and its result go back as tool_use and tool_result blocks.
    second = client.chat.completions.create(
        model="anthropic/claude-fake", tools=WEATHER, max_tokens=8, messages=[
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
            {"role": "tool", "tool_call_id": call.id, "content": "sunny, 21 C"}])
    assert second.choices[0].message.content and second.choices[0].finish_reason == "stop"
    turns = _sent(fake_upstream, "/messages")[1]["body"]["messages"]
    assert [turn["role"] for turn in turns] == ["user", "assistant", "user"]
    assert turns[1]["content"][0]["type"] == "tool_use" and turns[1]["content"][0]["id"] == call.id
    assert turns[2]["content"] == [{"type": "tool_result", "tool_use_id": call.id,
                                    "content": "sunny, 21 C"}]

    stream = client.chat.completions.create(
        model="anthropic/claude-fake", tools=WEATHER, max_tokens=50, stream=True,
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        messages=[{"role": "user", "content": "Weather in Paris?"}])
    deltas = [c.choices[0].delta for c in stream if c.choices]
    calls = [call for delta in deltas for call in delta.tool_calls or []]
    assert calls[0].function.name == "get_weather" and calls[0].id == "toolu_fake_1"
    assert json.loads("".join(c.function.arguments or "" for c in calls)) == json.loads(
        call.function.arguments)


def test_several_choices_are_refused_by_anthropic_and_served_by_a_route_that_can(
    tenant, claude, fake_upstream, client_for, http
):
    with pytest.raises(openai.BadRequestError) as refused:
        client_for(tenant).chat.completions.create(
            model="anthropic/claude-fake", n=2, max_tokens=3,
            messages=[{"role": "user", "content": "hi"}])
    assert "'n' must be 1" in refused.value.message
    assert not _sent(fake_upstream, "/messages") and usage_charged(tenant) == 0

    add_model("acme/either", [(claude, "claude-fake-4"), (openrouter(), "acme/either")])
    answer = client_for(tenant).chat.completions.create(
        model="acme/either", n=2, max_tokens=3, messages=[{"role": "user", "content": "hi"}])
    assert len(answer.choices) == 2
    assert UsageRecord.objects.get(status="ok").provider == "openrouter"
    assert_books_balance(tenant)


def test_an_overloaded_anthropic_falls_back_and_a_stream_cut_short_ends_in_an_error_event(
    tenant, claude, fake_upstream, client_for, http
):
    add_model("acme/either", [(claude, "claude-fake-4"), (openrouter(), "acme/either")])
    fake_upstream.key_scenarios["anthropic-key"] = "status:529"

    answer = client_for(tenant).chat.completions.create(
        model="acme/either", max_tokens=3, messages=[{"role": "user", "content": "hi"}])
    assert answer.choices[0].message.content
    assert [r["path"].rsplit("/", 1)[-1] for r in fake_upstream.requests] == [
        "messages", "completions"]

    fake_upstream.key_scenarios["anthropic-key"] = "cut:4"
    raw = post_chat(http, tenant, {"model": "anthropic/claude-fake", "max_tokens": 5,
                                   "stream": True, "messages": [{"role": "user",
                                                                 "content": "hi"}]}).text
    assert "[DONE]" not in raw and parsed_events(raw)[-1]["error"]["code"] == "upstream_error"
    assert_books_balance(tenant)


def test_an_azure_deployment_is_called_with_its_api_version_and_api_key(
    tenant, fake_upstream, client_for
):
    azure = add_provider("azure", fake_upstream.azure_url, kind="azure",
                         api_version="2024-10-21")
    add_model("azure/gpt-4o", [(azure, "gpt-4o-prod")])

    answer = client_for(tenant).chat.completions.create(
        model="azure/gpt-4o", max_tokens=3, messages=[{"role": "user", "content": "hi"}])

    [request] = fake_upstream.requests
    assert request["path"] == "/azure/openai/deployments/gpt-4o-prod/chat/completions"
    assert request["headers"]["api-key"] == "azure-key"
    assert "Authorization" not in request["headers"] and "plugins" not in request["body"]
    assert answer.choices[0].message.content and answer.model == "azure/gpt-4o"


def test_a_self_hosted_server_without_a_key_is_usable_and_sent_no_credentials(
    tenant, fake_upstream, client_for
):
    local = add_provider("vllm", fake_upstream.url, kind="self_hosted", keyed=False)
    add_model("local/llama", [(local, "llama-3-8b")])

    answer = client_for(tenant).chat.completions.create(
        model="local/llama", max_tokens=3, messages=[{"role": "user", "content": "hi"}])

    assert answer.choices[0].message.content
    assert "Authorization" not in fake_upstream.requests[0]["headers"]


@pytest.mark.django_db
def test_a_provider_of_a_kind_missing_what_it_needs_is_refused_in_the_admin_form():
    with pytest.raises(ValidationError, match="api-version"):
        Provider(slug="az", name="Az", kind="azure", base_url="https://x.example").full_clean()
    with pytest.raises(ValidationError, match="base URL"):
        Provider(slug="an", name="An", kind="anthropic").full_clean()
