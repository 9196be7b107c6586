"""Every way a request can end settles it exactly once: one usage record, a ledger that adds up
to the balance, nothing left reserved, and a charge for what was delivered and nothing more.

Paths: completed; streamed; the client leaving mid-stream or mid-wait; the upstream failing
before its first byte (released, the right 5xx) or after it (one SSE error event, no [DONE],
charged for what was delivered); fallback to a second route; the SDK's retries.
"""

from __future__ import annotations

import time
from decimal import Decimal

import httpx
import openai
import orjson
import pytest

from billing.models import Reservation
from billing.pricing import price_request
from completions.models import UsageRecord
from completions.tokens import count_text, estimate_prompt_tokens
from tests.completions.helpers import (
    add_model,
    add_provider,
    assert_books_balance,
    bearer,
    dead_port,
    only_usage_record,
    openrouter,
    parsed_events,
    post_chat,
    sse_events,
    usage_charged,
    wait_for_usage,
)
from tests.support.openai_schema import validate

STORY = [{"role": "user", "content": "Tell me a story"}]


def _price(multiplier: str, prompt: int, completion: int) -> int:
    return price_request(multiplier=Decimal(multiplier), prompt_tokens=prompt,
                         completion_tokens=completion).total


def _prompt_estimate(fake_upstream) -> int:
    """What the gateway estimated the prompt at: the same tokenizer over what it sent upstream."""
    return estimate_prompt_tokens(fake_upstream.requests[0]["body"]["messages"])


def _text(chunks: list[dict]) -> str:
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])


def _assert_released(tenant, record: UsageRecord, *, status: int, code: str) -> None:
    assert (record.status, record.http_status, record.error_code) == ("error", status, code)
    assert record.credits == 0
    assert Reservation.objects.get(request_id=record.request_id).status == "released"
    assert usage_charged(tenant) == 0
    assert tenant.refresh_account().balance == 1_000_000
    assert_books_balance(tenant)


# --- completed ---------------------------------------------------------------------------------


def test_given_a_completion_then_the_upstreams_usage_is_charged_once(
    tenant, fake_upstream, client_for
):
    completion = client_for(tenant).chat.completions.create(
        model="openai/gpt-4o", messages=STORY, max_tokens=6
    )

    usage = completion.usage
    expected = _price("2.0", usage.prompt_tokens, usage.completion_tokens)
    record = only_usage_record(tenant)
    assert (record.request_id, record.status, record.usage_source) == (completion.id, "ok",
                                                                        "upstream")
    assert record.credits == usage.model_extra["credits_used"] == expected == usage_charged(tenant)
    assert Reservation.objects.get(request_id=completion.id).status == "settled"
    assert tenant.refresh_account().balance == 1_000_000 - expected
    assert_books_balance(tenant)


def test_given_a_stream_then_the_upstreams_usage_is_charged_once(tenant, fake_upstream, http):
    response = post_chat(http, tenant, {"model": "openai/gpt-4o", "messages": STORY,
                                        "stream": True, "max_tokens": 6})

    final = parsed_events(response.text)[-1]
    usage = final["usage"]
    expected = _price("2.0", usage["prompt_tokens"], usage["completion_tokens"])
    record = only_usage_record(tenant)
    assert (record.status, record.streamed, record.ttft_ms is not None) == ("ok", True, True)
    assert record.credits == usage["credits_used"] == expected == usage_charged(tenant)
    assert_books_balance(tenant)


def test_given_two_tenants_then_each_pays_for_its_own_requests_only(
    tenant, other_tenant, fake_upstream, client_for
):
    mine = client_for(tenant).chat.completions.create(model="openai/gpt-4o-mini", messages=STORY,
                                                      max_tokens=3)

    assert usage_charged(tenant) == mine.usage.model_extra["credits_used"]
    assert usage_charged(other_tenant) == 0
    assert not UsageRecord.objects.filter(organization=other_tenant.org).exists()
    assert_books_balance(other_tenant)


