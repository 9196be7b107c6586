"""The chaos run: many concurrent requests, streaming and not, some asking for several choices,
against an upstream that fails in every way we know (absurd usage reports included), with
clients that hang up mid-stream. Afterwards the books must be exact, and every answer must
show the charge that was committed (no free 200s).

Size: CHAOS_REQUESTS (default 240, a few minutes' work in CI); run bigger locally with
`CHAOS_REQUESTS=3000 make test PYTEST_ARGS=tests/reliability/test_chaos.py -s`. The counts are
printed so runs can be compared.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time
from collections import Counter
from dataclasses import dataclass, field

import httpx
import orjson
import pytest
from django.db.models import Count, Sum
from django.utils import timezone

from accounts.services import api_key_create
from billing.models import CreditAccount, LedgerEntry, Reservation
from billing.pricing import price_request
from completions.models import UsageRecord
from completions.services import requests_expire
from tests.conftest import UPSTREAM_KEY
from tests.ratelimit.conftest import (  # noqa: F401 (fixtures)
    gateway_processes,
    redis_url,
    use_redis,
)
from tests.support.gateway_process import sockets_per_worker, workers_of

REQUESTS = int(os.environ.get("CHAOS_REQUESTS", "240"))
CONCURRENCY = 16
# (weight, marker): the fault the fake upstream plays for a request.
FAULTS = [
    (40, ""), (6, "[[fault:status:500]]"), (6, "[[fault:status:429]]"),
    (5, "[[fault:cut:0]]"), (6, "[[fault:cut:3]]"), (5, "[[fault:slow:0.05]]"),
    (4, "[[fault:hang]]"), (5, "[[fault:malformed]]"), (5, "[[fault:error_event:2]]"),
    (4, "[[fault:no_usage]]"), (4, "[[fault:status:400]]"), (4, "[[fault:huge_usage]]"),
]


@dataclass
class Tally:
    sent: int = 0
    faults: Counter[str] = field(default_factory=Counter)
    statuses: Counter[int] = field(default_factory=Counter)
    disconnects: int = 0
    cut: int = 0
    stream_errors: int = 0
    admitted: set[str] = field(default_factory=set)
    # request id -> the credits_used its answer showed
    shown: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


def _check_error_body(tally: Tally, status: int, body: bytes) -> None:
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        tally.problems.append(f"{status}: body is not JSON: {body[:120]!r}")
        return
    error = parsed.get("error") if isinstance(parsed, dict) else None
    if not isinstance(error, dict) or set(error) != {"message", "type", "param", "code"}:
        tally.problems.append(f"{status}: not in the error format: {body[:200]!r}")
    elif "Traceback" in body.decode(errors="replace"):
        tally.problems.append(f"{status}: a stack trace leaked")


async def _one(client: httpx.AsyncClient, url: str, secret: str, rng: random.Random,
               tally: Tally, *, faults: list[tuple[int, str]] = FAULTS,
               killing: bool = False) -> None:
    marker = rng.choices([m for _, m in faults], weights=[w for w, _ in faults])[0]
    stream = rng.random() < 0.5
    hang_up_after = rng.choice([None, None, None, 1, 2, 4]) if stream else None
    tally.faults[marker or "none"] += 1
    tally.sent += 1
    body = {"model": "openai/gpt-4o-mini", "stream": stream, "max_tokens": rng.choice([8, 64]),
            "messages": [{"role": "user", "content": f"chaos {tally.sent} {marker}"}]}
    choices = rng.choice([1, 1, 1, 2, 4])
    if choices > 1:
        body["n"] = choices
    headers = {"Authorization": f"Bearer {secret}"}
    try:
        async with client.stream("POST", url, json=body, headers=headers) as response:
            request_id = response.headers.get("x-request-id", "")
            if request_id.startswith("chatcmpl-"):
                tally.admitted.add(request_id)
            tally.statuses[response.status_code] += 1
            if response.status_code != 200:
                _check_error_body(tally, response.status_code, await response.aread())
                if response.status_code >= 500 and response.status_code not in (502, 503, 504):
                    tally.problems.append(f"unexpected {response.status_code}")
                return
            if not stream:
                completion = orjson.loads(await response.aread())
                if "usage" not in completion or "credits_used" not in completion["usage"]:
                    tally.problems.append(f"completion without usage extras: {completion}")
                else:
                    tally.shown[request_id] = completion["usage"]["credits_used"]
                return
            events = 0
            async for line in response.aiter_lines():
                if not line.startswith("data: "):
                    continue
                events += 1
                if line == "data: [DONE]":
                    break
                if line.startswith('data: {"error"'):
                    tally.stream_errors += 1
                elif '"credits_used"' in line:
                    tally.shown[request_id] = orjson.loads(line[6:])["usage"]["credits_used"]
                if hang_up_after is not None and events >= hang_up_after:
                    tally.disconnects += 1
                    return  # leaving the block closes the connection mid-stream
    except httpx.HTTPError as exc:
        if killing:  # the worker serving it was killed
            tally.cut += 1
        else:
            tally.problems.append(f"transport error {type(exc).__name__}: {exc}")


@pytest.mark.django_db(transaction=True)
def test_chaos_leaves_the_books_exact(tenant_factory, fake_upstream, live_gateway, settings):
    settings.UPSTREAM_FIRST_BYTE_TIMEOUT = 1.0
    settings.UPSTREAM_CHUNK_TIMEOUT = 1.0
    rich = tenant_factory("rich", credits=50_000_000)
    poor = tenant_factory("poor", credits=60)  # runs out part-way: 402s must be clean too
    rng = random.Random(int(os.environ.get("CHAOS_SEED", "1729")))
    tally = Tally()
    url = f"{live_gateway.api_base}/chat/completions"

    async def run() -> None:
        limits = httpx.Limits(max_connections=CONCURRENCY)
        async with httpx.AsyncClient(timeout=30, limits=limits) as client:
            queue = list(range(REQUESTS))

            async def worker() -> None:
                while queue:
                    queue.pop()
                    secret = rich.secret if rng.random() < 0.8 else poor.secret
                    await _one(client, url, secret, rng, tally)

            await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))

    asyncio.run(run())

    # Let shielded settlements of hung-up streams finish, then run the expiry job as if
    # its time had come: nothing may stay open.
    for _ in range(200):
        if UsageRecord.objects.filter(request_id__in=tally.admitted).count() == len(tally.admitted):
            break
        asyncio.run(asyncio.sleep(0.05))
    expired = requests_expire(now=timezone.now() + timezone.timedelta(days=1))

    records = UsageRecord.objects.filter(request_id__in=tally.admitted)
    usage_entries = LedgerEntry.objects.filter(kind="usage")
    by_status = dict(records.values_list("status").annotate(n=Count("id")))
    charged = usage_entries.aggregate(total=Sum("amount"))["total"] or 0
    print(f"\nchaos: requests={tally.sent} admitted={len(tally.admitted)} "
          f"statuses={dict(sorted(tally.statuses.items()))} faults={dict(tally.faults)} "
          f"disconnects={tally.disconnects} stream_error_events={tally.stream_errors} "
          f"records={by_status} charged={-charged} "
          f"released={Reservation.objects.filter(status='released').count()} "
          f"expired_by_job={expired}")

    assert tally.problems == []
    # Every admitted request has exactly one usage record, and at most one usage entry.
    assert records.count() == len(tally.admitted)
    assert not usage_entries.values("request_id").annotate(n=Count("id")).filter(n__gt=1)
    assert set(usage_entries.values_list("request_id", flat=True)) <= tally.admitted
    # Nothing stays open; the books balance; nobody is overdrawn.
    assert not Reservation.objects.filter(status="open").exists()
    assert expired == 0, "the gateway left reservations for the expiry job"
    for account in CreditAccount.objects.all():
        entries = account.entries.aggregate(total=Sum("amount"))["total"] or 0
        assert account.balance == entries >= 0
        assert account.reserved == 0
    # What was charged is what the pricing function says for what was delivered.
    for record in records:
        entry = usage_entries.filter(request_id=record.request_id).first()
        assert record.credits == (-entry.amount if entry else 0)
        expected = price_request(multiplier=record.multiplier, prompt_tokens=record.prompt_tokens,
                                 completion_tokens=record.completion_tokens).total
        if record.status == "error" and record.completion_tokens == 0 and not entry:
            continue  # failed before the first byte: released, nothing charged
        assert record.credits == min(expected, record.credits_reserved), record.request_id
    # Every answer showed what was committed for it.
    committed = dict(records.filter(request_id__in=tally.shown).values_list("request_id",
                                                                             "credits"))
    assert committed == tally.shown
    assert records.filter(usage_source="clamped").exists()
    assert tally.disconnects > 0 and tally.stream_errors > 0
    assert {402, 502, 503}.issubset(tally.statuses)


# Faults the process-kill run plays: slow streams, so requests are in flight when the kill comes.
KILL_FAULTS = [(50, "[[fault:slow:0.1]]"), (10, ""), (5, "[[fault:status:500]]"),
               (5, "[[fault:huge_usage]]"), (5, "[[fault:error_event:2]]")]


def test_chaos_with_a_worker_killed_leaves_the_books_exact_and_no_slot_held(
    tenant_factory, fake_upstream, gateway_processes, monkeypatch,  # noqa: F811
):
    """Two workers under load, one SIGKILLed mid-run (its supervisor replaces it). The killed
    worker's requests are closed by the expiry job as interrupted; every other one is
    settled; the books balance; and the key's concurrency slots are all free again within
    the lease."""
    lease = 6
    monkeypatch.setenv("OPENROUTER_BASE_URL", fake_upstream.url)
    monkeypatch.setenv("OPENROUTER_API_KEY", UPSTREAM_KEY)
    monkeypatch.setenv("RATE_LIMIT_CONCURRENCY_LEASE_SECONDS", str(lease))
    tenant = tenant_factory("rich", credits=50_000_000)
    _, secret = api_key_create(organization=tenant.org, name="capped",
                               max_concurrent_requests=CONCURRENCY)
    [gateway] = gateway_processes(1, workers=2)
    deadline = time.monotonic() + 60
    while True:  # two workers, each listening on its own socket
        workers = workers_of(gateway)
        listening = [pid for pid, n in sockets_per_worker(gateway, workers, "0A").items() if n]
        if len(listening) >= 2:
            break
        assert time.monotonic() < deadline, f"two listening workers expected: {workers}"
        time.sleep(0.1)
    victim = listening[0]
    rng = random.Random(int(os.environ.get("CHAOS_SEED", "1729")))
    tally = Tally()
    url = f"{gateway.api_base}/chat/completions"
    killed_at = 0.0

    async def run() -> None:
        nonlocal killed_at
        # A fresh connection per request: connections spread over both workers.
        async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_keepalive_connections=0)
                                     ) as client:
            queue = list(range(120))

            async def worker() -> None:
                while queue:
                    queue.pop()
                    await _one(client, url, secret, rng, tally, faults=KILL_FAULTS, killing=True)

            async def kill() -> None:
                nonlocal killed_at
                await asyncio.sleep(1.5)
                # Once the victim is serving (a connection per request), so the kill cuts one.
                serving_by = time.monotonic() + 10
                while (not sockets_per_worker(gateway, [victim], "01")[victim]
                       and time.monotonic() < serving_by):
                    await asyncio.sleep(0.02)
                os.kill(victim, signal.SIGKILL)
                killed_at = time.monotonic()

            await asyncio.gather(kill(), *(worker() for _ in range(CONCURRENCY)))

    asyncio.run(run())

    for _ in range(200):
        settled = UsageRecord.objects.filter(request_id__in=tally.admitted).count()
        if settled + tally.cut >= len(tally.admitted):
            break
        time.sleep(0.05)
    expired = requests_expire(now=timezone.now() + timezone.timedelta(days=1))
    records = UsageRecord.objects.filter(request_id__in=tally.admitted)
    # A request the kill cut before its client saw a header is not among `admitted`.
    by_status = dict(UsageRecord.objects.filter(organization=tenant.org)
                     .values_list("status").annotate(n=Count("id")))
    print(f"\nchaos with a kill: admitted={len(tally.admitted)} cut={tally.cut} "
          f"records={by_status} expired_by_job={expired}")

    assert tally.problems == []
    # A cut request is closed by the expiry job (most runs cut one or two; a run whose
    # victim was between requests when it died cuts none, and that must balance too).
    # The victim died (its supervisor reaps it; until then /proc still lists it).
    reaped_by = time.monotonic() + 10
    while victim in workers_of(gateway):
        assert time.monotonic() < reaped_by, f"worker {victim} was not killed"
        time.sleep(0.1)
    assert records.count() == len(tally.admitted)
    assert by_status.get("interrupted", 0) == expired
    assert not Reservation.objects.filter(status="open").exists()
    account = tenant.refresh_account()
    entries = account.entries.aggregate(total=Sum("amount"))["total"] or 0
    assert account.balance == entries >= 0 and account.reserved == 0
    usage_entries = LedgerEntry.objects.filter(kind="usage")
    assert not usage_entries.values("request_id").annotate(n=Count("id")).filter(n__gt=1)
    for record in records:
        entry = usage_entries.filter(request_id=record.request_id).first()
        assert record.credits == (-entry.amount if entry else 0)
    committed = dict(records.filter(request_id__in=tally.shown).values_list("request_id",
                                                                             "credits"))
    assert committed == tally.shown
    # No slot outlives the lease: once it has passed, the key runs its whole concurrency.
    time.sleep(max(0.0, killed_at + lease + 1 - time.monotonic()))

    async def all_at_once() -> list[int]:
        async with httpx.AsyncClient(timeout=30) as client:
            body = {"model": "openai/gpt-4o-mini", "stream": True, "max_tokens": 8,
                    "messages": [{"role": "user", "content": "together [[fault:slow:0.2]]"}]}
            headers = {"Authorization": f"Bearer {secret}"}

            async def one() -> int:
                async with client.stream("POST", url, json=body, headers=headers) as response:
                    await response.aread()
                    return response.status_code

            return await asyncio.gather(*(one() for _ in range(CONCURRENCY)))

    assert asyncio.run(all_at_once()) == [200] * CONCURRENCY
