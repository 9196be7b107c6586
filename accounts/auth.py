"""API key authentication for the async inference API and the management API.

A key's lookup is cached in the process for `API_KEY_CACHE_SECONDS` (5 by
default), so a hot key costs no database query per request.

How fast a revocation or a suspension reaches every process:

- With Redis: at once. `api_key_revoke`, `api_key_update` and
  `organization_set_active` (accounts/services.py) call
  `key_cache_invalidate` when their transaction commits, which bumps one
  counter in Redis (the key cache's epoch). Every authentication reads that
  counter (one GET) and trusts a cached lookup only if it was made under the
  current epoch, so the next request in any process reads the key again. The
  epoch is read *before* the database, so a lookup that raced a revocation is
  filed under the old epoch and thrown away. On the event loop, requests
  arriving together share one GET, each one a GET that began after it
  arrived (novakit/runtime/batching.py), so none can miss a bump made before it came.
- Without Redis, or while Redis is unreachable (the bump or the read fails),
  and for changes made around those services (a raw ORM update, the admin's
  plain edit form): within `API_KEY_CACHE_SECONDS`, which always applies.

Expiry is checked on every request against the cached expiry time, so an
expired key is refused at once.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from types import MappingProxyType
from typing import Any

from django.conf import settings
from django.utils import timezone

from accounts import keys
from accounts.models import APIKey
from novakit.errors import ApiError, forbidden, unauthorized
from novakit.runtime import redis as shared_redis
from novakit.runtime.batching import Batch, Batches, resolve
from novakit.runtime.db import db_async

LAST_USED_RESOLUTION = timedelta(minutes=1)
_CACHE_MAX_ENTRIES = 10_000


@dataclass(frozen=True, slots=True)
class KeyContext:
    """What the request path needs to know about the caller, without ORM objects."""

    key_id: int
    key_prefix: str
    organization_id: int
    organization_slug: str
    organization_active: bool
    scopes: frozenset[str]
    allowed_models: frozenset[str]
    requests_per_minute: int | None
    tokens_per_minute: int | None
    max_concurrent_requests: int | None
    org_requests_per_minute: int | None
    org_tokens_per_minute: int | None
    expires_at: datetime | None
    revoked_at: datetime | None
    # What other apps keep with the key's context, read with it (`context_extras`).
    extras: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))

    def allows_model(self, model_id: str) -> bool:
        return not self.allowed_models or model_id in self.allowed_models


# What the apps built on accounts keep with a key's cached context, read with the key:
# name -> loader(organization id, key id). Billing keeps the credit account and quotas a
# key's reservations hold against (billing/apps.py), so a hot key needs no query for them;
# quota changes invalidate the cache (billing/signals.py).
context_extras: dict[str, Callable[[int, int], Any]] = {}

# key hash -> (context, monotonic time it was read, key cache epoch it was read under)
_cache: dict[str, tuple[KeyContext, float, int | None]] = {}
# key id -> when this process last wrote last_used_at
_last_used_written: dict[int, datetime] = {}


def cache_clear() -> None:
    _cache.clear()
    _last_used_written.clear()


def _load_context(key_hash: str, prefix: str) -> KeyContext | None:
    row = (
        APIKey.objects.select_related("organization")
        .filter(prefix=prefix)
        .only(
            "id", "prefix", "key_hash", "scopes", "allowed_models", "requests_per_minute",
            "tokens_per_minute", "max_concurrent_requests", "expires_at", "revoked_at",
            "organization__id", "organization__slug", "organization__is_active",
            "organization__requests_per_minute", "organization__tokens_per_minute",
        )
        .first()
    )
    # Compare the full hash in constant time: finding the row by prefix alone
    # proves nothing.
    if row is None or not keys.matches_hash(key_hash, row.key_hash):
        return None
    org = row.organization
    return KeyContext(
        key_id=row.id,
        key_prefix=row.prefix,
        organization_id=org.id,
        organization_slug=org.slug,
        organization_active=org.is_active,
        scopes=frozenset(row.scopes),
        allowed_models=frozenset(row.allowed_models or ()),
        requests_per_minute=row.requests_per_minute,
        tokens_per_minute=row.tokens_per_minute,
        max_concurrent_requests=row.max_concurrent_requests,
        org_requests_per_minute=org.requests_per_minute,
        org_tokens_per_minute=org.tokens_per_minute,
        expires_at=row.expires_at,
        revoked_at=row.revoked_at,
        extras=MappingProxyType({name: load(org.id, row.id)
                                 for name, load in context_extras.items()}),
    )


def parse_bearer(header: str | None) -> str:
    """The secret from an `Authorization: Bearer sk_...` header, or 401."""
    if not header:
        raise unauthorized("Missing API key: send 'Authorization: Bearer sk_...'")
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise unauthorized("Malformed Authorization header: expected 'Bearer sk_...'")
    if not keys.looks_like_secret(token):
        raise unauthorized("Invalid API key")
    return token


def _check(context: KeyContext | None, scope: str | None) -> KeyContext:
    now = timezone.now()
    if context is None:
        raise unauthorized("Invalid API key")
    if context.revoked_at is not None and context.revoked_at <= now:
        raise unauthorized("This API key has been revoked")
    if context.expires_at is not None and context.expires_at <= now:
        raise unauthorized("This API key has expired")
    if not context.organization_active:
        raise forbidden("This organization is suspended")
    if scope is not None and scope not in context.scopes:
        raise forbidden(f"This API key lacks the '{scope}' scope")
    return context


def _epoch_key() -> str:
    return shared_redis.key("auth", "epoch")


async def _aepoch() -> int | None:
    """The key cache's epoch in Redis; None without Redis or when it does not answer.

    One read for the requests waiting at the same time (see the module docstring).
    """
    return await _epoch_reads.submit(None)


async def _read_epoch(batch: Batch[None, int | None]) -> None:
    epoch = await _aepoch_now()
    for _, future in batch:
        resolve(future, epoch)


async def _aepoch_now() -> int | None:
    client = shared_redis.async_client()
    if client is None:
        return None
    try:
        value = await client.get(_epoch_key())
    except shared_redis.ERRORS as exc:
        shared_redis.failed("key_cache", exc)
        return None
    return int(value or 0)


# Everyone waiting shares the read: it costs the same for one or for all of them.
_epoch_reads: Batches[None, int | None] = Batches(_read_epoch, max_size=1_000_000)


def _epoch() -> int | None:
    client = shared_redis.sync_client()
    if client is None:
        return None
    try:
        value = client.get(_epoch_key())
    except shared_redis.ERRORS as exc:
        shared_redis.failed("key_cache", exc)
        return None
    return int(value or 0)


def key_cache_invalidate() -> None:
    """Make every process read keys again: run when a revocation or suspension commits."""
    _cache.clear()
    client = shared_redis.sync_client()
    if client is None:
        return
    try:
        client.incr(_epoch_key())
    except shared_redis.ERRORS as exc:
        # Other processes still see the change within API_KEY_CACHE_SECONDS.
        shared_redis.failed("key_cache", exc)


def _cached(key_hash: str, epoch: int | None) -> KeyContext | None:
    entry = _cache.get(key_hash)
    if entry is None:
        return None
    context, read_at, read_epoch = entry
    stale = epoch is not None and read_epoch != epoch
    if stale or time.monotonic() - read_at > settings.API_KEY_CACHE_SECONDS:
        _cache.pop(key_hash, None)
        return None
    return context


def _remember(key_hash: str, context: KeyContext, epoch: int | None) -> None:
    if len(_cache) >= _CACHE_MAX_ENTRIES:
        _cache.clear()
    _cache[key_hash] = (context, time.monotonic(), epoch)


def _touch_due(context: KeyContext) -> bool:
    now = timezone.now()
    last = _last_used_written.get(context.key_id)
    if last is not None and now - last < LAST_USED_RESOLUTION:
        return False
    _last_used_written[context.key_id] = now
    return True


def _touch(key_id: int) -> None:
    # Conditional: several processes share the minute, one of them writes.
    now = timezone.now()
    APIKey.objects.filter(pk=key_id).exclude(last_used_at__gt=now - LAST_USED_RESOLUTION).update(
        last_used_at=now
    )


def _lookup(key_hash: str, prefix: str) -> KeyContext | None:
    """A key's context through the process cache (synchronous callers)."""
    epoch = _epoch()  # before the database: see the module docstring
    context = _cached(key_hash, epoch)
    if context is None:
        context = _load_context(key_hash, prefix)
        if context is not None:
            _remember(key_hash, context, epoch)
    return context


