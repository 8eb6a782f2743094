"""Single-statement PostgreSQL versions of the writes on every call's path.

Admission (create the prediction + hold its price + the hold's ledger entry) and settlement of a
whole batch (terminal status + return the unused holds + the settle ledger entries) are each one statement of
data-modifying CTEs: one round trip, atomic (a statement is its own transaction), with exactly
the rows and conditions of the ORM versions in services.py, which remain the reference and the
path for SQLite and for the rarer cases (webhooks, royalties, daily caps). Measured reason: on
this machine the ORM versions took ~10 round trips per call, most of the web and worker time.

Both commit asynchronously (`synchronous_commit = off` for that statement's transaction only,
set by the `cfg` CTE), so they do not wait for the WAL flush while holding the payer's account
row: with one busy account every admission and settlement queues on that row lock, and
measured here (wrk c=32, alternating runs) the platform served 276 and 297 req/s with
synchronous commits against 336 and 341 without. Atomicity and consistency are unchanged (the
ledger always sums to the balance); what a PostgreSQL crash can lose is the last few hundred
ms of these commits, and every such loss favours the caller: a lost admission is a call that
never held anything (its settlement finds no row and charges nothing), a lost settlement leaves
the call open until the reaper releases its whole hold. Grants, refunds, failures, releases
and every other money movement stay synchronous.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import orjson
import psycopg
from django.db import connection

from modelport.billing.models import LedgerEntry
from modelport.gateway.models import Prediction

# The statements below are f-strings only over model metadata (column names, status constants);
# every value is a query parameter. (ruff S608 is silenced for this file in pyproject.toml.)

_INSERT_FIELDS = [f for f in Prediction._meta.concrete_fields]
_COLUMNS = ", ".join(connection.ops.quote_name(f.column) for f in _INSERT_FIELDS)
_PLACEHOLDERS = ", ".join(["%s"] * len(_INSERT_FIELDS))

ADMIT_WITH_HOLD = f"""
WITH cfg AS (
    SELECT set_config('synchronous_commit', 'off', true)
), acc AS (
    UPDATE billing_creditaccount SET balance = balance - %s, updated_at = now()
    WHERE id = %s AND balance - reserved >= %s
    RETURNING id
), pred AS (
    INSERT INTO gateway_prediction ({_COLUMNS})
    SELECT {_PLACEHOLDERS} FROM acc
    RETURNING id
), led AS (
    INSERT INTO billing_ledgerentry (account_id, kind, amount, prediction_id, memo, created_by_id, created_at)
    SELECT %s, '{LedgerEntry.Kind.HOLD}', %s, pred.id, '', NULL, now() FROM pred
    RETURNING id
)
SELECT count(*) FROM led, cfg
"""

ADMIT_WITHOUT_HOLD = f"INSERT INTO gateway_prediction ({_COLUMNS}) VALUES ({_PLACEHOLDERS})"

_ROW_TYPES = ", ".join(f"{connection.ops.quote_name(f.column)} {f.db_type(connection)}" for f in _INSERT_FIELDS)


def _insert_group(*, amount: str, ledger: str, floor: str) -> str:
    """A statement that inserts the rows of a JSON array (`%s`) that do not exist yet, per
    account only if the balance less `floor` (an expression over the account row `a`) covers
    the sum of their `amount` column, debits that sum and writes the ledger entries `ledger`
    selects from the inserted rows (`pred`). Returns (prediction id, account id, balance after,
    amount) per inserted row."""
    return f"""
