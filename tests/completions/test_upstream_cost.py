"""What each request cost upstream (completions/costs.py), and the staff margin table built on it
(completions/margins.py): the provider's own figure where it reports one, the catalog's prices
otherwise, each kind of token at its own rate."""

from __future__ import annotations

import re
from decimal import Decimal

import openai
import pytest
from django.conf import settings

from accounts.models import AuditEvent, WebhookDelivery
from accounts.webhooks import webhook_endpoint_create
from completions.catalog_sync import UNCOVERED_ACTION, catalog_sync
from completions.costs import UpstreamPrices, catalog_cost, reported_cost, upstream_cost
from completions.margins import uncovered_models
from completions.models import CatalogModel, UsageRecord, UsageRollup
from completions.own_keys import own_key_add
from completions.rollups import usage_rollup
from tests.completions.helpers import add_model, add_provider, openrouter, parsed_events, post_chat

HELLO = [{"role": "user", "content": "Say hello"}]
MILLION = Decimal(1_000_000)


@pytest.mark.parametrize(("raw", "expected"), [
    (0.000042, Decimal("0.000042")), ("0.5", Decimal("0.5")), (0, Decimal(0)),
    (-1, None), ("NaN", None), ("Infinity", None), (True, None), ([1], None), ("cheap", None),
])
def test_only_a_finite_non_negative_number_is_taken_as_the_providers_figure(raw, expected):
    assert reported_cost({"cost": raw}) == expected


def test_cached_reasoning_and_image_tokens_are_counted_at_their_own_rates():
    prices = UpstreamPrices(prompt=Decimal("2"), completion=Decimal("8"),
                            cached_prompt=Decimal("0.5"), reasoning=Decimal("10"),
                            image=Decimal("0.001"))
    usage = {"prompt_tokens_details": {"cached_tokens": 400},
             "completion_tokens_details": {"reasoning_tokens": 50}}

    cost = catalog_cost(prices, prompt_tokens=1000, completion_tokens=200, usage=usage, images=2)

    by_hand = (600 * 2 + 400 * Decimal("0.5") + 150 * 8 + 50 * 10) / MILLION + 2 * Decimal("0.001")
    assert cost == by_hand
    # Without rates of their own they cost what a prompt or completion token costs, and a
    # report of more cached tokens than the prompt had counts no more than the prompt.
    plain = UpstreamPrices(prompt=Decimal("2"), completion=Decimal("8"))
    assert catalog_cost(plain, prompt_tokens=10, completion_tokens=5,
                        usage={"prompt_tokens_details": {"cached_tokens": 99}}) == (
        (10 * 2 + 5 * 8) / MILLION)


def test_a_request_on_the_organizations_own_key_cost_the_platform_nothing():
    prices = UpstreamPrices(prompt=Decimal("2"), completion=Decimal("8"))
    cost = upstream_cost(prices, prompt_tokens=10, completion_tokens=5, usage={"cost": 1},
                         images=0, own_key=True)
    assert (cost.usd, cost.source) == (0, "organization_key")


def _priced(model_id, routes, *, prompt, completion, cached=None, reasoning=None, tier="basic",
            multiplier="1"):
    model = add_model(model_id, routes, tier=tier, multiplier=multiplier)
    CatalogModel.objects.filter(pk=model.pk).update(
        prompt_usd_per_m=Decimal(prompt), completion_usd_per_m=Decimal(completion),
        cached_prompt_usd_per_m=None if cached is None else Decimal(cached),
        reasoning_usd_per_m=None if reasoning is None else Decimal(reasoning))
    return model


def _by_hand(record: UsageRecord, *, prompt, completion, cached, reasoning) -> Decimal:
    """The no-cost fake reports 2 cached prompt tokens and 1 reasoning token."""
    usd = ((record.prompt_tokens - 2) * Decimal(prompt) + 2 * Decimal(cached)
           + (record.completion_tokens - 1) * Decimal(completion) + 1 * Decimal(reasoning))
    return (usd / MILLION).quantize(Decimal("1e-10"))


def _margin_cells(html: str) -> dict[str, list[Decimal]]:
    table = html[html.index('id="margins"'):]
    table = table[:table.index("</table>")]
    rows = {}
    for row in re.findall(r"<tr><t[dh]>([^<]+)</t[dh]>(.*?)</tr>", table, flags=re.S):
        label, rest = row
        if values := [Decimal(value) for value in re.findall(r'data-usd="([^"]+)"', rest)]:
            rows[label] = values  # not the header
    return rows


