"""Fixtures for the portal's page tests: signed-in members of each role, CSRF-enforcing clients."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import pytest
from django.contrib.auth import get_user_model
from django.db import connections
from django.test import Client

from accounts.models import Membership
from accounts.services import membership_add
from tests.conftest import Tenant

PASSWORD = "a-long-test-password"
T = TypeVar("T")


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings: Any) -> None:
    # PBKDF2's deliberate slowness (about a second per password) would dominate these tests.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def member_client(tenant: Tenant) -> Callable[..., Client]:
    """A client signed in as a member of `tenant`'s organization with `role` (a new user each)."""

    def make(role: str = Membership.Role.OWNER, *, of: Tenant | None = None,
             enforce_csrf_checks: bool = False) -> Client:
        org_tenant = of or tenant
        if role == Membership.Role.OWNER and of is None:
            user = tenant.user
        else:
            email = f"{role}@{org_tenant.org.slug}.test"
            user = get_user_model().objects.create_user(username=email, email=email,
                                                        password=PASSWORD)
            membership_add(organization=org_tenant.org, user=user, role=role)
        client = Client(enforce_csrf_checks=enforce_csrf_checks)
        client.force_login(user)
        return client

    return make


@pytest.fixture
def owner(member_client: Callable[..., Client]) -> Client:
    return member_client(Membership.Role.OWNER)


@pytest.fixture
def viewer(member_client: Callable[..., Client]) -> Client:
    return member_client(Membership.Role.VIEWER)


def csrf_token_from(html: str) -> str:
    found = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', html)
    assert found, "the page has no form with a CSRF token"
    return found.group(1)


# --- the browser tests ------------------------------------------------------------------------

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox", "--headless=new", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--no-first-run", "--disable-sync", "--disable-quic",
]


@pytest.fixture
def browser(live_gateway: Any, fake_upstream: Any, catalog: None) -> Iterator[Any]:
    """Headless Chromium (Debian's) driven by Playwright, against the live gateway.

    Depends on the database and server fixtures so they are set up before and
    torn down after it: Playwright's sync API keeps an event loop running in
    this thread while it is open, and Django refuses ORM calls from a thread
    with a running loop. Tests reach the database meanwhile through `off_loop`.
    """
    if not os.path.exists(CHROMIUM):
        pytest.fail(
            f"Chromium is missing at {CHROMIUM}: the browser tests drive a real browser. "
            "Install it with `apt-get install -y chromium` (.ci/run does).", pytrace=False)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield instance
        finally:
            instance.close()


def off_loop(function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run database work in a thread of its own, away from Playwright's event loop."""

    def run() -> T:
        try:
            return function(*args, **kwargs)
        finally:
            connections.close_all()

    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(run).result()
