"""Shared fixtures: two organizations and an outsider, the fake upstream, the live gateway."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import openai
import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser
from django.db import DEFAULT_DB_ALIAS, connections
from django.db.backends.base.base import BaseDatabaseWrapper

from accounts import auth, ratelimit
from accounts.models import APIKey, Membership, Organization
from accounts.scopes import ALL_SCOPES
from accounts.services import api_key_create, membership_add, organization_create
from billing.models import CreditAccount
from billing.services import account_for_organization, credits_grant
from completions import key_limits, routing
from completions.catalog import catalog_cache, catalog_load
from completions.models import CatalogModel, ModelRoute, Provider
from completions.upstream import upstream_client
from novakit.runtime import redis as shared_redis
from novakit.runtime.db import close_database_threads, on_every_database_thread
from tests.support.fake_stripe import SECRET_KEY as STRIPE_SECRET_KEY
from tests.support.fake_stripe import WEBHOOK_SECRET as STRIPE_WEBHOOK_SECRET
from tests.support.fake_stripe import FakeStripe
from tests.support.fake_upstream import FakeUpstream
from tests.support.live_server import LiveGateway

UPSTREAM_KEY = "fake-upstream-key"


@dataclass
class Tenant:
    org: Organization
    account: CreditAccount
    key: APIKey
    secret: str
    user: AbstractBaseUser

    def refresh_account(self) -> CreditAccount:
        self.account.refresh_from_db()
        return self.account


@pytest.fixture(autouse=True)
def _celery_eager() -> Iterator[None]:
    """Tasks run in the test's process unless a test starts real workers (tests/celery)."""
    from novakit.celery import app

    saved = app.conf.task_always_eager
    app.conf.task_always_eager = True
    yield
    app.conf.task_always_eager = saved


@pytest.fixture(autouse=True)
def _fresh_process_caches() -> Iterator[None]:
    auth.cache_clear()
    catalog_cache.clear()
    # SQLite reuses ids after a rollback: a new test's key must not inherit an old one's counts.
    ratelimit.local_reset()
    shared_redis.reset()
    routing.board.reset()
    key_limits.reset()
    yield
    auth.cache_clear()
    catalog_cache.clear()


@pytest.fixture
def catalog(db: None) -> None:
    """The shipped catalog. Its data migration loaded it, but a transactional test's
    flush empties every table, so load it again when it is missing."""
    if not CatalogModel.objects.exists():
        catalog_load(provider_model=Provider, catalog_model=CatalogModel, route_model=ModelRoute,
                     update=False)


@pytest.fixture
def tenant_factory(catalog: None) -> Callable[..., Tenant]:
    def make(
        slug: str, *, credits: int = 1_000_000, scopes: tuple[str, ...] = ALL_SCOPES,
        role: str = Membership.Role.OWNER,
    ) -> Tenant:
        user = get_user_model().objects.create_user(
            username=f"{slug}-owner", email=f"owner@{slug}.test", password="a-long-test-password"
        )
        org = organization_create(slug=slug, name=slug.title())
        membership_add(organization=org, user=user, role=role)
        account = account_for_organization(organization=org)
        if credits:
            credits_grant(account=account, amount=credits, reason="test credits")
        key, secret = api_key_create(organization=org, name="test", scopes=scopes, created_by=user)
        account.refresh_from_db()
        return Tenant(org=org, account=account, key=key, secret=secret, user=user)

    return make


@pytest.fixture
def tenant(tenant_factory: Callable[..., Tenant]) -> Tenant:
    return tenant_factory("acme")


@pytest.fixture
def other_tenant(tenant_factory: Callable[..., Tenant]) -> Tenant:
    return tenant_factory("globex")


@pytest.fixture
def outsider(db: None) -> AbstractBaseUser:
    """A signed-up user who belongs to no organization."""
    return get_user_model().objects.create_user(
        username="outsider", email="outsider@example.test", password="a-long-test-password"
    )


@pytest.fixture(scope="session")
def fake_upstream_server() -> Iterator[FakeUpstream]:
    server = FakeUpstream().start()
    yield server
    server.stop()


@pytest.fixture
def fake_upstream(fake_upstream_server: FakeUpstream, settings) -> Iterator[FakeUpstream]:  # type: ignore[no-untyped-def]
    """The fake upstream, reset, with OpenRouter's settings pointing at it."""
    fake_upstream_server.reset()
    settings.OPENROUTER_BASE_URL = fake_upstream_server.url
    settings.OPENROUTER_API_KEY = UPSTREAM_KEY
    catalog_cache.clear()
    yield fake_upstream_server
    fake_upstream_server.reset()


