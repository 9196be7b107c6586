"""Usage records as the gateway writes them at settlement, for the usage pages and API."""

from __future__ import annotations

import datetime as dt
import itertools
from decimal import Decimal

from django.utils import timezone

from accounts.models import APIKey
from completions.models import UsageRecord
from tests.conftest import Tenant

_ids = itertools.count(1)


def usage_record(tenant: Tenant, *, model: str = "openai/gpt-4o-mini", credits: int = 10,
                 prompt_tokens: int = 20, completion_tokens: int = 30, status: str = "ok",
                 key: APIKey | None = None, started_at: dt.datetime | None = None
                 ) -> UsageRecord:
    started = started_at or timezone.now()
    return UsageRecord.objects.create(
        request_id=f"chatcmpl-test-{next(_ids)}", organization=tenant.org,
        api_key=key or tenant.key, model=model, multiplier=Decimal("1"),
        prompt_tokens=prompt_tokens, completion_tokens=completion_tokens, credits=credits,
        status=status, http_status=200 if status == "ok" else 502, started_at=started,
        created_at=started,
    )
