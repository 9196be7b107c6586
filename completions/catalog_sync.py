"""Keeping the catalog in step with a provider's own model list (OpenRouter's `/models` format)."""

from __future__ import annotations

import logging
from decimal import Decimal, InvalidOperation
from typing import Any

import httpx
from django.conf import settings
from django.db import transaction

from accounts.models import AuditEvent, Organization
from accounts.services import audit_record
from accounts.webhooks import webhook_emit
from billing.tiers import tier_for_price
from completions.catalog import catalog_cache, provider_endpoint
from completions.margins import uncovered_models
from completions.models import CatalogModel, ModelRoute, Provider

logger = logging.getLogger(__name__)
UNCOVERED_ACTION = "catalog.uncovered_models"
UNCOVERED_EVENT = "catalog.uncovered"
_PER_MILLION = Decimal(1_000_000)


def _usd(raw: Any) -> Decimal | None:
    """A price from the listing (USD, as a string or number), or None when it is not one."""
    if raw is None or isinstance(raw, bool):
        return None
    try:
        value = Decimal(str(raw))
    except (InvalidOperation, TypeError):
        return None
    return value if value.is_finite() and value >= 0 else None


def _usd_per_million(raw: Any) -> Decimal | None:
    value = _usd(raw)
    return None if value is None else (value * _PER_MILLION).quantize(Decimal("0.0001"))


def _endpoint(provider: Provider) -> tuple[str, str]:
    """The provider's base URL and the key its model listing is read with (its first)."""
    base_url, keys, _ = provider_endpoint(provider)
    return base_url, keys[0].api_key if keys else ""


def provider_configured(provider: Provider) -> bool:
    base_url, api_key = _endpoint(provider)
    return bool(base_url and api_key)


def fetch_provider_models(provider: Provider) -> list[dict[str, Any]]:
    base_url, api_key = _endpoint(provider)
    if not base_url:
        raise ValueError(f"provider '{provider.slug}' has no base URL")
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    response = httpx.get(f"{base_url.rstrip('/')}/models", headers=headers, timeout=30)
    response.raise_for_status()
    data = response.json().get("data")
    if not isinstance(data, list):
        raise ValueError(f"provider '{provider.slug}' returned no model list")
    return [item for item in data if isinstance(item, dict) and isinstance(item.get("id"), str)]


@transaction.atomic
def catalog_sync(*, provider: Provider, listing: list[dict[str, Any]]) -> dict[str, int]:
    """Apply a provider's listing: refresh prices, context windows, capabilities and
    availability; add new models.

    Staff overrides are never touched: a model with `staff_override` keeps its
    tier, multiplier, active flag and capabilities (supported parameters,
    reasoning, largest completion) whatever the listing says.
    """
    counts = {"updated": 0, "added": 0, "unlisted": 0}
    by_upstream = {item["id"]: item for item in listing}
    routes = ModelRoute.objects.filter(provider=provider).select_related("model")
    routed = set()
    # Route ids whose listing changed, by their new state: one UPDATE each, as the
    # first sync of the shipped catalog can flip hundreds.
    flipped: dict[bool, list[int]] = {True: [], False: []}
    for route in routes:
        routed.add(route.upstream_model)
        item = by_upstream.get(route.upstream_model)
        listed = item is not None
        if route.is_listed != listed:
            flipped[listed].append(route.pk)
        if item is None:
            continue
        model = route.model
        _apply_listing(model, item)
        if not model.staff_override:
            _apply_capabilities(model, item)
        model.save()
        counts["updated"] += 1
    for listed, route_ids in flipped.items():
        if route_ids:
            ModelRoute.objects.filter(pk__in=route_ids).update(is_listed=listed)
    counts["unlisted"] = len(flipped[False])
    known_ids = set(CatalogModel.objects.values_list("model_id", flat=True))
    for upstream_id, item in by_upstream.items():
        if upstream_id in routed or upstream_id in known_ids:
            continue
        prompt = _usd_per_million((item.get("pricing") or {}).get("prompt")) or Decimal(0)
        completion = _usd_per_million((item.get("pricing") or {}).get("completion")) or Decimal(0)
        tier, multiplier = tier_for_price(completion)
        model = CatalogModel(
            model_id=upstream_id,
            name=str(item.get("name") or upstream_id)[:200],
            owned_by=upstream_id.split("/")[0],
            tier=tier,
            multiplier=multiplier,
            prompt_usd_per_m=prompt,
            completion_usd_per_m=completion,
        )
        _apply_listing(model, item)
        _apply_capabilities(model, item)
        model.save()
        ModelRoute.objects.create(model=model, provider=provider, upstream_model=upstream_id)
        counts["added"] += 1
    counts["uncovered"] = _flag_uncovered(provider)
    transaction.on_commit(catalog_cache.clear)
    return counts


