"""Given no broker (the embedded default), the web process runs the periodic jobs itself."""

from __future__ import annotations

import asyncio
import datetime as dt
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
