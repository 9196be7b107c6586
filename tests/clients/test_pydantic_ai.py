"""pydantic-ai: an Agent on OpenAIChatModel with an OpenAIProvider whose base_url is the live
gateway. Its adapter sorts HTTP errors into typed categories (quota, context window, auth)."""

from __future__ import annotations

import pytest
from pydantic import BaseModel
from pydantic_ai import Agent, NativeOutput
from pydantic_ai.exceptions import (
    ModelAuthenticationError,
    ModelContextWindowExceededError,
    ModelHTTPError,
    ModelQuotaExceededError,
)
from pydantic_ai.models.openai import OpenAIChatModel
from pydantic_ai.providers.openai import OpenAIProvider

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


def agent(matrix: Matrix, *, key: str | None = None, model: str = MODEL,
          **options: object) -> Agent:
    provider = OpenAIProvider(base_url=matrix.api_base, api_key=key or matrix.key)
    return Agent(OpenAIChatModel(model, provider=provider), **options)  # type: ignore[arg-type]


def weather_agent(matrix: Matrix) -> tuple[Agent, list[str]]:
    called: list[str] = []
    weather = agent(matrix)

    @weather.tool_plain
    def get_weather(city: str) -> str:
        """The weather in a city."""
        called.append(city)
        return f"21.5 C in {city}"

    return weather, called


async def test_given_a_prompt_when_run_then_the_answer_and_usage_come_back(matrix):
    result = await agent(matrix).run(PLAIN)

    assert result.output.startswith(ANSWER_START)
    assert result.usage().output_tokens > 0


async def test_given_a_prompt_when_streamed_then_the_text_and_usage_arrive(matrix):
    async with agent(matrix).run_stream(PLAIN) as result:
        text = "".join([piece async for piece in result.stream_text(delta=True)])

    assert text.startswith(ANSWER_START)
    assert result.usage().output_tokens > 0
    assert matrix.sent()["stream_options"]["include_usage"] is True


async def test_given_a_tool_when_the_model_calls_it_then_the_agent_runs_it_and_answers(matrix):
    weather, called = weather_agent(matrix)

    result = await weather.run(TOOL_PROMPT)

    assert called == ["Paris"]
    assert result.output.startswith(ANSWER_START)
    assert matrix.sent()["messages"][-1]["role"] == "tool"


async def test_given_a_tool_when_streamed_then_the_agent_runs_it_and_streams_the_answer(
    matrix,
):
    weather, called = weather_agent(matrix)

    async with weather.run_stream(TOOL_PROMPT) as result:
        text = "".join([piece async for piece in result.stream_text(delta=True)])

    assert called == ["Paris"]
    assert text.startswith(ANSWER_START)


async def test_given_a_native_output_type_when_run_then_the_object_comes_back(matrix):
    result = await agent(matrix, output_type=NativeOutput(Weather)).run(STRUCTURED_PROMPT)

    assert result.output == Weather(**WEATHER)
    assert matrix.sent()["response_format"]["type"] == "json_schema"


async def test_given_a_tool_output_type_when_run_then_the_object_comes_back(matrix):
    result = await agent(matrix, output_type=Weather).run(STRUCTURED_PROMPT)

    assert result.output == Weather(**WEATHER)


async def test_given_max_tokens_when_run_then_the_upstream_gets_one_budget(matrix):
    result = await agent(matrix).run(PLAIN, model_settings={"max_tokens": BUDGET})

    assert len(result.output.split()) == BUDGET
    assert_one_budget(matrix.sent(), BUDGET)


async def test_given_a_reasoning_model_when_run_then_nothing_it_refuses_is_added(matrix):
    result = await agent(matrix, model=REASONING_MODEL).run(PLAIN)

    assert result.output.startswith("The")
    assert_no_sampling_added(matrix.sent())


async def test_given_a_bad_key_when_run_then_model_authentication_error(matrix):
    with pytest.raises(ModelAuthenticationError) as raised:
        await agent(matrix, key=BAD_KEY).run(PLAIN)

    assert isinstance(raised.value, ModelHTTPError)
    assert raised.value.status_code == 401
    assert matrix.upstream.requests == []


async def test_given_no_credits_when_run_then_model_quota_exceeded_error(matrix):
    with pytest.raises(ModelQuotaExceededError) as raised:
        await agent(matrix, key=matrix.broke_key).run(PLAIN)

    assert raised.value.status_code == 402


async def test_given_a_prompt_over_the_upstream_context_when_run_then_context_window_error(
    matrix,
):
    with pytest.raises(ModelContextWindowExceededError) as raised:
        await agent(matrix).run(matrix.long_prompt)

    assert_context_error(raised.value.body["error"] if "error" in raised.value.body
                         else raised.value.body)
