"""The PostgreSQL job store: several service instances share one database.

- Claims take a batch per queue with one `UPDATE ... WHERE id IN (SELECT ... FOR UPDATE
  SKIP LOCKED)`, so two instances never start the same job. The statement itself reads
  which queues are paused (the `queues` table): a pause holds on every instance from its
  next claim, and across restarts.
- A unique key is the database's to enforce: a partial unique index over queued and running
  jobs, which inserts meet with ON CONFLICT DO NOTHING, so instances racing to insert one
  key create one job.
- Writes are group-committed: whatever queues while one transaction commits goes into the
  next, so a burst of requests costs one round trip and one commit, not one each. Inserts
  and the workers' writes (claims, outcomes) commit apart, so that a request never waits
  behind a worker's transaction.
- Inserts, retries and resumed queues notify every instance (LISTEN/NOTIFY) so an idle worker
  anywhere starts at once; a running job's cancel is told on a channel of its own, with the
  schema and the job's id, to the instance running it. A listening connection that drops (a database
  restart) is opened again. With DATABASE_NOTIFY=false, workers poll instead.
- A running job holds a lease that its instance renews. When an instance dies, any other
  requeues its jobs once their leases expire (the lost attempt counted), or fails them when
  no attempt is left.
- Counts per queue and status are rows that each statement changing statuses appends to
  `job_counts` (see COUNTED), summed when read and folded once they are many: exact, never
  a scan of the jobs table, and no instance waits on another's lock to keep them.

The schema is Alembic's migrations (postgres_migrations/), run at open(). The tables'
declaration is the SQLModel model; statements are SQL text on asyncpg connections: the
ORM's work per statement would cost more than the statement, and asyncpg was the faster of
the two drivers tried.
"""

import asyncio
import logging
import os
import socket
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from datetime import datetime, timedelta
from typing import Any

import asyncpg
import orjson

from ..clock import Clock
from ..codec import dumps
from ..model import DEFAULT_QUEUE, FINISHED, JOB_COLUMNS, MAX_PRIORITY, TASK, Job, JobStatus, NewJob
from . import postgres_migrations
from .base import (
    OUTCOMES_KEPT,
    TICKS_KEPT,
    Enqueued,
    JobConflict,
    JobFilter,
    MinuteOutcomes,
    QueueCounts,
    ScheduleState,
    StoreFull,
    StoreUnavailable,
    minute_of,
)
from .group_commit import Group, GroupCommitter
from .outcomes import (
    COMPLETED,
    FAILED,
    WRITE_INTERVAL,
    OutcomeCount,
    OutcomeTally,
    by_minute,
)
from .postgres_migrations import SCHEMA_LOCK

__all__ = ["RETENTION_LOCK", "SCHEMA_LOCK", "PostgresJobStore"]

logger = logging.getLogger(__name__)

LOST_LEASE_EXPIRED = "lost: lease expired"
LOST_INSTANCE_DIED = "lost: instance died"
# Seconds between looks for instances that died (their liveness lock free).
LIVENESS_INTERVAL = 1.0
NOTIFY_CHANNEL = "jobs_inserted"
# Running jobs whose cancel was asked for; each notification's payload is `<schema>.<id>`.
# Channels span the whole database, so the schema tells apart services that share one.
CANCEL_CHANNEL = "jobs_cancelled"
Batch = Callable[[asyncpg.Connection, list[Any]], Awaitable[list[Any]]]
# What reaching the database can raise: refused or dropped connections, server errors.
CONNECTION_ERRORS = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError)
# Of those, the ones that mean the database cannot do the work now, not that a statement was
# wrong: the connection lost, or the server shutting down or cancelling statements.
LOST_CONNECTION = (
    OSError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.OperatorInterventionError,
)

