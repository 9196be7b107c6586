"""The tier rule: a model staff have not tiered gets its tier and multiplier from its
completion price (USD per million tokens), by the bands of CATALOG_SYNC_TIER_BANDS; the
shipped catalog's generator and the catalog sync both use it."""

from __future__ import annotations

from decimal import Decimal

import pytest

from billing.tiers import multiplier_in_range, tier_for_price


@pytest.mark.parametrize(("completion_usd_per_m", "tier", "multiplier"), [
    ("0", "basic", "1.0"),           # a free model
    ("0.6", "basic", "1.0"),         # GPT-4o mini
    ("0.9999", "basic", "1.0"),
    ("1", "standard", "1.5"),        # a band's ceiling belongs to the band above
    ("4.4", "standard", "1.5"),      # o4-mini
    ("10", "standard", "2.0"),       # GPT-4o
    ("15", "powerful", "2.5"),       # Claude Sonnet
    ("39.99", "powerful", "2.5"),
    ("40", "powerful", "3.0"),
    ("600", "powerful", "3.0"),      # o1-pro
])
def test_given_a_completion_price_then_the_documented_tier_and_multiplier(
    completion_usd_per_m, tier, multiplier
):
    assert tier_for_price(Decimal(completion_usd_per_m)) == (tier, Decimal(multiplier))


def test_given_the_bands_in_settings_then_every_multiplier_is_within_its_tiers_range(settings):
    for _, tier, multiplier in settings.CATALOG_SYNC_TIER_BANDS:
        assert multiplier_in_range(tier, Decimal(multiplier)), (tier, multiplier)


def test_given_other_bands_in_settings_then_the_rule_follows_them(settings):
    settings.CATALOG_SYNC_TIER_BANDS = [(2.0, "basic", "1.0"), (float("inf"), "powerful", "2.0")]

    assert tier_for_price(Decimal("1.5")) == ("basic", Decimal("1.0"))
    assert tier_for_price(Decimal("2")) == ("powerful", Decimal("2.0"))
