"""Settlement at the moments a client can leave that the live tests cannot time precisely.

Django's ASGI handler can let go of a streaming response in three ways: it sends it in full;
the client leaves while a chunk is being written (Django closes its own wrapper around our
iterator, then calls `response.close()`); or the client leaves while the response is still in
the middleware, so our iterator never starts and the response is simply dropped. And a client
can leave while its credits are being reserved, in a thread that goes on regardless. These
tests drive the gateway's functions the way Django's handler does, against the real fake
upstream and the real database.
"""

from __future__ import annotations

import asyncio
import gc
import threading

import orjson
import pytest
from asgiref.sync import sync_to_async
from django.conf import settings

from accounts.auth import aauthenticate
from billing.models import Reservation
from billing.pricing import price_request
from completions import admission, gateway, relay
from completions.catalog import catalog_cache
from completions.models import UsageRecord
from completions.schemas import ChatCompletionRequest
from completions.tokens import count_text
from novakit.runtime.db import db_async
from tests.completions.helpers import assert_books_balance, usage_charged

pytestmark = pytest.mark.usefixtures("transactional_db")

STORY = [{"role": "user", "content": "Tell me a story"}]


async def _open_stream(tenant, **body):
    key = await aauthenticate(f"Bearer {tenant.secret}", scope=None)
    request = ChatCompletionRequest.model_validate({"messages": STORY, "stream": True, **body})
    admitted = await admission.admit(request, key, admission.new_request_id())
    upstream, route = await gateway.open_with_fallback(admitted)
    return admitted, upstream, relay.stream_response(admitted, upstream, route)


async def _usage_record(request_id: str) -> UsageRecord:
    for _ in range(250):
        record = await UsageRecord.objects.filter(request_id=request_id).afirst()
        if record is not None:
            return record
        await asyncio.sleep(0.02)
    raise AssertionError(f"{request_id} was never settled")


async def _closed_soon(response) -> bool:
    """The relay settles first and closes the upstream response right after."""
    for _ in range(50):
        if response.closed:
            return True
        await asyncio.sleep(0.02)
    return False


def _prompt_price(admitted, completion_tokens: int = 0) -> int:
    return price_request(multiplier=admitted.model.multiplier,
                         prompt_tokens=admitted.prompt_estimate,
                         completion_tokens=completion_tokens).total


async def test_given_a_stream_sent_in_full_then_closing_it_changes_nothing(
    tenant, fake_upstream
):
    admitted, _, response = await _open_stream(tenant, max_tokens=3)

    body = b"".join([part async for part in response])
    await sync_to_async(response.close)()
    await asyncio.sleep(0.1)

    assert body.endswith(b"data: [DONE]\n\n")
    record = await _usage_record(admitted.request_id)
    assert (record.status, record.completion_tokens) == ("ok", 3)
    assert await UsageRecord.objects.acount() == 1
    await sync_to_async(assert_books_balance)(tenant)


async def test_given_a_client_that_left_while_a_chunk_was_written_then_close_settles_it(
    tenant, fake_upstream
):
    fake_upstream.scenario = "slow:0.05"
    admitted, upstream, response = await _open_stream(tenant)
    content = aiter(response)  # what Django's send_response consumes
    received = [await anext(content) for _ in range(3)]

    # The send was cancelled: Django closes its own wrapper, then the response.
    await content.aclose()
    await sync_to_async(response.close)()
    record = await _usage_record(admitted.request_id)

    delivered = "".join(orjson.loads(part[6:])["choices"][0]["delta"].get("content") or ""
                        for part in received)
    assert delivered == "The quick"
    assert (record.status, record.error_code) == ("cancelled", "client_closed")
    assert record.credits == _prompt_price(admitted, count_text(delivered))
    assert record.credits == await sync_to_async(usage_charged)(tenant)
    assert await _closed_soon(upstream.response)
    await sync_to_async(assert_books_balance)(tenant)


async def test_given_a_response_never_started_when_django_closes_it_then_it_is_settled(
    tenant, fake_upstream
):
    fake_upstream.scenario = "slow:0.05"
    admitted, upstream, response = await _open_stream(tenant)

    await sync_to_async(response.close)()
    record = await _usage_record(admitted.request_id)

    assert (record.status, record.completion_tokens) == ("cancelled", 0)
    # The upstream had the prompt (its first event came): the prompt is charged, as when
    # a client leaves at any other point.
    assert record.credits == _prompt_price(admitted)
    assert (await Reservation.objects.aget(request_id=admitted.request_id)).status == "settled"
    assert await _closed_soon(upstream.response)
    await sync_to_async(assert_books_balance)(tenant)


async def test_given_a_response_dropped_in_the_middleware_then_it_is_still_settled(
    tenant, fake_upstream
):
    fake_upstream.scenario = "slow:0.05"
    admitted, upstream, response = await _open_stream(tenant)

    del response  # cancelled before the handler got it: nobody iterates or closes it
    gc.collect()
    record = await _usage_record(admitted.request_id)

    assert record.status == "cancelled"
    assert record.credits == _prompt_price(admitted)
    await asyncio.sleep(0.05)
    assert await _closed_soon(upstream.response)
    await sync_to_async(assert_books_balance)(tenant)


async def test_given_a_settled_stream_when_closed_and_dropped_again_then_one_record(
    tenant, fake_upstream
):
    admitted, _, response = await _open_stream(tenant, max_tokens=2)
    content = aiter(response)
    parts = [part async for part in content]

    await sync_to_async(response.close)()
    await sync_to_async(response.close)()
    del response, content
    gc.collect()
    await asyncio.sleep(0.1)

    assert parts[-1] == b"data: [DONE]\n\n"
    assert await UsageRecord.objects.filter(request_id=admitted.request_id).acount() == 1
    await sync_to_async(assert_books_balance)(tenant)


async def test_given_a_client_that_leaves_while_its_credits_are_reserved_then_they_are_given_back(
    tenant, fake_upstream
):
    key = await aauthenticate(f"Bearer {tenant.secret}", scope=None)
    await catalog_cache.get()
    count_text("warm the tokenizer up")
    request = ChatCompletionRequest.model_validate({"messages": STORY})
    request_id = admission.new_request_id()
    # Occupy every database thread (novakit/runtime/db.py), so the reservation is still
    # waiting for one when the client leaves.
    gate = threading.Event()
    blockers = [asyncio.ensure_future(db_async(gate.wait)()) for _ in range(settings.DB_THREADS)]
    admitting = asyncio.ensure_future(admission.admit(request, key, request_id))
    await asyncio.sleep(0.3)

    admitting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await admitting
    gate.set()
    await asyncio.gather(*blockers)
    record = await _usage_record(request_id)

    assert (record.status, record.error_code, record.credits) == ("cancelled", "client_closed", 0)
    assert (await Reservation.objects.aget(request_id=request_id)).status == "released"
    assert fake_upstream.requests == []
    await sync_to_async(assert_books_balance)(tenant)