# --- the client goes away -------------------------------------------------------------------


def test_given_a_client_that_leaves_mid_stream_then_it_pays_for_what_it_was_sent(
    tenant, fake_upstream, http
):
    fake_upstream.scenario = "slow:0.3"
    fake_upstream.chunks = 30
    body = orjson.dumps({"model": "openai/gpt-4o", "messages": STORY, "stream": True})
    received: list[dict] = []

    with http.stream("POST", "/chat/completions", content=body,
                     headers={**bearer(tenant), "Content-Type": "application/json"}) as response:
        request_id = response.headers["x-request-id"]
        for line in response.iter_lines():
            if line.startswith("data:"):
                received.append(orjson.loads(line[5:]))
            if len(received) == 3:  # the role chunk and two words
                break

    record = wait_for_usage(request_id)
    delivered = _text(received)
    assert delivered == "The quick"
    assert (record.status, record.http_status, record.error_code) == ("cancelled", 499,
                                                                      "client_closed")
    assert record.usage_source == "tokenizer"
    assert record.completion_tokens == count_text(delivered)
    expected = _price("2.0", _prompt_estimate(fake_upstream), count_text(delivered))
    assert record.credits == expected == usage_charged(tenant)
    assert Reservation.objects.get(request_id=request_id).status == "settled"
    assert UsageRecord.objects.count() == 1
    assert_books_balance(tenant)


def test_given_a_client_that_gives_up_waiting_then_it_pays_for_the_prompt_only(
    tenant, fake_upstream, client_for
):
    fake_upstream.scenario = "hang"
    client = client_for(tenant, timeout=0.5)

    with pytest.raises(openai.APITimeoutError):
        client.chat.completions.create(model="openai/gpt-4o", messages=STORY, max_tokens=100)

    record = only_usage_record(tenant)
    assert (record.status, record.error_code, record.completion_tokens) == ("cancelled",
                                                                            "client_closed", 0)
    assert record.credits == _price("2.0", _prompt_estimate(fake_upstream), 0) == usage_charged(
        tenant)
    assert_books_balance(tenant)


@pytest.mark.parametrize("stream", [False, True], ids=["complete", "stream"])
def test_given_a_client_that_leaves_before_the_first_byte_then_it_pays_for_the_prompt_alike(
    tenant, fake_upstream, http, stream
):
    """One disconnect rule for streams and non-streams: the provider was sent the prompt."""
    fake_upstream.scenario = "hang"

    with pytest.raises(httpx.ReadTimeout):
        post_chat(http, tenant, {"model": "openai/gpt-4o", "messages": STORY, "stream": stream},
                  timeout=0.5)

    record = only_usage_record(tenant)
    assert (record.status, record.error_code, record.completion_tokens) == (
        "cancelled", "client_closed", 0)
    assert record.credits == _price("2.0", _prompt_estimate(fake_upstream), 0) == usage_charged(
        tenant)
    assert Reservation.objects.get(request_id=record.request_id).status == "settled"
    assert_books_balance(tenant)


# --- the upstream fails before its first byte ------------------------------------------------


@pytest.mark.parametrize("stream", [False, True], ids=["complete", "stream"])
@pytest.mark.parametrize(
    ("scenario", "status", "code"),
    [
        ("status:500", 502, "upstream_error"),
        ("status:503", 502, "upstream_error"),
        ("status:429", 503, "upstream_unavailable"),
        ("status:401", 502, "upstream_error"),
        ("hang", 504, "upstream_timeout"),
    ],
)
def test_given_an_upstream_failing_before_its_first_byte_then_nothing_is_charged(
    tenant, fake_upstream, http, settings, stream, scenario, status, code
):
    settings.UPSTREAM_FIRST_BYTE_TIMEOUT = 0.3
    fake_upstream.scenario = scenario

    response = post_chat(http, tenant, {"messages": STORY, "stream": stream})

    assert response.status_code == status
    body = response.json()
    validate(body, "ErrorResponse")
    assert body["error"]["code"] == body["code"] == code
    assert "fake upstream says 401" not in body["error"]["message"]  # never the provider's auth
    record = only_usage_record(tenant)
    assert record.request_id == response.headers["x-request-id"]
    _assert_released(tenant, record, status=status, code=code)


