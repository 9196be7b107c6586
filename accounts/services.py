"""Writes to organizations, members and API keys. Each leaves an audit row."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from django.db import IntegrityError, transaction
from django.utils import timezone
from django.utils.text import slugify

from accounts import keys
from accounts.models import APIKey, AuditEvent, Membership, Organization
from accounts.scopes import DEFAULT_SCOPES, parse_scopes


def audit_record(
    *,
    action: str,
    actor: AbstractBaseUser | None = None,
    actor_label: str = "",
    organization: Organization | None = None,
    organization_id: int | None = None,
    target: str = "",
    before: dict[str, Any] | None = None,
    after: dict[str, Any] | None = None,
    reason: str = "",
) -> AuditEvent:
    return AuditEvent.objects.create(
        action=action,
        actor=actor if actor is not None and actor.is_authenticated else None,
        actor_label=actor_label,
        organization_id=organization.pk if organization is not None else organization_id,
        target=target,
        before=before,
        after=after,
        reason=reason,
    )


@transaction.atomic
def organization_create(
    *, slug: str, name: str = "", actor: AbstractBaseUser | None = None, actor_label: str = ""
) -> Organization:
    slug = slugify(slug)
    if not slug:
        raise ValueError("an organization needs a slug of letters, digits, - or _")
    organization = Organization.objects.create(slug=slug, name=name or slug)
    audit_record(
        action="organization.create",
        actor=actor,
        actor_label=actor_label,
        organization=organization,
        target=slug,
        after={"name": organization.name},
    )
    return organization


@transaction.atomic
def organization_set_active(
    *,
    organization: Organization,
    active: bool,
    reason: str,
    actor: AbstractBaseUser | None = None,
    actor_label: str = "",
) -> None:
    before = {"is_active": organization.is_active, "suspended_reason": organization.suspended_reason}
    organization.is_active = active
    organization.suspended_reason = "" if active else reason
    organization.save(update_fields=["is_active", "suspended_reason"])
    audit_record(
        action="organization.activate" if active else "organization.suspend",
        actor=actor,
        actor_label=actor_label,
        organization=organization,
        target=organization.slug,
        before=before,
        after={"is_active": active, "suspended_reason": organization.suspended_reason},
        reason=reason,
    )


@transaction.atomic
def membership_add(
    *, organization: Organization, user: AbstractBaseUser, role: str = Membership.Role.DEVELOPER
) -> Membership:
    membership, _ = Membership.objects.update_or_create(
        organization=organization, user=user, defaults={"role": role}
    )
    return membership


@transaction.atomic
def api_key_create(
    *,
    organization: Organization,
    name: str = "default",
    scopes: Iterable[str] = DEFAULT_SCOPES,
    allowed_models: Iterable[str] = (),
    requests_per_minute: int | None = None,
    tokens_per_minute: int | None = None,
    max_concurrent_requests: int | None = None,
    expires_at: datetime | None = None,
    created_by: AbstractBaseUser | None = None,
    actor_label: str = "",
) -> tuple[APIKey, str]:
    """Create a key and return it with its secret. The secret exists only in the return value."""
    clean_scopes = parse_scopes(list(scopes))
    for _ in range(5):
        secret = keys.generate_secret()
        try:
            with transaction.atomic():
                key = APIKey.objects.create(
                    organization=organization,
                    name=name,
                    prefix=keys.visible_prefix(secret),
                    key_hash=keys.hash_secret(secret),
                    scopes=clean_scopes,
                    allowed_models=sorted(set(allowed_models)),
                    requests_per_minute=requests_per_minute,
                    tokens_per_minute=tokens_per_minute,
                    max_concurrent_requests=max_concurrent_requests,
                    expires_at=expires_at,
                    created_by=created_by if created_by and created_by.is_authenticated else None,
                )
            break
        except IntegrityError:  # a prefix collision: 54 random bits, so vanishingly rare
            continue
    else:  # pragma: no cover - would need five collisions in a row
        raise RuntimeError("could not generate a unique API key prefix")
    audit_record(
        action="api_key.create",
        actor=created_by,
        actor_label=actor_label,
        organization=organization,
        target=key.prefix,
        after={"name": name, "scopes": clean_scopes},
    )
    return key, secret


@transaction.atomic
def api_key_revoke(
    *,
    key: APIKey,
    actor: AbstractBaseUser | None = None,
    actor_label: str = "",
    reason: str = "",
    at: datetime | None = None,
) -> bool:
    """Revoke a key (now, or at a later time for a rotation's grace period).

    Returns False when the key was already revoked by then. The conditional
    update makes two concurrent revocations leave one audit row, not two.
    """
    when = at or timezone.now()
    updated = APIKey.objects.filter(pk=key.pk, revoked_at__isnull=True).update(revoked_at=when)
    if updated != 1:
        return False
    key.revoked_at = when
    audit_record(
        action="api_key.revoke",
        actor=actor,
        actor_label=actor_label,
        organization=key.organization,
        target=key.prefix,
        after={"revoked_at": when.isoformat()},
        reason=reason,
    )
    return True
