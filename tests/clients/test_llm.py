"""simonw's `llm` (Python API) with OpenAI-compatible extra models, configured as its users
do: an extra-openai-models.yaml in LLM_USER_PATH pointing at the live gateway."""

from __future__ import annotations

import json

import llm
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
    assert_context_error,
    assert_no_sampling_added,
    assert_one_budget,
)


class Weather(BaseModel):
    city: str
    temperature_c: float


def get_weather(city: str) -> str:
    """The weather in a city."""
    return f"21.5 C in {city}"


@pytest.fixture
def models(matrix, tmp_path, monkeypatch):
    """llm's model registry with NovaKit's two models, and the matrix's key."""
    entries = [
        {"model_id": "novakit-mini", "model_name": MODEL, "api_base": matrix.api_base,
         "api_key_name": "novakit", "supports_tools": True, "supports_schema": True},
        {"model_id": "novakit-reasoning", "model_name": REASONING_MODEL,
         "api_base": matrix.api_base, "api_key_name": "novakit", "reasoning": True},
    ]
    (tmp_path / "extra-openai-models.yaml").write_text(json.dumps(entries))  # JSON is YAML
    monkeypatch.setenv("LLM_USER_PATH", str(tmp_path))
    return matrix


def model(name: str = "novakit-mini") -> llm.Model:
    return llm.get_model(name)


def test_given_a_prompt_when_answered_then_the_text_and_usage_come_back(models):
    response = model().prompt(PLAIN, key=models.key, stream=False)

    assert response.text().startswith(ANSWER_START)
    assert response.usage().output > 0


def test_given_a_streamed_prompt_when_read_then_the_text_and_usage_arrive(models):
    response = model().prompt(PLAIN, key=models.key)

    assert "".join(response).startswith(ANSWER_START)
    assert response.usage().output > 0
    assert models.sent()["stream_options"]["include_usage"] is True


def test_given_tools_when_the_model_calls_one_then_the_call_comes_back(models):
    response = model().prompt(TOOL_PROMPT, key=models.key, tools=[get_weather], stream=False)

    assert [(call.name, call.arguments) for call in response.tool_calls()] == [
        ("get_weather", {"city": "Paris"})]


def test_given_tools_when_streamed_then_the_call_is_reassembled(models):
    response = model().prompt(TOOL_PROMPT, key=models.key, tools=[get_weather])
    "".join(response)

    assert [(call.name, call.arguments) for call in response.tool_calls()] == [
        ("get_weather", {"city": "Paris"})]


def test_given_a_schema_when_prompted_then_the_json_matches(models):
    response = model().prompt(STRUCTURED_PROMPT, key=models.key, schema=Weather)

    assert json.loads(response.text()) == WEATHER
    assert models.sent()["response_format"]["type"] == "json_schema"


def test_given_max_tokens_when_prompted_then_the_upstream_gets_one_budget(models):
    response = model().prompt(PLAIN, key=models.key, max_tokens=BUDGET)

    assert len(response.text().split()) == BUDGET
    assert_one_budget(models.sent(), BUDGET)


def test_given_a_reasoning_model_when_prompted_then_nothing_it_refuses_is_added(models):
    response = model("novakit-reasoning").prompt(PLAIN, key=models.key)

    assert response.text().startswith("The")
    assert_no_sampling_added(models.sent())


def test_given_a_bad_key_when_prompted_then_authentication_error(models):
    with pytest.raises(openai.AuthenticationError) as raised:
        model().prompt(PLAIN, key=BAD_KEY).text()

    assert raised.value.status_code == 401
    assert models.upstream.requests == []


def test_given_no_credits_when_prompted_then_a_402_status_error(models):
    with pytest.raises(openai.APIStatusError) as raised:
        model().prompt(PLAIN, key=models.broke_key).text()

    assert (raised.value.status_code, raised.value.code) == (402, "quota_exceeded")


def test_given_a_prompt_over_the_upstream_context_when_prompted_then_its_error_is_kept(models):
    with pytest.raises(openai.BadRequestError) as raised:
        model().prompt(models.long_prompt, key=models.key).text()

    assert_context_error(raised.value.body)
