"""openai-python (the official SDK) against the live gateway, base URL changed only."""

from __future__ import annotations

import json

import openai
import pytest
from pydantic import BaseModel

from tests.clients.conftest import (
    ANSWER_START,
    BAD_KEY,
    BUDGET,
    MODEL,
    PLAIN,
    REASONING_MODEL,
    STRUCTURED_PROMPT,
    TOOL_PROMPT,
    WEATHER,
    WEATHER_TOOL,
    Matrix,
    assert_context_error,
    assert_no_sampling_added,
    assert_one_budget,
)


class Weather(BaseModel):
    city: str
    temperature_c: float


def client(matrix: Matrix, key: str | None = None) -> openai.OpenAI:
    return openai.OpenAI(api_key=key or matrix.key, base_url=matrix.api_base, max_retries=0)


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def test_given_a_prompt_when_completed_then_the_answer_and_usage_come_back(matrix):
    completion = client(matrix).chat.completions.create(model=MODEL, messages=user(PLAIN))

    assert completion.choices[0].message.content.startswith(ANSWER_START)
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage.model_extra["credits_used"] > 0


def test_given_include_usage_when_streamed_then_a_last_chunk_without_choices_carries_usage(
    matrix,
):
    chunks = list(client(matrix).chat.completions.create(
        model=MODEL, messages=user(PLAIN), stream=True,
        stream_options={"include_usage": True}))

    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    assert text.startswith(ANSWER_START)
    last = chunks[-1]
    assert last.choices == []
    assert last.usage.completion_tokens > 0
    assert last.usage.model_extra["credits_used"] > 0
    assert all(chunk.usage is None for chunk in chunks[:-1])


def test_given_tools_when_the_model_calls_one_then_the_call_comes_back(matrix):
    completion = client(matrix).chat.completions.create(
        model=MODEL, messages=user(TOOL_PROMPT), tools=[WEATHER_TOOL])

    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    call = choice.message.tool_calls[0]
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris"}
    assert matrix.sent()["tools"] == [WEATHER_TOOL]


def test_given_tools_when_streamed_then_the_sdk_reassembles_the_call(matrix):
    with client(matrix).chat.completions.stream(
        model=MODEL, messages=user(TOOL_PROMPT), tools=[WEATHER_TOOL],
        stream_options={"include_usage": True},
    ) as stream:
        final = stream.get_final_completion()

    call = final.choices[0].message.tool_calls[0]
    assert final.choices[0].finish_reason == "tool_calls"
    assert (call.function.name, json.loads(call.function.arguments)) == (
        "get_weather", {"city": "Paris"})
    assert final.usage.total_tokens > 0


def test_given_a_pydantic_response_format_when_parsed_then_the_object_comes_back(matrix):
    completion = client(matrix).chat.completions.parse(
        model=MODEL, messages=user(STRUCTURED_PROMPT), response_format=Weather)

    assert completion.choices[0].message.parsed == Weather(**WEATHER)
    response_format = matrix.sent()["response_format"]
    assert response_format["type"] == "json_schema"
    assert response_format["json_schema"]["strict"] is True


def test_given_max_completion_tokens_when_completed_then_the_upstream_gets_one_budget(matrix):
    completion = client(matrix).chat.completions.create(
        model=MODEL, messages=user(PLAIN), max_completion_tokens=BUDGET)

    assert len(completion.choices[0].message.content.split()) == BUDGET
    assert_one_budget(matrix.sent(), BUDGET)


def test_given_a_reasoning_model_when_completed_then_nothing_it_refuses_is_added(matrix):
    completion = client(matrix).chat.completions.create(
        model=REASONING_MODEL, messages=user(PLAIN), max_completion_tokens=BUDGET)

    assert completion.choices[0].message.content.startswith("The")
    sent = matrix.sent()
    assert_no_sampling_added(sent)
    assert_one_budget(sent, BUDGET)
    assert "max_tokens" not in sent


def test_given_null_for_nullable_parameters_when_completed_then_they_are_accepted(matrix):
    completion = client(matrix).chat.completions.create(
        model=MODEL, messages=user(PLAIN), temperature=None, top_p=None, max_tokens=None,
        stop=None, n=None)

    assert completion.choices[0].message.content.startswith(ANSWER_START)
    assert matrix.sent().get("temperature") is None


def test_given_a_bad_key_when_called_then_authentication_error(matrix):
    with pytest.raises(openai.AuthenticationError) as raised:
        client(matrix, BAD_KEY).chat.completions.create(model=MODEL, messages=user(PLAIN))

    assert raised.value.status_code == 401
    assert raised.value.type == "authentication_error"
    assert matrix.upstream.requests == []


def test_given_no_credits_when_called_then_a_402_status_error_not_retried(matrix):
    with pytest.raises(openai.APIStatusError) as raised:
        client(matrix, matrix.broke_key).chat.completions.create(
            model=MODEL, messages=user(PLAIN))

    assert raised.value.status_code == 402
    assert raised.value.code == "quota_exceeded"
    assert raised.value.type == "insufficient_quota"
    assert matrix.upstream.requests == []


def test_given_a_prompt_over_the_upstream_context_when_called_then_its_error_is_kept(matrix):
    with pytest.raises(openai.BadRequestError) as raised:
        client(matrix).chat.completions.create(model=MODEL, messages=user(matrix.long_prompt))

    assert_context_error(raised.value.body)
    assert raised.value.code == "context_length_exceeded"
