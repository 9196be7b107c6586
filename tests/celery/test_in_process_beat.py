"""Given no broker (the embedded default), the web process runs the periodic jobs itself."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from decimal import Decimal

import pytest
from asgiref.sync import sync_to_async
from django.utils import timezone

from billing.models import Reservation
from billing.services import credits_reserve
from completions.models import UsageRecord, UsageRollup
from novakit import scheduler


@pytest.mark.django_db(transaction=True)
async def test_the_in_process_beat_rolls_up_usage_and_expires_reservations(
    tenant_factory, settings
):
    settings.CELERY_TASK_ALWAYS_EAGER = True
    tenant = await sync_to_async(tenant_factory)("beat")
    now = timezone.now()
    await UsageRecord.objects.acreate(
        request_id="r1", organization=tenant.org, api_key=tenant.key, model="m", credits=4,
        multiplier=Decimal("1"), status="ok", started_at=now, created_at=now,
    )
    await sync_to_async(credits_reserve)(
        organization_id=tenant.org.pk, api_key_id=tenant.key.pk, request_id="stale",
        amount=50, tokens=10, now=now - dt.timedelta(hours=2),
    )
    stop = asyncio.Event()

    runner = asyncio.create_task(scheduler.run_forever(stop, tick=0.05))
    for _ in range(200):
        if await UsageRollup.objects.filter(granularity="day").aexists() and await (
            Reservation.objects.filter(request_id="stale", status="expired").aexists()
        ):
            break
        await asyncio.sleep(0.05)
    stop.set()
    await asyncio.wait_for(runner, 10)

    day = await UsageRollup.objects.aget(granularity="day")
    assert (day.requests, day.credits) == (1, 4)
    assert (await Reservation.objects.aget(request_id="stale")).status == "expired"


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.mark.django_db
def test_a_job_that_succeeds_logs_nothing_and_one_that_fails_is_logged(settings):
    """Without the quietening, the webhook retry job's success is a line every 5 s."""
    from novakit.celery import app

    settings.CELERY_TASK_ALWAYS_EAGER = True
    scheduler._tasks_loaded()  # Celery sets up its logging here: listen after it
    records = _Records()
    root = logging.getLogger()
    root.addHandler(records)
    old_level = root.level
    root.setLevel(logging.INFO)
    try:
        scheduler._run_task("accounts.tasks.webhook_retries_due_task")
        assert [r.name for r in records.records] == []

        @app.task(name="tests.in_process_beat.failing")
        def failing() -> None:
            raise RuntimeError("the job broke")

        scheduler._run_task("tests.in_process_beat.failing")
    finally:
        root.removeHandler(records)
        root.setLevel(old_level)
    failures = [r for r in records.records if r.name == "novakit.scheduler"]
    assert len(failures) == 1
    assert "tests.in_process_beat.failing failed" in failures[0].getMessage()
