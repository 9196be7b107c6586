"""openai for Node (npm `openai`) against the live gateway, base URL changed only."""

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
    WEATHER_TOOL,
    assert_context_error,
    assert_no_sampling_added,
    assert_one_budget,
)


@pytest.fixture
def node(run_node):
    return functools.partial(run_node, "openai.mjs")


def test_given_a_prompt_when_completed_then_the_answer_and_usage_come_back(node):
    result = node("plain")

    assert result["ok"], result
    assert result["content"].startswith(ANSWER_START)
    assert result["usage"]["credits_used"] > 0


def test_given_include_usage_when_streamed_then_a_last_chunk_without_choices_carries_usage(
    node,
):
    result = node("stream")

    assert result["ok"], result
    assert result["content"].startswith(ANSWER_START)
    assert result["last_choices"] == []
    assert result["usage"]["credits_used"] > 0
    assert result["usage_before_last"] is False


def test_given_tools_when_the_model_calls_one_then_the_call_comes_back(node, matrix):
    result = node("tools", prompt=TOOL_PROMPT)

    assert result["ok"], result
    assert (result["finish_reason"], result["name"], result["arguments"]) == (
        "tool_calls", "get_weather", {"city": "Paris"})
    assert matrix.sent()["tools"] == [WEATHER_TOOL]


def test_given_tools_when_streamed_then_the_sdk_reassembles_the_call(node):
    result = node("tools_stream", prompt=TOOL_PROMPT)

    assert result["ok"], result
    assert (result["finish_reason"], result["name"], result["arguments"]) == (
        "tool_calls", "get_weather", {"city": "Paris"})


def test_given_a_zod_response_format_when_parsed_then_the_object_comes_back(node, matrix):
    result = node("structured", prompt=STRUCTURED_PROMPT)

    assert result["ok"], result
    assert result["parsed"] == WEATHER
    assert matrix.sent()["response_format"]["json_schema"]["strict"] is True


def test_given_max_completion_tokens_when_completed_then_the_upstream_gets_one_budget(
    node, matrix,
):
    result = node("budget")

    assert result["ok"], result
    assert len(result["content"].split()) == BUDGET
    assert_one_budget(matrix.sent(), BUDGET)


def test_given_a_reasoning_model_when_completed_then_nothing_it_refuses_is_added(node, matrix):
    result = node("plain", model=REASONING_MODEL)

    assert result["ok"], result
    assert_no_sampling_added(matrix.sent())


def test_given_null_for_nullable_parameters_when_completed_then_they_are_accepted(node):
    result = node("nulls")

    assert result["ok"], result
    assert result["content"].startswith(ANSWER_START)


def test_given_a_bad_key_when_called_then_authentication_error(node, matrix):
    result = node("plain", key=BAD_KEY)

    assert not result["ok"]
    assert result["error"]["is_authentication_error"], result
    assert (result["error"]["status"], result["error"]["type"]) == (401, "authentication_error")
    assert matrix.upstream.requests == []


def test_given_no_credits_when_called_then_a_402_api_error(node, matrix):
    result = node("plain", key=matrix.broke_key)

    assert not result["ok"]
    error = result["error"]
    assert error["is_api_error"], result
    assert (error["status"], error["code"], error["type"]) == (
        402, "quota_exceeded", "insufficient_quota")
    assert matrix.upstream.requests == []


def test_given_a_prompt_over_the_upstream_context_when_called_then_its_error_is_kept(
    node, matrix,
):
    result = node("plain", prompt=matrix.long_prompt)

    assert not result["ok"]
    assert result["error"]["is_bad_request_error"], result
    assert_context_error(result["error"])
