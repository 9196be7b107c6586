"""Process faults: the gateway killed mid-stream, and its database restarted mid-run.

Both run real gateway processes (uvicorn) against the fake upstream; the books are
checked in the database afterwards.

- SIGKILL mid-stream runs on the run's database (PostgreSQL in CI, SQLite by
  default), like the concurrency tests: what it proves holds on both.
- The database restart needs a PostgreSQL it may stop: it makes its own private
  cluster (tests/support/private_postgres.py) whatever the run's database is, and
  fails loudly, never skips, on a machine without the PostgreSQL server binaries.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from django.conf import settings
from django.db.models import Sum
from django.utils import timezone

from accounts.services import api_key_create
from billing.models import LedgerEntry, Reservation
from completions.models import UsageRecord
from completions.services import requests_expire
from tests.conftest import UPSTREAM_KEY
from tests.ratelimit.conftest import (  # noqa: F401 (fixtures)
    gateway_processes,
    redis_url,
    use_redis,
)
from tests.support.gateway_process import GatewayProcess, gateway_spawn, manage
from tests.support.private_postgres import PrivatePostgres

MODEL = "openai/gpt-4o-mini"
ERROR_KEYS = {"message", "type", "param", "code"}


def _chat(content: str, *, stream: bool = False) -> dict[str, Any]:
    return {"model": MODEL, "stream": stream, "max_tokens": 32,
            "messages": [{"role": "user", "content": content}]}


def _books(account) -> tuple[int, int, int, int]:  # type: ignore[no-untyped-def]
    """(balance, sum of the ledger, reserved, sum of the open reservations)."""
    account.refresh_from_db()
    ledger = LedgerEntry.objects.filter(account=account).aggregate(s=Sum("amount"))["s"] or 0
    held = Reservation.objects.filter(account=account, status=Reservation.Status.OPEN
                                      ).aggregate(s=Sum("amount"))["s"] or 0
    return account.balance, ledger, account.reserved, held


# --- 1. SIGKILL mid-stream ---------------------------------------------------------------------


def test_given_a_gateway_killed_mid_stream_then_the_expiry_job_charges_its_prompt_and_records_it(
    tenant, fake_upstream, gateway_processes, monkeypatch,  # noqa: F811
):
    """A killed process cannot settle: the reservation stays open (the credits held, the books
    consistent, nothing charged) until the expiry job closes it, charging the prompt and
    recording the request as interrupted (README "Credits"), and a new process serves the
    same key as if nothing happened."""
    monkeypatch.setenv("OPENROUTER_BASE_URL", fake_upstream.url)
    monkeypatch.setenv("OPENROUTER_API_KEY", UPSTREAM_KEY)
    [gateway] = gateway_processes(1)
    headers = {"Authorization": f"Bearer {tenant.secret}"}
    balance_before = tenant.refresh_account().balance

    # Given a stream the upstream takes its time over (8 chunks, 0.5 s apart)
    with httpx.Client(timeout=30) as client, client.stream(
        "POST", f"{gateway.api_base}/chat/completions", headers=headers,
        json=_chat("slowly please [[fault:slow:0.5]]", stream=True),
    ) as response:
        assert response.status_code == 200
        request_id = response.headers["x-request-id"]
        lines = response.iter_lines()
        received = [next(line for line in lines if line.startswith("data:")) for _ in range(2)]
        # When the gateway is killed after two chunks: no handler, no lifespan shutdown
        gateway.process.send_signal(signal.SIGKILL)
        assert gateway.process.wait(10) == -signal.SIGKILL
        with pytest.raises(httpx.TransportError):
            for _ in lines:
                pass
    assert all(line.startswith("data: {") for line in received)

    # Then exactly one reservation is left open for the request, holding credits
    [reservation] = Reservation.objects.filter(request_id=request_id)
    assert reservation.status == Reservation.Status.OPEN and reservation.amount > 0
    balance, ledger, reserved, held = _books(tenant.account)
    assert (balance, reserved) == (ledger, held) == (balance_before, reservation.amount)
    # and nothing is charged or recorded yet
    assert not UsageRecord.objects.filter(request_id=request_id).exists()
    assert not LedgerEntry.objects.filter(request_id=request_id).exists()

    # When the expiry job runs: before the TTL it leaves the reservation alone
    assert requests_expire(now=timezone.now()) == 0
    later = reservation.created_at + dt.timedelta(seconds=settings.RESERVATION_TTL_SECONDS + 1)
    assert requests_expire(now=later) == 1
    # Then the prompt is charged (the documented policy), and running it again is a no-op
    assert requests_expire(now=later) == 0
    reservation.refresh_from_db()
    prompt = reservation.prompt_credits
    assert 0 < prompt < reservation.amount
    assert (reservation.status, reservation.charged) == (Reservation.Status.EXPIRED, prompt)
    balance, ledger, reserved, held = _books(tenant.account)
    assert (balance, ledger, reserved, held) == (balance_before - prompt, balance, 0, 0)
    assert LedgerEntry.objects.get(request_id=request_id).amount == -prompt
    # and the request has its usage record: interrupted, with what was known of it
    record = UsageRecord.objects.get(request_id=request_id)
    assert (record.status, record.model, record.streamed, record.credits) == (
        "interrupted", MODEL, True, prompt)
    assert record.prompt_tokens == reservation.prompt_tokens > 0
    balance_before -= prompt

    # And a new gateway process serves the same key normally, and settles it
    [fresh] = gateway_processes(1)
    answer = httpx.post(f"{fresh.api_base}/chat/completions", headers=headers,
                        json=_chat("hello again"), timeout=30)
    assert answer.status_code == 200, answer.text
    charged = answer.json()["usage"]["credits_used"]
    record = UsageRecord.objects.get(request_id=answer.headers["x-request-id"])
    assert record.status == "ok" and record.credits == charged > 0
    balance, ledger, reserved, held = _books(tenant.account)
    assert (balance, ledger, reserved, held) == (balance_before - charged, balance, 0, 0)


def test_given_a_gateway_killed_holding_a_keys_concurrency_slots_then_they_free_within_a_lease(
    tenant, fake_upstream, gateway_processes, monkeypatch,  # noqa: F811
):
    """Slots are leases the live process renews: a killed one's lapse within a lease, and a
    refusal meanwhile says when (not "retry in 1 s" for a quarter of an hour)."""
    lease = 6  # renewed every 2 s; a slot not renewed for 3 s counts as abandoned
    monkeypatch.setenv("OPENROUTER_BASE_URL", fake_upstream.url)
    monkeypatch.setenv("OPENROUTER_API_KEY", UPSTREAM_KEY)
    monkeypatch.setenv("RATE_LIMIT_CONCURRENCY_LEASE_SECONDS", str(lease))
    _, secret = api_key_create(organization=tenant.org, name="three at once",
                                 max_concurrent_requests=3)
    doomed, survivor = gateway_processes(2)
    headers = {"Authorization": f"Bearer {secret}"}
    slow = _chat("slowly please [[fault:slow:1]]", stream=True)

    # Given three streams holding the key's three slots, running past a lease on `doomed`
    with contextlib.ExitStack() as streams:
        for _ in range(3):
            client = streams.enter_context(httpx.Client(timeout=30))
            response = streams.enter_context(client.stream(
                "POST", f"{doomed.api_base}/chat/completions", headers=headers, json=slow))
            assert response.status_code == 200
        time.sleep(lease + 0.5)
        held = httpx.post(f"{survivor.api_base}/chat/completions", headers=headers,
                          json=_chat("one more"), timeout=30)
        assert held.status_code == 429  # renewed: the live streams keep their slots
        assert held.headers["Retry-After"] == "1"
        # When the process holding them is killed
        doomed.process.send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        assert doomed.process.wait(10) == -signal.SIGKILL
    # Then the survivor admits the key again within a lease, and no refusal meanwhile
    # said to come back later than the slots actually freed
    frees_by = killed_at + lease + 1
    waits = []
    while True:
        answer = httpx.post(f"{survivor.api_base}/chat/completions", headers=headers,
                            json=_chat("again"), timeout=30)
        if answer.status_code == 200:
            break
        assert answer.status_code == 429, answer.text
        wait = int(answer.headers["retry-after-ms"])
        waits.append(wait)
        assert time.monotonic() + wait / 1000 <= frees_by, waits
        assert time.monotonic() < frees_by, waits
        time.sleep(0.2)
    # Once every holder had missed a renewal, a refusal said when the first slot lapses.
    assert any(wait > 1_000 for wait in waits), waits


# --- 2. the database restarted mid-run --------------------------------------------------------


@pytest.fixture
def private_postgres() -> Iterator[PrivatePostgres]:
    cluster = PrivatePostgres.create()
    yield cluster
    cluster.destroy()


def _assert_unavailable(response: httpx.Response) -> None:
    """503 in the one error format, with a Retry-After, and no stack trace."""
    assert response.status_code == 503, response.text
    body = response.json()
    assert set(body["error"]) == ERROR_KEYS, body
    assert body["error"]["code"] == body["code"] == "service_unavailable", body
    assert "Traceback" not in response.text and "psycopg" not in response.text
    assert int(response.headers["Retry-After"]) >= 1


def _settled_within(cluster: PrivatePostgres, request_id: str, seconds: float) -> str:
    deadline = time.monotonic() + seconds
    while True:
        [(status,)] = cluster.query(
            "SELECT status FROM billing_reservation WHERE request_id = %s", request_id)
        if status != "open" or time.monotonic() > deadline:
            return str(status)
        time.sleep(0.1)


# migrate, create_org, create_api_key x 2 (as an operator runs them), in one process: each
# `manage.py` start costs seconds on a busy machine.
SETUP = """
import io, json
from django.core.management import call_command

