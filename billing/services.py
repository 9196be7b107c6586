"""Every change to credits and quotas: billing's interface to the other apps.

Keyword-only, atomic, idempotent where a retry can happen. Each job has its
module: the ledger (`billing.ledger`), quotas (`billing.quotas`), holding a
request's worst case (`billing.holds`), closing it (`billing.closing`), and
the same for the event loop, written in groups (`billing.commit`).

Invariants they keep, and the tests check:
- an account's `balance` equals the sum of its ledger entries;
- `0 <= reserved <= balance` (also enforced by check constraints);
- each request id has at most one reservation and at most one usage entry,
  and is settled or released at most once.
"""

from billing.closing import (
    Closing,
    Recorder,
    Settlement,
    closing_for,
    credits_release,
    credits_settle,
    holds_close,
    reservations_expire,
)
from billing.holds import Hold, credits_reserve, holds_place
from billing.ledger import (
    IdempotencyConflict,
    InsufficientCredits,
    account_for_organization,
    credits_adjust,
    credits_change,
    credits_grant,
)
from billing.quotas import (
    QuotaExceeded,
    ReservationTargets,
    applicable_quotas,
    key_credit_cap,
    key_credit_cap_set,
    key_quotas_copy,
    measure,
    period_end,
    period_start,
    quota_set,
    reservation_targets,
)

__all__ = [
    "Closing", "Hold", "IdempotencyConflict", "InsufficientCredits", "QuotaExceeded",
    "Recorder", "ReservationTargets", "Settlement", "account_for_organization",
    "applicable_quotas", "closing_for", "credits_adjust", "credits_change", "credits_grant",
    "credits_release", "credits_reserve", "credits_settle", "holds_close", "holds_place",
    "key_credit_cap", "key_credit_cap_set", "key_quotas_copy", "measure", "period_end",
    "period_start", "quota_set", "reservation_targets", "reservations_expire",
]
