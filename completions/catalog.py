"""The model catalog: loading the shipped data, and the in-process snapshot the hot path reads."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Collection
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from django.conf import settings
from django.utils import timezone

from completions.costs import UpstreamPrices
from completions.kinds import needs_key
from novakit.runtime.db import db_async

CATALOG_FILE = Path(settings.BASE_DIR) / "platform" / "catalog" / "models.json"
OPENROUTER = "openrouter"


def catalog_data() -> dict[str, Any]:
    return json.loads(CATALOG_FILE.read_text())


# What a model accepts: the catalog sync keeps them current from the upstream's
# listing unless staff overrode the model (a staff edit of them is an override too).
CAPABILITY_FIELDS = ("supported_parameters", "is_reasoning", "max_completion_tokens")


def _model_fields(item: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": item["name"],
        "owned_by": item["owned_by"],
        "tier": item["tier"],
        "multiplier": Decimal(item["multiplier"]),
        "context_length": item["context_length"],
        "supports_vision": item["vision"],
        "supported_parameters": item.get("supported_parameters", []),
        "is_reasoning": item.get("reasoning", False),
        "max_completion_tokens": item.get("max_completion_tokens"),
        "prompt_usd_per_m": Decimal(item["prompt_usd_per_m"]),
        "completion_usd_per_m": Decimal(item["completion_usd_per_m"]),
        "is_development": item.get("development", False),
    }


def catalog_load(
    *, provider_model: Any, catalog_model: Any, route_model: Any, update: bool,
    refresh: Collection[str] = (),
) -> int:
    """Create the shipped providers and models; refresh those staff did not override.

    With `update` every field of such a model is refreshed, else only the fields
    in `refresh`. Takes the model classes as arguments so a data migration can
    pass its historical models (`apps.get_model`) and the command the live ones.
    Returns how many catalog models were created or changed.

    Bulk statements, a handful whatever the catalog's size, and only the models
    that differ are written: the tests load the ~360-model catalog into every
    transactional test's emptied database, where a query per model and route took
    330 ms against 40 ms (SQLite); a bulk update of every model, changed or not,
    took 500 ms.
    """
    data = catalog_data()
    providers = {}
    for item in data["providers"]:
        provider, _ = provider_model.objects.get_or_create(
            slug=item["slug"],
            defaults={
                "name": item["name"],
                "kind": item["kind"],
                "base_url": item["base_url"],
                "supports_web_search": item["supports_web_search"],
            },
        )
        providers[item["slug"]] = provider
    # A data migration's historical model may predate some columns.
    known = {model_field.name for model_field in catalog_model._meta.get_fields()}
    wanted = {
        item["id"]: {name: value for name, value in _model_fields(item).items() if name in known}
        for item in data["models"]
    }
    existing = catalog_model.objects.in_bulk(list(wanted), field_name="model_id")
    created = catalog_model.objects.bulk_create(
        [catalog_model(model_id=model_id, **fields)
         for model_id, fields in wanted.items() if model_id not in existing]
    )
    changed = len(created)
    names = [name for name in _model_fields(data["models"][0]) if name in known
             and (update or name in refresh)]
    refreshed = []
    for model in existing.values():
        fields = wanted[model.model_id]
        if model.staff_override or all(getattr(model, name) == fields[name] for name in names):
            continue
        for name in names:
            setattr(model, name, fields[name])
        refreshed.append(model)
    if refreshed:
        now = timezone.now()
        for model in refreshed:
            model.updated_at = now  # bulk_update does not apply auto_now
        catalog_model.objects.bulk_update(refreshed, [*names, "updated_at"], batch_size=100)
        changed += len(refreshed)
    models = {**existing, **{model.model_id: model for model in created}}
    if any(model.pk is None for model in created):  # a backend that returns no ids
        models = catalog_model.objects.in_bulk(list(wanted), field_name="model_id")
    routed = set(
        route_model.objects.filter(provider__in=list(providers.values()))
        .values_list("model_id", "provider_id")
    )
    routes = []
    for item in data["models"]:
        model = models[item["id"]]
        for priority, (provider_slug, upstream_model) in enumerate(item["routes"]):
            provider = providers[provider_slug]
            if (model.pk, provider.pk) not in routed:
                routed.add((model.pk, provider.pk))
                routes.append(route_model(model=model, provider=provider,
                                          upstream_model=upstream_model, priority=priority))
    route_model.objects.bulk_create(routes)
    return changed


@dataclass(frozen=True, slots=True)
class RouteKey:
    """One credential a provider's routes can be tried with.

    `id` names it for its health (completions.routing): `slug:pk` for a stored
    ProviderKey, the provider's slug for its own single key.
    """

    id: str
    label: str
    # Never in a repr (see Route).
    api_key: str = field(repr=False)
    weight: int = 1
    # Set for an organization's own key (bring your own key): used only for its requests.
    organization_id: int | None = None
    # The most requests it takes a minute (completions.key_limits); None: no limit of ours.
    requests_per_minute: int | None = None


@dataclass(frozen=True, slots=True)
class Route:
    provider: str
    kind: str
    base_url: str
    upstream_model: str
    supports_web_search: bool
    # False when the provider's own model list (catalog sync) no longer offers it.
    listed: bool = True
    # The provider's keys to choose from; never in a repr: routes sit inside plans
    # and admitted requests that logs and test diffs may print.
    keys: tuple[RouteKey, ...] = field(default=(), repr=False)
    # Organizations' own keys for the provider, by organization id.
    own_keys: dict[int, tuple[RouteKey, ...]] = field(default_factory=dict, repr=False,
                                                      compare=False, hash=False)
    # The key this attempt uses, bound by completions.routing when the route is tried.
    key: RouteKey | None = field(default=None, repr=False)
    # Azure OpenAI's `api-version` (completions.kinds).
    api_version: str = ""

    @property
    def api_key(self) -> str:
        return self.key.api_key if self.key is not None else ""

    @property
    def configured(self) -> bool:
        if self.kind == "builtin":
            return True
        return bool(self.base_url and (self.keys or not needs_key(self.kind)))

    def configured_for(self, organization_id: int) -> bool:
        """Whether the organization's requests can use it: with the platform's keys or its own."""
        return self.configured or bool(self.base_url and organization_id in self.own_keys)

    @property
    def own_key(self) -> bool:
        """Whether this attempt uses an organization's own key (billed at the BYOK fee)."""
        return self.key is not None and self.key.organization_id is not None

    def missing_setting(self) -> str:
        if self.provider == OPENROUTER:
            return "OPENROUTER_API_KEY"
        return f"the API key of provider '{self.provider}'"


