"""The PostgreSQL statements that hold and close reservations, one round trip each.

Why one statement: a reservation and a settlement each end on the
organization's credit-account row, which every request of the organization
updates. As a transaction of several statements the row stayed locked over
the round trips and the commit after it, and under load every request queued
for it; planning each statement afresh took as long as running it. As one
prepared statement that commits on its own (`novakit.runtime.db.execute_prepared`),
the row is locked only while PostgreSQL runs it. Measured on the benchmark
(non-streaming completions, c=64, two workers): reservation and settlement
in one statement each took throughput from 667 to 969 req/s and CPU per
request from 1.33 to 0.93 ms; the usage records riding in the settlement's
statement, from ~820 to ~1,020 req/s.

Every amount is worked out in Python beforehand (`billing.holds`,
`billing.closing`); these statements only apply them, under the conditions
that make them exact under concurrency. Table and column names come from the
models' `_meta`, so a column added to a model is written by its statement.
The embedded default (SQLite) runs the same steps as plain statements in a
transaction: `billing.holds._place_plain`, `billing.closing._close_plain`.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from typing import Any

from django.db import connection, models

from billing.models import CreditAccount, LedgerEntry, Quota, QuotaCounter, Reservation


def _quote(name: str) -> str:
    return connection.ops.quote_name(name)


def _table(model: type[models.Model]) -> str:
    return _quote(model._meta.db_table)


def _column(model: type[models.Model], name: str) -> str:
    field = model._meta.get_field(name)
    assert isinstance(field, models.Field) and field.column
    return _quote(field.column)


def _is_json(field: models.Field[Any, Any]) -> bool:
    return isinstance(field, models.JSONField)


@functools.cache
def _reservation_fields() -> tuple[models.Field[Any, Any], ...]:
    """The columns a new reservation is written with: all but its id and its closing."""
    return tuple(field for field in Reservation._meta.concrete_fields
                 if not field.primary_key and field.name not in ("charged", "closed_at"))


def reservation_columns(rows: Sequence[Reservation]) -> dict[str, list[Any]]:
    """`rows` as one array per column, the parameters of `reserve()`'s statement."""
    columns: dict[str, list[Any]] = {}
    for field in _reservation_fields():
        values = [getattr(row, field.attname) for row in rows]
        columns[f"r_{field.column}"] = ([json.dumps(v) for v in values] if _is_json(field)
                                        else values)
    return columns


