"""langchain-openai's ChatOpenAI against the live gateway (`base_url` changed only)."""

from __future__ import annotations

import openai
import pytest
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI
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
    Matrix,
    assert_context_error,
    assert_no_sampling_added,
    assert_one_budget,
)


class Weather(BaseModel):
    city: str
    temperature_c: float


@tool
def get_weather(city: str) -> str:
    """The weather in a city."""
    return f"21.5 C in {city}"


def chat(matrix: Matrix, *, key: str | None = None, **options: object) -> ChatOpenAI:
    options.setdefault("model", MODEL)
    return ChatOpenAI(base_url=matrix.api_base, api_key=key or matrix.key, max_retries=0,
                      **options)  # type: ignore[arg-type]


def test_given_a_prompt_when_invoked_then_the_answer_and_usage_come_back(matrix):
    message = chat(matrix).invoke(PLAIN)

    assert message.content.startswith(ANSWER_START)
    assert message.usage_metadata["output_tokens"] > 0
    assert message.response_metadata["finish_reason"] == "stop"


def test_given_stream_usage_when_streamed_then_the_chunks_add_up_with_usage(matrix):
    chunks = list(chat(matrix, stream_usage=True).stream(PLAIN))

    whole = sum(chunks[1:], chunks[0])
    assert whole.content.startswith(ANSWER_START)
    assert whole.usage_metadata["output_tokens"] > 0
    assert matrix.sent()["stream_options"]["include_usage"] is True


def test_given_bound_tools_when_invoked_then_the_tool_call_comes_back(matrix):
    message = chat(matrix).bind_tools([get_weather]).invoke(TOOL_PROMPT)

    assert [(call["name"], call["args"]) for call in message.tool_calls] == [
        ("get_weather", {"city": "Paris"})]


def test_given_bound_tools_when_streamed_then_the_chunks_add_up_to_the_call(matrix):
    chunks = list(chat(matrix).bind_tools([get_weather]).stream(TOOL_PROMPT))

    whole = sum(chunks[1:], chunks[0])
    assert [(call["name"], call["args"]) for call in whole.tool_calls] == [
        ("get_weather", {"city": "Paris"})]


def test_given_with_structured_output_when_invoked_then_the_object_comes_back(matrix):
    weather = chat(matrix).with_structured_output(Weather).invoke(STRUCTURED_PROMPT)

    assert weather == Weather(**WEATHER)
    assert matrix.sent()["response_format"]["type"] == "json_schema"


def test_given_max_tokens_when_invoked_then_the_upstream_gets_one_budget(matrix):
    message = chat(matrix, max_tokens=BUDGET).invoke(PLAIN)

    assert len(message.content.split()) == BUDGET
    assert_one_budget(matrix.sent(), BUDGET)


def test_given_a_reasoning_model_when_invoked_then_nothing_it_refuses_is_added(matrix):
    message = chat(matrix, model=REASONING_MODEL).invoke(PLAIN)

    assert message.content.startswith("The")
    assert_no_sampling_added(matrix.sent())


def test_given_a_bad_key_when_invoked_then_authentication_error(matrix):
    with pytest.raises(openai.AuthenticationError) as raised:
        chat(matrix, key=BAD_KEY).invoke(PLAIN)

    assert raised.value.status_code == 401
    assert matrix.upstream.requests == []


def test_given_no_credits_when_invoked_then_a_402_status_error(matrix):
    with pytest.raises(openai.APIStatusError) as raised:
        chat(matrix, key=matrix.broke_key).invoke(PLAIN)

    assert (raised.value.status_code, raised.value.code) == (402, "quota_exceeded")


def test_given_a_prompt_over_the_upstream_context_when_invoked_then_its_code_reaches_langchain(
    matrix
):
    """LangChain raises ContextOverflowError when `str(error)` contains
    "context_length_exceeded"; openai-python 3.x puts only the provider's message there
    (as api.openai.com words it, without the code), so it does not, whoever answers. What
    the gateway owes is the provider's code and param, on the error LangChain raises."""
    with pytest.raises(openai.BadRequestError) as raised:
        chat(matrix).invoke(matrix.long_prompt)

    assert raised.value.code == "context_length_exceeded"
    assert_context_error(raised.value.body)
