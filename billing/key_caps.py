"""API keys with their credit caps: what the portal's keys page and the management API share.

A key's monthly credit cap is a billing quota of its own (`key_credit_cap_set`),
so writing a key together with its cap is billing's job, one layer above the
keys themselves (accounts.services). Each function here is one transaction:
the key and its cap (or its copied quotas) commit together or not at all, and
both entry points make the same audit rows.
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction

from accounts.models import APIKey, Organization
from accounts.services import (
    api_key_check_changeable,
    api_key_create,
    api_key_rotate,
    api_key_update,
)
from billing.models import Quota
from billing.services import key_credit_cap_set, key_quotas_copy
from novakit.inputs import column_bounds

# What a credit cap may be: what its quota's column holds (the form and the serializer say so).
CREDIT_CAP_BOUNDS = column_bounds(Quota, "limit", minimum=0)


@transaction.atomic
def api_key_create_with_cap(
    *,
    organization: Organization,
    credit_cap: int | None = None,
    created_by: AbstractBaseUser | None = None,
    actor_label: str = "",
    **settings: Any,
) -> tuple[APIKey, str]:
    """`api_key_create` (its `settings` as it takes them), and the key's credit cap if given."""
    key, secret = api_key_create(organization=organization, created_by=created_by,
                                 actor_label=actor_label, **settings)
    if credit_cap is not None:
        key_credit_cap_set(key=key, limit=credit_cap, actor=created_by, actor_label=actor_label)
    return key, secret


@transaction.atomic
def api_key_update_with_cap(
    *,
    key: APIKey,
    changes: dict[str, Any],
    actor: AbstractBaseUser | None = None,
    actor_label: str = "",
) -> APIKey:
    """`api_key_update`'s changes, where a "credit_cap" change sets (None: removes) the cap."""
    api_key_check_changeable(key)
    changes = dict(changes)
    has_cap = "credit_cap" in changes
    credit_cap = changes.pop("credit_cap", None)
    if changes:
        api_key_update(key=key, changes=changes, actor=actor, actor_label=actor_label)
    if has_cap:
        key_credit_cap_set(key=key, limit=credit_cap, actor=actor, actor_label=actor_label)
    return key


@transaction.atomic
def api_key_rotate_with_quotas(
    *,
    key: APIKey,
    grace_seconds: int,
    actor: AbstractBaseUser | None = None,
    actor_label: str = "",
) -> tuple[APIKey, str]:
    """`api_key_rotate`, and the new key keeps the old one's own quotas (its credit cap).

    Raises ValueError as `api_key_rotate` does (a revoked key, a negative grace period).
    """
    new_key, secret = api_key_rotate(key=key, grace_seconds=grace_seconds, actor=actor,
                                     actor_label=actor_label)
    key_quotas_copy(old=key, new=new_key, actor=actor, actor_label=actor_label)
    return new_key, secret
