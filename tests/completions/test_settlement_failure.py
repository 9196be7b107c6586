"""A settlement the database refuses (not an outage) never gives the answer away.

The database itself refuses: a trigger, installed for the test, rejects the usage
record of requests sent with `user: "poison"` (the way a value out of a column's
range once did). Either the request is settled as a charge of its reservation
(the fallback, recorded as such), or, when that is refused too, the client gets
a 500 (a stream: an error event and no [DONE]) and nothing is charged.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from django.db import connection

from billing.models import LedgerEntry, Reservation
from completions.models import UsageRecord
from tests.completions.helpers import (
    assert_books_balance,
    bearer,
    parsed_events,
    post_chat,
    sse_events,
    usage_charged,
)
from tests.support.openai_schema import validate

POISON = {"model": "openai/gpt-4o-mini", "user": "poison", "max_tokens": 50,
          "messages": [{"role": "user", "content": "Hello"}]}


def _install_trigger(*, spare_fallback: bool) -> None:
    table = UsageRecord._meta.db_table
    spared = "AND NEW.usage_source <> 'fallback'" if spare_fallback else ""
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(
                "CREATE FUNCTION test_poison() RETURNS trigger AS $$ BEGIN "
                f"IF NEW.end_user = 'poison' {spared} THEN "
                "RAISE EXCEPTION 'poisoned usage record'; END IF; RETURN NEW; END $$ "
                "LANGUAGE plpgsql")
            cursor.execute(f"CREATE TRIGGER test_poison BEFORE INSERT ON {table} "
                           "FOR EACH ROW EXECUTE FUNCTION test_poison()")
        else:
            cursor.execute(f"CREATE TRIGGER test_poison BEFORE INSERT ON {table} "
                           f"WHEN NEW.end_user = 'poison' {spared} "
                           "BEGIN SELECT RAISE(ABORT, 'poisoned usage record'); END")


def _drop_trigger() -> None:
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(f"DROP TRIGGER IF EXISTS test_poison ON {UsageRecord._meta.db_table}")
            cursor.execute("DROP FUNCTION IF EXISTS test_poison()")
        else:
            cursor.execute("DROP TRIGGER IF EXISTS test_poison")


@pytest.fixture
def refused_once(live_gateway) -> Iterator[None]:  # type: ignore[no-untyped-def]
    """The database refuses a poisoned request's record, but not its fallback record."""
    _install_trigger(spare_fallback=True)
    yield
    _drop_trigger()


@pytest.fixture
def refused_always(live_gateway) -> Iterator[None]:  # type: ignore[no-untyped-def]
    """The database refuses every record of a poisoned request."""
    _install_trigger(spare_fallback=False)
    yield
    _drop_trigger()


@pytest.mark.parametrize("stream", [False, True], ids=["complete", "stream"])
def test_given_a_refused_settlement_then_the_reservation_is_charged_and_recorded(
    tenant, fake_upstream, http, refused_once, stream
):
    response = post_chat(http, tenant, {**POISON, "stream": stream})

    assert response.status_code == 200
    record = UsageRecord.objects.get(organization=tenant.org)
    assert (record.status, record.usage_source, record.error_code) == (
        "ok", "fallback", "settlement_failed")
    reservation = Reservation.objects.get(request_id=record.request_id)
    assert record.credits == reservation.amount == reservation.charged == usage_charged(tenant)
    usage = (parsed_events(response.text)[-1] if stream else response.json())["usage"]
    assert usage["credits_used"] == record.credits
    receipt = http.get(f"/generations/{record.request_id}", headers=bearer(tenant)).json()
    assert receipt["status"] == "ok"
    assert_books_balance(tenant)


def test_given_a_settlement_refused_twice_then_the_answer_is_a_500_not_a_free_200(
    tenant, fake_upstream, http, refused_always
):
    def send():  # type: ignore[no-untyped-def]
        return http.post("/chat/completions", json=POISON,
                         headers={**bearer(tenant), "Idempotency-Key": "once"})

    response = send()

    assert response.status_code == 500
    validate(response.json(), "ErrorResponse")
    assert response.json()["error"]["code"] == "server_error"
    assert not LedgerEntry.objects.filter(kind=LedgerEntry.Kind.USAGE).exists()
    # Left open for the expiry job, which records it as interrupted.
    assert Reservation.objects.get(account=tenant.account).status == "open"
    replay = send()
    assert replay.status_code == 500  # a 5xx is not stored, so nothing free is replayed


def test_given_a_stream_whose_settlement_is_refused_twice_then_it_ends_in_an_error_event(
    tenant, fake_upstream, http, refused_always
):
    response = post_chat(http, tenant, {**POISON, "stream": True})

    events = sse_events(response.text)
    assert "[DONE]" not in events
    last = parsed_events(response.text)[-1]
    assert last["error"]["code"] == "server_error"
    assert not any("usage" in event for event in parsed_events(response.text))
    assert not LedgerEntry.objects.filter(kind=LedgerEntry.Kind.USAGE).exists()