COLUMNS = ", ".join(JOB_COLUMNS)
# The same, where another table's columns could have the same names.
JOBS_COLUMNS = ", ".join(f"jobs.{column}" for column in JOB_COLUMNS)
# The jobs that hold their unique_key, as the partial unique index says.
HOLDING_KEY = "status IN ('queued', 'running')"
# Counts. Every statement that changes jobs' statuses (inserts and deletes included) also
# appends, in the same statement, rows to job_counts saying by how much: a row adds n to
# the count of (queue, status) and, when left_status is set, takes n from (queue,
# left_status). A statement appends one row per queue and pair of statuses it moved jobs
# between (a claim one per queue, an outcome one for its job). Appended rows, not one row
# per count updated in place: instances never wait for each other's lock, and a long
# transaction elsewhere cannot make each update walk the versions it keeps. A change and
# its count commit together, so counts read in one snapshot are exact. Reads sum the rows
# (COUNT_JOBS, LIST_QUEUES); FOLD_MANY_COUNTS keeps them few. Rows of a release before
# left_status was added have none: their meaning is unchanged.
COUNTED = "INSERT INTO job_counts (queue, status, left_status, n)"
# The rows summed per queue and pair of statuses, then each sum as the two changes it stands
# for: summing first takes less than half the time of taking every row apart.
SUMMED = (
    "summed AS (SELECT queue, status, left_status, sum(n) AS n FROM {rows}"
    " GROUP BY queue, status, left_status)"
)
CHANGES = (
    "summed, LATERAL (VALUES (status, n), (left_status, -n)) AS change(counted_status, delta)"
    " WHERE counted_status IS NOT NULL"
)
# The rows arrive as one JSON array: one orjson call encodes it, where arrays of parameters
# cost the client nearly twice the CPU (asyncpg encodes each timestamp in Python). Payloads
# travel as JSON text inside it, because PostgreSQL refuses "\u0000" in any JSON it takes
# apart. A row without unique_key leaves it out: NULL.
NEW_ROWS = (
    "json_to_recordset($1::json) AS new(payload text, max_attempts int, queue text,"
    " priority int, unique_key text, task text, run_at timestamptz, inserted_at timestamptz)"
)
INSERTED_COLUMNS = (
    "payload, status, attempt, max_attempts, queue, priority, unique_key, task,"
    " cancel_requested, run_at, claim_at, inserted_at, errors"
)
INSERTED_VALUES = (
    "payload::json, 'queued', 0, max_attempts, queue, priority, unique_key, task, false,"
    " run_at, run_at + priority * $3::interval, inserted_at, '[]'::json"
)
# NOTIFYs with the same payload in one transaction are delivered once.
NOTIFY_NEW_JOBS = f"CASE WHEN $2 THEN pg_notify('{NOTIFY_CHANNEL}', '') END"
# The jobs an insert created, counted per queue: not the rows a unique key turned away.
COUNT_INSERTED = (
    f" counted AS ({COUNTED} SELECT queue, 'queued', NULL, count(*) FROM inserted GROUP BY queue)"
)
# The ids come back as one array. The id sequence hands out ids in the order the rows are
# read, so ordered ids are the callers' order.
INSERT_JOBS = (
    f"WITH inserted AS (INSERT INTO jobs ({INSERTED_COLUMNS}) SELECT {INSERTED_VALUES}"
    f" FROM {NEW_ROWS} RETURNING id, queue), {COUNT_INSERTED}"
    " SELECT (SELECT coalesce(array_agg(id ORDER BY id), '{}') FROM inserted),"
    f" {NOTIFY_NEW_JOBS}"
)
# When some rows have a unique_key: the unique index decides which are inserted, for rows
# of this statement as for jobs of other instances (whose insert, still uncommitted, it
# waits for). Two inserts that wait on each other's keys would deadlock, so rows go in in
# key order, whatever order they came in; their ids, taken first from the ids' sequence
# (the column's default), keep the callers' order, and of rows with one key the first is
# inserted. The keys of the inserted rows come back beside their ids.
INSERT_UNIQUE_JOBS = (
    f"WITH numbered AS (SELECT nextval('jobs_id_seq') AS id, * FROM {NEW_ROWS}),"
    f" inserted AS (INSERT INTO jobs (id, {INSERTED_COLUMNS}) SELECT id, {INSERTED_VALUES}"
    " FROM numbered ORDER BY unique_key, id"
    f" ON CONFLICT (unique_key) WHERE unique_key IS NOT NULL AND {HOLDING_KEY} DO NOTHING"
    f" RETURNING id, unique_key, queue), {COUNT_INSERTED}"
    " SELECT (SELECT coalesce(array_agg(id ORDER BY id), '{}') FROM inserted),"
    " (SELECT coalesce(array_agg(unique_key ORDER BY id), '{}') FROM inserted),"
    f" {NOTIFY_NEW_JOBS}"
)
KEY_HOLDERS = f"SELECT {COLUMNS} FROM jobs WHERE unique_key = ANY($1::text[]) AND {HOLDING_KEY}"
# The holder an insert met can finish before it is looked up: then it is the latest job
# with the key (the primary key walked backwards reaches it at once).
LATEST_WITH_KEY = f"SELECT {COLUMNS} FROM jobs WHERE unique_key = $1 ORDER BY id DESC LIMIT 1"
# One claim per queue: from a named queue ($6) through ix_jobs_queue_due, or from the
# default queue and every queue not named ($6 the named ones) through ix_jobs_due. A due
# job's claim_at is at most the largest priority's delay after now ($5): the index is read
# up to there, not through every job scheduled later. The queue's pause is read by the
# statement itself, so no instance claims from a queue paused anywhere.
CLAIM_JOBS = (
    "WITH claimed AS (UPDATE jobs SET status = 'running', attempt = attempt + 1,"
    " started_at = $1, locked_by = $2, lease_expires_at = now() + $3::interval"
    " WHERE id IN (SELECT id FROM jobs WHERE status = 'queued' AND claim_at <= $5"
    " AND run_at <= $1 AND {queues} ORDER BY claim_at, id LIMIT $4 FOR UPDATE SKIP LOCKED)"
    f" RETURNING claim_at, {COLUMNS}),"
    f" counted AS ({COUNTED} SELECT queue, 'running', 'queued', count(*) FROM claimed"
    " GROUP BY queue)"
    " SELECT * FROM claimed"
)
CLAIM_FROM_QUEUE = CLAIM_JOBS.format(
    queues="queue = $6 AND NOT EXISTS (SELECT FROM queues WHERE name = $6 AND paused)"
)
CLAIM_FROM_THE_REST = CLAIM_JOBS.format(
    queues="queue <> ALL($6::text[]) AND queue NOT IN (SELECT name FROM queues WHERE paused)"
)
# Outcomes only apply while this instance still holds the job: once its lease has expired
# and another instance has taken the job over, a late outcome changes nothing. `locked_by`
# is set exactly while a job runs, so it alone says so. With `status = 'running'` added, the
# planner, which statistics tell that few jobs run, walked ix_jobs_status_newest's running
# entries (dead ones of every job finished since the last vacuum included) instead of the
# primary key, several times slower on a large table.
HELD = "id = $1 AND locked_by = $2"
# Any outcome but a lost attempt ends a run of lost attempts (see RESCUE).
RELEASED = "locked_by = NULL, lease_expires_at = NULL, lost_in_a_row = 0"
# A job whose cancel was asked for ends cancelled however its attempt ends.
CANCELLED_OR = "CASE WHEN cancel_requested THEN 'cancelled' ELSE"
# Every outcome moves its job out of running, to whatever status it ends in (see COUNTED).
COUNT_CHANGED = f"{COUNTED} SELECT queue, status, 'running', 1 FROM changed"
COMPLETE_JOB = (
    f"WITH changed AS (UPDATE jobs SET status = {CANCELLED_OR} 'done' END, result = $3,"
    f" finished_at = $4, {RELEASED} WHERE {HELD} RETURNING queue, status) {COUNT_CHANGED}"
)
# $4 is when to retry, NULL to fail; $5 the claim_at that goes with it; $6 now.
GIVING_UP = "(cancel_requested OR $4::timestamptz IS NULL)"
FAIL_ATTEMPT = (
    "WITH changed AS (UPDATE jobs SET"
    f" status = {CANCELLED_OR} CASE WHEN $4::timestamptz IS NULL THEN 'failed'"
    " ELSE 'queued' END END,"
    f" errors = $3, run_at = CASE WHEN {GIVING_UP} THEN run_at ELSE $4 END,"
    f" claim_at = CASE WHEN {GIVING_UP} THEN claim_at ELSE $5 END,"
    f" finished_at = CASE WHEN {GIVING_UP} THEN $6::timestamptz END,"
    f" {RELEASED} WHERE {HELD} RETURNING queue, status) {COUNT_CHANGED}"
)
# Folds the appended rows into one per queue and status. Rows appended meanwhile are not in
# this statement's snapshot and stay; appending takes no lock that this DELETE's locks
# could hold up. One instance folds at a time: the others find the lock taken and fold
# nothing, rather than wait for the rows it deletes.
FOLD_LOCK = "hashtext(current_schema() || '.job_counts fold')"
FOLD_TURN = f"pg_try_advisory_xact_lock({FOLD_LOCK})"
FOLDED = (
    " folded AS (DELETE FROM job_counts WHERE (SELECT ours FROM turn)"
    f" RETURNING queue, status, left_status, n), {SUMMED.format(rows='folded')}"
    " INSERT INTO job_counts (queue, status, n) SELECT queue, counted_status, sum(delta)"
    f" FROM {CHANGES} GROUP BY queue, counted_status HAVING sum(delta) <> 0"
)
FOLD_COUNTS = f"WITH turn AS (SELECT {FOLD_TURN} AS ours),{FOLDED}"
# Every FOLD_INTERVAL each instance folds, once FOLD_ROWS rows or more have been appended:
# reads sum at most those and half a second's worth (about a row a job: some 5,000 at
# 10,000 jobs/s, a few milliseconds to sum), and a store that changes little is not
# rewritten twice a second for it. The rows are looked at before the lock is tried (CASE
# keeps that order), so a look that finds few takes no turn from a fold asked for.
FOLD_INTERVAL = 0.5
FOLD_ROWS = 1000
FOLD_MANY_COUNTS = (
    "WITH turn AS (SELECT CASE WHEN (SELECT count(*) FROM (SELECT FROM job_counts"
    f" LIMIT {FOLD_ROWS}) AS appended) = {FOLD_ROWS} THEN {FOLD_TURN} ELSE false END AS ours),"
    f"{FOLDED}"
)
# Back in line where it stood: run_at is unchanged, and so is its claim_at.
RELEASE_JOB = (
    f"WITH changed AS (UPDATE jobs SET status = {CANCELLED_OR} 'queued' END,"
    " attempt = attempt - 1, started_at = CASE WHEN attempt = 1 THEN NULL ELSE started_at END,"
    " finished_at = CASE WHEN cancel_requested THEN $3::timestamptz END,"
    f" claim_at = run_at + priority * $4::interval, {RELEASED}"
    f" WHERE {HELD} RETURNING queue, status) {COUNT_CHANGED}"
)
# Skips the rows locked now: the jobs whose outcomes are being stored, in an order of their
# own (waiting for them could deadlock with that transaction), or being rescued.
RENEW_LEASES = (
    "UPDATE jobs SET lease_expires_at = now() + $3::interval WHERE id IN (SELECT id FROM jobs"
    " WHERE id = ANY($1::bigint[]) AND locked_by = $2"
    " FOR UPDATE SKIP LOCKED)"
)
# A running job whose instance is gone goes back to queued, the lost attempt counted; or
# fails when it has no attempt left, or when this is its $4th lost attempt in a row: a job
# that crashes every instance that runs it is quarantined, not passed around the fleet.
# $1 now, $2 why it was lost, $3 the priority aging, and {lost} the running jobs to rescue.
# A row locked now is being finished by its owner, alive after all: skipped, not waited on.
QUARANTINED = "lost_in_a_row + 1 >= $4::int"
OUT_OF_ATTEMPTS = f"(cancel_requested OR attempt >= max_attempts OR {QUARANTINED})"
RESCUE = (
    "{before} changed AS (UPDATE jobs SET"
    f" status = {CANCELLED_OR} CASE WHEN attempt >= max_attempts OR {QUARANTINED}"
    " THEN 'failed' ELSE 'queued' END END,"
    f" finished_at = CASE WHEN {OUT_OF_ATTEMPTS} THEN $1::timestamptz END,"
    " claim_at = run_at + priority * $3::interval,"
    f" errors = (errors::jsonb || jsonb_build_array(CASE WHEN {QUARANTINED}"
    " THEN 'lost: crashed its worker ' || $4::int::text || ' times' ELSE $2::text END))::json,"
    " locked_by = NULL, lease_expires_at = NULL, lost_in_a_row = lost_in_a_row + 1"
    " WHERE id IN (SELECT id FROM jobs WHERE status = 'running' AND {lost}"
    " FOR UPDATE SKIP LOCKED) RETURNING queue, status),"
    f" counted AS ({COUNTED} SELECT queue, status, 'running', count(*)"
    " FROM changed GROUP BY queue, status)"
    " SELECT count(*) FROM changed"
)
# Leases compare with the database's clock, so instances' clocks cannot expire one early.
RESCUE_EXPIRED_LEASES = RESCUE.format(before="WITH", lost="lease_expires_at < now()")
# Each instance holds a session-level advisory lock keyed by its id, on a connection of its
# own, for as long as it runs: the server lets go of it when that connection ends, however
# the instance ends (kill -9 too). An instance whose lock another can take is dead: its
# jobs are rescued at once, its row deleted once none is left running. Instances of a
# release before these locks are not in `instances`: their jobs wait for their leases.
INSTANCE_LOCK = "hashtext(current_schema() || '.instances'), hashtext({})"
HOLD_INSTANCE_LOCK = f"SELECT pg_try_advisory_lock({INSTANCE_LOCK.format('$1')})"
REGISTER_INSTANCE = (
    "INSERT INTO instances (id, started_at) VALUES ($1, now()) ON CONFLICT (id) DO NOTHING"
)
UNREGISTER_INSTANCE = "DELETE FROM instances WHERE id = $1"
RESCUE_FROM_DEAD_INSTANCES = RESCUE.format(
    before=(
        "WITH dead AS MATERIALIZED (SELECT id FROM instances WHERE id <> $5"
        f" AND pg_try_advisory_xact_lock({INSTANCE_LOCK.format('id')})),"
        " gone AS (DELETE FROM instances WHERE id IN (SELECT id FROM dead) AND NOT EXISTS"
        " (SELECT FROM jobs WHERE status = 'running' AND locked_by = instances.id)),"
    ),
    lost="locked_by IN (SELECT id FROM dead)",
)
# A queued job ends at once; a running one is asked to stop, and its instance told. A
# second cancel of a running job changes nothing and tells nobody again. Only a queued
# job changes status here: a running one is counted when its outcome ends it.
CANCEL_JOB = (
    "WITH changed AS (UPDATE jobs SET"
    " status = CASE WHEN status = 'queued' THEN 'cancelled' ELSE status END,"
    " finished_at = CASE WHEN status = 'queued' THEN $2 ELSE finished_at END,"
    " cancel_requested = status = 'running'"
    " WHERE id = $1 AND (status = 'queued' OR (status = 'running' AND NOT cancel_requested))"
    f" RETURNING {COLUMNS}),"
    f" counted AS ({COUNTED} SELECT queue, status, 'queued', 1 FROM changed"
    " WHERE status = 'cancelled')"
    f" SELECT {COLUMNS}, CASE WHEN $3 AND status = 'running'"
    f" THEN pg_notify('{CANCEL_CHANNEL}', current_schema() || '.' || id) END FROM changed"
)
CANCEL_REQUESTED_AMONG = (
    "SELECT id FROM jobs WHERE id = ANY($1::bigint[]) AND status = 'running' AND cancel_requested"
)
# The status it leaves is read under the row's lock, for the count it leaves.
RETRY_JOB = (
    "WITH before AS (SELECT id, status FROM jobs WHERE id = $1 FOR UPDATE),"
    " changed AS (UPDATE jobs SET status = 'queued', run_at = $2::timestamptz,"
    " claim_at = $2::timestamptz + priority * $3::interval, finished_at = NULL,"
    " cancel_requested = false, max_attempts = greatest(max_attempts, attempt + 1)"
    " FROM before WHERE jobs.id = before.id AND before.status IN ('failed', 'cancelled')"
    f" RETURNING before.status AS left_status, {JOBS_COLUMNS}),"
    f" counted AS ({COUNTED} SELECT queue, 'queued', left_status, 1 FROM changed)"
    f" SELECT {COLUMNS}, CASE WHEN $4 THEN pg_notify('{NOTIFY_CHANNEL}', '') END FROM changed"
)
# One instance deletes at a time: the others find the lock taken and delete nothing until
# their next round. A job finishes after it was inserted, so only jobs inserted before the
# cutoff can have finished before it: the index range ends there, however many jobs
# finished since. Rows locked now (a retry) are skipped. The counts drop by what went.
RETENTION_LOCK = "hashtext(current_schema() || '.jobs retention')"
DELETE_FINISHED = (
    f"WITH turn AS (SELECT pg_try_advisory_xact_lock({RETENTION_LOCK}) AS ours),"
    " doomed AS (SELECT id FROM jobs WHERE (SELECT ours FROM turn) AND status = $1"
    " AND inserted_at < $2 AND finished_at < $2 LIMIT $3 FOR UPDATE SKIP LOCKED),"
    " deleted AS (DELETE FROM jobs WHERE id IN (SELECT id FROM doomed) RETURNING queue, status),"
    f" counted AS ({COUNTED} SELECT queue, status, NULL, -count(*) FROM deleted"
    " GROUP BY queue, status)"
    " SELECT count(*) FROM deleted"
)
# $3: whether to wake every instance, as a resumed queue's jobs may be due.
SET_PAUSED = (
    "WITH saved AS (INSERT INTO queues (name, paused) VALUES ($1, $2)"
    " ON CONFLICT (name) DO UPDATE SET paused = excluded.paused)"
    f" SELECT CASE WHEN $3 THEN pg_notify('{NOTIFY_CHANNEL}', '') END"
)
# A tick's job ($4 the schedule, $5 the tick): the tick's row goes in first, and the job
# only with it, so of instances racing for one tick the primary key lets one insert a job
# (the others wait for its commit, then do nothing). Its id is taken for the tick's row
# beforehand. Ticks more than TICKS_KEPT older ($6) are forgotten.
ENQUEUE_TICK = (
    "WITH tick AS (INSERT INTO schedule_ticks (schedule, tick, job_id)"
    " SELECT $4::text, $5::timestamptz, nextval('jobs_id_seq')"
    " WHERE NOT EXISTS (SELECT 1 FROM schedules WHERE name = $4::text AND paused)"
    " ON CONFLICT (schedule, tick) DO NOTHING RETURNING job_id),"
    f" inserted AS (INSERT INTO jobs (id, {INSERTED_COLUMNS}) SELECT tick.job_id,"
    f" {INSERTED_VALUES} FROM tick, {NEW_ROWS} RETURNING id, queue), {COUNT_INSERTED},"
    " forgotten AS (DELETE FROM schedule_ticks WHERE schedule = $4::text AND tick < $6"
    " AND EXISTS (SELECT 1 FROM inserted))"
    " SELECT (SELECT id FROM inserted),"
    f" CASE WHEN $2 AND EXISTS (SELECT 1 FROM inserted) THEN pg_notify('{NOTIFY_CHANNEL}', '') END"
)
ADD_SCHEDULES = (
    "INSERT INTO schedules (name, paused, active_since) SELECT unnest($1::text[]), false, $2"
    " ON CONFLICT (name) DO NOTHING"
)
PAUSE_SCHEDULE = (
    "INSERT INTO schedules (name, paused, active_since) VALUES ($1, true, $2)"
    " ON CONFLICT (name) DO UPDATE SET paused = true"
)
RESUME_SCHEDULE = (
    "INSERT INTO schedules (name, paused, active_since) VALUES ($1, false, $2)"
    " ON CONFLICT (name) DO UPDATE SET paused = false, active_since = excluded.active_since"
)
SCHEDULES = (
    "SELECT name, paused, active_since, latest.tick, latest.job_id FROM schedules"
    " LEFT JOIN LATERAL (SELECT tick, job_id FROM schedule_ticks WHERE schedule = name"
    " ORDER BY tick DESC LIMIT 1) AS latest ON true ORDER BY name"
)
# Claims and outcomes need not wait for the disk flush: if the database itself crashes and
# loses the last of them, those jobs come back through their leases and run again. SET LOCAL,
# so it ends with the transaction, as it must where PgBouncer shares server connections.
# A claim must walk its index in claim order and stop at its limit. Without statistics (a
# new table filling faster than autovacuum analyzes it), or with statistics taken while few
# jobs were queued, the planner guesses that only a row or two match and collects them all
# to sort instead: milliseconds per claim behind a backlog of thousands. Every other
# statement of these transactions finds its rows by primary key and never sorts.
BEGIN_WRITES = (
    "BEGIN; SET LOCAL synchronous_commit = off;"
    " SET LOCAL enable_sort = off; SET LOCAL enable_bitmapscan = off"
)
# The queued jobs fetch_jobs could claim: in a served queue ($1), or in the rest when the
# default queue is served ($2, and $3 the named queues), and not paused. The earliest
# run_at is no later than the earliest claim_at, and its own claim_at is at most the
# largest priority's delay ($4) after it: only that stretch of claim order is read.
NEXT_RUN_AT = (
    "WITH served AS NOT MATERIALIZED (SELECT claim_at, run_at FROM jobs"
    " WHERE status = 'queued' AND (queue = ANY($1::text[]) OR ($2 AND queue <> ALL($3::text[])))"
    " AND queue NOT IN (SELECT name FROM queues WHERE paused))"
    " SELECT min(run_at) FROM served WHERE claim_at <= (SELECT min(claim_at) FROM served) + $4"
)
GET_JOB = f"SELECT {COLUMNS} FROM jobs WHERE id = $1"
# Each filter and combination has an index that reads jobs newest first: by status, queue
# or task, the others checked on the way.
LIST_JOBS = f"SELECT {COLUMNS} FROM jobs"
NEWEST_FIRST = " ORDER BY inserted_at DESC, id DESC LIMIT $1 OFFSET $2"
CUSTOM_PLANS = "SET LOCAL plan_cache_mode = force_custom_plan"
LISTED_BY = {"status": "status", "queue": "queue", "task": TASK}
# Every count is added up from job_counts (see COUNTED), never from the jobs table.
COUNT_JOBS = (
    f"WITH {SUMMED.format(rows='job_counts')} SELECT counted_status, sum(delta)::bigint"
    f" FROM {CHANGES} GROUP BY counted_status"
)
LIST_QUEUES = (
    f"WITH {SUMMED.format(rows='job_counts')}, counted AS (SELECT queue, counted_status,"
    f" sum(delta)::bigint AS n FROM {CHANGES} GROUP BY queue, counted_status"
    # A queue whose jobs have all been deleted is no longer listed, unless paused or resumed.
    " HAVING sum(delta) <> 0)"
    " SELECT coalesce(counted.queue, queues.name), counted.counted_status, counted.n,"
    " coalesce(queues.paused, false) FROM counted FULL JOIN queues ON queues.name = counted.queue"
)
SCHEMA_VERSIONS = "SELECT version_num FROM alembic_version"
# A bulk action's round ({where}: the listing's filters, from ${first} on). Rows locked now
# are skipped: their outcome is being stored, and a later round, or nobody, has them.
CANCEL_QUEUED_JOBS = (
    "WITH doomed AS (SELECT id FROM jobs WHERE status = 'queued' AND inserted_at <= $1 {where}"
    " LIMIT $2 FOR UPDATE SKIP LOCKED),"
    " changed AS (UPDATE jobs SET status = 'cancelled', finished_at = $3 FROM doomed"
    f" WHERE jobs.id = doomed.id RETURNING {JOBS_COLUMNS}),"
    f" counted AS ({COUNTED} SELECT queue, 'cancelled', 'queued', count(*) FROM changed"
    " GROUP BY queue)"
    f" SELECT {COLUMNS} FROM changed"
)
ASK_TO_CANCEL_JOBS = (
    "WITH asked AS (SELECT id FROM jobs WHERE status = 'running' AND NOT cancel_requested"
    " AND inserted_at <= $1 {where} LIMIT $2 FOR UPDATE SKIP LOCKED),"
    " changed AS (UPDATE jobs SET cancel_requested = true FROM asked WHERE jobs.id = asked.id"
    f" RETURNING {JOBS_COLUMNS})"
    f" SELECT {COLUMNS}, CASE WHEN $3 THEN pg_notify('{CANCEL_CHANNEL}',"
    " current_schema() || '.' || id) END FROM changed"
)
# Of the jobs selected that share a unique_key, one is retried: two would both hold it.
RETRY_JOBS = (
    "WITH candidates AS (SELECT id, unique_key, status FROM jobs WHERE status = ANY($1::text[])"
    " AND finished_at <= $2 AND (unique_key IS NULL OR NOT EXISTS (SELECT FROM jobs AS holder"
    f" WHERE holder.unique_key = jobs.unique_key AND holder.{HOLDING_KEY}))"
    " {where}"
    " LIMIT $3 FOR UPDATE SKIP LOCKED),"
    " chosen AS (SELECT DISTINCT ON (coalesce(unique_key, id::text)) id, status AS left_status"
    " FROM candidates ORDER BY coalesce(unique_key, id::text), id),"
    " changed AS (UPDATE jobs SET status = 'queued', run_at = $4::timestamptz,"
    " claim_at = $4::timestamptz + priority * $5::interval, finished_at = NULL,"
    " cancel_requested = false, max_attempts = greatest(max_attempts, attempt + 1)"
    f" FROM chosen WHERE jobs.id = chosen.id RETURNING chosen.left_status, {JOBS_COLUMNS}),"
    f" counted AS ({COUNTED} SELECT queue, 'queued', left_status, count(*) FROM changed"
    " GROUP BY queue, left_status)"
    f" SELECT {COLUMNS}, CASE WHEN $6 THEN pg_notify('{NOTIFY_CHANNEL}', '') END FROM changed"
)
BULK_FILTERS = {"queue": "queue", "task": TASK}
# The due jobs of a queue ahead of a job, through the claims' index: its entries before the
# job's place, the ones not due yet skipped on the way.
COUNT_AHEAD = (
    "SELECT count(*) FROM (SELECT FROM jobs WHERE status = 'queued' AND queue = $1"
    " AND (claim_at, id) < ($2, $3) AND run_at <= $4 LIMIT $5) AS ahead"
)
# Each instance adds to rows of its own, so none waits for another's row lock.
RECORD_OUTCOMES = (
    "WITH forgotten AS (DELETE FROM job_outcomes WHERE minute < $5)"
    " INSERT INTO job_outcomes (minute, outcome, instance, n)"
    " SELECT minute, outcome, $4, n FROM unnest($1::timestamptz[], $2::text[], $3::int[])"
    " AS counted(minute, outcome, n) ON CONFLICT (minute, outcome, instance)"
    " DO UPDATE SET n = job_outcomes.n + excluded.n"
)
RECENT_OUTCOMES = (
    "SELECT minute, outcome, sum(n)::int FROM job_outcomes WHERE minute >= $1"
    " GROUP BY minute, outcome"
)