WITH cfg AS (
    SELECT set_config('synchronous_commit', 'off', true)
), v AS (
    SELECT * FROM jsonb_to_recordset(%s::jsonb) AS v({_ROW_TYPES})
), fresh AS (
    SELECT v.* FROM v WHERE (SELECT g.id FROM gateway_prediction g WHERE g.id = v.id) IS NULL
), need AS (
    SELECT account_id, sum({amount}) AS total FROM fresh GROUP BY account_id
), acc AS (
    UPDATE billing_creditaccount a SET balance = a.balance - need.total, updated_at = now()
    FROM need WHERE a.id = need.account_id AND a.balance - {floor} >= need.total
    RETURNING a.id, a.balance
), pred AS (
    INSERT INTO gateway_prediction ({_COLUMNS})
    SELECT {_COLUMNS} FROM fresh WHERE fresh.account_id IN (SELECT id FROM acc)
    RETURNING id, account_id, {amount}
), led AS (
    INSERT INTO billing_ledgerentry (account_id, kind, amount, prediction_id, memo, created_by_id, created_at)
    {ledger}
    RETURNING id
)
SELECT pred.id, pred.account_id, acc.balance, pred.{amount}
FROM pred JOIN acc ON acc.id = pred.account_id LEFT JOIN cfg ON true
"""


# Admission of a batch of calls at the serving worker (see services.prediction_admit's
# `defer`): the web sends each call's row (`admission_row`) in its frame; the worker admits all
# rows of what it popped in one statement before running them. Per account, the holds of the
# group are taken together when the balance covers them all (callers retry the refused rows one
# by one, so a group that does not fit as a whole still admits what fits). A row whose id
# already exists (the web gave up at the deadline and recorded the call as failed, see
# `abandon`) is not admitted; if the web's insert races this statement, the statement fails on
# the primary key and the caller retries row by row.
# Holds never take a balance below what serving workers keep for their postpaid calls
# (billing.PostpaidReserve; the account's `reserved`).
ADMIT_MANY = _insert_group(amount="hold_amount", ledger=f"""
    SELECT account_id, '{LedgerEntry.Kind.HOLD}', -hold_amount, id, '', NULL, now() FROM pred
    WHERE hold_amount > 0""", floor="a.reserved")

# Admission and settlement in one statement, after the run, for calls whose account the serving
# worker recently saw with ample headroom (see serving.py, "postpaid"): each row arrives
# complete (status succeeded, output, metrics, charged = its price, hold_amount = charged); per
# account the group is recorded only if the balance covers its charges (never below zero), with
# the same ledger shape as a held and settled call (a hold of the price, a settlement of 0).
# Rows whose id exists (the web recorded the call failed at its deadline) are not recorded.
_RECORD_LEDGER = f"""
    SELECT account_id, k.kind, CASE WHEN k.kind = '{LedgerEntry.Kind.HOLD}' THEN -charged ELSE 0 END, id,
           CASE WHEN k.kind = '{LedgerEntry.Kind.HOLD}' THEN '' ELSE 'charged ' || charged || ' µc' END,
           NULL, now()
    FROM pred CROSS JOIN (VALUES ('{LedgerEntry.Kind.HOLD}'), ('{LedgerEntry.Kind.SETTLE}')) AS k(kind)
    WHERE pred.charged > 0"""
# Without a reserve: the path of uncharged rows (metering off) and the fallback when a worker's
# reserve does not cover its rows (see services.predictions_record_served). The balance is the
# only floor here: these are answered calls.
RECORD_MANY = _insert_group(amount="charged", ledger=_RECORD_LEDGER, floor="0")

# The postpaid recording proper: like RECORD_MANY, but per (account, worker) the charges are
# drawn from the worker's reserve (billing.PostpaidReserve, `%s` = the worker), which holds
# could not touch, and the account's `reserved` goes down with the balance. A group whose
# reserve does not cover it is not recorded (the caller falls back to RECORD_MANY); the
# balance cannot fall short, as holds leave it at least `reserved` (should an operator's
# adjustment have taken it lower, the balance's CHECK fails the statement as a whole).
RECORD_RESERVED = f"""
WITH cfg AS (
    SELECT set_config('synchronous_commit', 'off', true)
), v AS (
    SELECT * FROM jsonb_to_recordset(%s::jsonb) AS v({_ROW_TYPES})
), fresh AS (
    SELECT v.* FROM v WHERE (SELECT g.id FROM gateway_prediction g WHERE g.id = v.id) IS NULL
), need AS (
    SELECT account_id, sum(charged) AS total FROM fresh GROUP BY account_id
), res AS (
    UPDATE billing_postpaidreserve r SET amount = r.amount - need.total, updated_at = now()
    FROM need WHERE r.account_id = need.account_id AND r.worker = %s AND r.amount >= need.total
    RETURNING r.account_id, need.total
), acc AS (
    UPDATE billing_creditaccount a
    SET balance = a.balance - res.total, reserved = a.reserved - res.total, updated_at = now()
    FROM res WHERE a.id = res.account_id
    RETURNING a.id, a.balance
), pred AS (
    INSERT INTO gateway_prediction ({_COLUMNS})
    SELECT {_COLUMNS} FROM fresh WHERE fresh.account_id IN (SELECT id FROM acc)
    RETURNING id, account_id, charged
), led AS (
    INSERT INTO billing_ledgerentry (account_id, kind, amount, prediction_id, memo, created_by_id, created_at)
    {_RECORD_LEDGER}
    RETURNING id
)
SELECT pred.id, pred.account_id, acc.balance, pred.charged
FROM pred JOIN acc ON acc.id = pred.account_id LEFT JOIN cfg ON true
"""

ABANDON = f"""
INSERT INTO gateway_prediction ({_COLUMNS})
SELECT {_COLUMNS} FROM jsonb_populate_record(NULL::gateway_prediction, %s::jsonb)
ON CONFLICT (id) DO NOTHING
RETURNING id
"""


@contextmanager
def _prepared() -> Iterator[psycopg.Cursor]:
    """A cursor for the statements below that prepares each one once per connection and runs
    it with a generic plan (`plan_cache_mode = force_generic_plan` on that session). Measured
    here: planning these statements of data-modifying CTEs was a third of their time, and
    PostgreSQL's default (`auto`) kept re-planning them. A generic plan is made from the table
    sizes of its moment and kept while its connection lives; connections live at most
    CONN_MAX_AGE (60 s, settings), being recycled by close_old_connections() before every
    admission in the web and every pop in the serving worker, so no plan outlives by long the
    sizes it was made for (one made while gateway_prediction held a few rows would otherwise scan
    it whole on every call once it had thousands).

    Django opens its connections with `prepare_threshold=None`, with which psycopg ignores
    `prepare=True` too: without the threshold below these statements go out unnamed, parsed and
    planned on every call. A threshold psycopg never reaches by counting prepares only what asks
    to be; Django's own cursors bind client-side and never prepare, so nothing else is affected.
    Measured (wrk c=1, MLP): PostgreSQL CPU per call ~1.6 → ~0.8 ms. Database errors are Django's
    (IntegrityError…), as from Django's own cursors."""
    connection.ensure_connection()
    raw = connection.connection
    if not getattr(raw, "_modelport_generic_plans", False):
        with connection.wrap_database_errors:
            raw.execute("SET plan_cache_mode = force_generic_plan")
        raw.prepare_threshold = 2**31 - 1
        raw._modelport_generic_plans = True
    with connection.wrap_database_errors, psycopg.Cursor(raw) as cursor:
        yield cursor