@pytest.mark.parametrize("stream", [False, True], ids=["complete", "stream"])
def test_given_an_upstream_that_refuses_connections_then_503_and_nothing_is_charged(
    tenant, fake_upstream, http, settings, stream
):
    settings.OPENROUTER_BASE_URL = f"http://127.0.0.1:{dead_port()}/v1"
    from completions.catalog import catalog_cache

    catalog_cache.clear()

    response = post_chat(http, tenant, {"messages": STORY, "stream": stream})

    assert response.status_code == 503
    assert response.json()["error"]["code"] == "upstream_unavailable"
    _assert_released(tenant, only_usage_record(tenant), status=503, code="upstream_unavailable")


def test_given_a_malformed_completion_then_502_and_nothing_is_charged(tenant, fake_upstream, http):
    fake_upstream.scenario = "malformed"

    response = post_chat(http, tenant, {"messages": STORY})

    assert response.status_code == 502
    assert response.json()["error"]["code"] == "upstream_error"
    _assert_released(tenant, only_usage_record(tenant), status=502, code="upstream_error")


@pytest.mark.parametrize("stream", [False, True], ids=["complete", "stream"])
def test_given_a_provider_refusing_the_callers_request_then_400_with_the_providers_message(
    tenant, fake_upstream, http, stream
):
    fake_upstream.scenario = "status:400"

    response = post_chat(http, tenant, {"messages": STORY, "stream": stream})

    assert response.status_code == 400
    body = response.json()
    validate(body, "ErrorResponse")
    assert body["error"]["code"] == "invalid_request"
    assert body["error"]["message"] == "fake upstream says 400"
    assert len(fake_upstream.requests) == 1
    _assert_released(tenant, only_usage_record(tenant), status=400, code="invalid_request")


def test_given_the_sdk_retrying_a_failing_upstream_then_no_attempt_is_charged(
    tenant, fake_upstream, client_for
):
    fake_upstream.scenario = "status:500"
    client = client_for(tenant, max_retries=2)

    with pytest.raises(openai.InternalServerError) as caught:
        client.chat.completions.create(model="openai/gpt-4o-mini", messages=STORY)

    assert caught.value.status_code == 502
    assert len(fake_upstream.requests) == 3
    records = list(UsageRecord.objects.all())
    assert len(records) == 3
    assert len({record.request_id for record in records}) == 3
    assert all(record.status == "error" and record.credits == 0 for record in records)
    assert set(Reservation.objects.values_list("status", flat=True)) == {"released"}
    assert usage_charged(tenant) == 0
    assert_books_balance(tenant)


# --- the upstream fails after its first byte --------------------------------------------------


@pytest.mark.parametrize(
    ("scenario", "delivered"),
    [
        ("cut:3", "The quick brown"),
        ("error_event:2", "The quick"),
        ("malformed", "The"),
    ],
)
def test_given_an_upstream_failing_mid_stream_then_one_error_event_and_a_charge_for_what_was_sent(
    tenant, fake_upstream, http, scenario, delivered
):
    fake_upstream.scenario = scenario

    response = post_chat(http, tenant, {"model": "openai/gpt-4o", "messages": STORY,
                                        "stream": True})

    assert response.status_code == 200
    events = sse_events(response.text)
    assert "[DONE]" not in events
    payloads = [orjson.loads(event) for event in events]
    errors = [p for p in payloads if "error" in p]
    assert len(errors) == 1 and payloads[-1] is errors[0]
    validate(errors[0], "ErrorResponse")
    assert errors[0]["error"]["code"] == "upstream_error"
    chunks = payloads[:-1]
    for chunk in chunks:
        validate(chunk, "CreateChatCompletionStreamResponse")
    assert _text(chunks) == delivered
    record = only_usage_record(tenant)
    assert (record.status, record.http_status, record.error_code) == ("error", 502,
                                                                      "upstream_error")
    assert record.completion_tokens == count_text(delivered)
    expected = _price("2.0", _prompt_estimate(fake_upstream), count_text(delivered))
    assert record.credits == expected == usage_charged(tenant)
    assert_books_balance(tenant)