def key_context(key: APIKey) -> KeyContext | None:
    """A stored key as the gateway sees it, cached like an authentication: for a key whose
    secret nobody holds (the portal playground's, used through a member's session)."""
    return _lookup(key.key_hash, key.prefix)


def authenticate_secret(secret: str, *, scope: str | None) -> KeyContext:
    """Synchronous authentication (management API, commands)."""
    context = _check(_lookup(keys.hash_secret(secret), keys.visible_prefix(secret)), scope)
    if _touch_due(context):
        _touch(context.key_id)
    return context


async def aauthenticate(authorization: str | None, *, scope: str | None) -> KeyContext:
    """Authenticate a request's Authorization header from async code."""
    secret = parse_bearer(authorization)
    key_hash = keys.hash_secret(secret)
    epoch = await _aepoch()  # before the database: see the module docstring
    context = _cached(key_hash, epoch)
    if context is None:
        context = await db_async(_load_context)(key_hash, keys.visible_prefix(secret))
        if context is not None:
            _remember(key_hash, context, epoch)
    context = _check(context, scope)
    if _touch_due(context):
        await db_async(_touch)(context.key_id)
    return context


__all__ = [
    "ApiError", "KeyContext", "aauthenticate", "authenticate_secret", "key_cache_invalidate",
    "key_context",
    "parse_bearer",
]