class PostgresJobStore:
    """Jobs in PostgreSQL, shared by every instance that points DATABASE_URL at it."""

    def __init__(
        self,
        database_url: str,
        clock: Clock,
        *,
        notify: bool = True,
        lease_seconds: float = 30.0,
        connect_timeout: float = 30.0,
        timeout: float = 5.0,
        priority_aging_seconds: float = 300.0,
        lost_limit: int = 3,
    ) -> None:
        # asyncpg speaks plain postgresql:// URLs; SQLAlchemy-style ones name a driver.
        self._dsn = database_url.replace("postgresql+asyncpg://", "postgresql://", 1)
        self._clock = clock
        self._notify = notify
        self._lease = timedelta(seconds=lease_seconds)
        self._connect_timeout = connect_timeout
        # No statement, connection or wait for one takes longer than this.
        self._timeout = timeout
        self._aging = timedelta(seconds=priority_aging_seconds)
        # How long after becoming due a job of the lowest priority stands in line.
        self._longest_wait = MAX_PRIORITY * self._aging
        self._lost_limit = lost_limit
        # Names this process in `locked_by`, so its outcomes and renewals touch only its jobs.
        self._instance = _new_instance_id()
        # The connection that holds this instance's liveness lock (see INSTANCE_LOCK): only
        # with NOTIFY on, which says that connections are sessions of their own (no
        # PgBouncer in transaction mode, where another client could share the lock).
        self._liveness: asyncpg.Connection | None = None
        self._relock: asyncio.Task[None] | None = None
        self._instance_watcher: asyncio.Task[None] | None = None
        self._listeners: list[Callable[[], None]] = []
        self._cancel_listeners: list[Callable[[int], None]] = []
        self._inserts = GroupCommitter(self._commit_inserts)
        self._writer = GroupCommitter(self._commit)
        self._pool: asyncpg.Pool | None = None
        # Each group committer commits one group at a time, always on the same connection.
        self._insert_connection = _HeldConnection(self._open_pool, timeout)
        self._writer_connection = _HeldConnection(self._open_pool, timeout)
        self._notifications: asyncpg.Connection | None = None
        # The schema the listening connection works in, as cancel notices name it.
        self._schema = ""
        self._relisten: asyncio.Task[None] | None = None
        self._closing = False
        self._held: set[int] = set()
        self._lease_keeper: asyncio.Task[None] | None = None
        self._count_folder: asyncio.Task[None] | None = None
        self._outcomes = OutcomeTally()
        self._outcome_writer: asyncio.Task[None] | None = None

    async def open(self) -> None:
        self._pool = await self._connect()
        await self._migrate()
        if self._notify:
            await self._listen()
            await self._hold_instance_lock()
            self._instance_watcher = asyncio.create_task(self._watch_instances())
        self._lease_keeper = asyncio.create_task(self._keep_leases())
        self._count_folder = asyncio.create_task(self._fold_counts())
        self._outcome_writer = asyncio.create_task(self._write_outcomes_periodically())

    async def close(self) -> None:
        self._closing = True
        if self._relisten is not None:
            self._relisten.cancel()
            with suppress(asyncio.CancelledError):
                await self._relisten
        for task in (
            self._lease_keeper,
            self._count_folder,
            self._instance_watcher,
            self._relock,
            self._outcome_writer,
        ):
            if task is not None:
                task.cancel()
                with suppress(asyncio.CancelledError):
                    await task
        await self._inserts.drain()
        await self._writer.drain()
        with suppress(StoreUnavailable):
            await self._write_outcomes()
        # The pool's close waits for every connection to come back.
        await self._insert_connection.release()
        await self._writer_connection.release()
        if self._notifications is not None:
            await self._notifications.close()
        if self._liveness is not None:
            with suppress(*CONNECTION_ERRORS):
                await self._liveness.execute(UNREGISTER_INSTANCE, self._instance)
            await self._liveness.close()
        if self._pool is not None:
            await self._pool.close()

    async def ping(self) -> None:
        await self._fetch("SELECT 1")

    def subscribe(self, on_new_jobs: Callable[[], None]) -> None:
        self._listeners.append(on_new_jobs)

    def subscribe_cancellations(self, on_cancel: Callable[[int], None]) -> None:
        self._cancel_listeners.append(on_cancel)

    async def insert_job(self, new_job: NewJob) -> Enqueued:
        return (await self.insert_all_jobs([new_job]))[0]

    async def insert_all_jobs(self, new_jobs: Sequence[NewJob]) -> list[Enqueued]:
        now = self._clock.now()
        outcomes: list[int | Job] = await self._inserts.write(self._insert_jobs, (now, new_jobs))
        self._wake_local_workers()
        return [
            Enqueued(new_job.inserted(outcome, now), created=True)
            if isinstance(outcome, int)
            else Enqueued(outcome, created=False)
            for new_job, outcome in zip(new_jobs, outcomes, strict=True)
        ]

    async def fetch_jobs(self, limits: Mapping[str, int]) -> list[Job]:
        if not any(limit > 0 for limit in limits.values()):
            return []
        claimed: list[Job] = await self._writer.write(self._claim_jobs, limits)
        return claimed

    async def complete_job(self, job: Job, result: Any) -> None:
        now = self._clock.now()
        self._outcomes.add(now, COMPLETED)
        change = (job.id, self._instance, result, now)
        with self._letting_go(job):
            await self._writer.write(self._complete_jobs, change)

    async def error_job(self, job: Job, error: str, retry_at: datetime | None) -> None:
        claim_at = None if retry_at is None else retry_at + job.priority * self._aging
        errors = [*job.errors, error]
        now = self._clock.now()
        self._outcomes.add(now, FAILED)
        change = (job.id, self._instance, errors, retry_at, claim_at, now)
        with self._letting_go(job):
            await self._writer.write(self._fail_attempts, change)

    async def release_jobs(self, jobs: Sequence[Job]) -> None:
        now = self._clock.now()
        held = [(job.id, self._instance, now, self._aging) for job in jobs]
        with self._letting_go(*jobs):
            await asyncio.gather(*(self._writer.write(self._release_jobs, job) for job in held))

    async def rescue_orphaned_jobs(self) -> int:
        rescued = 0
        if self._liveness is not None:
            rescued += await self._rescue(
                RESCUE_FROM_DEAD_INSTANCES, LOST_INSTANCE_DIED, self._instance
            )
        return rescued + await self._rescue(RESCUE_EXPIRED_LEASES, LOST_LEASE_EXPIRED)

    async def _rescue(self, statement: str, reason: str, *args: Any) -> int:
        """Run one of the RESCUE statements; how many jobs it requeued or failed."""
        # A transaction of its own, never in a group with claims and outcomes: it locks other
        # instances' jobs, and a group holding those locks could wait on one of theirs that
        # waits on it: a deadlock.
        async with self._connection() as conn:
            now = self._clock.now()
            rescued: int = await conn.fetchval(
                statement, now, reason, self._aging, self._lost_limit, *args
            )
            if rescued and self._notify:
                await conn.execute("SELECT pg_notify($1, '')", NOTIFY_CHANNEL)
        if rescued:
            self._outcomes.add(self._clock.now(), FAILED, rescued)
            self._wake_local_workers()
        return rescued

    @contextmanager
    def _letting_go(self, *jobs: Job) -> Iterator[None]:
        """Stop renewing the jobs' leases once their outcome is stored, or cannot be.

        While the database cannot be reached the engine tries the outcome again, and the
        lease is renewed meanwhile, so an outage shorter than the lease costs no second run.
        An outcome that failed otherwise would leave the job running, its lease renewed for
        as long as this instance lives: let go, the lease expires and any instance rescues
        the job, the lost attempt counted.
        """
        try:
            yield
        except StoreUnavailable:
            raise
        except BaseException:
            self._held.difference_update(job.id for job in jobs)
            raise
        self._held.difference_update(job.id for job in jobs)

    async def cancel_job(self, job_id: int) -> Job | None:
        while True:
            rows = await self._fetch(CANCEL_JOB, job_id, self._clock.now(), self._notify)
            if rows:
                changed = _job_from_row(rows[0])
                if changed.status is JobStatus.RUNNING and not self._notify:
                    # With NOTIFY, this instance hears it as every other does.
                    self._tell_cancel(job_id)
                return changed
            job = await self.get_job(job_id)
            if job is None:
                return None
            if job.status in FINISHED:
                raise JobConflict(f"Job {job_id} is {job.status}")
            if job.status is JobStatus.RUNNING and job.cancel_requested:
                return job
            # Retried or requeued meanwhile: cancel it as it is now.

    async def cancel_requested_among(self, job_ids: Sequence[int]) -> list[int]:
        if not job_ids:
            return []
        rows = await self._fetch(CANCEL_REQUESTED_AMONG, list(job_ids))
        return [row[0] for row in rows]

    async def retry_job(self, job_id: int) -> Job | None:
        while True:
            try:
                rows = await self._fetch(
                    RETRY_JOB, job_id, self._clock.now(), self._aging, self._notify
                )
            except asyncpg.UniqueViolationError:
                # Another queued or running job holds its unique_key: the index said so.
                conflict = await self._key_conflict(job_id)
                if conflict is not None:
                    raise conflict from None
                continue  # the holder finished meanwhile
            if rows:
                self._wake_local_workers()
                return _job_from_row(rows[0])
            job = await self.get_job(job_id)
            if job is None:
                return None
            if job.status not in (JobStatus.FAILED, JobStatus.CANCELLED):
                raise JobConflict(f"Job {job_id} is {job.status}")

    async def _key_conflict(self, job_id: int) -> JobConflict | None:
        job = await self.get_job(job_id)
        if job is None or job.unique_key is None:
            return None
        holders = await self._fetch(KEY_HOLDERS, [job.unique_key])
        if not holders:
            return None
        holder = holders[0]["id"]
        return JobConflict(
            f"Job {job_id} has unique_key {job.unique_key!r}, which job {holder} holds"
        )

    async def cancel_jobs(self, where: JobFilter, inserted_by: datetime, limit: int) -> list[Job]:
        changed: list[Job] = []
        now = self._clock.now()
        if where.status in (None, JobStatus.QUEUED):
            filters, args = _bulk_filters(where, first=4)
            rows = await self._fetch(
                CANCEL_QUEUED_JOBS.format(where=filters), inserted_by, limit, now, *args
            )
            changed += map(_job_from_row, rows)
        if where.status in (None, JobStatus.RUNNING) and len(changed) < limit:
            filters, args = _bulk_filters(where, first=4)
            statement = ASK_TO_CANCEL_JOBS.format(where=filters)
            rows = await self._fetch(
                statement, inserted_by, limit - len(changed), self._notify, *args
            )
            asked = [_job_from_row(row) for row in rows]
            if not self._notify:
                # With NOTIFY, this instance hears it as every other does.
                for job in asked:
                    self._tell_cancel(job.id)
            changed += asked
        return changed

    async def retry_jobs(self, where: JobFilter, finished_by: datetime, limit: int) -> list[Job]:
        statuses = [
            status.value
            for status in (JobStatus.FAILED, JobStatus.CANCELLED)
            if where.status in (None, status)
        ]
        if not statuses:
            return []
        filters, args = _bulk_filters(where, first=7)
        statement = RETRY_JOBS.format(where=filters)
        while True:
            try:
                rows = await self._fetch(
                    statement,
                    statuses,
                    finished_by,
                    limit,
                    self._clock.now(),
                    self._aging,
                    self._notify,
                    *args,
                )
            except asyncpg.UniqueViolationError:
                # A job with one of their keys was inserted meanwhile: select again, without.
                continue
            if rows:
                self._wake_local_workers()
            return [_job_from_row(row) for row in rows]

    async def count_jobs_ahead(self, job: Job, limit: int) -> int:
        claim_at = job.run_at + job.priority * self._aging
        rows = await self._fetch(COUNT_AHEAD, job.queue, claim_at, job.id, self._clock.now(), limit)
        ahead: int = rows[0][0]
        return ahead

    async def next_run_at(self, limits: Mapping[str, int]) -> datetime | None:
        named = [queue for queue in limits if queue != DEFAULT_QUEUE]
        served = [queue for queue in named if limits[queue] > 0]
        serves_the_rest = limits.get(DEFAULT_QUEUE, 0) > 0
        if not served and not serves_the_rest:
            return None
        rows = await self._fetch(NEXT_RUN_AT, served, serves_the_rest, named, self._longest_wait)
        next_run_at: datetime | None = rows[0][0]
        return next_run_at

    async def delete_finished_jobs(
        self, status: JobStatus, finished_before: datetime, limit: int
    ) -> int:
        rows = await self._fetch(DELETE_FINISHED, status.value, finished_before, limit)
        deleted: int = rows[0][0]
        return deleted

    async def get_job(self, job_id: int) -> Job | None:
        rows = await self._fetch(GET_JOB, job_id)
        return _job_from_row(rows[0]) if rows else None

    async def list_jobs(self, where: JobFilter, limit: int, offset: int) -> list[Job]:
        values = {"status": where.status, "queue": where.queue, "task": where.task}
        conditions, args = [], []
        for name, value in values.items():
            if value is not None:
                args.append(str(value))
                conditions.append(f"{LISTED_BY[name]} = ${len(args) + 2}")
        where_sql = " WHERE " + " AND ".join(conditions) if conditions else ""
        async with self._connection() as conn, conn.transaction():
            # After a statement's fifth run PostgreSQL may plan it once for any values; that
            # plan cannot tell a rare status, queue or task from a common one, and walks every
            # job to list one that few jobs have. Listings are planned for their values
            # instead, which costs little beside running them.
            await conn.execute(CUSTOM_PLANS)
            rows = await conn.fetch(LIST_JOBS + where_sql + NEWEST_FIRST, limit, offset, *args)
        return [_job_from_row(row) for row in rows]

    async def recent_outcomes(self, since: datetime) -> list[MinuteOutcomes]:
        start = minute_of(max(since, self._clock.now() - OUTCOMES_KEPT))
        return by_minute(tuple(row) for row in await self._fetch(RECENT_OUTCOMES, start))

    async def count_jobs(self) -> dict[JobStatus, int]:
        counts = dict.fromkeys(JobStatus, 0)
        for status, count in await self._fetch(COUNT_JOBS):
            counts[JobStatus(status)] = count
        return counts

    async def list_queues(self) -> list[QueueCounts]:
        counts: dict[str, dict[JobStatus, int]] = {}
        paused: dict[str, bool] = {}
        for name, status, count, is_paused in await self._fetch(LIST_QUEUES):
            queue_counts = counts.setdefault(name, dict.fromkeys(JobStatus, 0))
            if status is not None:
                queue_counts[JobStatus(status)] = count
            paused[name] = is_paused
        return [QueueCounts(name, counts[name], paused[name]) for name in sorted(counts)]

    async def pause_queue(self, name: str) -> None:
        await self._execute(SET_PAUSED, name, True, False)

    async def resume_queue(self, name: str) -> None:
        await self._execute(SET_PAUSED, name, False, self._notify)
        self._wake_local_workers()

    async def add_schedules(self, names: Sequence[str]) -> None:
        await self._execute(ADD_SCHEDULES, list(names), self._clock.now())

    async def enqueue_tick(self, name: str, tick: datetime, new_job: NewJob) -> Job | None:
        now = self._clock.now()
        rows = [_insert_row(new_job, now)]
        forget_before = tick - TICKS_KEPT
        async with self._connection() as conn:
            job_id, _ = await conn.fetchrow(
                ENQUEUE_TICK, rows, self._notify, self._aging, name, tick, forget_before
            )
        if job_id is None:
            return None
        self._wake_local_workers()
        return new_job.inserted(job_id, now)

    async def list_schedules(self) -> list[ScheduleState]:
        return [ScheduleState(*row) for row in await self._fetch(SCHEDULES)]

    async def pause_schedule(self, name: str) -> None:
        await self._execute(PAUSE_SCHEDULE, name, self._clock.now())

    async def resume_schedule(self, name: str) -> None:
        await self._execute(RESUME_SCHEDULE, name, self._clock.now())

    # Batches: each runs once per group commit, with the items of every caller in the group.

    async def _insert_jobs(
        self, conn: asyncpg.Connection, requests: list[tuple[datetime, Sequence[NewJob]]]
    ) -> list[list[int | Job]]:
        """Per request, per job: its id if it was inserted, else the job holding its key."""
        # One statement for every caller in the group.
        rows = [_insert_row(new_job, now) for now, new_jobs in requests for new_job in new_jobs]
        new_jobs = [new_job for _, jobs in requests for new_job in jobs]
        outcomes: list[int | Job]
        if any(new_job.unique_key is not None for new_job in new_jobs):
            outcomes = await self._insert_unique_jobs(conn, rows, new_jobs)
        else:
            outcomes = await conn.fetchval(INSERT_JOBS, rows, self._notify, self._aging)
        taken = iter(outcomes)
        return [[next(taken) for _ in jobs] for _, jobs in requests]

    async def _insert_unique_jobs(
        self, conn: asyncpg.Connection, rows: list[dict[str, Any]], new_jobs: list[NewJob]
    ) -> list[int | Job]:
        ids, keys, _ = await conn.fetchrow(INSERT_UNIQUE_JOBS, rows, self._notify, self._aging)
        # Inserted ids ascend in the rows' order: each row without a key was inserted, and
        # a row with a key was if the next inserted one has that key (a key is inserted
        # once at most, for the first row that has it).
        inserted = deque(zip(ids, keys, strict=True))
        outcomes: list[int | None] = []
        for new_job in new_jobs:
            if inserted and inserted[0][1] == new_job.unique_key:
                outcomes.append(inserted.popleft()[0])
            else:
                outcomes.append(None)
        held = {
            new_job.unique_key
            for new_job, outcome in zip(new_jobs, outcomes, strict=True)
            if outcome is None
        }
        if not held:
            return [outcome for outcome in outcomes if outcome is not None]
        # A statement of its own, so that it sees the holders other instances committed
        # while the insert waited on them.
        holders = {
            job.unique_key: job
            for job in map(_job_from_row, await conn.fetch(KEY_HOLDERS, list(held)))
        }
        for key in held - holders.keys():
            holders[key] = _job_from_row(await conn.fetchrow(LATEST_WITH_KEY, key))
        return [
            holders[new_job.unique_key] if outcome is None else outcome
            for new_job, outcome in zip(new_jobs, outcomes, strict=True)
        ]

    async def _claim_jobs(
        self, conn: asyncpg.Connection, requests: list[Mapping[str, int]]
    ) -> list[list[Job]]:
        claimed = []
        for limits in requests:
            batch = []
            for claim, queues, limit in _claims(limits):
                now = self._clock.now()
                rows = await conn.fetch(
                    claim,
                    now,
                    self._instance,
                    self._lease,
                    limit,
                    now + self._longest_wait,
                    queues,
                )
                rows.sort(key=lambda row: (row["claim_at"], row["id"]))
                batch += [_job_from_row(row) for row in rows]
            self._held.update(job.id for job in batch)
            claimed.append(batch)
        return claimed

    async def _complete_jobs(self, conn: asyncpg.Connection, changes: list[Any]) -> list[None]:
        await conn.executemany(COMPLETE_JOB, changes)
        return [None] * len(changes)

    async def _fail_attempts(self, conn: asyncpg.Connection, changes: list[Any]) -> list[None]:
        await conn.executemany(FAIL_ATTEMPT, changes)
        return [None] * len(changes)

    async def _release_jobs(self, conn: asyncpg.Connection, jobs: list[Any]) -> list[None]:
        await conn.executemany(RELEASE_JOB, jobs)
        return [None] * len(jobs)

    async def _commit_inserts(self, group: Group) -> Group:
        # One statement, atomic by itself: no BEGIN and COMMIT round trips. Accepted jobs
        # are on disk before their requests are answered.
        async with self._insert_connection as conn:
            return {self._insert_jobs: await self._insert_jobs(conn, group[self._insert_jobs])}

    async def _commit(self, group: Group) -> Group:
        async with self._writer_connection as conn:
            try:
                # One round trip for all of them, where asyncpg's transaction() would take more.
                await conn.execute(BEGIN_WRITES)
                results: Group = {}
                for batch, items in group.items():
                    apply: Batch = batch  # type: ignore[assignment]
                    results[batch] = await apply(conn, items)
                await conn.execute("COMMIT")
            except BaseException as exc:
                # asyncpg would roll back on release too, but reports it as an error. A server
                # that did not answer in time is not asked again: the connection is dropped.
                in_transaction = not conn.is_closed() and conn.is_in_transaction()
                if in_transaction and not isinstance(exc, TimeoutError):
                    with suppress(*CONNECTION_ERRORS):
                        await conn.execute("ROLLBACK")
                raise
            return results

    async def _keep_leases(self) -> None:
        """Renew this instance's leases and rescue other instances' expired ones."""
        interval = self._lease.total_seconds() / 3
        while True:
            await asyncio.sleep(interval)
            try:
                if self._held:
                    held = list(self._held)
                    await self._execute(RENEW_LEASES, held, self._instance, self._lease)
                if rescued := await self._rescue(RESCUE_EXPIRED_LEASES, LOST_LEASE_EXPIRED):
                    logger.warning("Requeued %d jobs whose instance stopped renewing them", rescued)
            except StoreUnavailable as exc:
                logger.error("Could not renew job leases: %s", exc)

    async def _fold_counts(self) -> None:
        """Fold the appended counts once they are many, so that reads sum few rows."""
        while True:
            await asyncio.sleep(FOLD_INTERVAL)
            try:
                await self._execute(FOLD_MANY_COUNTS)
            except StoreUnavailable:
                pass  # an outage, which the lease keeper and the instance watcher report
            except CONNECTION_ERRORS as exc:
                # Counts stay exact unfolded; only reading them grows slower meanwhile.
                logger.warning("Could not fold the job counts: %s", exc)

    async def _write_outcomes_periodically(self) -> None:
        while True:
            await asyncio.sleep(WRITE_INTERVAL)
            try:
                await self._write_outcomes()
            except StoreUnavailable as exc:
                logger.warning("Could not write the outcomes counted, will retry: %s", exc)

    async def _write_outcomes(self) -> None:
        """Add the outcomes counted since the last time to job_outcomes; forget old ones."""

        async def write(counted: list[OutcomeCount]) -> None:
            minutes, outcomes, counts = zip(*counted, strict=True)
            forget_before = self._clock.now() - OUTCOMES_KEPT
            await self._execute(
                RECORD_OUTCOMES,
                list(minutes),
                list(outcomes),
                list(counts),
                self._instance,
                forget_before,
            )

        await self._outcomes.write_out(write)

    async def _watch_instances(self) -> None:
        """Rescue the running jobs of instances that died, as soon as their lock is free."""
        while True:
            await asyncio.sleep(LIVENESS_INTERVAL)
            try:
                rescued = await self._rescue(
                    RESCUE_FROM_DEAD_INSTANCES, LOST_INSTANCE_DIED, self._instance
                )
            except StoreUnavailable as exc:
                logger.warning("Could not look for instances that died: %s", exc)
                continue
            if rescued:
                logger.warning("Requeued %d jobs of an instance that died", rescued)

    async def _hold_instance_lock(self) -> None:
        """Take this instance's liveness lock, on a connection of its own, and register it."""
        conn = await asyncpg.connect(self._dsn, timeout=self._timeout)
        try:
            while not await conn.fetchval(HOLD_INSTANCE_LOCK, self._instance):
                # A live instance's id hashes to the same key: take another id.
                self._instance = _new_instance_id()
            await conn.execute(REGISTER_INSTANCE, self._instance)
        except BaseException:
            await conn.close()
            raise
        conn.add_termination_listener(self._on_liveness_lost)
        self._liveness = conn

    def _on_liveness_lost(self, _conn: asyncpg.Connection) -> None:
        if self._closing:
            return
        # Until the lock is held again, other instances take this one for dead and may
        # rescue its running jobs: their outcomes here then change nothing (see HELD).
        logger.warning("Lost the connection that holds this instance's lock; taking it again")
        self._liveness = None
        self._relock = asyncio.create_task(self._hold_instance_lock_again())

    async def _hold_instance_lock_again(self) -> None:
        await _until_connected(self._hold_instance_lock, "take this instance's lock")
        logger.info("Holding this instance's lock again")

    async def _migrate(self) -> None:
        """Run the migrations the database lacks. An up-to-date one costs one query: no
        lock, no migration machinery."""
        async with self._connection() as conn:
            try:
                current = {row[0] for row in await conn.fetch(SCHEMA_VERSIONS)}
            except asyncpg.UndefinedTableError:
                current = set()
        if current != postgres_migrations.head_revisions():
            await postgres_migrations.upgrade(self._dsn)

    async def _listen(self) -> None:
        conn = await asyncpg.connect(self._dsn, timeout=self._timeout)
        conn.add_termination_listener(self._on_listener_lost)
        self._schema = await conn.fetchval("SELECT current_schema()")
        await conn.add_listener(NOTIFY_CHANNEL, self._on_notification)
        await conn.add_listener(CANCEL_CHANNEL, self._on_cancel_notification)
        self._notifications = conn

    def _on_listener_lost(self, _conn: asyncpg.Connection) -> None:
        if self._closing:
            return
        logger.warning("Lost the connection that listens for new jobs; opening it again")
        self._relisten = asyncio.create_task(self._listen_again())

    async def _listen_again(self) -> None:
        await _until_connected(self._listen, "listen for new jobs")
        logger.info("Listening for new jobs again")
        # What was inserted while nobody listened is waiting: look now. Cancels asked for
        # meanwhile reach their jobs through cancel_requested_among.
        self._wake_local_workers()

    def _on_notification(self, *_: object) -> None:
        self._wake_local_workers()

    def _on_cancel_notification(
        self, _conn: object, _pid: int, _channel: str, payload: str
    ) -> None:
        schema, _, job_id = payload.rpartition(".")
        if schema == self._schema:
            with suppress(ValueError):
                self._tell_cancel(int(job_id))

    def _tell_cancel(self, job_id: int) -> None:
        for on_cancel in self._cancel_listeners:
            on_cancel(job_id)

    def _wake_local_workers(self) -> None:
        for notify in self._listeners:
            notify()

    async def _fetch(self, query: str, *args: Any) -> list[asyncpg.Record]:
        async with self._connection() as conn:
            rows: list[asyncpg.Record] = await conn.fetch(query, *args)
            return rows

    async def _execute(self, query: str, *args: Any) -> None:
        async with self._connection() as conn:
            await conn.execute(query, *args)

    def _connection(self) -> "_PooledConnection":
        return _PooledConnection(self._open_pool(), self._timeout)

    def _open_pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise StoreUnavailable("the store is not open")
        return self._pool

    async def _connect(self) -> asyncpg.Pool:
        """A connection pool, retrying for a while so the service can start beside its database."""
        deadline = time.monotonic() + self._connect_timeout
        delay = 0.2
        while True:
            try:
                pool: asyncpg.Pool = await asyncpg.create_pool(
                    self._dsn,
                    min_size=2,
                    max_size=10,
                    # A connection, and each statement, gives up after this: a stalled
                    # server or network fails requests (503) instead of holding them.
                    timeout=self._timeout,
                    command_timeout=self._timeout,
                    init=_set_up_connection,
                    reset=_keep_session,
                )
                return pool
            except CONNECTION_ERRORS as exc:
                if time.monotonic() + delay > deadline:
                    raise StoreUnavailable(f"cannot reach the database: {exc}") from exc
                logger.warning("Database not reachable yet (%s); retrying", exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)


