"""Given the default settings, when failed sign-ins each carry a different X-Forwarded-For, then
the account still locks, and the locked user cannot sign in with yet another one: no proxy is
trusted unless FORWARDED_ALLOW_IPS names it, so the lockout counts the connection's address.

Given FORWARDED_ALLOW_IPS naming the proxy, then the address it forwards is the one counted,
and another client behind the same proxy is not locked out.

The server tests run the production server (`python -m novakit.runtime.serve`) as its own process on
the test database: the trust is uvicorn's, decided before Django sees the request.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from axes.models import AccessAttempt
from django.conf import settings as django_settings
from django.contrib.auth import get_user_model
from django.contrib.auth.hashers import PBKDF2PasswordHasher
from django.test import Client

from novakit.runtime import serve
from tests.ratelimit.conftest import database_url
from tests.support.gateway_process import GatewayProcess, gateway_spawn

SIGNIN = "/portal/signin/"
PASSWORD = "a-long-test-password"
USERNAME = "proxied-owner"


def limit() -> int:
    return int(django_settings.AXES_FAILURE_LIMIT)


def forwarded_for(attempt: int) -> str:
    return f"203.0.113.{attempt + 1}"


@pytest.fixture
def user(transactional_db: None) -> None:
    # Hashed with a hasher the server process knows (the tests' MD5 is this process's only),
    # at few iterations: the server checks a password once per attempt.
    get_user_model().objects.create(
        username=USERNAME, email="owner@proxied.test",
        password=PBKDF2PasswordHasher().encode(PASSWORD, "proxiedsalt", iterations=1_000))


# --- in Django: the address is REMOTE_ADDR, whatever the headers say --------------------------


def test_given_rotating_forwarded_for_headers_the_django_lockout_still_locks(user):
    client = Client()

    def sign_in(password: str, forwarded: str):  # type: ignore[no-untyped-def]
        return client.post(SIGNIN, {"username": USERNAME, "password": password},
                           REMOTE_ADDR="127.0.0.1", HTTP_X_FORWARDED_FOR=forwarded,
                           HTTP_X_REAL_IP=forwarded)

    answers = [sign_in(f"wrong-{n}", forwarded_for(n)).status_code for n in range(limit())]
    locked = sign_in(PASSWORD, "198.51.100.7")

    assert answers == [200] * (limit() - 1) + [429]
    assert locked.status_code == 429
    assert set(AccessAttempt.objects.values_list("ip_address", flat=True)) == {"127.0.0.1"}


# --- through the real server -------------------------------------------------------------------


@pytest.fixture
def server(user: None, tmp_path: Path) -> Iterator[Callable[..., GatewayProcess]]:
    """Start `novakit.runtime.serve` (one worker) on the test database, with `env` added."""
    started: list[GatewayProcess] = []

    def start(**env: str) -> GatewayProcess:
        inherited = {name: value for name, value in os.environ.items()
                     if name != "FORWARDED_ALLOW_IPS"}
        gateway = gateway_spawn(env={**inherited, "DATABASE_URL": database_url(),
                                     "IN_PROCESS_BEAT": "0", "LOG_LEVEL": "WARNING", **env},
                                log=tmp_path / "gateway.log", workers=1)
        started.append(gateway)
        gateway.wait_until_healthy(timeout=60)
        return gateway

    yield start
    for gateway in started:
        gateway.stop()


def _sign_in_over_http(gateway: GatewayProcess) -> Callable[[str, str], httpx.Response]:
    http = httpx.Client(base_url=gateway.url, timeout=30)
    page = http.get(SIGNIN)
    found = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text)
    assert found, page.text[:500]
    token = found.group(1)

    def post(password: str, forwarded: str) -> httpx.Response:
        return http.post(SIGNIN, data={"username": USERNAME, "password": password,
                                       "csrfmiddlewaretoken": token},
                         headers={"Referer": f"{gateway.url}{SIGNIN}",
                                  "X-Forwarded-For": forwarded})

    return post


def test_given_the_default_server_when_each_failure_forwards_another_address_then_it_locks(
        server):
    sign_in = _sign_in_over_http(server())

    answers = [sign_in(f"wrong-{n}", forwarded_for(n)).status_code for n in range(limit())]
    locked = sign_in(PASSWORD, "198.51.100.7")

    assert answers == [200] * (limit() - 1) + [429]
    assert locked.status_code == 429
    assert set(AccessAttempt.objects.values_list("ip_address", flat=True)) == {"127.0.0.1"}


def test_given_a_trusted_proxy_then_the_forwarded_address_is_the_one_counted(server):
    sign_in = _sign_in_over_http(server(FORWARDED_ALLOW_IPS="127.0.0.1"))

    answers = [sign_in(f"wrong-{n}", "203.0.113.9").status_code for n in range(limit())]
    same_client = sign_in(PASSWORD, "203.0.113.9")
    another_client = sign_in(PASSWORD, "198.51.100.7")

    assert answers == [200] * (limit() - 1) + [429]
    assert same_client.status_code == 429
    assert another_client.status_code == 302
    assert set(AccessAttempt.objects.values_list("ip_address", flat=True)) == {"203.0.113.9"}


# --- the server's option ------------------------------------------------------------------------


def test_by_default_the_server_trusts_no_proxy(monkeypatch):
    monkeypatch.delenv("FORWARDED_ALLOW_IPS", raising=False)

    assert serve.parse([]).forwarded_allow_ips == ""


def test_the_trusted_proxies_come_from_the_environment_or_the_command_line(monkeypatch):
    monkeypatch.setenv("FORWARDED_ALLOW_IPS", "10.0.0.0/8")

    assert serve.parse([]).forwarded_allow_ips == "10.0.0.0/8"
    assert serve.parse(["--forwarded-allow-ips", "192.0.2.1"]).forwarded_allow_ips == "192.0.2.1"


def test_a_malformed_proxy_address_stops_the_server_at_start_up(monkeypatch, capsys):
    monkeypatch.setenv("FORWARDED_ALLOW_IPS", "10.0.0.o")

    with pytest.raises(SystemExit):
        serve.parse([])

    assert "'10.0.0.o' is not an address" in capsys.readouterr().err