@pytest.fixture(scope="session")
def fake_stripe_server() -> Iterator[FakeStripe]:
    server = FakeStripe().start()
    yield server
    server.stop()


@pytest.fixture
def fake_stripe(fake_stripe_server: FakeStripe, live_gateway: LiveGateway, settings  # type: ignore[no-untyped-def]
                ) -> Iterator[FakeStripe]:
    """The fake Stripe, reset, with the platform's Stripe settings pointing at it and its
    webhooks at the live gateway."""
    fake_stripe_server.reset()
    settings.STRIPE_SECRET_KEY = STRIPE_SECRET_KEY
    settings.STRIPE_WEBHOOK_SECRET = STRIPE_WEBHOOK_SECRET
    settings.STRIPE_API_BASE = fake_stripe_server.api_base
    fake_stripe_server.webhook_url = f"{live_gateway.url}/webhooks/stripe"
    yield fake_stripe_server
    fake_stripe_server.reset()


@pytest.fixture(scope="session", autouse=True)
async def _upstream_session() -> AsyncIterator[None]:
    """The tests' event loop keeps one pooled upstream session, closed at the end as the
    gateway's lifespan closes it."""
    yield
    await upstream_client.aclose()


@pytest.fixture(scope="session")
def live_gateway_server(django_db_setup: None) -> Iterator[LiveGateway]:
    server = LiveGateway().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def _database_threads_closed_at_the_end(django_db_setup: None) -> Iterator[None]:
    """The database threads' connections, closed before the test database is dropped
    (else PostgreSQL refuses: "being accessed by other users"). Set up by the first
    test that uses the database (`_database_threads`), so after the database."""
    yield
    close_database_threads()


@pytest.fixture(autouse=True)
def _database_threads(request: pytest.FixtureRequest, settings) -> Iterator[None]:  # type: ignore[no-untyped-def]
    """The database work of every test runs on the database threads, as in production
    (novakit/runtime/db.py). Tests with committed data (transactional) get production's
    pool of 8, each thread with its own connection. A test in one wrapping transaction
    can only see its data on its own connection: it gets a pool of one thread that
    borrows that connection for the test (one thread, so the transaction's savepoints
    are never taken from two threads at once)."""
    uses_database = bool(request.node.get_closest_marker("django_db") or {
        "db", "transactional_db"} & set(request.fixturenames))
    transactional = "transactional_db" in request.fixturenames or any(
        marker.kwargs.get("transaction") for marker in request.node.iter_markers("django_db"))
    settings.DB_THREADS = 8 if transactional or not uses_database else 1
    if not uses_database:
        yield
        return
    request.getfixturevalue("_database_threads_closed_at_the_end")
    if transactional:
        yield
        return
    request.getfixturevalue("db")  # the wrapping transaction, begun on this thread
    with _test_connection_lent_to_the_database_threads():
        yield


@contextmanager
def _test_connection_lent_to_the_database_threads() -> Iterator[None]:
    lent = connections[DEFAULT_DB_ALIAS]
    own: dict[int, BaseDatabaseWrapper | None] = {}

    def borrow() -> None:
        own[threading.get_ident()] = getattr(connections._connections, DEFAULT_DB_ALIAS, None)
        connections[DEFAULT_DB_ALIAS] = lent

    def give_back() -> None:
        mine = own.pop(threading.get_ident(), None)
        if mine is None:
            del connections[DEFAULT_DB_ALIAS]
        else:
            connections[DEFAULT_DB_ALIAS] = mine

    lent.inc_thread_sharing()
    try:
        on_every_database_thread(borrow)
        try:
            yield
        finally:
            on_every_database_thread(give_back)
    finally:
        lent.dec_thread_sharing()


@pytest.fixture
def live_gateway(live_gateway_server: LiveGateway, transactional_db: None) -> LiveGateway:
    """The real ASGI server. Tests using it see committed data only (transactional_db)."""
    return live_gateway_server


@pytest.fixture
def client_for(live_gateway: LiveGateway) -> Callable[[Tenant], openai.OpenAI]:
    """The official OpenAI SDK pointed at the live gateway, with only the base URL changed."""

    def make(tenant: Tenant, **options: object) -> openai.OpenAI:
        options.setdefault("max_retries", 0)
        return openai.OpenAI(api_key=tenant.secret, base_url=live_gateway.api_base, **options)  # type: ignore[arg-type]

    return make
