"""Model tiers and the multiplier range each allows (the seed's "Model Tiers & Credits")."""

from __future__ import annotations

from decimal import Decimal

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
