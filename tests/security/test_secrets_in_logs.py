"""Given a key's whole life through the real ASGI server, with every logger at DEBUG and
uvicorn's access log on, then no log line, in the plain or the JSON format, nor anything
written to stdout or stderr, holds the secret, its hidden part, or a near-miss of it.

(tests/accounts/test_api_key_secret_storage.py checks the database and a few in-process
requests; this covers the full cycle as deployed: create, complete, stream, fail, revoke.)
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
import uvicorn
from django.conf import settings
from pythonjsonlogger.json import JsonFormatter

from accounts import keys
from novakit.observability import RequestIdFilter

CHAT = {"model": "openai/gpt-4o-mini", "max_tokens": 8,
        "messages": [{"role": "user", "content": "Say something short."}]}


class EveryFormat(logging.Handler):
    """Formats every record as the deployment's plain and JSON formatters would."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        formats = settings.LOGGING["formatters"]
        self.formatters = [
            logging.Formatter(formats["plain"]["format"]),
            JsonFormatter(formats["json"]["fmt"], rename_fields=formats["json"]["rename_fields"]),
        ]
        self.addFilter(RequestIdFilter())
        self.lines: list[str] = []
        self.loggers: set[str] = set()

    def emit(self, record: logging.LogRecord) -> None:
        self.loggers.add(record.name)
        self.lines.extend(formatter.format(record) for formatter in self.formatters)

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


@pytest.fixture
def every_log_line(talkative_gateway: str) -> Iterator[EveryFormat]:
    """Every logger of the process at DEBUG, none disabled, all reaching one handler.

    Set up once the server has imported the ASGI app: `django.setup()` there applies
    settings.LOGGING again, which replaces the root logger's handlers."""
    handler = EveryFormat()
    root = logging.getLogger()
    saved = {name: (logger.level, logger.disabled, logger.propagate)
             for name, logger in logging.Logger.manager.loggerDict.items()
             if isinstance(logger, logging.Logger)}
    saved_root = root.level
    for name in saved:
        logger = logging.getLogger(name)
        logger.setLevel(logging.DEBUG)
        logger.disabled = False
        logger.propagate = True
    root.setLevel(logging.DEBUG)
    root.addHandler(handler)
    yield handler
    root.removeHandler(handler)
    root.setLevel(saved_root)
    for name, (level, disabled, propagate) in saved.items():
        logger = logging.getLogger(name)
        logger.setLevel(level)
        logger.disabled, logger.propagate = disabled, propagate
    for name in set(logging.Logger.manager.loggerDict) - set(saved):  # created meanwhile
        logger = logging.getLogger(name)
        logger.setLevel(logging.NOTSET)


@pytest.fixture
def talkative_gateway(transactional_db: None) -> Iterator[str]:
    """The ASGI app under uvicorn in this process, with its access log and debug logs on and
    left to propagate to the root logger (no logging config of uvicorn's own)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(
        "novakit.asgi:application", host="127.0.0.1", port=port, log_config=None,
        log_level="debug", access_log=True, lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}/api/v1"
    server.should_exit = True
    thread.join(10)


def _one_char_off(secret: str, at: int) -> str:
    return secret[:at] + ("A" if secret[at] != "A" else "B") + secret[at + 1:]


def test_a_keys_whole_life_leaves_no_trace_of_its_secret_in_any_log(
        tenant, fake_upstream, talkative_gateway, every_log_line, capfd):
    api = httpx.Client(base_url=talkative_gateway, timeout=20)
    owner = {"Authorization": f"Bearer {tenant.secret}"}

    created = api.post("/keys", json={"name": "logged", "scopes": ["chat"]}, headers=owner)
    assert created.status_code == 201, created.text
    secret = created.json()["secret"]
    bearer = {"Authorization": f"Bearer {secret}"}
    near_misses = [_one_char_off(secret, len(secret) - 1),  # same prefix, last char off
                   _one_char_off(secret, keys.VISIBLE_PREFIX_LENGTH)]  # first hidden char off

    completed = api.post("/chat/completions", json=CHAT, headers=bearer)
    with api.stream("POST", "/chat/completions", json={**CHAT, "stream": True},
                    headers=bearer) as stream:
        streamed = "".join(stream.iter_text())
    refused = [api.post("/chat/completions", json=CHAT,
                        headers={"Authorization": f"Bearer {wrong}"}) for wrong in near_misses]
    revoked = api.post(f"/keys/{created.json()['id']}/revoke", headers=owner)
    after = api.post("/chat/completions", json=CHAT, headers=bearer)
    api.close()
    time.sleep(0.2)  # the access log line of the last request is written after its response

    assert completed.status_code == 200, completed.text
    assert streamed.rstrip().endswith("data: [DONE]")
    assert [response.status_code for response in refused] == [401, 401]
    assert revoked.status_code == 200 and after.status_code == 401
    captured = capfd.readouterr()
    logs = "\n".join([every_log_line.text, captured.out, captured.err])
    # The capture really saw the cycle: access lines, the app's own loggers, every request.
    assert "uvicorn.access" in every_log_line.loggers
    assert "/api/v1/chat/completions" in logs and "/api/v1/keys" in logs
    assert any(line.startswith("{") and '"level": "DEBUG"' in line
               for line in every_log_line.lines)
    # Booleans, so that a failure does not print the secret it found.
    leaks = [f"{label} ({part})"
             for label, candidate in [("the new key", secret), ("the owner's key", tenant.secret),
                                      ("a near miss", near_misses[0]),
                                      ("a near miss", near_misses[1])]
             for part, needle in [("whole", candidate),
                                  ("hidden part", candidate[keys.VISIBLE_PREFIX_LENGTH:])]
             if needle in logs]
    assert leaks == [], "secrets in the logs"