def admission_row(prediction: Prediction) -> dict[str, Any]:
    """`prediction` (unsaved) as the JSON object ADMIT_MANY reads (column name → value)."""
    return {field.column: _row_value(field.pre_save(prediction, add=True)) for field in _INSERT_FIELDS}


def _row_value(value: Any) -> Any:
    """A column's value as an admission row carries it (datetimes in ISO 8601)."""
    return value.isoformat() if hasattr(value, "isoformat") else value


# (attname, column, default) of each concrete field, in the order Model.__init__ takes
# positional values (the path Django's Model.from_db takes).
_PLAN = [(f.attname, f.column, f.get_default) for f in _INSERT_FIELDS]
_RELATED = {f.name: f for f in _INSERT_FIELDS if f.is_relation}


def new_prediction(values: dict[str, Any], *, related: dict[str, Any]) -> tuple[Prediction, dict[str, Any]]:
    """An unsaved Prediction with `values` (by attname; every other field its default) and the
    related objects `related` (by field name) cached on it, with its admission row: the same
    as `Prediction(**kwargs)` then `admission_row`, for the call path on the event loop.
    Measured here: ~18 µs against ~32-45 µs (keyword construction runs per field the
    descriptor and default machinery; positional values are set directly). `created_at` is taken from
    `values` rather than stamped by its auto_now_add (the caller passes the call's now)."""
    args: list[Any] = []
    row: dict[str, Any] = {}
    for attname, column, default in _PLAN:
        value = values[attname] if attname in values else default()
        args.append(value)
        row[column] = _row_value(value)
    prediction = Prediction(*args)
    for name, obj in related.items():
        _RELATED[name].set_cached_value(prediction, obj)
    return prediction, row


def admit_many(rows: list[dict[str, Any]], *, balances: dict[int, int] | None = None) -> set[str]:
    """Admit (insert + hold) the calls of `rows`; returns the ids admitted and puts each
    admitting account's balance after it into `balances`. Raises IntegrityError when a row's id
    was inserted concurrently (see ADMIT_MANY)."""
    with _prepared() as cursor:
        cursor.execute(ADMIT_MANY, [json.dumps(rows)], prepare=True)
        admitted = set()
        for pid, account_id, balance, _ in cursor.fetchall():
            admitted.add(pid)
            if balances is not None:
                balances[account_id] = int(balance)
        return admitted


