"""Several keys per provider: weights, cooldowns, fallback (completions/routing.py).

The board's rules on their own with a clock the test moves, then end to end: the
official SDK against the live gateway, whose keys the fake upstream tells apart
by the Authorization header it sees.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections import Counter
from typing import Any

import openai
import pytest

from accounts.models import AuditEvent
from completions import key_limits, routing
from completions.catalog import Route, RouteKey, catalog_cache
from completions.models import ProviderKey
from tests.completions.helpers import (
    add_model,
    add_provider,
    assert_books_balance,
    only_usage_record,
    openrouter,
    post_chat,
    usage_charged,
)

HELLO = [{"role": "user", "content": "Say hello"}]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _route(provider: str, *weights: int) -> Route:
    keys = tuple(RouteKey(id=f"{provider}:{i}", label=f"k{i}", api_key=f"secret-{provider}-{i}",
                          weight=weight) for i, weight in enumerate(weights))
    return Route(provider=provider, kind="openai", base_url="http://upstream.test",
                 upstream_model="m", supports_web_search=False, keys=keys)


def _first(board: routing.RoutingBoard, *routes: Route) -> Route:
    return next(board.attempts(routes))


# --- the board's rules -------------------------------------------------------------------


def test_given_weights_3_to_1_then_400_picks_split_300_100_and_interleave():
    board = routing.RoutingBoard(clock=Clock())
    route = _route("p", 3, 1)

    picks = [_first(board, route).key.label for _ in range(400)]

    assert Counter(picks) == {"k0": 300, "k1": 100}
    assert "k0" * 4 not in "".join(picks)  # spread out, not in runs


def test_given_a_429_with_retry_after_then_the_key_rests_that_long_and_comes_back():
    clock = Clock()
    board = routing.RoutingBoard(clock=clock)
    route = _route("p", 1, 1)
    bad = route.keys[0]

    board.failed(dataclasses.replace(route, key=bad), kind="http_429", retry_after=2.0)

    assert {_first(board, route).key.id for _ in range(20)} == {route.keys[1].id}
    clock.now += 1.9
    assert {_first(board, route).key.id for _ in range(20)} == {route.keys[1].id}
    clock.now += 0.2
    assert bad.id in {_first(board, route).key.id for _ in range(4)}


def test_given_failures_without_retry_after_then_the_rest_doubles_from_5_to_60_seconds():
    clock = Clock()
    board = routing.RoutingBoard(clock=clock)
    bound = _first(board, _route("p", 1))
    rests = []
    for _ in range(6):
        board.failed(bound, kind="http_5xx")
        rests.append(board.health[bound.key.id].cooled_until - clock.now)
    assert rests == [5, 10, 20, 40, 60, 60]

    board.succeeded(bound)
    assert not board.cooled(bound.key.id, clock.now)
    board.failed(bound, kind="timeout")
    assert board.health[bound.key.id].cooled_until - clock.now == 5


def test_given_a_retry_after_beyond_five_minutes_then_the_rest_is_capped():
    clock = Clock()
    board = routing.RoutingBoard(clock=clock)
    bound = _first(board, _route("p", 1))
    board.failed(bound, kind="http_429", retry_after=3600)
    assert board.health[bound.key.id].cooled_until - clock.now == routing.MAX_COOLDOWN_SECONDS


def test_given_a_failure_of_the_request_itself_then_the_key_is_not_cooled():
    board = routing.RoutingBoard(clock=Clock())
    bound = _first(board, _route("p", 1))
    for kind in ("http_4xx", "malformed", "stream_cut"):
        board.failed(bound, kind=kind)
    assert not board.cooled(bound.key.id, board.clock())


def test_given_a_cooled_key_then_the_next_attempt_is_another_key_then_the_next_route():
    board = routing.RoutingBoard(clock=Clock())
    first, second = _route("first", 1, 1), _route("second", 1)

    tried = []
    for attempt in board.attempts([first, second]):
        tried.append(attempt.key.id)
        board.failed(attempt, kind="http_5xx")

    assert sorted(tried[:2]) == ["first:0", "first:1"] and tried[2:] == ["second:0"]


def test_given_every_route_cooled_then_the_one_back_soonest_is_still_tried():
    clock = Clock()
    board = routing.RoutingBoard(clock=clock)
    first, second = _route("first", 1), _route("second", 1)
    board.failed(_first(board, first), kind="http_429", retry_after=50)
    board.failed(_first(board, second), kind="http_429", retry_after=20)

    assert [attempt.key.id for attempt in board.attempts([first, second])] == ["second:0"]


def test_given_a_date_in_retry_after_then_it_counts_the_seconds_to_it():
    from completions.upstream_failures import retry_after_seconds

    assert retry_after_seconds("7") == 7.0
    assert retry_after_seconds("Thu, 03 Dec 2026 12:00:30 GMT", now=1796299200.0) == 30.0
    assert retry_after_seconds("soon") is None and retry_after_seconds(None) is None


# --- end to end --------------------------------------------------------------------------


def _keys(provider: Any, **weights: int) -> dict[str, str]:
    """Stored keys for `provider`, by label; returns label -> secret."""
    secrets = {}
    for label, weight in weights.items():
        key = ProviderKey(provider=provider, label=label, weight=weight)
        secrets[label] = f"sk-upstream-{label}-0123456789"
        key.set_api_key(secrets[label])
        key.save()
    return secrets


def _served_by(fake_upstream: Any, secrets: dict[str, str]) -> Counter[str]:
    label_of = {f"Bearer {secret}": label for label, secret in secrets.items()}
    return Counter(label_of.get(r["headers"].get("Authorization"), "other")
                   for r in fake_upstream.requests)


def test_given_two_keys_weighted_3_to_1_then_400_requests_split_3_to_1(
    tenant, fake_upstream, client_for
):
    secrets = _keys(openrouter(), heavy=3, light=1)
    client = client_for(tenant)

    for _ in range(400):
        client.chat.completions.create(model="openai/gpt-4o-mini", messages=HELLO, max_tokens=2)

    assert _served_by(fake_upstream, secrets) == {"heavy": 300, "light": 100}


def test_given_a_key_answering_429_with_retry_after_2_then_it_rests_2_s_and_one_answer_is_seen(
    tenant, fake_upstream, client_for, monkeypatch
):
    clock = Clock()
    monkeypatch.setattr(routing.board, "clock", clock)
    secrets = _keys(openrouter(), a=1, b=1)
    fake_upstream.key_scenarios[secrets["a"]] = "limited:2"
    client = client_for(tenant)

    answers = [client.chat.completions.create(model="openai/gpt-4o-mini", messages=HELLO,
                                              max_tokens=2) for _ in range(10)]

    assert all(answer.choices[0].message.content for answer in answers)
    assert _served_by(fake_upstream, secrets) == {"a": 1, "b": 10}  # a's 429, then b for all
    # The request that met the 429 was answered by b: one answer, one charge each.
    assert usage_charged(tenant) == sum(answer.usage.model_extra["credits_used"]
                                        for answer in answers)
    assert_books_balance(tenant)

    del fake_upstream.key_scenarios[secrets["a"]]
    clock.now += 1.5
    fake_upstream.requests.clear()
    for _ in range(4):
        client.chat.completions.create(model="openai/gpt-4o-mini", messages=HELLO, max_tokens=2)
    assert _served_by(fake_upstream, secrets) == {"b": 4}
    clock.now += 0.6
    fake_upstream.requests.clear()
    for _ in range(4):
        client.chat.completions.create(model="openai/gpt-4o-mini", messages=HELLO, max_tokens=2)
    assert _served_by(fake_upstream, secrets) == {"a": 2, "b": 2}


@pytest.mark.parametrize("stream", [False, True], ids=["complete", "stream"])
def test_given_a_provider_whose_keys_all_fail_then_the_next_provider_answers_once_and_charges_once(
    tenant, fake_upstream, client_for, stream
):
    down = add_provider("down", fake_upstream.url_for("status:503"))
    secrets = _keys(down, one=1, two=1)
    add_model("test/two-providers", [(down, "down-model"), (openrouter(), "healthy-model")])

    extra: dict[str, Any] = {"stream_options": {"include_usage": True}} if stream else {}
    created = client_for(tenant).chat.completions.create(
        model="test/two-providers", messages=HELLO, max_tokens=3, stream=stream, **extra)
    chunks = list(created) if stream else [created]

    assert [r["body"]["model"] for r in fake_upstream.requests] == [
        "down-model", "down-model", "healthy-model"]
    assert _served_by(fake_upstream, secrets)["other"] == 1  # OpenRouter's own key
    record = only_usage_record(tenant)
    assert (record.status, record.provider) == ("ok", "openrouter")
    usage = next(chunk.usage for chunk in chunks if chunk.usage)
    assert record.credits == usage.model_extra["credits_used"] == usage_charged(tenant)
    assert_books_balance(tenant)

    # Both keys are resting now: the next request goes straight to OpenRouter.
    fake_upstream.requests.clear()
    client_for(tenant).chat.completions.create(model="test/two-providers", messages=HELLO,
                                               max_tokens=3)
    assert [r["body"]["model"] for r in fake_upstream.requests] == ["healthy-model"]


def test_given_a_stored_key_then_no_response_log_line_or_admin_page_shows_it(
    tenant, fake_upstream, http, admin_client, caplog
):
    caplog.set_level(logging.INFO)
    secrets = _keys(openrouter(), only=1)
    fake_upstream.key_scenarios[secrets["only"]] = "status:500"

    response = post_chat(http, tenant, {"model": "openai/gpt-4o-mini", "messages": HELLO})

    assert response.status_code == 502
    key = ProviderKey.objects.get(label="only")
    page = admin_client.get(f"/admin/completions/providerkey/{key.pk}/change/").content.decode()
    listing = admin_client.get("/admin/completions/providerkey/").content.decode()
    assert "only" in listing and 'name="api_key"' in page
    for shown in (response.text, page, listing, caplog.text, repr(routing.board.health)):
        assert secrets["only"] not in shown
    assert f"openrouter:{key.pk} cooled" in caplog.text  # logged by the key's id


def test_given_staff_adding_and_editing_a_key_in_the_admin_then_it_is_stored_encrypted_and_audited(
    admin_client, catalog
):
    provider = openrouter()
    response = admin_client.post("/admin/completions/providerkey/add/", {
        "provider": provider.pk, "label": "team-a", "weight": 2, "is_active": "on",
        "api_key": "sk-or-secret-value-42", "change_reason": "second key for headroom",
    })
    assert response.status_code == 302, response.content.decode()[:2000]
    key = ProviderKey.objects.get(label="team-a")
    assert key.get_api_key() == "sk-or-secret-value-42"
    assert "sk-or-secret-value-42" not in key.api_key_encrypted

    response = admin_client.post(f"/admin/completions/providerkey/{key.pk}/change/", {
        "provider": provider.pk, "label": "team-a", "weight": 5, "is_active": "on",
        "api_key": "", "change_reason": "more share",
    })
    assert response.status_code == 302
    key.refresh_from_db()
    assert (key.weight, key.get_api_key()) == (5, "sk-or-secret-value-42")  # blank kept it

    events = AuditEvent.objects.filter(action__startswith="admin.providerkey").order_by("pk")
    added, changed = events
    assert added.after["api_key"] == "(changed)" and added.reason == "second key for headroom"
    assert changed.before == {"weight": 2} and changed.after == {"weight": 5}
    assert "sk-or-secret-value-42" not in str(added.after) + str(changed.after)


def test_given_a_new_key_without_its_secret_then_the_admin_refuses_it(admin_client, catalog):
    response = admin_client.post("/admin/completions/providerkey/add/", {
        "provider": openrouter().pk, "label": "empty", "weight": 1, "is_active": "on",
        "api_key": "", "change_reason": "x",
    })
    assert response.status_code == 200
    assert "A new key needs its secret." in response.content.decode()
    assert not ProviderKey.objects.exists()


def test_given_a_resting_key_then_the_staff_dashboard_says_until_when(
    tenant, fake_upstream, client_for, admin_client
):
    secrets = _keys(openrouter(), steady=1, flaky=1)
    fake_upstream.key_scenarios[secrets["flaky"]] = "limited:120"
    for _ in range(2):
        client_for(tenant).chat.completions.create(model="openai/gpt-4o-mini", messages=HELLO,
                                                   max_tokens=2)

    page = admin_client.get("/staff/").content.decode()

    table = page[page.index('id="provider-keys"'):]
    rows = {re.findall(r"<td>([^<]*)</td>", row)[1]: row
            for row in re.findall(r"<tr><td>.*?</tr>", table[:table.index("</table>")], re.S)}
    assert "cooling until" in rows["flaky"] and "http_429" in rows["flaky"]
    assert "healthy" in rows["steady"]
    assert secrets["flaky"] not in page


def test_given_a_key_limited_to_2_requests_a_minute_then_it_gets_2_and_the_rest_go_elsewhere(
    tenant, fake_upstream, client_for, monkeypatch
):
    minute = 1_800_000_000.0  # counts are per clock minute: stop the clock inside one
    monkeypatch.setattr(key_limits, "clock", lambda: minute)
    provider = add_provider(f"limited-{tenant.org.pk}", fake_upstream.url)
    add_model("test/limited", [(provider, "their-model")])
    secrets = _keys(provider, capped=1, free=1)
    ProviderKey.objects.filter(label="capped").update(requests_per_minute=2)
    client = client_for(tenant)

    for _ in range(8):
        client.chat.completions.create(model="test/limited", messages=HELLO, max_tokens=2)

    assert _served_by(fake_upstream, secrets) == {"capped": 2, "free": 6}
    # The limited key rests until the minute ends, as the staff dashboard shows.
    [row] = [row for row in routing.provider_keys_health() if row["label"] == "capped"]
    assert row["cooling"] and row["last_failure"] == "key_limit"

    # Every key at its limit: 503, nothing sent, nothing charged. (A key is counted from
    # when it has a limit.)
    ProviderKey.objects.filter(label="free").update(requests_per_minute=1)
    catalog_cache.clear()
    client.chat.completions.create(model="test/limited", messages=HELLO, max_tokens=2)
    fake_upstream.requests.clear()
    charged = usage_charged(tenant)
    with pytest.raises(openai.APIStatusError) as refused:
        client.chat.completions.create(model="test/limited", messages=HELLO, max_tokens=2)
    assert refused.value.status_code == 503 and "request limit" in refused.value.message
    assert not fake_upstream.requests and usage_charged(tenant) == charged
    assert_books_balance(tenant)