async def _until_connected(connect: Callable[[], Awaitable[None]], what: str) -> None:
    """Call `connect` until it reaches the database, pausing longer each time (up to 5 s)."""
    delay = 0.2
    while True:
        try:
            await connect()
            return
        except CONNECTION_ERRORS as exc:
            logger.warning("Cannot %s yet (%s); retrying", what, exc)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)


def _new_instance_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def _insert_row(new_job: NewJob, now: datetime) -> dict[str, Any]:
    """A job as INSERT_ROWS reads it."""
    row = {
        "payload": dumps(new_job.payload),
        "max_attempts": new_job.max_attempts,
        "queue": new_job.queue,
        "priority": new_job.priority,
        "run_at": new_job.run_at or now,
        "inserted_at": now,
    }
    if new_job.unique_key is not None:
        row["unique_key"] = new_job.unique_key
    task = new_job.payload.get("task")
    # A task name with NUL is not text PostgreSQL can keep: such a job lists under no task.
    if isinstance(task, str) and "\x00" not in task:
        row["task"] = task
    return row


def _bulk_filters(where: JobFilter, first: int) -> tuple[str, list[str]]:
    """The conditions a bulk action's statement adds for `where`'s queue and task, with
    their parameters numbered from `first`."""
    conditions: list[str] = []
    args: list[str] = []
    for name, column in BULK_FILTERS.items():
        value = getattr(where, name)
        if value is not None:
            conditions.append(f" AND {column} = ${first + len(args)}")
            args.append(value)
    return "".join(conditions), args


