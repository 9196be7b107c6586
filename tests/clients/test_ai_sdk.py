"""The Vercel AI SDK (`ai` + `@ai-sdk/openai`, `createOpenAI({baseURL}).chat(...)`) against
the live gateway."""

from __future__ import annotations

import functools

import pytest

from tests.clients.conftest import (
    ANSWER_START,
    BAD_KEY,
    BUDGET,
    REASONING_MODEL,
    STRUCTURED_PROMPT,
    TOOL_PROMPT,
    WEATHER,
    assert_context_error,
    assert_no_sampling_added,
    assert_one_budget,
)


@pytest.fixture
def node(run_node):
    return functools.partial(run_node, "ai-sdk.mjs")


def test_given_a_prompt_when_completed_then_the_answer_and_usage_come_back(node):
    result = node("plain")

    assert result["ok"], result
    assert result["content"].startswith(ANSWER_START)
    assert result["finish_reason"] == "stop"
    assert result["usage"]["outputTokens"] > 0
    assert result["credits_used"] > 0


def test_given_a_stream_when_read_then_the_text_and_usage_arrive(node, matrix):
    result = node("stream")

    assert result["ok"], result
    assert result["content"].startswith(ANSWER_START)
    assert result["finish_reason"] == "stop"
    assert result["usage"]["outputTokens"] > 0
    assert matrix.sent()["stream_options"]["include_usage"] is True


def test_given_tools_when_the_model_calls_one_then_the_sdk_runs_it(node):
    result = node("tools", prompt=TOOL_PROMPT)

    assert result["ok"], result
    assert (result["finish_reason"], result["name"], result["arguments"]) == (
        "tool-calls", "get_weather", {"city": "Paris"})
    assert result["tool_results"] == [WEATHER]


def test_given_tools_when_streamed_then_the_sdk_reassembles_the_call(node):
    result = node("tools_stream", prompt=TOOL_PROMPT)

    assert result["ok"], result
    assert (result["finish_reason"], result["name"], result["arguments"]) == (
        "tool-calls", "get_weather", {"city": "Paris"})
    assert result["usage"]["outputTokens"] > 0


def test_given_an_object_output_when_generated_then_the_object_comes_back(node, matrix):
    result = node("structured", prompt=STRUCTURED_PROMPT)

    assert result["ok"], result
    assert result["parsed"] == WEATHER
    assert matrix.sent()["response_format"]["type"] == "json_schema"


def test_given_max_output_tokens_when_generated_then_the_upstream_gets_one_budget(node, matrix):
    result = node("budget")

    assert result["ok"], result
    assert len(result["content"].split()) == BUDGET
    assert_one_budget(matrix.sent(), BUDGET)


def test_given_a_reasoning_model_when_generated_then_nothing_it_refuses_is_added(node, matrix):
    result = node("plain", model=REASONING_MODEL)

    assert result["ok"], result
    assert_no_sampling_added(matrix.sent())


def test_given_a_bad_key_when_called_then_an_api_call_error_401(node, matrix):
    result = node("plain", key=BAD_KEY)

    assert not result["ok"]
    error = result["error"]
    assert error["is_api_call_error"], result
    assert (error["status"], error["retryable"]) == (401, False)
    assert error["data"]["error"]["type"] == "authentication_error"
    assert matrix.upstream.requests == []


def test_given_no_credits_when_called_then_an_api_call_error_402_not_retried(node, matrix):
    result = node("plain", key=matrix.broke_key)

    assert not result["ok"]
    error = result["error"]
    assert error["is_api_call_error"], result
    assert (error["status"], error["retryable"]) == (402, False)
    assert error["data"]["error"]["code"] == "quota_exceeded"


def test_given_a_prompt_over_the_upstream_context_when_called_then_its_error_is_kept(
    node, matrix,
):
    result = node("plain", prompt=matrix.long_prompt)

    assert not result["ok"]
    error = result["error"]
    assert (error["is_api_call_error"], error["status"]) == (True, 400), result
    assert_context_error(error["data"]["error"])
