"""`Idempotency-Key` for chat completions: run once, answer every retry from the stored answer.

Rules (README "Idempotent retries"):
- the first request with a key runs; its answer (a 2xx, or a 4xx that would
  not change on retry) is stored for IDEMPOTENCY_TTL_SECONDS (24 h);
- a repeat with the same key and the same body gets the stored answer, with
  `Idempotent-Replayed: true`, and is not charged again;
- the same key with a different body: 422; while the first is still running: 409;
- a failure that a retry could fix (5xx, 429, a stream cut short) is not
  stored: the next attempt runs, and the failed one was not charged for an
  answer it did not give;
- keys belong to the organization: two organizations may use the same key.
Streaming requests follow the same rules; a completed stream is replayed as
the same SSE bytes it sent.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from dataclasses import dataclass

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone

from completions.models import IdempotentRequest
from novakit.errors import ApiError, invalid_request

_KEY = re.compile(r"^[\x21-\x7e]{1,255}$")
# 4xx answers that depend only on the request, so a retry would get the same
# (not 402 or 403: credits, quotas and permissions can change before a retry).
_STORABLE_CLIENT_ERRORS = {400, 404, 422}
# A stream bigger than this is passed on but not stored (its retry runs again).
MAX_STORED_BYTES = 2 * 1024 * 1024
# A record still "running" after this long belongs to a process that died.
_STALE_RUNNING = dt.timedelta(minutes=15)


@dataclass(frozen=True, slots=True)
class Stored:
    status: int
    headers: dict[str, str]
    body: bytes
    streamed: bool


def fingerprint(body: bytes, *, stream: bool) -> str:
    return hashlib.sha256(body + (b"\x00stream" if stream else b"")).hexdigest()


def parse_key(raw: str | None) -> str | None:
    if raw is None:
        return None
    if not _KEY.match(raw):
        raise invalid_request("Idempotency-Key must be 1 to 255 printable ASCII characters",
                              param="Idempotency-Key")
    return raw


@transaction.atomic
def idempotency_claim(*, organization_id: int, key: str, fingerprint: str,
                      streamed: bool) -> Stored | None:
    """Claim the key for this request, or return the stored answer of an earlier one.

    Raises 409 while an earlier request with the key runs, 422 if it had another body.
    """
    now = timezone.now()
    # Forget an expired answer or an abandoned claim first, so its key can be reused.
    IdempotentRequest.objects.filter(
        Q(expires_at__lte=now)
        | Q(status=IdempotentRequest.Status.RUNNING, created_at__lte=now - _STALE_RUNNING),
        organization_id=organization_id, key=key,
    ).delete()
    try:
        with transaction.atomic():
            IdempotentRequest.objects.create(
                organization_id=organization_id, key=key, fingerprint=fingerprint,
                streamed=streamed,
                expires_at=now + dt.timedelta(seconds=settings.IDEMPOTENCY_TTL_SECONDS),
            )
        return None
    except IntegrityError:
        pass
    earlier = IdempotentRequest.objects.get(organization_id=organization_id, key=key)
    if earlier.fingerprint != fingerprint:
        raise ApiError("idempotency_key_reused",
                       "This Idempotency-Key was used with a different request body",
                       param="Idempotency-Key")
    if earlier.status == IdempotentRequest.Status.RUNNING:
        raise ApiError("idempotency_conflict",
                       "A request with this Idempotency-Key is still running; retry later",
                       param="Idempotency-Key", headers={"Retry-After": "1"})
    return Stored(status=earlier.response_status or 200, headers=earlier.response_headers,
                  body=bytes(earlier.response_body), streamed=earlier.streamed)


def storable(status: int) -> bool:
    return 200 <= status < 300 or status in _STORABLE_CLIENT_ERRORS


def idempotency_complete(*, organization_id: int, key: str, status: int,
                         headers: dict[str, str], body: bytes, request_id: str = "") -> None:
    """Store the answer, or free the key when the answer is one a retry could improve."""
    claim = IdempotentRequest.objects.filter(organization_id=organization_id, key=key,
                                             status=IdempotentRequest.Status.RUNNING)
    if not storable(status):
        claim.delete()
        return
    claim.update(status=IdempotentRequest.Status.COMPLETED, response_status=status,
                 response_headers=headers, response_body=body, request_id=request_id)


def idempotency_abandon(*, organization_id: int, key: str) -> None:
    IdempotentRequest.objects.filter(organization_id=organization_id, key=key,
                                     status=IdempotentRequest.Status.RUNNING).delete()


def idempotency_purge(*, now: dt.datetime | None = None) -> int:
    return IdempotentRequest.objects.filter(expires_at__lte=now or timezone.now()).delete()[0]
