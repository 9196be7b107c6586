"""Given repeated wrong passwords for one username from one address, then that pair is locked
out for the cool-off, even with the right password, with a clear 429; any other address or
username signs in as usual, and the lock ends by itself (accounts/signin_throttle.py)."""

from __future__ import annotations

import datetime as dt
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from django.conf import settings as django_settings
from django.contrib.auth import get_user_model
from django.test import Client

from accounts.signin_throttle import lockout_message

pytestmark = pytest.mark.django_db

SIGNIN = "/portal/signin/"
ADMIN_LOGIN = "/admin/login/"
PASSWORD = "a-long-test-password"
HOME = "127.0.0.1"
ELSEWHERE = "127.0.0.2"
PROJECT = Path(__file__).resolve().parents[2]


def limit() -> int:
    return int(django_settings.AXES_FAILURE_LIMIT)


def sign_in(client: Client, *, username: str = "acme-owner", password: str = PASSWORD,
            ip: str = HOME, path: str = SIGNIN):  # type: ignore[no-untyped-def]
    return client.post(path, {"username": username, "password": password}, REMOTE_ADDR=ip)


def fail_until_locked(client: Client, **where: str) -> None:
    """The limit's worth of wrong passwords: the last one is the one that locks."""
    for attempt in range(1, limit() + 1):
        response = sign_in(client, password=f"wrong-{attempt}", **where)
        if attempt < limit():
            assert response.status_code == 200, attempt
            assert "Please enter a correct" in response.content.decode()
    assert response.status_code == 429


def assert_locked_out(response) -> None:  # type: ignore[no-untyped-def]
    assert response.status_code == 429
    assert lockout_message() in response.content.decode().replace("&#x27;", "'")
    assert int(response["Retry-After"]) == int(django_settings.AXES_COOLOFF_TIME.total_seconds())


def test_the_default_limit_and_cool_off_are_those_documented():
    assert (limit(), django_settings.AXES_COOLOFF_TIME) == (5, dt.timedelta(minutes=15))


def test_after_the_limit_of_failures_the_right_password_is_refused_with_a_clear_429(tenant):
    client = Client()
    fail_until_locked(client)

    response = sign_in(client)

    assert_locked_out(response)
    assert "Too many failed sign-in attempts" in response.content.decode()
    assert 'action="/portal/signin/"' in response.content.decode()  # the form, to try later
    assert "_auth_user_id" not in client.session
    assert client.get("/portal/").status_code == 302  # still signed out


def test_the_same_user_from_another_address_and_another_user_are_unaffected(
        tenant, other_tenant):
    fail_until_locked(Client())

    from_elsewhere = sign_in(Client(), ip=ELSEWHERE)
    another_user = sign_in(Client(), username="globex-owner")

    assert from_elsewhere.status_code == 302 and from_elsewhere["Location"] == "/portal/"
    assert another_user.status_code == 302
    assert sign_in(Client()).status_code == 429  # and the locked pair still is


def test_the_email_and_the_username_of_one_account_count_together(tenant):
    client = Client()
    for attempt in range(limit()):
        login = ("acme-owner", "owner@acme.test", "OWNER@ACME.TEST")[attempt % 3]
        sign_in(client, username=login, password=f"wrong-{attempt}")

    assert_locked_out(sign_in(client, username="owner@acme.test"))


def test_the_lock_ends_after_the_cool_off(tenant, settings):
    settings.AXES_COOLOFF_TIME = dt.timedelta(seconds=1)
    client = Client()
    fail_until_locked(client)
    assert sign_in(client).status_code == 429

    time.sleep(1.2)
    response = sign_in(client)

    assert response.status_code == 302 and response["Location"] == "/portal/"
    assert client.get("/portal/").status_code == 200


def test_attempts_during_the_lock_do_not_prolong_it(tenant, settings):
    settings.AXES_COOLOFF_TIME = dt.timedelta(seconds=1)
    client = Client()
    fail_until_locked(client)
    time.sleep(0.6)
    assert sign_in(client, password="still-wrong").status_code == 429
    assert sign_in(client).status_code == 429

    time.sleep(0.6)  # 1.2 s after the lock, 0.6 s after the last attempts

    assert sign_in(client).status_code == 302


def test_a_successful_sign_in_clears_the_count(tenant):
    client = Client()
    for attempt in range(limit() - 1):
        sign_in(client, password=f"wrong-{attempt}")
    assert sign_in(client).status_code == 302
    client.post("/portal/signout/")

    for attempt in range(limit() - 1):
        assert sign_in(client, password=f"wrong-again-{attempt}").status_code == 200

    assert sign_in(client).status_code == 302


def test_the_admin_sign_in_is_throttled_the_same_way(db):
    get_user_model().objects.create_user(username="staffer", password=PASSWORD, is_staff=True,
                                         is_superuser=True)
    client = Client()
    for attempt in range(limit()):
        sign_in(client, username="staffer", password=f"wrong-{attempt}", path=ADMIN_LOGIN)

    response = sign_in(client, username="staffer", path=ADMIN_LOGIN)

    assert_locked_out(response)
    assert 'id="login-form"' in response.content.decode()  # the admin's own page
    assert client.get("/admin/").status_code == 302
    assert sign_in(Client(), username="staffer", path=ADMIN_LOGIN, ip=ELSEWHERE
                   ).status_code == 302


def test_over_asgi_the_lock_answers_the_same(tenant, live_gateway):
    """Under uvicorn Django runs the middleware chain asynchronously: axes' async path."""
    with httpx.Client(base_url=live_gateway.url, timeout=10) as http:
        page = http.get(SIGNIN)
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text).group(1)

        def post(password: str) -> httpx.Response:
            return http.post(SIGNIN, data={"username": "acme-owner", "password": password,
                                           "csrfmiddlewaretoken": token},
                             headers={"Referer": f"{live_gateway.url}{SIGNIN}"})

        answers = [post(f"wrong-{attempt}").status_code for attempt in range(limit())]
        locked = post(PASSWORD)

    assert answers == [200] * (limit() - 1) + [429]
    assert_locked_out_http(locked)


def assert_locked_out_http(response: httpx.Response) -> None:
    assert response.status_code == 429
    assert lockout_message() in response.text.replace("&#x27;", "'")
    assert "sessionid" not in response.cookies


def _settings_in_a_fresh_process(**env: str) -> subprocess.CompletedProcess[str]:
    code = ("import django; django.setup(); from django.conf import settings as s; "
            "print(s.AXES_FAILURE_LIMIT, int(s.AXES_COOLOFF_TIME.total_seconds()))")
    clean = {name: value for name, value in os.environ.items()
             if not name.startswith("LOGIN_")}
    return subprocess.run([sys.executable, "-c", code], cwd=PROJECT, capture_output=True,
                          text=True, timeout=60, check=False,
                          env={**clean, "DJANGO_SETTINGS_MODULE": "novakit.settings", **env})


def test_the_limit_and_the_cool_off_come_from_the_environment():
    configured = _settings_in_a_fresh_process(LOGIN_FAILURE_LIMIT="3",
                                              LOGIN_LOCKOUT_SECONDS="60")
    malformed = _settings_in_a_fresh_process(LOGIN_FAILURE_LIMIT="many")

    assert configured.returncode == 0, configured.stderr
    assert configured.stdout.split()[-2:] == ["3", "60"]
    assert malformed.returncode != 0 and "LOGIN_FAILURE_LIMIT must be an integer" in (
        malformed.stderr)
