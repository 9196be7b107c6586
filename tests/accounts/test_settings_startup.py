"""Production settings refuse the development secrets: `DEBUG=0` with them must not start."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parents[2]
SETUP = "import django; django.setup(); from django.conf import settings; print(settings.DEBUG)"
REAL_SECRET = "a-real-production-secret-0123456789-abcdefghijklmnopqrstuvwxyz"


def start(**env: str) -> subprocess.CompletedProcess[str]:
    """Run `django.setup()` in a fresh interpreter with only these NovaKit variables set."""
    clean = {
        name: value for name, value in os.environ.items()
        if name not in {"DEBUG", "SECRET_KEY", "API_KEY_HASH_SECRET", "ALLOWED_HOSTS"}
    }
    clean.update(DJANGO_SETTINGS_MODULE="novakit.settings", **env)
    return subprocess.run(
        [sys.executable, "-c", SETUP], cwd=PROJECT, env=clean, capture_output=True, text=True,
        timeout=60, check=False,
    )


@pytest.mark.parametrize(
    "secrets",
    [
        {},
        {"SECRET_KEY": REAL_SECRET},
        {"API_KEY_HASH_SECRET": REAL_SECRET},
    ],
    ids=["both-dev-defaults", "dev-hash-secret", "dev-secret-key"],
)
def test_given_debug_off_with_a_development_secret_then_it_refuses_to_start(secrets):
    result = start(DEBUG="0", ALLOWED_HOSTS="api.example.com", **secrets)

    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr
    assert "SECRET_KEY or API_KEY_HASH_SECRET is the development default" in result.stderr


def test_given_debug_off_with_real_secrets_and_allowed_hosts_then_it_starts():
    result = start(
        DEBUG="0", SECRET_KEY=REAL_SECRET, API_KEY_HASH_SECRET=REAL_SECRET + "-hmac",
        ALLOWED_HOSTS="api.example.com",
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


def test_given_a_malformed_debug_value_then_it_refuses_to_start_naming_the_variable():
    result = start(DEBUG="maybe")

    assert result.returncode != 0
    assert "DEBUG must be a boolean" in result.stderr
