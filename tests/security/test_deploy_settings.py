"""Given the production environment (DEBUG=0, real secrets, a host name), then
`manage.py check --deploy` finds nothing, and the settings behind its checks hold:
secure and HTTP-only cookies, HSTS, HTTPS redirects behind the proxy, no framing.

(tests/accounts/test_settings_startup.py covers refusing the development secrets.)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[2]
PRODUCTION = {
    "DEBUG": "0",
    "SECRET_KEY": "prod-Xq8vN2mL5tR9wK3jH7fB1cZ6yP4sD0gA-uE8iO2nM5bV7xC9lQ3",
    "API_KEY_HASH_SECRET": "prod-hmac-J4kL8mN2pQ6rS0tU3vW7xY1zA5bC9dE-fG2hI6",
    "ALLOWED_HOSTS": "api.example.com",
}
SETTINGS_DUMP = """
import json, django
django.setup()
from django.conf import settings as s
from django.test import Client
names = ["DEBUG", "SESSION_COOKIE_SECURE", "CSRF_COOKIE_SECURE", "SESSION_COOKIE_HTTPONLY",
         "SECURE_HSTS_SECONDS", "SECURE_HSTS_INCLUDE_SUBDOMAINS", "SECURE_SSL_REDIRECT",
         "SECURE_PROXY_SSL_HEADER", "SECURE_CONTENT_TYPE_NOSNIFF", "X_FRAME_OPTIONS",
         "SECURE_REFERRER_POLICY", "MIDDLEWARE", "AUTHENTICATION_BACKENDS"]
dump = {name: getattr(s, name) for name in names}
over_tls = Client(HTTP_HOST="api.example.com").get(
    "/healthz", secure=True, headers={"X-Forwarded-Proto": "https"})
plain = Client(HTTP_HOST="api.example.com").get("/portal/signin/")
dump["headers"] = dict(over_tls.headers)
dump["plain_status"], dump["plain_location"] = plain.status_code, plain.get("Location")
print(json.dumps(dump))
"""


def run(*args: str) -> subprocess.CompletedProcess[str]:
    env = {name: value for name, value in os.environ.items() if name not in PRODUCTION}
    env.update(PRODUCTION, DJANGO_SETTINGS_MODULE="novakit.settings")
    return subprocess.run([sys.executable, *args], cwd=PROJECT, env=env, capture_output=True,
                          text=True, timeout=120, check=False)


def test_check_deploy_is_clean_in_production():
    result = run("manage.py", "check", "--deploy", "--fail-level", "WARNING")

    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues" in result.stdout


def test_production_cookies_hsts_and_https_are_locked_down():
    result = run("-c", SETTINGS_DUMP)
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout.strip().splitlines()[-1])

    assert found["DEBUG"] is False
    assert found["SESSION_COOKIE_SECURE"] and found["CSRF_COOKIE_SECURE"]
    assert found["SESSION_COOKIE_HTTPONLY"]
    assert found["SECURE_HSTS_SECONDS"] >= 31_536_000 and found["SECURE_HSTS_INCLUDE_SUBDOMAINS"]
    assert found["SECURE_SSL_REDIRECT"]
    assert found["SECURE_PROXY_SSL_HEADER"] == ["HTTP_X_FORWARDED_PROTO", "https"]
    assert found["SECURE_CONTENT_TYPE_NOSNIFF"] and found["X_FRAME_OPTIONS"] == "DENY"
    # What a browser gets: HSTS over TLS, and plain HTTP sent to HTTPS.
    headers = {name.lower(): value for name, value in found["headers"].items()}
    assert headers["strict-transport-security"].startswith("max-age=31536000")
    assert headers["x-content-type-options"] == "nosniff"
    assert found["plain_status"] == 301
    assert found["plain_location"] == "https://api.example.com/portal/signin/"
    # The sign-in throttle is wired in production too.
    assert found["MIDDLEWARE"][-1] == "axes.middleware.AxesMiddleware"
    assert found["AUTHENTICATION_BACKENDS"][0] == "accounts.signin_throttle.SignInThrottleBackend"
