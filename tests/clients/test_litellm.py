"""litellm as a client: `litellm.completion(model="openai/...", api_base=...)` against the
live gateway. Its exception mapping turns OpenAI's error bodies into its own types."""

from __future__ import annotations

import json
import os

import pytest
from pydantic import BaseModel

# litellm fetches a price list from the internet when imported; the copy it ships will do.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
import litellm

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


def complete(matrix: Matrix, prompt: str = PLAIN, *, key: str | None = None,
             model: str = MODEL, **options: object):  # type: ignore[no-untyped-def]
    # "openai/" picks litellm's OpenAI-compatible provider; the rest is the model it sends.
    return litellm.completion(
        model=f"openai/{model}", api_base=matrix.api_base, api_key=key or matrix.key,
        messages=[{"role": "user", "content": prompt}], num_retries=0, max_retries=0,
        **options)


def test_given_a_prompt_when_completed_then_the_answer_and_usage_come_back(matrix):
    response = complete(matrix)

    assert response.choices[0].message.content.startswith(ANSWER_START)
    assert response.usage.completion_tokens > 0


def test_given_include_usage_when_streamed_then_the_last_chunk_carries_usage(matrix):
    chunks = list(complete(matrix, stream=True, stream_options={"include_usage": True}))

    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    assert text.startswith(ANSWER_START)
    assert chunks[-1].usage.completion_tokens > 0
    assert litellm.stream_chunk_builder(chunks).usage.completion_tokens > 0


def test_given_tools_when_the_model_calls_one_then_the_call_comes_back(matrix):
    response = complete(matrix, TOOL_PROMPT, tools=[WEATHER_TOOL])

    call = response.choices[0].message.tool_calls[0]
    assert (call.function.name, json.loads(call.function.arguments)) == (
        "get_weather", {"city": "Paris"})
    assert response.choices[0].finish_reason == "tool_calls"


def test_given_tools_when_streamed_then_the_chunks_rebuild_the_call(matrix):
    chunks = list(complete(matrix, TOOL_PROMPT, tools=[WEATHER_TOOL], stream=True))

    rebuilt = litellm.stream_chunk_builder(chunks)
    call = rebuilt.choices[0].message.tool_calls[0]
    assert (call.function.name, json.loads(call.function.arguments)) == (
        "get_weather", {"city": "Paris"})


def test_given_a_pydantic_response_format_when_completed_then_the_json_matches(matrix):
    response = complete(matrix, STRUCTURED_PROMPT, response_format=Weather)

    assert Weather.model_validate_json(response.choices[0].message.content) == Weather(**WEATHER)
    assert matrix.sent()["response_format"]["type"] == "json_schema"


def test_given_max_tokens_when_completed_then_the_upstream_gets_one_budget(matrix):
    response = complete(matrix, max_tokens=BUDGET)

    assert len(response.choices[0].message.content.split()) == BUDGET
    assert_one_budget(matrix.sent(), BUDGET)


def test_given_a_reasoning_model_when_completed_then_nothing_it_refuses_is_added(matrix):
    response = complete(matrix, model=REASONING_MODEL)

    assert response.choices[0].message.content.startswith("The")
    assert_no_sampling_added(matrix.sent())


def test_given_a_bad_key_when_completed_then_litellm_authentication_error(matrix):
    with pytest.raises(litellm.AuthenticationError) as raised:
        complete(matrix, key=BAD_KEY)

    assert raised.value.status_code == 401
    assert matrix.upstream.requests == []


def test_given_no_credits_when_completed_then_a_litellm_error_with_status_402(matrix):
    with pytest.raises(litellm.exceptions.APIError) as raised:
        complete(matrix, key=matrix.broke_key)

    assert raised.value.status_code == 402
    assert "Insufficient credits" in str(raised.value)


def test_given_a_prompt_over_the_upstream_context_when_completed_then_context_window_error(
    matrix,
):
    with pytest.raises(litellm.ContextWindowExceededError) as raised:
        complete(matrix, matrix.long_prompt)

    assert raised.value.status_code == 400
    assert_context_error(json.loads(raised.value.response.text)["error"])