@functools.cache
def reserve() -> str:
    """Hold a group's credits and quota and insert its reservations, all or nothing.

    Parameters: the group's summed holds per quota counter (`counter_ids`,
    `counter_amounts`) and per credit account (`account_ids`,
    `account_amounts`), its `request_ids`, and the reservations as columns
    (`reservation_columns`). The counters, then the accounts, are locked in
    id order (the order settlement takes them too, so the two wait for each
    other but never deadlock) and read at their newest version; only if
    every one of them covers its hold and no request id is reserved yet are
    the holds added and the reservations inserted. Returns (request_id, id)
    per reservation made, or no row when refused.
    """
    counter, account, quota = _table(QuotaCounter), _table(CreditAccount), _table(Quota)
    c_reserved, c_used = _column(QuotaCounter, "reserved"), _column(QuotaCounter, "used")
    c_quota, q_limit = _column(QuotaCounter, "quota"), _column(Quota, "limit")
    a_balance, a_reserved = _column(CreditAccount, "balance"), _column(CreditAccount, "reserved")
    fields = _reservation_fields()
    names = ", ".join(_quote(f.column) for f in fields)
    arrays = ", ".join(
        f"%(r_{f.column})s::{'text' if _is_json(f) else f.db_type(connection)}[]" for f in fields)
    aliases = ", ".join(f"c{i}" for i in range(len(fields)))
    picked = ", ".join(f"r.c{i}::jsonb" if _is_json(f) else f"r.c{i}"
                       for i, f in enumerate(fields))
    return f"""
WITH counter_want AS (
    SELECT * FROM unnest(%(counter_ids)s::bigint[], %(counter_amounts)s::bigint[]) AS w (id, amount)
), account_want AS (
    SELECT * FROM unnest(%(account_ids)s::bigint[], %(account_amounts)s::bigint[]) AS w (id, amount)
), counters AS (
    SELECT c.id, c.{c_used} + c.{c_reserved} + w.amount <= q.{q_limit} AS fits
    FROM {counter} c JOIN counter_want w ON w.id = c.id JOIN {quota} q ON q.id = c.{c_quota}
    ORDER BY c.id FOR UPDATE OF c
), accounts AS (
    SELECT a.id, a.{a_balance} - a.{a_reserved} >= w.amount AS fits
    FROM {account} a JOIN account_want w ON w.id = a.id
    WHERE (SELECT count(*) FROM counters) >= 0
    ORDER BY a.id FOR UPDATE OF a
), verdict AS (
    SELECT (SELECT count(*) FROM counters WHERE fits) = cardinality(%(counter_ids)s::bigint[])
       AND (SELECT count(*) FROM accounts WHERE fits) = cardinality(%(account_ids)s::bigint[])
       AND NOT EXISTS (SELECT 1 FROM {_table(Reservation)}
                       WHERE {_column(Reservation, "request_id")} = ANY(%(request_ids)s::varchar[]))
       AS ok
), held_counters AS (
    UPDATE {counter} c SET {c_reserved} = c.{c_reserved} + w.amount FROM counter_want w
    WHERE c.id = w.id AND (SELECT ok FROM verdict)
), held_accounts AS (
    UPDATE {account} a SET {a_reserved} = a.{a_reserved} + w.amount FROM account_want w
    WHERE a.id = w.id AND (SELECT ok FROM verdict)
)
INSERT INTO {_table(Reservation)} ({names})
SELECT {picked} FROM unnest({arrays}) AS r ({aliases})
WHERE (SELECT ok FROM verdict)
RETURNING {_column(Reservation, "request_id")}, id
"""  # noqa: S608 (names from the models, values as parameters)