def _claims(limits: Mapping[str, int]) -> Iterator[tuple[str, str | list[str], int]]:
    """One claim statement per queue with room: its SQL, its queue argument, its limit."""
    named = [queue for queue in limits if queue != DEFAULT_QUEUE]
    for queue, limit in limits.items():
        if limit <= 0:
            continue
        if queue == DEFAULT_QUEUE:
            yield CLAIM_FROM_THE_REST, named, limit
        else:
            yield CLAIM_FROM_QUEUE, queue, limit


def _store_error(error: BaseException | None, timeout: float) -> StoreUnavailable | None:
    """What a failure on a connection means to the store's callers; None when it is the
    statement's own (a unique key taken, say), for the caller to handle."""
    if isinstance(error, TimeoutError):
        return StoreUnavailable(f"the database did not answer within {timeout:g} s")
    if isinstance(error, asyncpg.DiskFullError):
        return StoreFull(f"no space left on device ({error})")
    if isinstance(error, LOST_CONNECTION):
        return StoreUnavailable(str(error))
    return None


class _PooledConnection:
    """A pool connection whose connection errors surface as StoreUnavailable."""

    def __init__(self, pool: asyncpg.Pool, timeout: float) -> None:
        self._pool = pool
        self._timeout = timeout
        self._conn: asyncpg.Connection | None = None

    async def __aenter__(self) -> asyncpg.Connection:
        try:
            self._conn = await self._pool.acquire(timeout=self._timeout)
        except (*CONNECTION_ERRORS, TimeoutError) as exc:
            raise _store_error(exc, self._timeout) or StoreUnavailable(str(exc)) from exc
        return self._conn

    async def __aexit__(self, *exc_info: Any) -> None:
        conn, self._conn = self._conn, None
        error = exc_info[1]
        if conn is not None:
            if isinstance(error, TimeoutError):
                # Its server did not answer: a reset would wait for it too.
                conn.terminate()
            await self._pool.release(conn)
        if (store_error := _store_error(error, self._timeout)) is not None:
            raise store_error from error