def _flag_uncovered(provider: Provider) -> int:
    """Tell staff which models' multipliers no longer cover their prices: a warning in
    the log each sync, and an audit event whenever that list changes (the staff
    dashboard lists them, completions.margins). Returns how many there are."""
    flags = uncovered_models()
    names = sorted(flag.model_id for flag in flags)
    if names:
        logger.warning("after syncing %s, %d models earn less than their upstream prices "
                       "cost: %s", provider.slug, len(names), ", ".join(names[:20]))
    last = AuditEvent.objects.filter(action=UNCOVERED_ACTION).order_by("-pk").first()
    before = (last.after or {}).get("models", []) if last else []
    if names != before:
        event = audit_record(action=UNCOVERED_ACTION, actor_label=f"catalog sync ({provider.slug})",
                             target="catalog", before={"models": before}, after={"models": names})
        staff = Organization.objects.filter(slug=settings.STAFF_ORGANIZATION_SLUG).first() if (
            settings.STAFF_ORGANIZATION_SLUG) else None
        if staff is not None:  # staff's own webhooks hear of it too
            webhook_emit(organization_id=staff.pk, event=UNCOVERED_EVENT,
                         event_key=f"{UNCOVERED_EVENT}:{event.pk}",
                         data={"models": [{"id": flag.model_id, "tier": flag.tier,
                                           "multiplier": str(flag.multiplier), "kind": flag.kind,
                                           "earns_usd_per_1k": str(flag.revenue_usd_per_1k),
                                           "costs_usd_per_1k": str(flag.cost_usd_per_1k)}
                                          for flag in flags], "previously": before})
    return len(names)


def _apply_listing(model: CatalogModel, item: dict[str, Any]) -> None:
    pricing = item.get("pricing") or {}
    prompt = _usd_per_million(pricing.get("prompt"))
    completion = _usd_per_million(pricing.get("completion"))
    if prompt is not None:
        model.prompt_usd_per_m = prompt
    if completion is not None:
        model.completion_usd_per_m = completion
    # Priced apart where the listing gives a price; without one (OpenRouter lists "0"
    # where a reasoning token is billed as a completion token) they stay unset, and
    # costs.UpstreamPrices charges a prompt or completion token's price.
    model.cached_prompt_usd_per_m = _usd_per_million(pricing.get("input_cache_read")) or None
    model.reasoning_usd_per_m = _usd_per_million(pricing.get("internal_reasoning")) or None
    image = _usd(pricing.get("image"))
    model.image_usd = Decimal(0) if image is None else image.quantize(Decimal("0.000001"))
    context = item.get("context_length")
    if isinstance(context, int) and context > 0:
        model.context_length = context
    modalities = (item.get("architecture") or {}).get("input_modalities")
    if isinstance(modalities, list):
        model.supports_vision = "image" in modalities


def _apply_capabilities(model: CatalogModel, item: dict[str, Any]) -> None:
    """OpenRouter's `supported_parameters` (a reasoning model lists `reasoning` or
    `include_reasoning`) and `top_provider.max_completion_tokens`; what the listing
    leaves out stays as it was."""
    parameters = item.get("supported_parameters")
    if isinstance(parameters, list) and all(isinstance(name, str) for name in parameters):
        model.supported_parameters = sorted(set(parameters))
        model.is_reasoning = bool({"reasoning", "include_reasoning"} & set(parameters))
    top_provider = item.get("top_provider")
    if isinstance(top_provider, dict):
        limit = top_provider.get("max_completion_tokens")
        # null there: no limit of its own beyond the context window.
        valid = isinstance(limit, int) and not isinstance(limit, bool) and limit > 0
        model.max_completion_tokens = limit if valid else None