@functools.cache
def close(recording: str = "") -> str:
    """Close a group's still-open reservations, each once, with what `recording` writes.

    Parameters: per closing its `request_ids`, `statuses`, `charges`, `held`
    and `positions` (its place in the group, for the ledger's running
    balance), and per quota counter a closing counts against `d_request_ids`,
    `d_counter_ids`, `d_used`, `d_held`; `now`, and the ledger's `kind`,
    `actor` and `reason`. A reservation is claimed only while open and
    holding exactly `held` (what its charge was worked out from), so a second
    settle, a release and the expiry job cannot all close it. For the claimed
    ones, and no other: each counter and each account is updated once for
    the group (counters, then accounts, locked in id order, as holding them
    does), a ledger entry is written per charge, and `recording` (a caller's
    CTE reading the claimed request ids from `claimed`, e.g. its usage
    records) runs in the same statement. Returns per claimed request
    (request_id, status, amount, charged, balance, reserved, counters), where
    `counters` is a JSON list of the group's counters after the update.
    """
    reservation, counter, account = _table(Reservation), _table(QuotaCounter), _table(CreditAccount)
    r_request, r_status = _column(Reservation, "request_id"), _column(Reservation, "status")
    r_amount, r_charged = _column(Reservation, "amount"), _column(Reservation, "charged")
    c_used, c_reserved = _column(QuotaCounter, "used"), _column(QuotaCounter, "reserved")
    a_balance, a_reserved = _column(CreditAccount, "balance"), _column(CreditAccount, "reserved")
    ledger = _table(LedgerEntry)
    ledger_columns = ", ".join(_column(LedgerEntry, f) for f in (
        "account", "kind", "amount", "balance_after", "request_id", "api_key", "actor_label",
        "reason", "created_at"))
    q = _table(Quota)
    recorded = f", recorded AS ({recording})" if recording else ""
    return f"""
WITH closing AS (
    SELECT * FROM unnest(%(request_ids)s::varchar[], %(statuses)s::varchar[],
                         %(charges)s::bigint[], %(held)s::bigint[], %(positions)s::int[])
        AS c (request_id, status, charge, held, position)
), claimed AS (
    UPDATE {reservation} r
    SET {r_status} = closing.status, {_column(Reservation, "closed_at")} = %(now)s::timestamptz,
        {r_charged} = closing.charge
    FROM closing
    WHERE r.{r_request} = closing.request_id AND r.{r_status} = %(open)s::varchar
      AND r.{r_amount} = closing.held
    RETURNING r.{r_request} AS request_id, r.{r_status} AS status,
              r.{_column(Reservation, "account")} AS account_id,
              r.{_column(Reservation, "api_key")} AS api_key_id,
              r.{r_amount} AS amount, r.{r_charged} AS charged, closing.position
), counter_deltas AS (
    SELECT d.counter_id, sum(d.used) AS used, sum(d.held) AS held
    FROM unnest(%(d_request_ids)s::varchar[], %(d_counter_ids)s::bigint[],
                %(d_used)s::bigint[], %(d_held)s::bigint[])
        AS d (request_id, counter_id, used, held)
    WHERE d.request_id IN (SELECT request_id FROM claimed)
    GROUP BY d.counter_id
), locked_counters AS (
    SELECT c.id FROM {counter} c WHERE c.id IN (SELECT counter_id FROM counter_deltas)
    ORDER BY c.id FOR UPDATE
), counters AS (
    UPDATE {counter} c SET {c_used} = c.{c_used} + d.used, {c_reserved} = c.{c_reserved} - d.held
    FROM counter_deltas d, {q} q
    WHERE c.id = d.counter_id AND q.id = c.{_column(QuotaCounter, "quota")}
      AND (SELECT count(*) FROM locked_counters) >= 0
    RETURNING c.id AS counter_id, q.id AS quota_id,
              q.{_column(Quota, "organization")} AS organization_id,
              q.{_column(Quota, "api_key")} AS api_key_id, q.{_column(Quota, "metric")} AS metric,
              q.{_column(Quota, "period")} AS period,
              c.{_column(QuotaCounter, "period_start")} AS period_start,
              q.{_column(Quota, "limit")} AS "limit", c.{c_used} AS used,
              c.{c_reserved} AS reserved, d.used AS added
), totals AS (
    SELECT account_id, sum(charged) AS charged, sum(amount) AS amount
    FROM claimed GROUP BY account_id
), locked_accounts AS (
    SELECT a.id FROM {account} a
    WHERE a.id IN (SELECT account_id FROM totals) AND (SELECT count(*) FROM counters) >= 0
    ORDER BY a.id FOR UPDATE
), accounts AS (
    UPDATE {account} a
    SET {a_balance} = a.{a_balance} - totals.charged, {a_reserved} = a.{a_reserved} - totals.amount
    FROM totals
    WHERE a.id = totals.account_id AND (SELECT count(*) FROM locked_accounts) > 0
    RETURNING a.id, a.{a_balance} AS balance, a.{a_reserved} AS reserved,
              totals.charged AS charged
), entries AS (
    INSERT INTO {ledger} ({ledger_columns})
    SELECT c.account_id, %(kind)s::varchar, -c.charged,
           a.balance + a.charged
               - sum(c.charged) OVER (PARTITION BY c.account_id ORDER BY c.position),
           c.request_id, c.api_key_id, %(actor)s::varchar, %(reason)s::text, %(now)s::timestamptz
    FROM claimed c JOIN accounts a ON a.id = c.account_id
    WHERE c.charged > 0
){recorded}
SELECT c.request_id, c.status, c.amount, c.charged, a.balance, a.reserved,
       (SELECT coalesce(json_agg(counters), '[]') FROM counters)
FROM claimed c JOIN accounts a ON a.id = c.account_id
"""  # noqa: S608 (names from the models, values as parameters)