def test_given_an_upstream_going_quiet_mid_stream_then_a_timeout_error_event(
    tenant, fake_upstream, http, settings
):
    settings.UPSTREAM_CHUNK_TIMEOUT = 0.3
    fake_upstream.scenario = "slow:1"

    started = time.monotonic()
    response = post_chat(http, tenant, {"messages": STORY, "stream": True})

    assert time.monotonic() - started < 4  # the whole stream would take 8 seconds
    events = sse_events(response.text)
    assert "[DONE]" not in events
    last = orjson.loads(events[-1])
    assert last["error"]["code"] == "upstream_timeout"
    record = only_usage_record(tenant)
    assert (record.status, record.error_code) == ("error", "upstream_timeout")
    assert_books_balance(tenant)


def test_given_the_sdk_reading_a_stream_that_fails_then_it_raises(tenant, fake_upstream,
                                                                  client_for):
    fake_upstream.scenario = "error_event:2"

    stream = client_for(tenant).chat.completions.create(
        model="openai/gpt-4o-mini", messages=STORY, stream=True
    )
    with pytest.raises(openai.APIError, match="mid-stream"):
        for _ in stream:
            pass


# --- fallback to the next route ----------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True], ids=["complete", "stream"])
@pytest.mark.parametrize("first", ["refused", "status:500", "status:429", "hang"])
def test_given_a_failing_first_route_then_the_second_answers_and_is_recorded(
    tenant, fake_upstream, http, settings, stream, first
):
    settings.UPSTREAM_FIRST_BYTE_TIMEOUT = 0.3
    broken_url = (f"http://127.0.0.1:{dead_port()}/v1" if first == "refused"
                  else fake_upstream.url_for(first))
    broken = add_provider("broken", broken_url)
    add_model("test/fallback", [(broken, "broken-model"), (openrouter(), "healthy-model")],
              tier="standard", multiplier="1.5")

    response = post_chat(http, tenant, {"model": "test/fallback", "messages": STORY,
                                        "stream": stream, "max_tokens": 4})

    assert response.status_code == 200, response.text
    if stream:
        chunks = parsed_events(response.text)
        assert _text(chunks) == "The quick brown fox"
        usage = chunks[-1]["usage"]
    else:
        assert response.json()["choices"][0]["message"]["content"] == "The quick brown fox"
        usage = response.json()["usage"]
    models_tried = [r["body"]["model"] for r in fake_upstream.requests]
    assert models_tried[-1] == "healthy-model"
    record = only_usage_record(tenant)
    assert (record.status, record.provider, record.model) == ("ok", "openrouter", "test/fallback")
    expected = _price("1.5", usage["prompt_tokens"], usage["completion_tokens"])
    assert record.credits == usage["credits_used"] == expected == usage_charged(tenant)
    assert_books_balance(tenant)


@pytest.mark.parametrize("stream", [False, True], ids=["complete", "stream"])
def test_given_every_route_failing_then_the_last_failure_is_answered_and_nothing_charged(
    tenant, fake_upstream, http, stream
):
    first = add_provider("first", fake_upstream.url_for("status:500"))
    second = add_provider("second", fake_upstream.url_for("status:429"))
    add_model("test/doomed", [(first, "a"), (second, "b")])

    response = post_chat(http, tenant, {"model": "test/doomed", "messages": STORY,
                                        "stream": stream})

    assert response.status_code == 503
    assert [r["body"]["model"] for r in fake_upstream.requests] == ["a", "b"]
    record = only_usage_record(tenant)
    assert record.provider == "second"
    _assert_released(tenant, record, status=503, code="upstream_unavailable")