class _HeldConnection:
    """A pool connection kept from one use to the next, for a user that needs one at a time.

    Taking a connection from the pool and giving it back for each group commit cost a fifth
    of the end-to-end throughput with two worker instances.
    After any error the connection goes back to the pool, which rolls it back or closes it,
    and the next use takes another.
    """

    def __init__(self, pool: Callable[[], asyncpg.Pool], timeout: float) -> None:
        self._pool = pool
        self._timeout = timeout
        self._conn: asyncpg.Connection | None = None

    async def __aenter__(self) -> asyncpg.Connection:
        if self._conn is None:
            try:
                self._conn = await self._pool().acquire(timeout=self._timeout)
            except (*CONNECTION_ERRORS, TimeoutError) as exc:
                raise _store_error(exc, self._timeout) or StoreUnavailable(str(exc)) from exc
        return self._conn

    async def __aexit__(self, *exc_info: Any) -> None:
        error = exc_info[1]
        if error is None:
            return
        if isinstance(error, TimeoutError) and self._conn is not None:
            # Its server did not answer: a reset would wait for it too.
            self._conn.terminate()
        await self.release()
        if (store_error := _store_error(error, self._timeout)) is not None:
            raise store_error from error

    async def release(self) -> None:
        """Give the connection back to the pool, if one is held."""
        conn, self._conn = self._conn, None
        if conn is not None:
            # The pool closes a connection it cannot reset: one that broke needs nothing more.
            with suppress(*CONNECTION_ERRORS):
                await self._pool().release(conn)


async def _set_up_connection(conn: asyncpg.Connection) -> None:
    # `json`, not `jsonb`: it keeps payloads exactly as sent, "\u0000" included.
    await conn.set_type_codec(
        "json", encoder=dumps, decoder=orjson.loads, schema="pg_catalog", format="text"
    )


async def _keep_session(_conn: asyncpg.Connection) -> None:
    """Return a connection to the pool as it is: no reset query, one round trip less a use.

    asyncpg's default reset clears session state (settings, LISTENs, advisory locks) with
    a query on every release. This store leaves none: its settings are SET LOCAL, its
    locks on pooled connections are transaction-scoped, and it listens and holds its
    instance's lock on connections of their own. An open transaction is
    still rolled back by asyncpg before this runs.
    """


def _job_from_row(row: asyncpg.Record) -> Job:
    """A row selected as COLUMNS: asyncpg has already decoded its JSON and timestamps."""
    return Job.model_validate(dict(row.items()))
