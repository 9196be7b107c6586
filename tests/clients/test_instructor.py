"""instructor (on openai-python) against the live gateway.

instructor pins jiter<0.15 in every release, which only openai<=3.3 allows, while the
project's dev extra has a newer openai: it runs in a venv of its own
(`.venv/clients/instructor`, from tests/clients/instructor/requirements.txt, made once and
kept until that file changes), each check a script run (instructor/check.py)."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest

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
    run_json,
)

HERE = Path(__file__).parent / "instructor"
VENV = Path(__file__).resolve().parents[2] / ".venv" / "clients" / "instructor"


@pytest.fixture(scope="session")
def instructor_python() -> Path:
    requirements = HERE / "requirements.txt"
    wanted = hashlib.sha256(requirements.read_bytes()).hexdigest()
    stamp = VENV / ".requirements-sha256"
    python = VENV / "bin" / "python"
    if not (stamp.exists() and stamp.read_text() == wanted and python.exists()):
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "--quiet",
                        "--disable-pip-version-check", "-r", str(requirements)],
                       check=True, timeout=600)
        stamp.write_text(wanted)
    return python


@pytest.fixture
def check(instructor_python, matrix):
    def run(name: str, *, key: str | None = None, model: str = MODEL, prompt: str = PLAIN):
        return run_json([str(instructor_python), str(HERE / "check.py"), name], env={
            "NOVAKIT_BASE_URL": matrix.api_base, "NOVAKIT_API_KEY": key or matrix.key,
            "NOVAKIT_MODEL": model, "NOVAKIT_PROMPT": prompt})

    return run


def test_given_no_response_model_when_created_then_the_plain_completion_comes_back(check):
    result = check("plain")

    assert result["ok"], result
    assert result["content"].startswith(ANSWER_START)


def test_given_json_schema_mode_when_streamed_partially_then_the_last_partial_is_whole(
    check, matrix,
):
    result = check("stream", prompt=STRUCTURED_PROMPT)

    assert result["ok"], result
    assert result["parsed"] == WEATHER
    assert matrix.sent()["stream"] is True


def test_given_tools_mode_when_created_then_the_forced_tool_call_is_parsed(check, matrix):
    result = check("tools", prompt=TOOL_PROMPT)

    assert result["ok"], result
    assert result["parsed"] == WEATHER
    assert matrix.sent()["tool_choice"]["function"]["name"] == "Weather"


def test_given_tools_mode_when_streamed_partially_then_the_deltas_build_the_object(check):
    result = check("tools_stream", prompt=TOOL_PROMPT)

    assert result["ok"], result
    assert result["parsed"] == WEATHER
    assert result["partials"] >= 2


def test_given_json_schema_mode_when_created_then_the_object_comes_back(check, matrix):
    result = check("structured", prompt=STRUCTURED_PROMPT)

    assert result["ok"], result
    assert result["parsed"] == WEATHER
    assert matrix.sent()["response_format"]["type"] in ("json_schema", "json_object")


def test_given_max_tokens_when_created_then_the_upstream_gets_one_budget(check, matrix):
    result = check("budget")

    assert result["ok"], result
    assert len(result["content"].split()) == BUDGET
    assert_one_budget(matrix.sent(), BUDGET)


def test_given_a_reasoning_model_when_created_then_nothing_it_refuses_is_added(check, matrix):
    result = check("plain", model=REASONING_MODEL)

    assert result["ok"], result
    assert_no_sampling_added(matrix.sent())


def test_given_a_bad_key_when_created_then_authentication_error(check, matrix):
    result = check("plain", key=BAD_KEY)

    assert not result["ok"]
    assert result["error"]["is_authentication_error"], result
    assert result["error"]["status"] == 401
    assert matrix.upstream.requests == []


def test_given_no_credits_when_created_then_a_402_status_error(check, matrix):
    result = check("tools", key=matrix.broke_key, prompt=STRUCTURED_PROMPT)

    assert not result["ok"]
    error = result["error"]
    assert (error["status"], error["code"], error["type"]) == (
        402, "quota_exceeded", "insufficient_quota"), result


def test_given_a_prompt_over_the_upstream_context_when_created_then_its_error_is_kept(
    check, matrix,
):
    result = check("plain", prompt=matrix.long_prompt)

    assert not result["ok"]
    assert result["error"]["is_bad_request_error"], result
    assert_context_error(result["error"]["body"])