@pytest.mark.parametrize("stream", [False, True], ids=["complete", "stream"])
def test_given_a_first_route_refusing_the_request_itself_then_no_fallback(
    tenant, fake_upstream, http, stream
):
    picky = add_provider("picky", fake_upstream.url_for("status:400"))
    add_model("test/picky", [(picky, "a"), (openrouter(), "b")])

    response = post_chat(http, tenant, {"model": "test/picky", "messages": STORY,
                                        "stream": stream})

    assert response.status_code == 400
    assert [r["body"]["model"] for r in fake_upstream.requests] == ["a"]
    _assert_released(tenant, only_usage_record(tenant), status=400, code="invalid_request")


def test_given_a_route_failing_after_its_first_byte_then_there_is_no_fallback(
    tenant, fake_upstream, http
):
    cut = add_provider("cut", fake_upstream.url_for("cut:2"))
    add_model("test/cut", [(cut, "a"), (openrouter(), "b")])

    response = post_chat(http, tenant, {"model": "test/cut", "messages": STORY, "stream": True})

    assert orjson.loads(sse_events(response.text)[-1])["error"]["code"] == "upstream_error"
    assert [r["body"]["model"] for r in fake_upstream.requests] == ["a"]
    record = only_usage_record(tenant)
    assert (record.status, record.provider) == ("error", "cut")
    assert_books_balance(tenant)


# --- answers of the wrong shape -----------------------------------------------------------------


def test_given_a_completion_of_the_wrong_shape_then_502_and_nothing_is_charged(
    tenant, fake_upstream, http
):
    fake_upstream.scenario = "garbled"

    response = post_chat(http, tenant, {"messages": STORY})

    assert response.status_code == 502
    assert response.json()["error"]["code"] == "upstream_error"
    _assert_released(tenant, only_usage_record(tenant), status=502, code="upstream_error")


def test_given_a_first_route_answering_garbage_then_the_second_route_answers(
    tenant, fake_upstream, http
):
    garbled = add_provider("garbled", fake_upstream.url_for("garbled"))
    add_model("test/garbled", [(garbled, "a"), (openrouter(), "b")])

    response = post_chat(http, tenant, {"model": "test/garbled", "messages": STORY,
                                        "max_tokens": 2})

    assert response.status_code == 200
    assert only_usage_record(tenant).provider == "openrouter"
    assert_books_balance(tenant)


def test_given_a_stream_chunk_of_the_wrong_shape_then_an_upstream_error_event(
    tenant, fake_upstream, http
):
    fake_upstream.scenario = "garbled"

    response = post_chat(http, tenant, {"messages": STORY, "stream": True})

    events = sse_events(response.text)
    assert "[DONE]" not in events
    assert orjson.loads(events[-1])["error"]["code"] == "upstream_error"
    record = only_usage_record(tenant)
    assert (record.status, record.error_code) == ("error", "upstream_error")
    assert_books_balance(tenant)


def test_given_a_stream_cut_after_its_finish_chunk_then_the_held_chunk_is_not_charged(
    tenant, fake_upstream, http
):
    fake_upstream.scenario = "finish_cut"

    response = post_chat(http, tenant, {"model": "openai/gpt-4o", "messages": STORY,
                                        "stream": True, "max_tokens": 4})

    payloads = [orjson.loads(event) for event in sse_events(response.text)]
    # The last word rode on the finish chunk, held back for the usage: the cut came first,
    # so the client never got it and does not pay for it.
    assert _text(payloads[:-1]) == "The quick brown"
    assert payloads[-1]["error"]["code"] == "upstream_error"
    record = only_usage_record(tenant)
    assert record.completion_tokens == count_text("The quick brown")
    assert record.credits == _price("2.0", _prompt_estimate(fake_upstream),
                                    count_text("The quick brown"))
    assert_books_balance(tenant)
