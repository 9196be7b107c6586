"""Fixtures for the chat completions tests: async SDK clients and raw HTTP on the live gateway."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import Tenant
from tests.support.live_server import LiveGateway


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings: Any) -> None:
    """Tenants' owners get passwords; PBKDF2's deliberate slowness would dominate these tests."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def async_client_for(live_gateway: LiveGateway) -> Callable[..., openai.AsyncOpenAI]:
    """The official async SDK client pointed at the live gateway."""

    def make(tenant: Tenant, **options: Any) -> openai.AsyncOpenAI:
        options.setdefault("max_retries", 0)
        return openai.AsyncOpenAI(api_key=tenant.secret, base_url=live_gateway.api_base, **options)

    return make


@pytest.fixture
def http(live_gateway: LiveGateway) -> Iterator[httpx.Client]:
    """A plain HTTP client on the live gateway, for bodies and streams the SDK would not send."""
    with httpx.Client(base_url=live_gateway.api_base, timeout=10) as client:
        yield client
