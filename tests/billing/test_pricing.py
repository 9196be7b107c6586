"""The one pricing function, against a table of cases worked out by hand.

Default rates: 100 credits per 1K prompt tokens, 300 per 1K completion tokens
(at 1x), web search +10, +2 per image. The base is
ceil((prompt * 100 + completion * 300) / 1000 * multiplier), rounded up once
per request; surcharges are added after rounding.
"""

from __future__ import annotations

from decimal import Decimal

import pytest

from billing.pricing import credits_per_1k_tokens, price_request, tokens_affordable
from billing.tiers import MULTIPLIER_RANGES, Tier, multiplier_in_range
from completions.models import CatalogModel


@pytest.fixture(autouse=True)
def _default_rates(settings) -> None:  # type: ignore[no-untyped-def]
    settings.CREDITS_PER_1K_PROMPT_TOKENS = Decimal("100")
    settings.CREDITS_PER_1K_COMPLETION_TOKENS = Decimal("300")
    settings.CREDITS_WEB_SEARCH_SURCHARGE = Decimal("10")
    settings.CREDITS_PER_IMAGE_SURCHARGE = Decimal("2")


CASES = [
    # id, multiplier, prompt, completion, web_search, images, base, surcharges
    ("zero-tokens", "1", 0, 0, False, 0, 0, {}),
    ("one-prompt-token-basic", "1", 1, 0, False, 0, 1, {}),  # ceil(0.1)
    ("one-completion-token-basic", "1", 0, 1, False, 0, 1, {}),  # ceil(0.3)
    ("rounded-once-not-per-part", "1", 1, 1, False, 0, 1, {}),  # ceil(0.1 + 0.3), not 1 + 1
    ("1k-prompt-basic", "1", 1000, 0, False, 0, 100, {}),
    ("1k-completion-basic", "1", 0, 1000, False, 0, 300, {}),
    ("1k-each-basic", "1", 1000, 1000, False, 0, 400, {}),
    ("just-over-a-credit", "1", 11, 0, False, 0, 2, {}),  # ceil(1.1)
    ("exact-credit-no-round-up", "1", 10, 0, False, 0, 1, {}),  # 1.0 stays 1
    ("1k-each-standard-1.5x", "1.5", 1000, 1000, False, 0, 600, {}),
    ("standard-1.5x-rounds-up", "1.5", 7, 3, False, 0, 3, {}),  # (0.7 + 0.9) * 1.5 = 2.4
    ("standard-2x", "2", 500, 250, False, 0, 250, {}),  # (50 + 75) * 2
    ("standard-1.75x", "1.75", 1000, 0, False, 0, 175, {}),
    ("1k-each-powerful-2.5x", "2.5", 1000, 1000, False, 0, 1000, {}),
    ("one-token-powerful-2.5x", "2.5", 1, 0, False, 0, 1, {}),  # ceil(0.25)
    ("powerful-3x", "3", 123, 45, False, 0, 78, {}),  # (12.3 + 13.5) * 3 = 77.4
    ("powerful-3x-large", "3", 100_000, 20_000, False, 0, 48_000, {}),  # (10000 + 6000) * 3
    ("web-search", "1", 1000, 0, True, 0, 100, {"web_search": 10}),
    ("web-search-not-multiplied", "3", 1000, 0, True, 0, 300, {"web_search": 10}),
    ("one-image", "1", 1000, 0, False, 1, 100, {"images": 2}),
    ("four-images-standard", "2", 1000, 1000, False, 4, 800, {"images": 8}),
    ("both-surcharges", "1.5", 200, 100, True, 3, 75, {"web_search": 10, "images": 6}),
    ("surcharges-only", "1", 0, 0, True, 2, 0, {"web_search": 10, "images": 4}),
]


@pytest.mark.parametrize(
    ("multiplier", "prompt", "completion", "web_search", "images", "base", "surcharges"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_given_a_request_then_its_price_is_the_hand_worked_figure(
    multiplier, prompt, completion, web_search, images, base, surcharges
):
    price = price_request(
        multiplier=Decimal(multiplier), prompt_tokens=prompt, completion_tokens=completion,
        web_search=web_search, images=images,
    )

    assert price.base == base
    assert price.surcharges == surcharges
    assert price.breakdown == {"base": base, **surcharges}
    assert price.total == base + sum(surcharges.values())


@pytest.mark.parametrize(
    ("tier", "inside", "outside"),
    [
        (Tier.BASIC, ["1"], ["0.9", "1.5"]),
        (Tier.STANDARD, ["1.5", "1.75", "2"], ["1", "2.5"]),
        (Tier.POWERFUL, ["2", "2.5", "3"], ["1.5", "3.5"]),
    ],
)
def test_given_a_tier_then_its_multiplier_range_is_the_documented_one(tier, inside, outside):
    assert all(multiplier_in_range(tier, Decimal(m)) for m in inside)
    assert not any(multiplier_in_range(tier, Decimal(m)) for m in outside)


def test_given_the_shipped_catalog_then_every_model_is_priced_inside_its_tier(db):
    models = list(CatalogModel.objects.values_list("model_id", "tier", "multiplier"))

    assert models, "the catalog's data migration loaded no models"
    for model_id, tier, multiplier in models:
        low, high = MULTIPLIER_RANGES[tier]
        assert low <= multiplier <= high, model_id


def test_given_negative_counts_then_pricing_refuses():
    with pytest.raises(ValueError):
        price_request(multiplier=Decimal(1), prompt_tokens=-1, completion_tokens=0)
    with pytest.raises(ValueError):
        price_request(multiplier=Decimal(1), prompt_tokens=0, completion_tokens=0, images=-1)


def test_given_a_multiplier_then_the_per_1k_rates_are_the_defaults_times_it():
    assert credits_per_1k_tokens(Decimal("2.5")) == {"prompt": Decimal("250"),
                                                    "completion": Decimal("750")}


@pytest.mark.parametrize(
    ("credits", "multiplier", "tokens"),
    [(0, "1", 0), (300, "1", 1000), (299, "1", 996), (900, "3", 1000), (1, "2", 1)],
)
def test_given_credits_then_the_affordable_completion_tokens_are_a_floor(
    credits, multiplier, tokens
):
    affordable = tokens_affordable(credits=credits, multiplier=Decimal(multiplier))

    assert affordable == tokens
    # What the estimate promises, the credits pay for, even at the dearer (completion) rate.
    assert price_request(multiplier=Decimal(multiplier), prompt_tokens=0,
                         completion_tokens=affordable).total <= credits
