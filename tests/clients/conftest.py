"""The client matrix: real client libraries against a live gateway and a strict fake upstream.

Every client gets the same checks (README of the issue "Faithful at both edges"): a plain
completion, a stream that ends with usage, tools (whole and streamed), structured output,
a completion budget, a reasoning model, and the library's own error for a bad key (401),
for no credits (402) and for a prompt the upstream's context cannot hold. The fake upstream
is strict (tests/support/fake_upstream.py): it refuses what api.openai.com refuses, so a
gateway that adds parameters the client did not send fails here as it would in production.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Tenant
from tests.support.fake_upstream import FakeUpstream
from tests.support.live_server import LiveGateway

MODEL = "openai/gpt-4o-mini"
# A reasoning model of the catalog: upstream it refuses `max_tokens` and a temperature but 1.
REASONING_MODEL = "openai/o1-mini"
PLAIN = "Say hello."
ANSWER_START = "The quick brown fox"
TOOL_PROMPT = "What is the weather in Paris? [[fault:tools]]"
STRUCTURED_PROMPT = "Give me the weather in Paris as JSON."
BUDGET = 5
BAD_KEY = "sk_this-key-does-not-exist-0000000000"
WEATHER = {"city": "Paris", "temperature_c": 21.5}
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather", "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                       "required": ["city"], "additionalProperties": False},
    },
}
WEATHER_SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "temperature_c": {"type": "number"}},
    "required": ["city", "temperature_c"], "additionalProperties": False,
}
NODE_DIR = Path(__file__).parent / "node"


@dataclass
class Matrix:
    """What a client needs to reach the gateway, and what the upstream received."""

    api_base: str
    key: str
    broke_key: str
    upstream: FakeUpstream

    @property
    def long_prompt(self) -> str:
        """More words than the upstream's context holds (but far less than the catalog's
        context window, so only the upstream can refuse it)."""
        return "word " * (self.upstream.context_words + 50)

    def sent(self) -> dict[str, Any]:
        """The last body the gateway forwarded upstream."""
        assert self.upstream.requests, "nothing reached the upstream"
        return self.upstream.requests[-1]["body"]

    def sent_all(self) -> list[dict[str, Any]]:
        return [request["body"] for request in self.upstream.requests]


@pytest.fixture
def matrix(live_gateway: LiveGateway, fake_upstream: FakeUpstream,
           tenant_factory: Callable[..., Tenant]) -> Matrix:
    fake_upstream.strict = True
    paying = tenant_factory("matrix")
    broke = tenant_factory("broke", credits=0)
    return Matrix(api_base=live_gateway.api_base, key=paying.secret, broke_key=broke.secret,
                  upstream=fake_upstream)


def assert_one_budget(sent: dict[str, Any], value: int) -> None:
    """The upstream got the client's budget as one parameter, not both, and not another."""
    budgets = {name: sent[name] for name in ("max_tokens", "max_completion_tokens")
               if sent.get(name) is not None}
    assert list(budgets.values()) == [value], budgets


def assert_no_sampling_added(sent: dict[str, Any]) -> None:
    """Sampling parameters the client did not send are not invented on the way."""
    for name in ("temperature", "top_p", "frequency_penalty", "presence_penalty"):
        assert name not in sent, f"{name}={sent[name]!r} reached the upstream"


def assert_context_error(error: dict[str, Any]) -> None:
    """The upstream's error object kept its code and param through the gateway."""
    assert error.get("code") == "context_length_exceeded", error
    assert error.get("param") == "messages", error
    assert "maximum context length" in str(error.get("message")), error


# --- scripts in other runtimes (Node, a separate venv) ------------------------------------
def run_json(command: list[str], *, env: dict[str, str], cwd: Path | None = None,
             timeout: float = 60) -> dict[str, Any]:
    """Run a check script; it prints one JSON object on its last stdout line."""
    done = subprocess.run(command, env={**os.environ, **env}, cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, check=False)
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    assert done.returncode == 0 and lines, (
        f"{command} exited {done.returncode}\nstdout:\n{done.stdout}\nstderr:\n{done.stderr}")
    return json.loads(lines[-1])


@pytest.fixture(scope="session")
def node_clients() -> Path:
    """The pinned Node clients, installed once with `npm ci` (package-lock.json)."""
    lock = NODE_DIR / "package-lock.json"
    stamp = NODE_DIR / "node_modules" / ".package-lock.json"
    if not stamp.exists() or stamp.stat().st_mtime < lock.stat().st_mtime:
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"],
                       cwd=NODE_DIR, check=True, timeout=300)
    return NODE_DIR


@pytest.fixture
def run_node(node_clients: Path, matrix: Matrix) -> Callable[..., dict[str, Any]]:
    """`run_node(SCRIPT, CHECK, key=..., model=..., prompt=...)`: one check of a Node client
    (tests/clients/node/SCRIPT), against the gateway, as the JSON it printed."""

    def run(script: str, check: str, *, key: str | None = None, model: str = MODEL,
            prompt: str = PLAIN) -> dict[str, Any]:
        return run_json(["node", script, check], cwd=node_clients, env={
            "NOVAKIT_BASE_URL": matrix.api_base, "NOVAKIT_API_KEY": key or matrix.key,
            "NOVAKIT_MODEL": model, "NOVAKIT_PROMPT": prompt})

    return run
