"""Model tiers and the multiplier range each allows (the seed's "Model Tiers & Credits")."""

from __future__ import annotations

from decimal import Decimal

from django.conf import settings
from django.db import models


class Tier(models.TextChoices):
    BASIC = "basic", "Basic"
    STANDARD = "standard", "Standard"
    POWERFUL = "powerful", "Powerful"


MULTIPLIER_RANGES: dict[str, tuple[Decimal, Decimal]] = {
    Tier.BASIC: (Decimal("1"), Decimal("1")),
    Tier.STANDARD: (Decimal("1.5"), Decimal("2")),
    Tier.POWERFUL: (Decimal("2"), Decimal("3")),
}


def multiplier_in_range(tier: str, multiplier: Decimal) -> bool:
    low, high = MULTIPLIER_RANGES[tier]
    return low <= multiplier <= high


def tier_for_price(completion_usd_per_m: Decimal) -> tuple[str, Decimal]:
    """The tier and multiplier a model gets from its price, when staff have not chosen them.

    The first band of `CATALOG_SYNC_TIER_BANDS` whose ceiling its completion price
    (USD per million tokens) is under; the last band above every ceiling. The one
    rule for both the shipped catalog's generator (platform/catalog/generate.py)
    and the catalog sync's new models. The completion price alone, not a blend:
    output dominates what a chat request costs upstream, as it dominates the
    credits (3x the prompt's rate per token).
    """
    bands = settings.CATALOG_SYNC_TIER_BANDS
    for ceiling, tier, multiplier in bands:
        if completion_usd_per_m < Decimal(str(ceiling)):
            return tier, Decimal(multiplier)
    _, tier, multiplier = bands[-1]
    return tier, Decimal(multiplier)
