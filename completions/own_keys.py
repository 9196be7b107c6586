"""Bring your own key: an organization's own provider keys, used only for its requests.

A request of the organization tries its own keys for a route's provider first
(by weight, with the same cooldowns as the platform's, completions.routing),
then the platform's keys, so a rate-limited own key does not fail the
request; the receipt says whose key served it, and only a request served by
its own key is charged the BYOK fee (billing.pricing.byok_fee) instead of the
price. A key is encrypted at rest and never shown again; adding and removing
are audited. Other gateway processes see a change within
CATALOG_CACHE_SECONDS (their catalog snapshot).
"""

from __future__ import annotations

from django.contrib.auth.models import AbstractBaseUser
from django.db import IntegrityError, transaction
from django.db.models import QuerySet

from accounts.models import Organization
from accounts.services import audit_record
from completions.catalog import catalog_cache
from completions.models import Provider, ProviderKey


class OwnKeyRefused(ValueError):
    """The key cannot be added; the message says why."""


def providers_for_own_keys() -> QuerySet[Provider]:
    """The providers an organization may bring its own key for."""
    return Provider.objects.filter(is_active=True).exclude(kind=Provider.Kind.BUILTIN).order_by(
        "name")


def own_key_add(*, organization: Organization, provider: Provider, label: str, secret: str,
                actor: AbstractBaseUser | None) -> ProviderKey:
    label, secret = label.strip(), secret.strip()
    if not label or not secret:
        raise OwnKeyRefused("A key needs a label and its secret.")
    key = ProviderKey(provider=provider, organization=organization, label=label)
    key.set_api_key(secret)
    try:
        with transaction.atomic():
            key.save()
            audit_record(action="provider_key.own.add", actor=actor, organization=organization,
                         target=f"provider key {key.pk}",
                         after={"provider": provider.slug, "label": label})
    except IntegrityError:
        raise OwnKeyRefused(
            f"A key labelled '{label}' for {provider.name} exists already.") from None
    transaction.on_commit(catalog_cache.clear)
    return key


def own_key_remove(*, key: ProviderKey, actor: AbstractBaseUser | None) -> None:
    with transaction.atomic():
        audit_record(action="provider_key.own.remove", actor=actor,
                     organization_id=key.organization_id, target=f"provider key {key.pk}",
                     before={"provider": key.provider.slug, "label": key.label})
        key.delete()
    transaction.on_commit(catalog_cache.clear)