@dataclass(frozen=True, slots=True)
class ModelInfo:
    model_id: str
    name: str
    owned_by: str
    tier: str
    multiplier: Decimal
    context_length: int
    supports_vision: bool
    prices: UpstreamPrices
    is_development: bool
    created: int
    routes: tuple[Route, ...]
    # What the model accepts; empty: not known (forward what the client sent).
    supported_parameters: frozenset[str] = frozenset()
    reasoning: bool = False
    max_completion_tokens: int | None = None

    def accepts(self, parameter: str) -> bool:
        """Whether the model takes `parameter` (True when its parameters are not known)."""
        return not self.supported_parameters or parameter in self.supported_parameters

    @property
    def available(self) -> bool:
        return any(route.configured and route.listed for route in self.routes)

    def available_for(self, organization_id: int) -> bool:
        """Available to this organization: on the platform's keys, or on its own."""
        return any(route.configured_for(organization_id) and route.listed
                   for route in self.routes)


def provider_endpoint(provider: Any) -> tuple[str, tuple[RouteKey, ...],
                                              dict[int, tuple[RouteKey, ...]]]:
    """A provider's base URL, the platform's keys for it (its active ProviderKeys, else its
    own key; for OpenRouter the settings fill in what is not stored) and organizations' own
    keys by organization. No platform keys: not configured, but for those organizations."""
    is_default = provider.slug == OPENROUTER
    base_url = provider.base_url or (settings.OPENROUTER_BASE_URL if is_default else "")
    platform: list[RouteKey] = []
    own: dict[int, list[RouteKey]] = {}
    # `.all()`, not a filter: load_snapshot prefetches the keys with the routes.
    for stored in provider.keys.all():
        if not stored.is_active:
            continue
        key = RouteKey(id=f"{provider.slug}:{stored.pk}", label=stored.label,
                       api_key=stored.get_api_key(), weight=stored.weight,
                       organization_id=stored.organization_id,
                       requests_per_minute=stored.requests_per_minute)
        if key.organization_id is None:
            platform.append(key)
        else:
            own.setdefault(key.organization_id, []).append(key)
    if not platform:
        api_key = provider.get_api_key() or (settings.OPENROUTER_API_KEY if is_default else "")
        if api_key:
            platform.append(RouteKey(id=provider.slug, label="provider key", api_key=api_key))
    return (base_url.rstrip("/"), tuple(platform),
            {organization_id: tuple(keys) for organization_id, keys in own.items()})


