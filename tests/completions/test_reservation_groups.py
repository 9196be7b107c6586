"""Requests that arrive together are reserved as one group; when a group cannot be
covered whole, each is reserved alone and exactly the ones that do not fit get a 402."""

from __future__ import annotations

import asyncio
from typing import Any

import openai
import pytest
from asgiref.sync import sync_to_async

from billing import commit
from billing.models import Reservation
from billing.services import credits_adjust, credits_grant
from completions.models import UsageRecord
from tests.completions.helpers import assert_books_balance

pytestmark = pytest.mark.django_db(transaction=True)

MESSAGES = [{"role": "user", "content": "Tell me a short story"}]


@pytest.fixture
def reservation_groups(monkeypatch) -> list[tuple[int, bool]]:  # type: ignore[no-untyped-def]
    """Every group the gateway wrote, requests written again alone included:
    (size, whether it committed)."""
    groups: list[tuple[int, bool]] = []
    reserve_group = commit.holds.write

    def recorded(holds: list[Any]) -> Any:
        try:
            reservations = reserve_group(holds)
        except Exception:
            groups.append((len(holds), False))
            raise
        groups.append((len(holds), True))
        return reservations

    monkeypatch.setattr(commit.holds, "write", recorded)
    return groups


async def test_given_requests_arriving_together_then_they_are_reserved_in_groups(
    tenant, fake_upstream, async_client_for, reservation_groups
):
    client = async_client_for(tenant)

    answers = await asyncio.gather(*[
        client.chat.completions.create(model="openai/gpt-4o-mini", messages=MESSAGES,
                                       max_tokens=20)
        for _ in range(24)
    ])

    assert sum(size for size, _ in reservation_groups) == 24
    assert all(committed for _, committed in reservation_groups)
    assert max(size for size, _ in reservation_groups) > 1, reservation_groups

    def books() -> None:
        reservations = Reservation.objects.filter(account=tenant.account)
        assert sorted(r.request_id for r in reservations) == sorted(a.id for a in answers)
        assert {r.status for r in reservations} == {Reservation.Status.SETTLED}
        assert UsageRecord.objects.filter(organization=tenant.org).count() == 24
        assert tenant.refresh_account().reserved == 0
        assert_books_balance(tenant)

    await sync_to_async(books)()


async def test_given_a_balance_for_five_when_twelve_arrive_together_then_exactly_five_run(
    tenant_factory, fake_upstream, async_client_for, reservation_groups
):
    poor = await sync_to_async(tenant_factory)("poor", credits=0)
    client = async_client_for(poor)
    # Streams that take a while: all twelve are admitted (or refused) before any settles
    # and gives back the unused part of its reservation.
    slow = [{"role": "user", "content": "Tell me a short story [[fault:slow:0.15]]"}]
    worst_case = await _worst_case(poor, client, slow)
    await sync_to_async(credits_grant)(account=poor.account, amount=5 * worst_case,
                                       reason="test", actor_label="test")

    async def one() -> str:
        try:
            stream = await client.chat.completions.create(
                model="openai/gpt-4o-mini", messages=slow, max_tokens=20, stream=True)
        except openai.APIStatusError as exc:
            assert exc.status_code == 402
            assert exc.body["message"] == "Insufficient credits"
            return "refused"
        async for _ in stream:
            pass
        return "ran"

    outcomes = await asyncio.gather(*[one() for _ in range(12)])

    assert sorted(outcomes).count("ran") == 5
    assert sorted(outcomes).count("refused") == 7
    # The refusals came from a group that could not be covered whole, written again one by one.
    assert any(not committed and size > 1 for size, committed in reservation_groups)

    def books() -> None:
        reservations = Reservation.objects.filter(account=poor.account)
        assert reservations.count() == 1 + 5  # the probe and the five that ran
        assert {r.status for r in reservations} == {Reservation.Status.SETTLED}
        assert poor.refresh_account().reserved == 0
        assert_books_balance(poor)

    await sync_to_async(books)()


async def _worst_case(tenant, client: openai.AsyncOpenAI, messages: list[dict[str, str]]) -> int:  # type: ignore[no-untyped-def]
    """What one such request reserves: one run on a grant that is spent again on nothing."""
    await sync_to_async(credits_grant)(account=tenant.account, amount=1_000_000,
                                       reason="probe", actor_label="test")
    stream = await client.chat.completions.create(
        model="openai/gpt-4o-mini", messages=messages, max_tokens=20, stream=True)
    async for _ in stream:
        pass
    reservation = await Reservation.objects.aget(account=tenant.account)
    account = await sync_to_async(tenant.refresh_account)()
    # Back to an empty balance: what is left of the probe's grant is taken away again.
    await sync_to_async(credits_adjust)(account=account, amount=-account.balance,
                                        reason="probe over", actor_label="test")
    return reservation.amount
