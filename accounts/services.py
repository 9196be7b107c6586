"""Writes to organizations, members and API keys. Each leaves an audit row."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from django.db import IntegrityError, transaction
from django.utils import timezone
from django.utils.text import slugify

from accounts import keys
from accounts.auth import key_cache_invalidate
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
    before = {
        "is_active": organization.is_active,
        "suspended_reason": organization.suspended_reason,
    }
    organization.is_active = active
    organization.suspended_reason = "" if active else reason
    organization.save(update_fields=["is_active", "suspended_reason"])
    # Every process drops its cached key lookups once this commits (accounts/auth.py).
    transaction.on_commit(key_cache_invalidate)
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
    transaction.on_commit(key_cache_invalidate)
    audit_record(
        action="api_key.revoke",
        actor=actor,
        actor_label=actor_label,
        organization=key.organization,
        target=key.prefix,
        after={"revoked_at": when.isoformat()},
        reason=reason,
    )
    from accounts.webhooks import webhook_emit

    webhook_emit(
        organization_id=key.organization_id, event="key.revoked",
        event_key=f"key.revoked:{key.pk}",
        data={"key_id": key.pk, "key_prefix": key.prefix, "name": key.name,
              "revoked_at": when.isoformat(), "reason": reason},
    )
    return True


# Fields of a key its owners may change after creation (the secret never changes:
# rotating makes a new key).
API_KEY_EDITABLE_FIELDS = (
    "name", "scopes", "allowed_models", "requests_per_minute", "tokens_per_minute",
    "max_concurrent_requests", "expires_at",
)


def _key_settings(key: APIKey) -> dict[str, Any]:
    values = {name: getattr(key, name) for name in API_KEY_EDITABLE_FIELDS}
    if values["expires_at"] is not None:
        values["expires_at"] = values["expires_at"].isoformat()
    return values


def api_key_check_changeable(key: APIKey) -> None:
    """A revoked key, or a rotated one (its settings went to the key that replaced it), keeps
    the settings it ended with: ValueError."""
    if key.revoked_at is not None:
        raise ValueError("a revoked or rotated key cannot be changed")


@transaction.atomic
def api_key_update(
    *,
    key: APIKey,
    changes: dict[str, Any],
    actor: AbstractBaseUser | None = None,
    actor_label: str = "",
) -> APIKey:
    unknown = set(changes) - set(API_KEY_EDITABLE_FIELDS)
    if unknown:
        raise ValueError(f"cannot change {', '.join(sorted(unknown))}")
    api_key_check_changeable(key)
    if "scopes" in changes:
        changes = {**changes, "scopes": parse_scopes(changes["scopes"])}
    if "allowed_models" in changes:
        changes = {**changes, "allowed_models": sorted(set(changes["allowed_models"] or ()))}
    before = _key_settings(key)
    for name, value in changes.items():
        setattr(key, name, value)
    key.save(update_fields=list(changes))
    transaction.on_commit(key_cache_invalidate)
    audit_record(
        action="api_key.update", actor=actor, actor_label=actor_label,
        organization_id=key.organization_id, target=key.prefix, before=before,
        after=_key_settings(key),
    )
    return key


@transaction.atomic
def api_key_rotate(
    *,
    key: APIKey,
    grace_seconds: int,
    actor: AbstractBaseUser | None = None,
    actor_label: str = "",
) -> tuple[APIKey, str]:
    """A new key with the same settings; the old one works `grace_seconds` more, then stops."""
    if grace_seconds < 0:
        raise ValueError("the grace period cannot be negative")
    if key.revoked_at is not None:
        raise ValueError("a revoked key cannot be rotated")
    new_key, secret = api_key_create(
        organization=key.organization,
        name=key.name,
        scopes=key.scopes,
        allowed_models=key.allowed_models,
        requests_per_minute=key.requests_per_minute,
        tokens_per_minute=key.tokens_per_minute,
        max_concurrent_requests=key.max_concurrent_requests,
        expires_at=key.expires_at,
        created_by=actor,
        actor_label=actor_label,
    )
    api_key_revoke(
        key=key, actor=actor, actor_label=actor_label,
        reason=f"rotated to {new_key.prefix}; grace {grace_seconds}s",
        at=timezone.now() + timedelta(seconds=grace_seconds),
    )
    return new_key, secret


@transaction.atomic
def membership_set_role(
    *, membership: Membership, role: str, actor: AbstractBaseUser | None = None
) -> Membership:
    if role not in Membership.Role.values:
        raise ValueError(f"unknown role '{role}'")
    _keep_an_owner(membership, new_role=role)
    before = {"role": membership.role}
    membership.role = role
    membership.save(update_fields=["role"])
    audit_record(
        action="membership.role", actor=actor, organization_id=membership.organization_id,
        target=str(membership.user), before=before, after={"role": role},
    )
    return membership


@transaction.atomic
def membership_remove(*, membership: Membership, actor: AbstractBaseUser | None = None) -> None:
    _keep_an_owner(membership, new_role=None)
    audit_record(
        action="membership.remove", actor=actor, organization_id=membership.organization_id,
        target=str(membership.user), before={"role": membership.role},
    )
    membership.delete()


def _keep_an_owner(membership: Membership, *, new_role: str | None) -> None:
    """An organization must keep at least one owner, or nobody could manage it."""
    if membership.role != Membership.Role.OWNER or new_role == Membership.Role.OWNER:
        return
    owners = Membership.objects.select_for_update().filter(
        organization_id=membership.organization_id, role=Membership.Role.OWNER
    )
    if owners.count() <= 1:
        raise ValueError("an organization needs at least one owner")


@transaction.atomic
def membership_invite(
    *,
    organization: Organization,
    email: str,
    role: str,
    actor: AbstractBaseUser | None = None,
) -> tuple[Membership, bool]:
    """Add a person by email; a new person gets an account without a password.

    Returns the membership and whether the user is new (the caller sends the
    set-your-password email after commit).
    """
    from django.contrib.auth import get_user_model

    if role not in Membership.Role.values:
        raise ValueError(f"unknown role '{role}'")
    email = email.strip().lower()
    user_model = get_user_model()
    user = user_model.objects.filter(email__iexact=email).first()
    created = user is None
    if user is None:
        user = user_model.objects.create_user(username=email, email=email)
        user.set_unusable_password()
        user.save(update_fields=["password"])
    if Membership.objects.filter(organization=organization, user=user).exists():
        raise ValueError(f"{email} is already a member")
    membership = Membership.objects.create(organization=organization, user=user, role=role)
    audit_record(
        action="membership.invite", actor=actor, organization=organization, target=email,
        after={"role": role},
    )
    return membership, created


def api_keys_expiring_notify(*, now: datetime | None = None) -> int:
    """Emit `key.expiring` once for each live key that expires within seven days."""
    from accounts.webhooks import webhook_emit

    now = now or timezone.now()
    soon = APIKey.objects.filter(
        revoked_at__isnull=True, expires_at__gt=now, expires_at__lte=now + timedelta(days=7)
    )
    emitted = 0
    for key in soon.order_by("expires_at")[:1000]:
        assert key.expires_at is not None
        with transaction.atomic():
            emitted += len(webhook_emit(
                organization_id=key.organization_id, event="key.expiring",
                event_key=f"key.expiring:{key.pk}:{key.expires_at.isoformat()}",
                data={"key_id": key.pk, "key_prefix": key.prefix, "name": key.name,
                      "expires_at": key.expires_at.isoformat()},
            ))
    return emitted