def record_many(rows: list[dict[str, Any]], *, balances: dict[int, int]) -> dict[str, int]:
    """Record finished calls that were never admitted (RECORD_MANY): {id: charged} of the rows
    recorded; each recording account's balance after it goes into `balances`. Raises
    IntegrityError when a row's id was inserted concurrently (the web's abandon)."""
    with _prepared() as cursor:
        cursor.execute(RECORD_MANY, [rows_json(rows)], prepare=True)
        charged = {}
        for pid, account_id, balance, amount in cursor.fetchall():
            charged[pid] = int(amount)
            balances[account_id] = int(balance)
        return charged


def record_reserved(rows: list[dict[str, Any]], *, worker: str, balances: dict[int, int]) -> dict[str, int]:
    """Record finished calls that `worker` ran and answered before admitting them, drawing their
    charges from its reserves (RECORD_RESERVED): {id: charged} of the rows recorded; each
    recording account's balance after it goes into `balances`. Raises IntegrityError when a
    row's id was inserted concurrently (the web's abandon)."""
    with _prepared() as cursor:
        cursor.execute(RECORD_RESERVED, [rows_json(rows), worker], prepare=True)
        charged = {}
        for pid, account_id, balance, amount in cursor.fetchall():
            charged[pid] = int(amount)
            balances[account_id] = int(balance)
        return charged


def rows_json(rows: list[dict[str, Any]]) -> str:
    """`rows` as the JSON RECORD_MANY reads (datetimes in ISO 8601 / RFC 3339, as
    datetime.isoformat writes them). orjson: the serving worker writes these rows to its
    journal before each group's replies, on the callers' wait (~3 µs a row against ~25 µs with
    the standard library, measured here)."""
    return orjson.dumps(rows).decode()


def refusal_facts(*, prediction_id: str, account_id: int) -> tuple[int, bool]:
    """(the account's balance less its reserves, whether the prediction exists) for a call
    ADMIT_MANY refused."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT (SELECT balance - reserved FROM billing_creditaccount WHERE id = %s), "
                       "EXISTS (SELECT 1 FROM gateway_prediction WHERE id = %s)", [account_id, prediction_id])
        balance, exists = cursor.fetchone()
    return int(balance or 0), bool(exists)


def abandon(row: dict[str, Any], *, code: str, message: str, at: str) -> bool:
    """Record a deferred call that no worker admitted as failed (nothing held, nothing charged)
    unless a worker admitted it already. True if this recorded it: from then on no worker can."""
    failed = {**row, "status": Prediction.Status.FAILED, "hold_amount": 0,
              "error": {"code": code, "message": message}, "completed_at": at}
    with _prepared() as cursor:
        cursor.execute(ABANDON, [json.dumps(failed)], prepare=True)
        return cursor.fetchone() is not None


@functools.cache
def available() -> bool:
    """Whether these statements apply (PostgreSQL). Cached: the database's vendor is fixed for the
    life of a process, and reading it through Django's connection proxy (an asgiref Local on the
    web's event loop) cost ~4 % of the web's CPU per call at c=32 (py-spy)."""
    return connection.vendor == "postgresql"


def _row(prediction: Prediction) -> list[Any]:
    values = []
    for field in _INSERT_FIELDS:
        value = field.pre_save(prediction, add=True)
        values.append(field.get_db_prep_save(value, connection))
    return values


def admit(*, prediction: Prediction, hold: int) -> tuple[bool, int]:
    """Insert `prediction` and, if `hold` > 0, take the hold. Returns (admitted, balance before).
    Raises IntegrityError on a duplicate idempotency key, like the ORM path."""
    with connection.cursor() as cursor:
        if hold <= 0:
            cursor.execute(ADMIT_WITHOUT_HOLD, _row(prediction))
            return True, 0
        params = [hold, prediction.account_id, hold, *_row(prediction), prediction.account_id, -hold]
        cursor.execute(ADMIT_WITH_HOLD, params)
        (held,) = cursor.fetchone()
        if held:
            return True, 0
        # Refused: read the balance only now, for the 402 message (what holds may take of it).
        cursor.execute("SELECT balance - reserved FROM billing_creditaccount WHERE id = %s", [prediction.account_id])
        row = cursor.fetchone()
    return False, int(row[0]) if row else 0


RESOLVE = """
SELECT k.id, k.prefix, k.rate_limit, k.daily_cap, k.last_used_at,
       u.id, u.username, u.is_staff,
       m.id, m.owner_id, m.visibility, m.royalty_per_call, m.default_version_id,
       v.id, v.number, v.status, v.disabled, v.signature, v.max_queue, v.artifact_sha256, v.max_batch_size,
       m.royalty_pending, m.royalty_pending_at, ca.max_price