def run(*args):
    out = io.StringIO()
    call_command(*args, stdout=out)
    return out.getvalue().strip()

run("migrate", "--no-input", "-v", "0")
run("create_org", "faults", "--credits", "100000")
keys = [run("create_api_key", "--org", "faults", "--name", "a"),
        run("create_api_key", "--org", "faults", "--name", "b",
            "--scopes", "chat,models,billing:read")]
assert all(key.startswith("sk_") for key in keys), keys
print(json.dumps(keys))
"""


@pytest.mark.postgres
def test_given_the_database_restarts_mid_run_then_503s_meanwhile_and_nothing_is_lost(
    private_postgres, fake_upstream, tmp_path: Path,
):
    """While PostgreSQL is down every request gets a retryable 503 in the API's error format
    (inference and management API alike) and /readyz says not ready; once it is back every
    request succeeds at once (no dead connection kept), and a stream whose upstream answered
    during the outage is still charged once, with its usage record."""
    cluster = private_postgres
    env = {
        name: value for name, value in os.environ.items()
        if name not in ("REDIS_URL", "DATABASE_POOL_MAX_SIZE", "DATABASE_CONN_MAX_AGE")
    }
    env.update({
        "DATABASE_URL": cluster.url,
        "OPENROUTER_BASE_URL": fake_upstream.url, "OPENROUTER_API_KEY": UPSTREAM_KEY,
        "IN_PROCESS_BEAT": "0", "LOG_LEVEL": "WARNING",
        # One database thread: which thread holds a connection the server has closed is
        # then certain, not up to the thread pool's scheduling.
        "DB_THREADS": "1",
        # Key A stays cached through the outage (its 503 comes from the reservation);
        # key B is first seen during it (its 503 comes from authentication).
        "API_KEY_CACHE_SECONDS": "300",
    })
    # Given a gateway (starting meanwhile: it needs no database to come up) and a tenant
    # made with the operator's commands in the private database, run in one process
    gateway = gateway_spawn(env=env, log=tmp_path / "gateway.log")
    try:
        secrets = orjson.loads(manage("shell", "-c", SETUP, env=env).strip().splitlines()[-1])
        gateway.wait_until_healthy()
        _run_through_a_restart(cluster, gateway, *secrets)
    finally:
        gateway.stop()


def _run_through_a_restart(cluster: PrivatePostgres, gateway: GatewayProcess, key_a: str,
                           key_b: str) -> None:
    completions = f"{gateway.api_base}/chat/completions"
    auth_a = {"Authorization": f"Bearer {key_a}"}
    auth_b = {"Authorization": f"Bearer {key_b}"}
    served: list[str] = []
    with httpx.Client(timeout=30) as client:
        # Traffic before: the database thread opens its connection
        assert client.get(f"{gateway.url}/readyz").status_code == 200
        for number in range(6):
            response = client.post(completions, headers=auth_a, json=_chat(f"before {number}"))
            assert response.status_code == 200, response.text
            served.append(response.headers["x-request-id"])

        # A stream admitted (its credits reserved) just before the database goes
        with client.stream("POST", completions, headers=auth_a,
                           json=_chat("long story [[fault:slow:0.3]]", stream=True)) as stream:
            assert stream.status_code == 200
            streamed_id = stream.headers["x-request-id"]
            lines = stream.iter_lines()
            next(line for line in lines if line.startswith("data:"))

            # When PostgreSQL stops (every session ended, new connections refused)
            cluster.stop("fast")

            # Then the stream is delivered to its end all the same
            rest = [line for line in lines if line.startswith("data:")]
        assert rest[-1] == "data: [DONE]"
        stream_charge = orjson.loads(rest[-2].removeprefix("data: "))["usage"]["credits_used"]
        assert stream_charge > 0

        # and every request meanwhile gets a retryable 503, never a 500
        ready = client.get(f"{gateway.url}/readyz")
        assert ready.status_code == 503 and ready.json()["checks"]["database"] is False
        for _ in range(3):  # a cached key: the reservation cannot be written
            _assert_unavailable(client.post(completions, headers=auth_a, json=_chat("down")))
        # a key not seen before: authentication cannot look it up
        _assert_unavailable(client.post(completions, headers=auth_b, json=_chat("down")))
        _assert_unavailable(client.post(completions, headers=auth_b,
                                        json=_chat("down", stream=True)))
        # the management API (DRF) too
        _assert_unavailable(client.get(f"{gateway.api_base}/credits", headers=auth_b))

        # When PostgreSQL is back
        cluster.restart()

        # Then the gateway is ready and serves every request at once
        assert client.get(f"{gateway.url}/readyz").status_code == 200
        for number in range(8):
            auth = auth_a if number % 2 else auth_b
            response = client.post(completions, headers=auth, json=_chat(f"after {number}"))
            assert response.status_code == 200, response.text
            served.append(response.headers["x-request-id"])
        assert client.get(f"{gateway.api_base}/credits", headers=auth_b).status_code == 200

        # And the stream the database missed is settled once it is back: charged what the
        # client was told, with its usage record (not left to the expiry job, free)
        assert _settled_within(cluster, streamed_id, seconds=15) == "settled"
        served.append(streamed_id)

        # When it restarts again while the gateway is idle: the database thread holds a
        # connection the server has since closed
        cluster.stop("fast")
        cluster.restart()
        # Then the next requests are served all the same, not failed on those connections
        for number in range(4):
            response = client.post(completions, headers=auth_a, json=_chat(f"idle {number}"))
            assert response.status_code == 200, response.text
            served.append(response.headers["x-request-id"])

    _assert_books_exact(cluster, served, {streamed_id: stream_charge})


def _assert_books_exact(cluster: PrivatePostgres, served: list[str],
                        expected: dict[str, int]) -> None:
    """Every served request charged exactly once; nothing else reserved or charged."""
    [(balance, reserved, ledger)] = cluster.query(
        "SELECT a.balance, a.reserved, (SELECT SUM(amount) FROM billing_ledgerentry e"
        " WHERE e.account_id = a.id) FROM billing_creditaccount a"
        " JOIN accounts_organization o ON o.id = a.organization_id WHERE o.slug = 'faults'")
    assert balance == ledger and reserved == 0
    reservations = dict(cluster.query("SELECT request_id, status FROM billing_reservation"))
    # The 503s reserved nothing: the only reservations are the served requests', all settled.
    assert reservations == dict.fromkeys(served, "settled")
    usage = cluster.query(
        "SELECT request_id, COUNT(*), SUM(-amount) FROM billing_ledgerentry"
        " WHERE kind = 'usage' GROUP BY request_id")
    assert sorted(request_id for request_id, _, _ in usage) == sorted(served)
    assert all(count == 1 for _, count, _ in usage)
    records = dict(cluster.query("SELECT request_id, credits FROM completions_usagerecord"))
    assert records == {request_id: charged for request_id, _, charged in usage}
    for request_id, charge in expected.items():
        assert records[request_id] == charge
    [(granted,)] = cluster.query("SELECT SUM(amount) FROM billing_ledgerentry WHERE amount > 0")
    assert balance == granted - sum(records.values())
