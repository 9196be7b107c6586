"""Given the Procfile's processes on one machine (two web processes and an inference process,
each on its own port with no balancer in front, one worker, one beat) on the run's database and
Redis, when traffic goes through all three at once, then balances, rate limits and rollups come
out exactly as when the same workload goes through one web process; and the inference process
serves the inference API only.

The processes are the Procfile's own command lines (tests/support/procfile.py runs them as a
Procfile runner does), started for real: nothing in the request path, the broker or the
scheduler is replaced. The database is the run's test database (migrated by pytest-django,
flushed afterwards; on PostgreSQL in CI, on its SQLite file otherwise), so the test reads it
with the ORM. Redis is a database number of the run's Redis that this test claims, and cleans
afterwards (a private redis-server when the run has no Redis), so the Celery queues and rate
limit buckets of the topology are its own. Beat's usage rollup interval is shortened with
USAGE_ROLLUP_INTERVAL_SECONDS so beat -> broker -> worker happens within the test.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import openai
import pytest
import redis
from django.db.models import Sum

from accounts.models import Organization
from billing.models import CreditAccount, LedgerEntry, Reservation
from billing.pricing import price_request
from completions.models import UsageRecord, UsageRollup
from tests.conftest import UPSTREAM_KEY
from tests.ratelimit.conftest import RedisServer, database_url, free_port
from tests.support.fake_upstream import FakeUpstream
from tests.support.openai_schema import validate
from tests.support.procfile import ProcfileProcess, procfile_read, procfile_start, procfile_stop

ROOT = Path(__file__).resolve().parents[2]
PROCFILE = ROOT / "platform" / "Procfile"

MODEL = "openai/gpt-4o"  # a standard-tier model (2x): the multiplier is part of every charge
MESSAGES = [{"role": "user", "content": "Which web process answers this one?"}]
MAX_TOKENS = 16
INITIAL_CREDITS = 1_000_000
RPM = 8  # the burst key's limit: far fewer than the requests sent
PER_KIND = 12  # non-streaming and as many streaming completions
ROLLUP_INTERVAL_SECONDS = 1
START_TIMEOUT = 60.0
SETTLE_TIMEOUT = 20.0
_CLAIM = "novakit-topology-test:claim"


# --- the topology ---------------------------------------------------------------------------


@dataclass
class Topology:
    processes: list[ProcfileProcess]
    web_ports: list[int]
    inference_port: int
    env: dict[str, str]
    exit_statuses: dict[str, int] | None = None

    def process(self, name: str) -> ProcfileProcess:
        return next(running for running in self.processes if running.name == name)

    def check_running(self) -> None:
        dead = [running.name for running in self.processes if not running.running()]
        assert not dead, f"processes exited early: {dead}\n{self.logs()}"

    def logs(self) -> str:
        return "\n".join(f"----- {running.name} (exit {running.process.poll()}) -----\n"
                         f"{running.output()[-6000:]}" for running in self.processes)

    def manage(self, *commands: list[str]) -> list[str]:
        """`manage.py` commands against the topology's database, as an operator runs them (all
        at once, and without the system checks: each is a Django start-up, and a second of CPU
        saved on a two-core machine counts); returns what each printed."""
        running = [subprocess.Popen(
            [str(ROOT / ".venv/bin/python"), "manage.py", *args, "--skip-checks"], cwd=ROOT,
            env=self.env,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        ) for args in commands]
        printed = []
        for args, process in zip(commands, running, strict=True):
            out, err = process.communicate(timeout=60)
            assert process.returncode == 0, f"manage.py {' '.join(args)}:\n{out}{err}"
            printed.append(out)
        return printed

    def stop(self) -> dict[str, int]:
        """SIGTERM all, as a process manager does; the exit statuses (once, then remembered)."""
        if self.exit_statuses is None:
            self.exit_statuses = procfile_stop(self.processes)
        return self.exit_statuses


@dataclass
class TopologyRedis:
    url: str
    prefix: str  # REDIS_KEY_PREFIX: the application's keys are all under it


def _claimed_redis_db(run_url: str) -> Iterator[TopologyRedis]:
    """A Redis database of the run's server that nothing else uses, so the topology's Celery
    queues are its own: claimed with SET NX on an empty database (two runs on one machine pick
    different ones). Afterwards the keys the topology wrote (its prefix, Celery's) are deleted."""
    parts = urlsplit(run_url)
    run_db = int(parts.path.strip("/") or 0)
    token = uuid.uuid4().hex
    prefix = f"novakit-topology-{token[:12]}:"
    for number in range(15, 0, -1):
        if number == run_db:
            continue
        url = urlunsplit(parts._replace(path=f"/{number}"))
        client = redis.Redis.from_url(url, socket_timeout=2)
        try:
            if client.set(_CLAIM, token, nx=True, ex=600) and client.dbsize() == 1:
                try:
                    yield TopologyRedis(url=url, prefix=prefix)
                finally:
                    for pattern in (f"{prefix}*", "celery*", "_kombu.*", "unacked*"):
                        for name in client.scan_iter(match=pattern, count=500):
                            client.delete(name)
                    client.delete(_CLAIM)
                return
            if client.get(_CLAIM) == token.encode():
                client.delete(_CLAIM)  # not empty: someone else's data, leave it be
        finally:
            client.close()
    raise RuntimeError(f"no free Redis database on {run_url} for the topology test")


@pytest.fixture
def topology_redis(settings) -> Iterator[TopologyRedis]:  # type: ignore[no-untyped-def]
    if settings.REDIS_URL:
        yield from _claimed_redis_db(settings.REDIS_URL)
        return
    server = RedisServer.start()  # the run has no Redis: one of our own, gone afterwards
    try:
        yield TopologyRedis(url=server.url, prefix="novakit:")
    finally:
        server.stop()


def _topology_env(*, store: TopologyRedis, upstream: FakeUpstream, beat_schedule: Path
                  ) -> dict[str, str]:
    env = {name: value for name, value in os.environ.items()
           if not name.startswith(("CELERY_", "RATE_LIMIT_", "REDIS_", "PYTEST_"))}
    env.update({
        "DJANGO_SETTINGS_MODULE": "novakit.settings",
        "DATABASE_URL": database_url(),
        "REDIS_URL": store.url,  # rate limits, key cache and the Celery broker
        "REDIS_KEY_PREFIX": store.prefix,
        "IN_PROCESS_BEAT": "0",  # the beat process is the only scheduler
        # Refusals are recorded up to a rate per process, so their count depends on the
        # topology this test compares: it accounts for admitted requests only.
        "USAGE_REFUSALS_PER_KEY_PER_SECOND": "0",
        "OPENROUTER_BASE_URL": upstream.url,
        "OPENROUTER_API_KEY": UPSTREAM_KEY,
        "HOST": "127.0.0.1",
        "WEB_CONCURRENCY": "1",  # one worker per web instance: two instances, two workers
        "WORKER_CONCURRENCY": "1",
        "BEAT_SCHEDULE_FILE": str(beat_schedule),
        "USAGE_ROLLUP_INTERVAL_SECONDS": str(ROLLUP_INTERVAL_SECONDS),
        "PYTHONUNBUFFERED": "1",
    })
    return env


def _wait_until_started(topology: Topology) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    pending_web = [*topology.web_ports, topology.inference_port]
    while True:
        topology.check_running()
        for port in list(pending_web):
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                    pending_web.remove(port)
            except httpx.TransportError:
                pass
        worker_ready = " ready." in topology.process("worker.1").output()
        beat_ready = "beat: Starting..." in topology.process("beat.1").output()
        if not pending_web and worker_ready and beat_ready:
            return
        assert time.monotonic() < deadline, f"the topology did not start:\n{topology.logs()}"
        time.sleep(0.2)


@pytest.fixture
def procfile_topology(transactional_db: None, catalog: None, fake_upstream: FakeUpstream,
                      topology_redis: TopologyRedis, tmp_path: Path) -> Iterator[Topology]:
    """web twice and inference once (each on its own PORT), worker once, beat once, from
    platform/Procfile."""
    commands = procfile_read(PROCFILE)
    assert set(commands) == {"web", "inference", "worker", "beat"}, (
        f"a new process type? start it: {commands}")
    env = _topology_env(store=topology_redis, upstream=fake_upstream,
                        beat_schedule=tmp_path / "celerybeat-schedule")
    web_ports = [free_port(), free_port()]
    inference_port = free_port()
    processes: list[ProcfileProcess] = []
    topology = Topology(processes=processes, web_ports=web_ports, inference_port=inference_port,
                        env=env)
    try:
        for number, port in enumerate(web_ports, start=1):
            processes.append(procfile_start(name="web", command=commands["web"], number=number,
                                            cwd=ROOT, env={**env, "PORT": str(port)},
                                            log_dir=tmp_path))
        processes.append(procfile_start(name="inference", command=commands["inference"],
                                        number=1, cwd=ROOT,
                                        env={**env, "PORT": str(inference_port)},
                                        log_dir=tmp_path))
        for name in ("worker", "beat"):
            processes.append(procfile_start(name=name, command=commands[name], number=1,
                                            cwd=ROOT, env=env, log_dir=tmp_path))
        _wait_until_started(topology)
        yield topology
    finally:
        statuses = topology.stop()
        # Shown by pytest only when the test failed (captured output of the teardown).
        print(topology.logs())
        print(f"exit statuses after SIGTERM: {statuses}")


# --- the workload ---------------------------------------------------------------------------


@dataclass
class Tenancy:
    slug: str
    burst_secret: str
    account: CreditAccount = field(repr=False)


@dataclass
class Outcome:
    port: int
    streamed: bool
    status: int
    request_id: str | None = None
    credits_used: int | None = None
    error: dict[str, Any] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    seconds: tuple[float, float] = (0.0, 0.0)  # sent, answered (monotonic)


def _tenancies(topology: Topology, *slugs: str) -> list[Tenancy]:
    """Organizations with credits (manage.py), each with an admin key (manage.py) and a burst key
    with a requests-per-minute limit made through the management API of the first web process."""
    topology.manage(*(["create_org", slug, "--credits", str(INITIAL_CREDITS)] for slug in slugs))
    printed = topology.manage(*(["create_api_key", "--org", slug, "--scopes", "chat,keys:write",
                                 "--name", "admin"] for slug in slugs))
    tenancies = []
    for slug, output in zip(slugs, printed, strict=True):
        admin_secret = output.strip().splitlines()[-1]
        created = httpx.post(
            f"http://127.0.0.1:{topology.web_ports[0]}/api/v1/keys", timeout=30,
            headers={"Authorization": f"Bearer {admin_secret}"},
            json={"name": "burst", "scopes": ["chat"], "requests_per_minute": RPM},
        )
        assert created.status_code == 201, created.text
        account = CreditAccount.objects.get(organization__slug=slug)
        assert account.balance == INITIAL_CREDITS
        tenancies.append(Tenancy(slug=slug, burst_secret=created.json()["secret"],
                                 account=account))
    return tenancies


def _call(client: openai.OpenAI, port: int, streamed: bool) -> Outcome:
    sent = time.monotonic()
    try:
        raw = client.chat.completions.with_raw_response.create(
            model=MODEL, messages=MESSAGES, max_tokens=MAX_TOKENS, stream=streamed,  # type: ignore[arg-type]
        )
    except openai.APIStatusError as refused:
        return Outcome(port=port, streamed=streamed, status=refused.status_code,
                       error=refused.response.json(), headers=dict(refused.response.headers),
                       seconds=(sent, time.monotonic()))
    if streamed:
        chunks = list(raw.parse())  # type: ignore[call-overload]
        usage = chunks[-1].usage
    else:
        usage = raw.parse().usage  # type: ignore[union-attr]
    return Outcome(port=port, streamed=streamed, status=raw.status_code,
                   request_id=raw.headers["x-request-id"], headers=dict(raw.headers),
                   credits_used=usage.model_extra["credits_used"],
                   seconds=(sent, time.monotonic()))


def _send_workload(ports: list[int], secret: str) -> list[Outcome]:
    """PER_KIND non-streaming and PER_KIND streaming identical completions, alternating between
    `ports`: the first ones (one to each port) on their own, so every port admits and settles
    some; then the rest all at once. All within 60 / RPM seconds, before the key's bucket lets
    one more in."""
    clients = {port: openai.OpenAI(api_key=secret, base_url=f"http://127.0.0.1:{port}/api/v1",
                                   max_retries=0, timeout=30) for port in ports}
    kinds = [False, True] * PER_KIND
    plan = [(ports[number % len(ports)], streamed) for number, streamed in enumerate(kinds)]
    with ThreadPoolExecutor(max_workers=len(plan)) as pool:
        first = len(ports)
        outcomes = list(pool.map(lambda job: _call(clients[job[0]], *job), plan[:first]))
        outcomes += pool.map(lambda job: _call(clients[job[0]], *job), plan[first:])
    for client in clients.values():
        client.close()
    return outcomes


def _eventually(check: Callable[[], Any], *, what: str, topology: Topology) -> Any:
    """Poll `check` until it returns something truthy; fail naming `what` after a while."""
    deadline = time.monotonic() + SETTLE_TIMEOUT
    while True:
        result = check()
        if result:
            return result
        topology.check_running()
        assert time.monotonic() < deadline, f"timed out waiting for {what}:\n{topology.logs()}"
        time.sleep(0.25)


def _rollup_totals(org: Organization, granularity: str) -> dict[str, int]:
    totals = UsageRollup.objects.filter(organization=org, granularity=granularity).aggregate(
        requests=Sum("requests"), prompt_tokens=Sum("prompt_tokens"),
        completion_tokens=Sum("completion_tokens"), credits=Sum("credits"))
    return {name: value or 0 for name, value in totals.items()}


def _run_and_account(topology: Topology, tenancy: Tenancy, ports: list[int]) -> dict[str, int]:
    """Send the workload to `ports`, check every invariant, return what must not depend on how
    many web processes there are."""
    outcomes = _send_workload(ports, tenancy.burst_secret)

    # Rate limit: the key's bucket is shared, so RPM admitted in all, not RPM per process.
    statuses = sorted(outcome.status for outcome in outcomes)
    took = max(o.seconds[1] for o in outcomes) - min(o.seconds[0] for o in outcomes)
    print(f"workload through {ports}: answered in {took:.1f}s")
    assert statuses == [200] * RPM + [429] * (len(outcomes) - RPM), (
        f"{statuses} in {took:.1f}s", topology.logs())
    admitted = [outcome for outcome in outcomes if outcome.status == 200]
    refusals = [outcome for outcome in outcomes if outcome.status == 429]
    for port in ports:  # OpenAI's error schema, from every process (it takes a while to check)
        validate(next(o.error for o in refusals if o.port == port), "ErrorResponse")
    for refused in refusals:
        assert refused.error["code"] == "rate_limited"  # type: ignore[index]
        assert refused.error["error"]["type"] == "rate_limit_error"  # type: ignore[index]
        assert int(refused.headers["retry-after"]) >= 1
        assert refused.headers["x-ratelimit-limit-requests"] == str(RPM)
        assert refused.headers["x-ratelimit-remaining-requests"] == "0"
    # One bucket: each admission, whichever process made it, took the next of the RPM places.
    remaining = sorted(int(o.headers["x-ratelimit-remaining-requests"]) for o in admitted)
    assert remaining == list(range(RPM)), remaining
    assert {outcome.port for outcome in admitted} == set(ports)

    org = Organization.objects.get(slug=tenancy.slug)
    request_ids = {outcome.request_id for outcome in admitted}
    assert len(request_ids) == RPM

    # Settlement: every admitted request settled once, nothing is still held.
    _eventually(lambda: UsageRecord.objects.filter(organization=org).count() >= RPM
                and not Reservation.objects.filter(account=tenancy.account,
                                                   status=Reservation.Status.OPEN).exists(),
                what="every admitted request to settle", topology=topology)
    records = list(UsageRecord.objects.filter(organization=org))
    assert {record.request_id for record in records} == request_ids  # one record per admission
    assert all(record.status == UsageRecord.Status.OK for record in records)
    assert sum(record.streamed for record in records) == sum(o.streamed for o in admitted)

    # Money: each charge is the pricing function of the record's usage, as the client was told;
    # the balance is the initial credits less those charges, and the sum of the ledger.
    charged = {outcome.request_id: outcome.credits_used for outcome in admitted}
    for record in records:
        price = price_request(multiplier=record.multiplier, prompt_tokens=record.prompt_tokens,
                              completion_tokens=record.completion_tokens)
        assert record.credits == price.total == charged[record.request_id] > 0, record.request_id
    spent = sum(record.credits for record in records)
    account = CreditAccount.objects.get(pk=tenancy.account.pk)
    ledger = LedgerEntry.objects.filter(account=account)
    usage_entries = {entry.request_id: -entry.amount
                     for entry in ledger.filter(kind=LedgerEntry.Kind.USAGE)}
    assert usage_entries == {record.request_id: record.credits for record in records}
    assert account.balance == INITIAL_CREDITS - spent == ledger.aggregate(s=Sum("amount"))["s"]
    assert account.reserved == 0
    assert set(Reservation.objects.filter(account=account).values_list("status", flat=True)) == {
        Reservation.Status.SETTLED}

    # Rollups, by the worker on beat's schedule: the totals of the raw records, per hour and day.
    expected = {"requests": len(records),
                "prompt_tokens": sum(record.prompt_tokens for record in records),
                "completion_tokens": sum(record.completion_tokens for record in records),
                "credits": spent}
    _eventually(lambda: _rollup_totals(org, UsageRollup.Granularity.HOUR) == expected
                and _rollup_totals(org, UsageRollup.Granularity.DAY) == expected,
                what=f"the rollups to reach {expected}", topology=topology)
    return {"admitted": len(admitted), "refused": len(outcomes) - len(admitted),
            "balance": account.balance, **expected}


def test_two_web_processes_and_an_inference_process_account_exactly_as_one_web_process(
    procfile_topology: Topology,
):
    topology = procfile_topology
    both, one = _tenancies(topology, "topo-both", "topo-one")

    across_all = _run_and_account(topology, both,
                                  [*topology.web_ports, topology.inference_port])
    through_one = _run_and_account(topology, one, topology.web_ports[:1])

    assert across_all == through_one
    # The inference process serves the inference API only: not the management API nor the
    # portal, which the web processes serve.
    for path in ("/api/v1/keys", "/portal/"):
        on_inference = httpx.get(f"http://127.0.0.1:{topology.inference_port}{path}", timeout=10,
                                 follow_redirects=False)
        on_web = httpx.get(f"http://127.0.0.1:{topology.web_ports[0]}{path}", timeout=10,
                           follow_redirects=False)
        assert on_inference.status_code == 404, path
        assert on_web.status_code != 404, (path, on_web.status_code)
    # The rollups came from beat's schedule through the broker to the worker: beat sent the task
    # and the worker ran it; the web processes run no schedule (IN_PROCESS_BEAT=0).
    beat_log = topology.process("beat.1").output()
    worker_log = topology.process("worker.1").output()
    assert "Sending due task usage-rollup (completions.tasks.usage_rollup_task)" in beat_log
    assert "completions.tasks.usage_rollup_task" in worker_log and " succeeded in " in worker_log
    # Every process was still up, and each stops cleanly on SIGTERM within the grace period.
    topology.check_running()
    statuses = topology.stop()
    assert all(status in (0, -signal.SIGTERM) for status in statuses.values()), statuses