def _route_for(route: Any) -> Route:
    provider = route.provider
    base_url, keys, own_keys = provider_endpoint(provider)
    return Route(
        provider=provider.slug,
        kind=provider.kind,
        base_url=base_url,
        upstream_model=route.upstream_model,
        supports_web_search=provider.supports_web_search,
        listed=route.is_listed,
        keys=keys,
        own_keys=own_keys,
        api_version=provider.api_version,
    )


def load_snapshot() -> dict[str, ModelInfo]:
    from completions.models import CatalogModel

    snapshot: dict[str, ModelInfo] = {}
    models = CatalogModel.objects.filter(is_active=True).prefetch_related("routes__provider__keys")
    for model in models:
        routes = tuple(
            _route_for(route)
            for route in sorted(model.routes.all(), key=lambda r: (r.priority, r.pk))
            if route.provider.is_active
        )
        snapshot[model.model_id] = ModelInfo(
            model_id=model.model_id,
            name=model.name,
            owned_by=model.owned_by or model.model_id.split("/")[0],
            tier=model.tier,
            multiplier=model.multiplier,
            context_length=model.context_length,
            supports_vision=model.supports_vision,
            prices=UpstreamPrices(prompt=model.prompt_usd_per_m,
                                  completion=model.completion_usd_per_m,
                                  cached_prompt=model.cached_prompt_usd_per_m,
                                  reasoning=model.reasoning_usd_per_m, image=model.image_usd),
            is_development=model.is_development,
            created=int(model.created_at.timestamp()),
            routes=routes,
            supported_parameters=frozenset(model.supported_parameters or ()),
            reasoning=model.is_reasoning,
            max_completion_tokens=model.max_completion_tokens,
        )
    return snapshot


class _SnapshotCache:
    """The catalog, read at most every CATALOG_CACHE_SECONDS per process.

    One read at a time: requests that find the snapshot missing or stale while a
    read is under way wait for that read instead of starting their own. With the
    generated catalog (~360 models) every one of 24 requests arriving together on
    a cold cache read it itself, and that herd cost the batch ~0.6 s on SQLite.
    """

    def __init__(self) -> None:
        self.snapshot: dict[str, ModelInfo] | None = None
        self.read_at = 0.0
        self._reading: asyncio.Task[dict[str, ModelInfo]] | None = None

    def clear(self) -> None:
        # A read under way may predate the change: it answers its waiters, but its
        # result is not kept.
        self.snapshot = None
        self._reading = None

    async def get(self) -> dict[str, ModelInfo]:
        stale = time.monotonic() - self.read_at > settings.CATALOG_CACHE_SECONDS
        if self.snapshot is not None and not stale:
            return self.snapshot
        loop = asyncio.get_running_loop()
        reading = self._reading
        if reading is None or reading.get_loop() is not loop:
            reading = self._reading = loop.create_task(self._read())
        # Shielded: a waiter that is cancelled (its client left) must not cancel the
        # read the others wait for.
        return await asyncio.shield(reading)

    async def _read(self) -> dict[str, ModelInfo]:
        try:
            snapshot = await db_async(load_snapshot)()
            if self._reading is asyncio.current_task():
                self.snapshot, self.read_at = snapshot, time.monotonic()
            return snapshot
        finally:
            if self._reading is asyncio.current_task():
                self._reading = None


catalog_cache = _SnapshotCache()
