"""A request is charged for all it asked for and no more than it could have used.

- `n` choices: the worst case reserved is n x the completion budget, and the charge covers
  every choice; `n` beyond MAX_CHOICES is refused before anything is reserved.
- An upstream's absurd usage report (10**12 tokens) is held to the request's bounds (the
  model's context window, the budget of every choice) before anything is written: the charge
  is what was committed, the record says "clamped", the receipt is final.
"""

from __future__ import annotations

from decimal import Decimal

import openai
import pytest

from billing.models import LedgerEntry, Reservation
from billing.pricing import price_request
from completions.catalog import catalog_cache
from completions.models import CatalogModel, UsageRecord
from completions.schemas import MAX_CHOICES
from completions.tokens import estimate_prompt_tokens
from tests.completions.helpers import (
    assert_books_balance,
    bearer,
    only_usage_record,
    parsed_events,
    post_chat,
    usage_charged,
)

QUESTION = [{"role": "user", "content": "Say something"}]


def _credits(model_id: str, prompt: int, completion: int) -> int:
    multiplier = CatalogModel.objects.get(model_id=model_id).multiplier
    return price_request(multiplier=Decimal(multiplier), prompt_tokens=prompt,
                         completion_tokens=completion).total


@pytest.mark.parametrize("stream", [False, True], ids=["complete", "stream"])
def test_given_n_choices_then_every_choice_is_reserved_for_and_charged(
    tenant, fake_upstream, http, stream
):
    fake_upstream.chunks = 20
    body = {"model": "openai/gpt-4o-mini", "max_tokens": 20, "n": 8, "messages": QUESTION,
            "stream": stream}

    response = post_chat(http, tenant, body)

    assert response.status_code == 200
    record = only_usage_record(tenant)
    sent = fake_upstream.requests[0]["body"]
    assert sent["n"] == 8
    reservation = Reservation.objects.get(request_id=record.request_id)
    prompt_estimate = estimate_prompt_tokens(sent["messages"])
    assert reservation.amount == _credits("openai/gpt-4o-mini", prompt_estimate, 8 * 20)
    assert record.completion_tokens == 8 * 20
    expected = _credits("openai/gpt-4o-mini", record.prompt_tokens, 8 * 20)
    assert expected > _credits("openai/gpt-4o-mini", record.prompt_tokens, 20)
    assert record.credits == expected == usage_charged(tenant)
    if stream:
        indexes = {choice["index"] for chunk in parsed_events(response.text)
                   for choice in chunk["choices"]}
        assert indexes == set(range(8))
    else:
        assert len(response.json()["choices"]) == 8
        assert response.json()["usage"]["credits_used"] == expected
    assert_books_balance(tenant)


@pytest.mark.parametrize("n", [0, MAX_CHOICES + 1, 1000, "2", 1.5])
def test_given_n_out_of_bounds_then_400_and_nothing_reserved(tenant, fake_upstream, http, n):
    response = post_chat(http, tenant, {"model": "openai/gpt-4o-mini", "n": n,
                                        "messages": QUESTION})

    assert response.status_code == 400
    assert response.json()["error"]["param"] == "n"
    assert not Reservation.objects.exists()
    assert not fake_upstream.requests


def test_given_n_on_the_echo_model_then_it_answers_every_choice_and_each_is_paid_for(
    tenant, client_for
):
    client = client_for(tenant)

    completion = client.chat.completions.create(model="novakit/echo", messages=QUESTION, n=3)

    assert [choice.index for choice in completion.choices] == [0, 1, 2]
    assert {choice.message.content for choice in completion.choices} == {"Echo: Say something"}
    one = client.chat.completions.create(model="novakit/echo", messages=QUESTION)
    assert completion.usage.completion_tokens == 3 * one.usage.completion_tokens
    records = {r.request_id: r for r in UsageRecord.objects.all()}
    assert records[completion.id].completion_tokens == 3 * records[one.id].completion_tokens


def test_given_n_on_a_streamed_echo_then_every_choice_streams(tenant, client_for):
    client = client_for(tenant)

    stream = client.chat.completions.create(model="novakit/echo", messages=QUESTION, n=2,
                                            stream=True)
    texts: dict[int, str] = {}
    for chunk in stream:
        for choice in chunk.choices:
            texts[choice.index] = texts.get(choice.index, "") + (choice.delta.content or "")

    assert texts == {0: "Echo: Say something", 1: "Echo: Say something"}


@pytest.mark.parametrize("stream", [False, True], ids=["complete", "stream"])
def test_given_an_upstream_reporting_absurd_usage_then_it_is_billed_at_the_bounds(
    tenant, fake_upstream, http, stream
):
    fake_upstream.scenario = "huge_usage"
    body = {"model": "openai/gpt-4o-mini", "max_tokens": 50, "messages": QUESTION,
            "stream": stream}

    response = post_chat(http, tenant, body)

    assert response.status_code == 200
    record = only_usage_record(tenant)
    context = CatalogModel.objects.get(model_id="openai/gpt-4o-mini").context_length
    assert (record.prompt_tokens, record.completion_tokens) == (context, 50)
    assert record.usage_source == "clamped"
    reservation = Reservation.objects.get(request_id=record.request_id)
    # The bounds priced exceed the worst case reserved; the charge is capped at the hold.
    assert record.credits == reservation.amount == reservation.charged == usage_charged(tenant)
    usage = (parsed_events(response.text)[-1] if stream else response.json())["usage"]
    assert usage["credits_used"] == record.credits
    receipt = http.get(f"/generations/{record.request_id}", headers=bearer(tenant)).json()
    assert (receipt["status"], receipt["credits_used"]) == ("ok", record.credits)
    assert_books_balance(tenant)


def test_given_absurd_usage_then_the_receipt_and_ledger_agree_with_the_answer(
    tenant, fake_upstream, client_for
):
    fake_upstream.scenario = "huge_usage"
    client = client_for(tenant)

    completion = client.chat.completions.create(model="openai/gpt-4o-mini", messages=QUESTION,
                                                max_tokens=10)

    entry = LedgerEntry.objects.get(request_id=completion.id, kind=LedgerEntry.Kind.USAGE)
    assert completion.usage.credits_used == -entry.amount  # type: ignore[attr-defined]
    assert completion.usage.completion_tokens == 10


def test_given_a_model_whose_context_the_usage_exceeds_then_prompt_is_held_to_it(
    tenant, fake_upstream, http
):
    CatalogModel.objects.filter(model_id="openai/gpt-4o-mini").update(context_length=4096)
    catalog_cache.clear()
    fake_upstream.scenario = "huge_usage"

    response = post_chat(http, tenant, {"model": "openai/gpt-4o-mini", "max_tokens": 5,
                                        "messages": QUESTION})

    assert response.status_code == 200
    assert response.json()["usage"]["prompt_tokens"] == 4096
    assert only_usage_record(tenant).prompt_tokens == 4096


def test_given_an_sdk_client_then_n_beyond_the_bound_is_a_typed_400(tenant, client_for):
    client = client_for(tenant)

    with pytest.raises(openai.BadRequestError) as raised:
        client.chat.completions.create(model="novakit/echo", messages=QUESTION,
                                       n=MAX_CHOICES + 1)

    assert raised.value.body["param"] == "n"  # type: ignore[index]