FROM accounts_apikey k
JOIN auth_user u ON u.id = k.user_id AND u.is_active
LEFT JOIN billing_creditaccount ca ON ca.user_id = u.id
LEFT JOIN auth_user o ON o.username = %(owner)s
LEFT JOIN registry_model m ON m.owner_id = o.id AND m.name = %(name)s
LEFT JOIN LATERAL (
    SELECT * FROM registry_modelversion mv
    WHERE mv.model_id = m.id AND CASE
        WHEN %(number)s::int IS NOT NULL THEN mv.number = %(number)s::int
        WHEN m.default_version_id IS NOT NULL THEN mv.id = m.default_version_id
        ELSE mv.status = 'ready' END
    ORDER BY mv.number DESC LIMIT 1
) v ON true
WHERE k.key_hash = %(hash)s AND k.revoked_at IS NULL
"""


def resolve_call(*, key_hash: str, owner: str, name: str, number: int | None) -> tuple[Any, ...] | None:
    """Authenticate an API key and find the version a call goes to, in one query. Returns the
    raw row (see RESOLVE) or None for an unknown/revoked key; the caller applies the same
    rules as accounts.services.api_key_authenticate + services.version_resolve."""
    with _prepared() as cursor:
        cursor.execute(RESOLVE, {"hash": key_hash, "owner": owner, "name": name, "number": number}, prepare=True)
        return cursor.fetchone()


SETTLE_MANY = f"""
WITH cfg AS (
    SELECT set_config('synchronous_commit', 'off', true)
), v AS (
    SELECT * FROM unnest(%s::text[], %s::text[], %s::bigint[], %s::text[], %s::timestamptz[], %s::timestamptz[])
        AS v(id, output, price, metrics, started_at, completed_at)
), p AS (
    UPDATE gateway_prediction g
    SET status = '{Prediction.Status.SUCCEEDED}', output = v.output::jsonb, hardware = %s, worker = %s,
        started_at = v.started_at, completed_at = v.completed_at, charged = LEAST(v.price, g.hold_amount),
        royalty = 0, metrics = v.metrics::jsonb
    FROM v
    WHERE g.id = v.id AND g.status IN ('{Prediction.Status.STARTING}', '{Prediction.Status.PROCESSING}')
    RETURNING g.id, g.account_id, g.hold_amount, g.charged
), acc AS (
    UPDATE billing_creditaccount a SET balance = a.balance + s.refund, updated_at = now()
    FROM (SELECT account_id, sum(hold_amount - charged) AS refund FROM p WHERE hold_amount > 0
          GROUP BY account_id) s
    WHERE a.id = s.account_id
    RETURNING a.id
), led AS (
    INSERT INTO billing_ledgerentry (account_id, kind, amount, prediction_id, memo, created_by_id, created_at)
    SELECT p.account_id, '{LedgerEntry.Kind.SETTLE}', p.hold_amount - p.charged, p.id,
           'charged ' || p.charged || ' µc', NULL, now()
    FROM p WHERE p.hold_amount > 0
    RETURNING id
)
SELECT p.id, p.charged FROM p, cfg
"""


def settle_many(*, rows: list[dict[str, Any]], hardware: str, worker: str) -> dict[str, int]:
    """`settle` for a whole batch in one statement. rows: id, output (JSON-able or None), price,
    metrics, started_at, completed_at. Returns {prediction id: charged} for the rows it settled
    (a row already terminal is left unchanged and absent from the result)."""
    columns = ([r["id"] for r in rows], [None if r["output"] is None else json.dumps(r["output"]) for r in rows],
               [r["price"] for r in rows], [json.dumps(r["metrics"]) for r in rows],
               [r["started_at"] for r in rows], [r["completed_at"] for r in rows])
    with _prepared() as cursor:
        cursor.execute(SETTLE_MANY, [*columns, hardware, worker], prepare=True)
        return {pid: int(charged) for pid, charged in cursor.fetchall()}
