"""Property tests of the money path: random sequences of every billing operation keep the books.

A hypothesis state machine drives grants, reservations, settlements (charging
more than was reserved, too), releases, repeated calls, refunds, adjustments,
expiries of credits, quota changes and the passing of time (expiring stale
reservations, crossing into new quota months) against one fresh account per
example, and checks after every step that:

- the balance is the sum of the ledger's amounts;
- 0 <= reserved <= balance;
- reserved is the sum of the open reservations' amounts;
- each request id has at most one usage entry;
- the quota counters hold exactly the open reservations' tokens and count the
  settled ones'.

A model of the expected state (kept in plain Python here) is compared with the
database at each step too, so a refusal or a charge the model did not expect
fails the example. The concurrent variant at the end races the ways a
reservation can close.
"""

from __future__ import annotations

import datetime as dt
import itertools
from dataclasses import dataclass

import pytest
from django.conf import settings
from django.db import transaction
from django.db.models import Count, Sum
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from accounts.services import api_key_create, organization_create
from billing.models import CreditAccount, LedgerEntry, Quota, QuotaCounter, Reservation
from billing.services import (
    InsufficientCredits,
    QuotaExceeded,
    account_for_organization,
    credits_adjust,
    credits_grant,
    credits_release,
    credits_reserve,
    credits_settle,
    quota_set,
    reservations_expire,
)
from tests.billing.concurrency import run_together

_machines = itertools.count()
START = dt.datetime(2031, 1, 30, 12, 0, tzinfo=dt.UTC)


def month_of(moment: dt.datetime) -> dt.date:
    return moment.date().replace(day=1)


@dataclass
class Open:
    amount: int
    tokens: int
    created: dt.datetime
    counter: tuple[int, dt.date] | None  # (quota generation, month) the tokens are held against


class BillingMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        # Each example runs in a savepoint rolled back at teardown: the expiry
        # job is global, and must not see an earlier example's reservations.
        self._example = transaction.atomic()
        self._example.__enter__()
        organization = organization_create(slug=f"machine-{next(_machines)}")
        self.organization = organization
        self.account = account_for_organization(organization=organization)
        self.key, _ = api_key_create(organization=organization, name="machine")
        self.clock = START
        self.requests = itertools.count()
        # The model.
        self.balance = 0
        self.open: dict[str, Open] = {}
        self.closed: dict[str, int] = {}  # request id -> credits charged
        self.quota_limit: int | None = None
        self.quota_generation = 0
        self.counters: dict[tuple[int, dt.date], list[int]] = {}  # -> [used, reserved]

    @initialize(credits=st.integers(0, 20_000), limit=st.one_of(st.none(), st.integers(0, 8_000)))
    def start_with(self, credits: int, limit: int | None) -> None:
        # Most interesting sequences need credits and a quota to begin with.
        if credits:
            self.grant(credits, purchase=False)
        self.set_token_quota(limit)

    # --- money in and out ---------------------------------------------------------

    @rule(amount=st.integers(1, 5_000), purchase=st.booleans())
    def grant(self, amount: int, purchase: bool) -> None:
        credits_grant(account=self.account, amount=amount, reason="machine",
                      kind="purchase" if purchase else "grant")
        self.balance += amount

    @rule(
        kind=st.sampled_from(["adjustment", "refund", "expiry"]),
        size=st.integers(1, 4_000),
        negative=st.booleans(),
    )
    def adjust(self, kind: str, size: int, negative: bool) -> None:
        amount = {"refund": size, "expiry": -size}.get(kind, -size if negative else size)
        available = self.balance - self.reserved
        if amount < 0 and -amount > available:
            with pytest.raises(InsufficientCredits):
                credits_adjust(account=self.account, amount=amount, reason="machine", kind=kind)
            return
        credits_adjust(account=self.account, amount=amount, reason="machine", kind=kind)
        self.balance += amount

    # --- reservations -------------------------------------------------------------------

    @rule(amount=st.integers(0, 3_000), tokens=st.integers(0, 2_000), with_key=st.booleans())
    def reserve(self, amount: int, tokens: int, with_key: bool) -> None:
        request_id = f"m{self.organization.pk}-{next(self.requests)}"
        counter = None
        if self.quota_limit is not None:
            counter = (self.quota_generation, month_of(self.clock))
        used, held = self.counters.get(counter, [0, 0]) if counter else (0, 0)
        call = dict(organization_id=self.organization.pk,
                    api_key_id=self.key.pk if with_key else None,
                    request_id=request_id, amount=amount, tokens=tokens, now=self.clock)
        if self.quota_limit is not None and used + held + tokens > self.quota_limit:
            with pytest.raises(QuotaExceeded) as refused:
                credits_reserve(**call)
            assert refused.value.extras["remaining"] == max(0, self.quota_limit - used - held)
            return
        if amount > self.balance - self.reserved:
            with pytest.raises(InsufficientCredits) as refused:
                credits_reserve(**call)
            assert refused.value.extras["remaining"] == self.balance - self.reserved
            return
        reservation = credits_reserve(**call)
        assert (reservation.amount, reservation.status) == (amount, "open")
        self.open[request_id] = Open(amount, tokens, self.clock, counter)
        if counter:
            self.counters.setdefault(counter, [0, 0])[1] += tokens

    @precondition(lambda self: self.open or self.closed)
    @rule(data=st.data())
    def reserve_again(self, data: st.DataObject) -> None:
        request_id = data.draw(st.sampled_from(sorted({*self.open, *self.closed})))
        first = Reservation.objects.get(request_id=request_id)

        again = credits_reserve(organization_id=self.organization.pk, api_key_id=None,
                                request_id=request_id, amount=1, tokens=1, now=self.clock)

        assert again.pk == first.pk and again.amount == first.amount

    @precondition(lambda self: self.open)
    @rule(data=st.data(), credits=st.integers(0, 5_000), tokens=st.integers(0, 3_000))
    def settle(self, data: st.DataObject, credits: int, tokens: int) -> None:
        request_id = data.draw(st.sampled_from(sorted(self.open)))
        held = self.open.pop(request_id)

        outcome = credits_settle(request_id=request_id, credits=credits, tokens=tokens,
                                 now=self.clock)

        charge = min(credits, held.amount)  # never more than was reserved
        assert (outcome.already_closed, outcome.charged) == (False, charge)
        assert outcome.status == "settled"
        self.balance -= charge
        self.closed[request_id] = charge
        self._give_back(held, used=tokens)

    @precondition(lambda self: self.open)
    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        request_id = data.draw(st.sampled_from(sorted(self.open)))
        held = self.open.pop(request_id)

        outcome = credits_release(request_id=request_id, now=self.clock)

        assert (outcome.already_closed, outcome.charged, outcome.status) == (False, 0, "released")
        self.closed[request_id] = 0
        self._give_back(held, used=0)

    @precondition(lambda self: self.closed)
    @rule(data=st.data(), settle=st.booleans(), credits=st.integers(0, 5_000))
    def close_again(self, data: st.DataObject, settle: bool, credits: int) -> None:
        request_id = data.draw(st.sampled_from(sorted(self.closed)))

        if settle:
            outcome = credits_settle(request_id=request_id, credits=credits, tokens=5,
                                     now=self.clock)
        else:
            outcome = credits_release(request_id=request_id, now=self.clock)

        assert outcome.already_closed and outcome.charged == self.closed[request_id]

    # --- time and quotas ------------------------------------------------------------------

    @rule(seconds=st.integers(0, 2 * settings.RESERVATION_TTL_SECONDS))
    def time_passes_and_the_expiry_job_runs(self, seconds: int) -> None:
        self.clock += dt.timedelta(seconds=seconds)
        ttl = dt.timedelta(seconds=settings.RESERVATION_TTL_SECONDS)
        stale = [rid for rid, held in self.open.items() if held.created + ttl <= self.clock]

        expired = reservations_expire(now=self.clock)

        assert expired == len(stale)
        for request_id in stale:
            self._give_back(self.open.pop(request_id), used=0)
            self.closed[request_id] = 0

    @rule(days=st.integers(1, 40))
    def days_pass(self, days: int) -> None:
        # No job runs: a new month's quota starts on its own (a new counter row).
        self.clock += dt.timedelta(days=days)

    @rule(limit=st.one_of(st.none(), st.integers(0, 8_000)))
    def set_token_quota(self, limit: int | None) -> None:
        quota_set(organization=self.organization, limit=limit, period=Quota.Period.MONTHLY,
                  reason="machine")
        if limit is None and self.quota_limit is not None:
            # Removing the quota removes its counters; later settlements of
            # requests that were held against it have nothing to give back.
            self.counters = {}
            self.quota_generation += 1
            for held in self.open.values():
                held.counter = None
        self.quota_limit = limit

    def teardown(self) -> None:
        transaction.set_rollback(True)
        self._example.__exit__(None, None, None)

    def _give_back(self, held: Open, *, used: int) -> None:
        if held.counter is not None and held.counter in self.counters:
            counter = self.counters[held.counter]
            counter[0] += used
            counter[1] -= held.tokens

    @property
    def reserved(self) -> int:
        return sum(held.amount for held in self.open.values())

    # --- invariants -------------------------------------------------------------------------

    @invariant()
    def balance_is_the_sum_of_the_ledger(self) -> None:
        account = CreditAccount.objects.get(pk=self.account.pk)
        total = LedgerEntry.objects.filter(account=account).aggregate(t=Sum("amount"))["t"] or 0
        assert account.balance == total == self.balance

    @invariant()
    def reserved_is_within_the_balance_and_matches_open_reservations(self) -> None:
        account = CreditAccount.objects.get(pk=self.account.pk)
        open_amounts = Reservation.objects.filter(account=account, status="open").aggregate(
            t=Sum("amount"))["t"] or 0
        assert 0 <= account.reserved <= account.balance
        assert account.reserved == open_amounts == self.reserved

    @invariant()
    def each_request_has_at_most_one_usage_entry(self) -> None:
        repeated = (LedgerEntry.objects.filter(account_id=self.account.pk, kind="usage")
                    .values("request_id").annotate(n=Count("id")).filter(n__gt=1))
        assert not repeated.exists()

    @invariant()
    def quota_counters_hold_the_open_tokens_and_count_the_settled_ones(self) -> None:
        stored = {
            start.date(): [used, reserved]
            for start, used, reserved in QuotaCounter.objects.filter(
                quota__organization=self.organization
            ).values_list("period_start", "used", "reserved")
        }
        # Removing the quota empties the model's counters too, so every key is current.
        assert stored == {month: values for (_, month), values in self.counters.items()}