def test_given_requests_on_two_providers_then_the_margin_table_is_the_records_by_hand(
    tenant, other_tenant, fake_upstream, client_for, http, admin_client
):
    """OpenRouter (the fake) reports its cost; the second provider reports none, so its
    requests are costed from the catalog, cached and reasoning tokens at their rates."""
    second = add_provider("plain", fake_upstream.url_for("no_cost"))
    _priced("acme/routed", [(openrouter(), "acme/routed")], prompt="1", completion="2",
            tier="standard", multiplier="2")
    _priced("acme/plain", [(second, "acme/plain")], prompt="3", completion="15",
            cached="0.3", reasoning="20")

    for _ in range(2):
        client_for(tenant).chat.completions.create(model="acme/routed", messages=HELLO,
                                                   max_tokens=4)
    client_for(other_tenant).chat.completions.create(model="acme/plain", messages=HELLO,
                                                     max_tokens=5)
    streamed = post_chat(http, tenant, {"model": "acme/plain", "messages": HELLO,
                                        "max_tokens": 3, "stream": True})
    assert parsed_events(streamed.text)[-1]["usage"]["credits_used"] > 0

    records = list(UsageRecord.objects.order_by("pk"))
    assert len(records) == 4
    for record in records:
        if record.provider == "openrouter":
            assert (record.upstream_cost_usd, record.cost_source) == (
                Decimal("0.000042"), "provider")
        else:
            assert record.cost_source == "catalog"
            assert record.upstream_cost_usd == _by_hand(
                record, prompt="3", completion="15", cached="0.3", reasoning="20")

    usage_rollup()
    assert sum(r.upstream_cost_usd for r in UsageRollup.objects.filter(granularity="day")) == (
        sum(r.upstream_cost_usd for r in records))
    page = admin_client.get("/staff/", {"range": "48h", "by": "provider"}).content.decode()

    cells = _margin_cells(page)
    price = settings.CREDIT_PRICE_USD
    for provider in ("openrouter", "plain"):
        mine = [r for r in records if r.provider == provider]
        revenue = sum(r.credits for r in mine) * price
        cost = sum(r.upstream_cost_usd for r in mine)
        assert cells[provider] == [revenue, cost, revenue - cost]
    total_margin = sum(r.credits for r in records) * price - sum(r.upstream_cost_usd
                                                                 for r in records)
    assert cells["All"][2] == total_margin
    by_tier = _margin_cells(admin_client.get("/staff/", {"range": "48h", "by": "tier"})
                            .content.decode())
    assert set(by_tier) == {"standard", "basic", "All"} and by_tier["All"][2] == total_margin
    by_org = _margin_cells(admin_client.get("/staff/", {"range": "48h", "by": "organization"})
                           .content.decode())
    assert by_org["globex"][1] == next(r.upstream_cost_usd for r in records
                                       if r.organization_id == other_tenant.org.pk)


def test_given_the_organizations_own_key_then_its_request_is_recorded_at_no_cost(
    tenant, fake_upstream, client_for
):
    own_key_add(organization=tenant.org, provider=openrouter(), label="ours",
                secret="sk-or-acme-own-0123456789", actor=tenant.user)

    client_for(tenant).chat.completions.create(model="openai/gpt-4o-mini", messages=HELLO,
                                               max_tokens=3)

    record = UsageRecord.objects.get()
    assert (record.key_class, record.cost_source, record.upstream_cost_usd) == (
        "organization", "organization_key", 0)


def test_a_request_that_reached_no_provider_cost_nothing(tenant, fake_upstream, client_for):
    fake_upstream.scenario = "status:503"
    with pytest.raises(openai.APIStatusError):
        client_for(tenant).chat.completions.create(model="openai/gpt-4o-mini", messages=HELLO,
                                                   max_tokens=3)
    record = UsageRecord.objects.get()
    assert (record.status, record.cost_source, record.upstream_cost_usd) == ("error", "", 0)


@pytest.mark.django_db
def test_a_sync_reads_the_separate_rates_and_flags_models_whose_multiplier_falls_short(
    settings, tenant
):
    settings.CREDIT_PRICE_USD = Decimal("0.00002")
    # Staff's own organization has a webhook for it.
    settings.STAFF_ORGANIZATION_SLUG = tenant.org.slug
    settings.WEBHOOKS_ALLOWED_PRIVATE_NETWORKS = ["127.0.0.1/32"]
    webhook_endpoint_create(organization=tenant.org, url="http://127.0.0.1:9/staff-hook",
                            events=["catalog.uncovered"])
    provider = openrouter()
    CatalogModel.objects.exclude(model_id="openai/gpt-4o-mini").update(is_active=False)
    listing = [{"id": "openai/gpt-4o-mini", "pricing": {
        "prompt": "0.00000015", "completion": "0.0000006", "input_cache_read": "0.000000075",
        "internal_reasoning": "0", "image": "0.0002"}}]

    catalog_sync(provider=provider, listing=listing)

    mini = CatalogModel.objects.get(model_id="openai/gpt-4o-mini")
    assert (mini.cached_prompt_usd_per_m, mini.reasoning_usd_per_m, mini.image_usd) == (
        Decimal("0.075"), None, Decimal("0.0002"))
    assert uncovered_models() == []
    assert not AuditEvent.objects.filter(action=UNCOVERED_ACTION).exists()

    # The upstream raises its completion price to $100 a million: at 1x and 300 credits per
    # 1,000 completion tokens the model earns $0.006 per 1,000 and costs $0.1.
    listing[0]["pricing"]["completion"] = "0.0001"
    counts = catalog_sync(provider=provider, listing=listing)
    catalog_sync(provider=provider, listing=listing)

    [flag] = uncovered_models()
    assert (flag.model_id, flag.kind) == ("openai/gpt-4o-mini", "completion")
    assert (flag.revenue_usd_per_1k, flag.cost_usd_per_1k) == (Decimal("0.006"), Decimal("0.1"))
    assert counts["uncovered"] == 1
    [event] = AuditEvent.objects.filter(action=UNCOVERED_ACTION)  # once: the list changed once
    assert event.after == {"models": ["openai/gpt-4o-mini"]}
    [delivery] = WebhookDelivery.objects.filter(event="catalog.uncovered")
    [model] = delivery.payload["data"]["models"]
    assert (model["id"], model["kind"], Decimal(model["costs_usd_per_1k"])) == (
        "openai/gpt-4o-mini", "completion", Decimal("0.1"))
