"""Revenue, upstream cost and margin, for staff: what the platform earns on each model.

Revenue is the credits charged at the platform's credit price
(`CREDIT_PRICE_USD`); cost is what the providers charged (completions.costs);
both are read from the rollups, so the table is as current as the last
rollup run and as exact as the records.

`uncovered_models` answers the other way round, from the catalog: which
models' multipliers no longer cover their upstream prices, a catalog sync
having moved the prices under them.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db.models import Sum

from completions.models import CatalogModel
from completions.selectors import rollups_between

DIMENSIONS = ("model", "tier", "provider", "organization")
_PER_1K_PER_MILLION = Decimal(1000)


@dataclass(frozen=True, slots=True)
class MarginRow:
    label: str
    requests: int
    credits: int
    revenue_usd: Decimal
    cost_usd: Decimal

    @property
    def margin_usd(self) -> Decimal:
        return self.revenue_usd - self.cost_usd

    @property
    def margin_ratio(self) -> float | None:
        """The margin as a share of revenue; None with no revenue."""
        return float(self.margin_usd / self.revenue_usd) if self.revenue_usd else None


def revenue_usd(credits: int) -> Decimal:
    return credits * settings.CREDIT_PRICE_USD


def margins(*, by: str, granularity: str, start: dt.datetime, end: dt.datetime
            ) -> list[MarginRow]:
    """One row per model, tier, provider or organization (`by`), the largest revenue first.

    A model's tier is the one the catalog gives it now.
    """
    if by not in DIMENSIONS:
        raise ValueError(f"margins by {by!r}: one of {', '.join(DIMENSIONS)}")
    rows = rollups_between(organization_id=None, granularity=granularity, start=start, end=end)
    group = {"organization": "organization__slug", "tier": "model"}.get(by, by)
    totals: dict[str, dict[str, Any]] = {}
    tiers = dict(CatalogModel.objects.values_list("model_id", "tier")) if by == "tier" else {}
    for item in rows.values(group).annotate(n=Sum("requests"), spent=Sum("credits"),
                                            cost=Sum("upstream_cost_usd")):
        label = str(item[group] or "(none)")
        if by == "tier":
            label = tiers.get(label, "(not in the catalog)")
        total = totals.setdefault(label, {"n": 0, "spent": 0, "cost": Decimal(0)})
        total["n"] += item["n"] or 0
        total["spent"] += item["spent"] or 0
        total["cost"] += item["cost"] or Decimal(0)
    table = [MarginRow(label=label, requests=total["n"], credits=total["spent"],
                       revenue_usd=revenue_usd(total["spent"]), cost_usd=total["cost"])
             for label, total in totals.items()]
    return sorted(table, key=lambda row: (-row.revenue_usd, row.label))


def margin_total(rows: list[MarginRow]) -> MarginRow:
    return MarginRow(label="All", requests=sum(row.requests for row in rows),
                     credits=sum(row.credits for row in rows),
                     revenue_usd=sum((row.revenue_usd for row in rows), Decimal(0)),
                     cost_usd=sum((row.cost_usd for row in rows), Decimal(0)))


@dataclass(frozen=True, slots=True)
class Uncovered:
    model_id: str
    tier: str
    multiplier: Decimal
    # Per 1,000 tokens of the kind that loses most: what it earns and what it costs.
    kind: str
    revenue_usd_per_1k: Decimal
    cost_usd_per_1k: Decimal


def uncovered(model: CatalogModel) -> Uncovered | None:
    """Whether `model`'s credits (at its multiplier and the credit price) earn less than
    its upstream prices for prompt or completion tokens; the worse of the two, if so."""
    worst = None
    for kind, credits_per_1k, usd_per_m in (
            ("prompt", settings.CREDITS_PER_1K_PROMPT_TOKENS, model.prompt_usd_per_m),
            ("completion", settings.CREDITS_PER_1K_COMPLETION_TOKENS,
             model.completion_usd_per_m)):
        earns = revenue_usd(1) * credits_per_1k * model.multiplier
        costs = usd_per_m / _PER_1K_PER_MILLION
        if earns < costs and (worst is None or costs - earns > worst[2] - worst[1]):
            worst = (kind, earns, costs)
    if worst is None:
        return None
    return Uncovered(model.model_id, model.tier, model.multiplier, *worst)


def uncovered_models() -> list[Uncovered]:
    """The active models that lose money on every token of some kind, worst first."""
    found = [flag for model in CatalogModel.objects.filter(is_active=True, is_development=False)
             if (flag := uncovered(model)) is not None]
    return sorted(found, key=lambda flag: flag.revenue_usd_per_1k / flag.cost_usd_per_1k)