@pytest.mark.django_db
def test_random_sequences_of_billing_operations_keep_the_books():
    run_state_machine_as_test(
        BillingMachine,
        settings=hypothesis_settings(
            max_examples=30, stateful_step_count=25, deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )


# --- the concurrent variant ---------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_when_several_closers_of_one_reservation_race_then_exactly_one_wins(tenant_factory):
    """Settle (with any charge), release and the expiry job, from threads at once: one wins."""
    tenant = tenant_factory("closers", credits=1_000_000)

    @hypothesis_settings(max_examples=12, deadline=None,
                         suppress_health_check=[HealthCheck.too_slow])
    @given(
        reserved=st.integers(0, 500),
        closers=st.lists(
            st.one_of(
                st.tuples(st.just("settle"), st.integers(0, 1_000)),
                st.tuples(st.just("release"), st.just(0)),
                st.tuples(st.just("expire"), st.just(0)),
            ),
            min_size=2, max_size=4,
        ),
    )
    def race(reserved: int, closers: list[tuple[str, int]]) -> None:
        request_id = f"c-{next(_machines)}"
        stale = START - dt.timedelta(days=1)  # past its TTL, so the expiry job may take it
        credits_reserve(organization_id=tenant.org.pk, api_key_id=None, request_id=request_id,
                        amount=reserved, tokens=1, now=stale)
        before = CreditAccount.objects.get(pk=tenant.account.pk).balance

        def closer(kind: str, credits: int):  # type: ignore[no-untyped-def]
            if kind == "settle":
                return credits_settle(request_id=request_id, credits=credits, tokens=1)
            if kind == "release":
                return credits_release(request_id=request_id)
            return reservations_expire(now=START)

        outcomes = run_together([lambda k=k, c=c: closer(k, c) for k, c in closers])

        assert not [o for o in outcomes if isinstance(o, BaseException)], outcomes
        wins = [
            (kind, credits) for (kind, credits), outcome in zip(closers, outcomes, strict=True)
            if (outcome == 1 if kind == "expire" else not outcome.already_closed)
        ]
        assert len(wins) == 1, (closers, outcomes)
        ((kind, credits),) = wins
        reservation = Reservation.objects.get(request_id=request_id)
        assert reservation.status == {"settle": "settled", "release": "released",
                                      "expire": "expired"}[kind]
        charge = min(credits, reserved) if kind == "settle" else 0
        account = CreditAccount.objects.get(pk=tenant.account.pk)
        assert account.balance == before - charge
        assert account.reserved == 0
        total = LedgerEntry.objects.filter(account=account).aggregate(t=Sum("amount"))["t"]
        assert account.balance == total
        assert LedgerEntry.objects.filter(request_id=request_id).count() == (1 if charge else 0)

    race()
