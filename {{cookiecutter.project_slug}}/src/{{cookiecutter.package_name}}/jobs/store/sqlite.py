"""The SQLite job store: one file in WAL mode, every write group-committed on one connection.

Writes (inserts, claims, outcomes) go through one connection, group-committed: whatever queues
while one transaction commits goes into the next, so a burst of requests costs one commit
instead of one each, and there is never a second writer to meet "database is locked". Reads
run in threads on their own connections, which WAL lets proceed while the writer works.

The schema comes from versioned migrations (sqlite_migrations/), which open() runs; the
statements are SQL text on the driver's connection, because the ORM's per-statement overhead
was most of the cost of a job.
"""

import asyncio
import dataclasses
import fcntl
import logging
import os
import sqlite3
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from operator import itemgetter
from typing import Any, TypeVar, cast

import orjson
from sqlalchemy import JSON, DateTime, Engine, create_engine, event
from sqlalchemy.exc import DBAPIError

from ..clock import Clock
from ..codec import dumps
from ..model import DEFAULT_QUEUE, FINISHED, JOB_COLUMNS, TASK, Job, JobRow, JobStatus, NewJob
from . import sqlite_migrations
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
from .outcomes import COMPLETED, FAILED, WRITE_INTERVAL, OutcomeCount, OutcomeTally, by_minute

T = TypeVar("T")
LOST_WORKER_STOPPED = "lost: worker stopped"
logger = logging.getLogger(__name__)
# Seconds between checkpoints of the write-ahead log (when anything was written), and
# between writes of the outcomes counted.
CHECKPOINT_INTERVAL = WRITE_INTERVAL
# Seconds a write waits for another process to release the file's write lock, unless the
# store is given DATABASE_TIMEOUT.
DEFAULT_TIMEOUT = 5.0
# After a write failed for want of space, the store counts as full until a write succeeds
# or the file's filesystem has this much free again.
SPACE_WANTED = 4 * 1024 * 1024
DISK_FULL = "no space left on device"
Row = tuple[Any, ...]
WriteBatch = Callable[[sqlite3.Connection, list[Any]], list[Any]]

COLUMNS = ", ".join(JOB_COLUMNS)
ID = JOB_COLUMNS.index("id")
# The parameters of a row to insert, in INSERT_JOB's order; the key comes last.
INSERT_JOB = (
    "INSERT INTO jobs (payload, max_attempts, queue, priority, run_at, inserted_at, claim_at,"
    " unique_key, status, attempt, cancel_requested, result, errors)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'queued', 0, 0, 'null', '[]')"
)
UNIQUE_KEY = 7
# The partial unique index turns the row away while a queued or running job holds its key.
INSERT_UNIQUE_JOB = f"{INSERT_JOB} ON CONFLICT DO NOTHING RETURNING id"
HOLDER_OF_KEY = (
    f"SELECT {COLUMNS} FROM jobs INDEXED BY ix_jobs_unique_key"
    " WHERE unique_key = ? AND unique_key IS NOT NULL AND status IN ('queued', 'running')"
)
# Which queues and priorities have queued jobs, leaving out paused queues: a few rows of
# job_counts, so that claims seek only where due jobs can be. The writer is this process,
# so reading `queues` in every claim is what makes a pause hold at once.
# (NOT EXISTS looks each queue up in `queues`; NOT IN built a list of the paused every time.)
CLAIMABLE = (
    "SELECT queue, priority FROM job_counts AS c WHERE c.status = 'queued' AND c.n > 0"
    " AND NOT EXISTS (SELECT 1 FROM queues WHERE name = c.queue AND paused)"
)
# Within one queue and priority, claim order (claim_at = run_at + priority x aging) is
# run_at order, so the due jobs are the ones up to now + priority x aging: a range of the
# index that stops at the first job not due, however many wait behind it.
CLAIM_ARM = (
    "SELECT {columns} FROM jobs INDEXED BY ix_jobs_queue_due WHERE status = 'queued'"
    " AND queue IN ({queues}) AND priority = ? AND claim_at <= ? ORDER BY claim_at, id LIMIT ?"
)
CLAIM_JOBS = (
    "UPDATE jobs SET status = 'running', attempt = attempt + 1, started_at = ?"
    " WHERE id IN ({due}) RETURNING " + COLUMNS + ", claim_at"
)
# For next_run_at: each claimable queue and priority's first claim_at, which is its
# earliest run_at plus priority x aging.
FIRST_CLAIM_ATS = (
    "SELECT c.queue, c.priority, (SELECT min(claim_at) FROM jobs INDEXED BY ix_jobs_queue_due"
    " WHERE status = 'queued' AND queue = c.queue AND priority = c.priority)"
    " FROM job_counts AS c WHERE c.status = 'queued' AND c.n > 0"
    " AND NOT EXISTS (SELECT 1 FROM queues WHERE name = c.queue AND paused)"
)
COMPLETE_JOB = (
    "UPDATE jobs SET status = CASE WHEN cancel_requested THEN 'cancelled' ELSE 'done' END,"
    " result = ?, finished_at = ? WHERE id = ? AND status = 'running'"
)
# ?2 is the retry's run_at, NULL when the job fails for good.
FAIL_ATTEMPT = (
    "UPDATE jobs SET errors = ?1,"
    " status = CASE WHEN cancel_requested THEN 'cancelled' WHEN ?2 IS NULL THEN 'failed'"
    " ELSE 'queued' END,"
    " run_at = CASE WHEN cancel_requested OR ?2 IS NULL THEN run_at ELSE ?2 END,"
    " claim_at = CASE WHEN cancel_requested OR ?2 IS NULL THEN claim_at ELSE ?3 END,"
    " finished_at = CASE WHEN cancel_requested OR ?2 IS NULL THEN ?4 END"
    " WHERE id = ?5 AND status = 'running'"
)
RELEASE_JOB = (
    "UPDATE jobs SET attempt = attempt - 1,"
    " started_at = CASE WHEN attempt = 1 THEN NULL ELSE started_at END,"
    " status = CASE WHEN cancel_requested THEN 'cancelled' ELSE 'queued' END,"
    " finished_at = CASE WHEN cancel_requested THEN ?2 ELSE finished_at END, claim_at = ?1"
    " WHERE id = ?3 AND status = 'running'"
)
RUNNING_JOBS = (
    "SELECT id, run_at, priority FROM jobs INDEXED BY ix_jobs_queue_newest"
    " WHERE queue IN (SELECT DISTINCT queue FROM job_counts) AND status = 'running'"
)
# A job whose cancel was asked for is not run again for its worker having died.
RESCUE_JOB = (
    "UPDATE jobs SET"
    " status = CASE WHEN cancel_requested THEN 'cancelled'"
    " WHEN attempt >= max_attempts THEN 'failed' ELSE 'queued' END,"
    " finished_at = CASE WHEN cancel_requested OR attempt >= max_attempts THEN ?1 END,"
    " errors = json_insert(errors, '$[#]', ?2), claim_at = ?3"
    " WHERE id = ?4 AND status = 'running'"
)
JOB_STATE = "SELECT status, cancel_requested, unique_key, priority FROM jobs WHERE id = ?"
CANCEL_QUEUED_JOB = (
    f"UPDATE jobs SET status = 'cancelled', finished_at = ? WHERE id = ? RETURNING {COLUMNS}"
)
ASK_TO_CANCEL = f"UPDATE jobs SET cancel_requested = 1 WHERE id = ? RETURNING {COLUMNS}"
CANCEL_REQUESTED_AMONG = (
    "SELECT id FROM jobs WHERE id IN (SELECT value FROM json_each(?))"
    " AND status = 'running' AND cancel_requested"
)
RETRY_JOB = (
    "UPDATE jobs SET status = 'queued', run_at = ?, claim_at = ?, finished_at = NULL,"
    " cancel_requested = 0, max_attempts = max(max_attempts, attempt + 1)"
    f" WHERE id = ? RETURNING {COLUMNS}"
)
GET_JOB = f"SELECT {COLUMNS} FROM jobs WHERE id = ?"
# Page through a narrow index first, then read only the rows on the page. A filter the
# index has a column for and the listing leaves unset is written out as every value the
# column can have: SQLite then walks each value's range newest first and merges them.
NEWEST_FIRST = "ORDER BY inserted_at DESC, id DESC"
ANY_STATUS = f"status IN ({', '.join(repr(status.value) for status in JobStatus)})"
# Every queue that ever had a job has rows in job_counts.
ANY_QUEUE = "queue IN (SELECT DISTINCT queue FROM job_counts)"
# A listing by task and status walks the jobs in that status (of that queue), checking each
# one's task, when job_counts says they are at most this many; past that it walks the task's
# jobs, checking each one's status. Either walk stops once the page is full.
STATUS_WALK_LIMIT = 20_000
IN_STATUS = (
    "SELECT coalesce(sum(n), 0) FROM job_counts WHERE status = ? AND (? IS NULL OR queue = ?)"
)
# A job finishes after it was inserted, so only jobs inserted before the cutoff can have
# finished before it: the index range ends there, however many jobs finished since. The
# job with the largest id stays: SQLite gives the next row the largest id plus one, and a
# deleted job's id must never name another job. The counts trigger takes the rows off.
DELETE_FINISHED = (
    "DELETE FROM jobs WHERE id IN (SELECT id FROM jobs INDEXED BY ix_jobs_queue_newest"
    f" WHERE {ANY_QUEUE} AND status = ?1 AND inserted_at < ?2 AND finished_at < ?2"
    " AND id < (SELECT max(id) FROM jobs) LIMIT ?3)"
)
SET_PAUSED = (
    "INSERT INTO queues (name, paused) VALUES (?, ?)"
    " ON CONFLICT (name) DO UPDATE SET paused = excluded.paused"
)
ADD_SCHEDULE = (
    "INSERT INTO schedules (name, paused, active_since) VALUES (?, 0, ?)"
    " ON CONFLICT (name) DO NOTHING"
)
PAUSE_SCHEDULE = (
    "INSERT INTO schedules (name, paused, active_since) VALUES (?, 1, ?)"
    " ON CONFLICT (name) DO UPDATE SET paused = 1"
)
RESUME_SCHEDULE = (
    "INSERT INTO schedules (name, paused, active_since) VALUES (?, 0, ?)"
    " ON CONFLICT (name) DO UPDATE SET paused = 0, active_since = excluded.active_since"
)
TICK_TAKEN = (
    "SELECT EXISTS (SELECT 1 FROM schedules WHERE name = ?1 AND paused)"
    " OR EXISTS (SELECT 1 FROM schedule_ticks WHERE schedule = ?1 AND tick = ?2)"
)
RECORD_TICK = "INSERT INTO schedule_ticks (schedule, tick, job_id) VALUES (?, ?, ?)"
FORGET_TICKS = "DELETE FROM schedule_ticks WHERE schedule = ? AND tick < ?"
SCHEDULES = (
    "SELECT name, paused, active_since, tick, job_id FROM schedules"
    " LEFT JOIN schedule_ticks ON schedule = name"
    " AND tick = (SELECT max(tick) FROM schedule_ticks WHERE schedule = name) ORDER BY name"
)
# A bulk action's round: the jobs it selects, through the listing's indexes (see _selection)
# and only while they are what the action changes; then each is changed as one would be.
BULK_SELECT = "SELECT id FROM jobs INDEXED BY {index} WHERE {terms} LIMIT ?"
CANCEL_QUEUED_JOBS = (
    "UPDATE jobs SET status = 'cancelled', finished_at = ?"
    f" WHERE id IN (SELECT value FROM json_each(?)) RETURNING {COLUMNS}"
)
ASK_TO_CANCEL_JOBS = (
    "UPDATE jobs SET cancel_requested = 1"
    f" WHERE id IN (SELECT value FROM json_each(?)) RETURNING {COLUMNS}"
)
RETRY_STATE = (
    "SELECT id, unique_key, priority FROM jobs WHERE id IN (SELECT value FROM json_each(?))"
)
KEY_FREE = (
    "(unique_key IS NULL OR NOT EXISTS (SELECT 1 FROM jobs AS holder INDEXED BY"
    " ix_jobs_unique_key WHERE holder.unique_key = jobs.unique_key"
    " AND holder.unique_key IS NOT NULL AND holder.status IN ('queued', 'running')))"
)
# The due jobs of a queue and priority ahead of a job: a range of the claims' index, up to
# the job's place or the first job not due, whichever comes first.
AHEAD_AT_PRIORITY = (
    "SELECT count(*) FROM (SELECT 1 FROM jobs INDEXED BY ix_jobs_queue_due"
    " WHERE status = 'queued' AND queue = ?1 AND priority = ?2 AND claim_at <= ?3"
    " AND (claim_at, id) < (?4, ?5) LIMIT ?6)"
)
QUEUED_PRIORITIES = (
    "SELECT priority FROM job_counts WHERE queue = ? AND status = 'queued' AND n > 0"
)
RECORD_OUTCOMES = (
    "INSERT INTO job_outcomes (minute, outcome, n) VALUES (?, ?, ?)"
    " ON CONFLICT (minute, outcome) DO UPDATE SET n = n + excluded.n"
)
FORGET_OUTCOMES = "DELETE FROM job_outcomes WHERE minute < ?"
RECENT_OUTCOMES = "SELECT minute, outcome, n FROM job_outcomes WHERE minute >= ?"
# Triggers keep job_counts exact, so /stats and /queues stay instant at millions of jobs.
COUNT_JOBS = "SELECT status, sum(n) FROM job_counts GROUP BY status"
QUEUE_COUNTS = "SELECT queue, status, sum(n) FROM job_counts GROUP BY queue, status"
QUEUES = "SELECT name, paused FROM queues"


@lru_cache(maxsize=64)
def _list_jobs_statement(index: str | None, terms: tuple[str, ...]) -> str:
    """A page of the jobs matching every term, found through `index`."""
    if index is None:
        matching = f"SELECT id FROM jobs {NEWEST_FIRST} LIMIT ? OFFSET ?"
    else:
        matching = (
            f"SELECT id FROM jobs INDEXED BY {index} WHERE {' AND '.join(terms)}"
            f" {NEWEST_FIRST} LIMIT ? OFFSET ?"
        )
    return f"SELECT {COLUMNS} FROM jobs WHERE id IN ({matching}) {NEWEST_FIRST}"


def _selection(
    conn: sqlite3.Connection, where: JobFilter
) -> tuple[str | None, list[str], list[Any]]:
    """The index that finds the jobs `where` matches, the terms that pick them in it, and
    the terms' parameters (None, no terms: every job, newest first by the primary key)."""
    by_queue = ("queue = ?", [where.queue]) if where.queue is not None else (ANY_QUEUE, [])
    status = where.status.value if where.status is not None else None
    by_status = ("status = ?", [status]) if status is not None else (ANY_STATUS, [])
    terms: list[tuple[str, list[Any]]]
    if where.task is None:
        if status is None and where.queue is None:
            return None, [], []
        index, terms = "ix_jobs_queue_newest", [by_queue, by_status]
    else:
        by_task = (f"{TASK.text} = ?", [where.task])
        in_status = None
        if status is not None:
            (in_status,) = conn.execute(IN_STATUS, (status, where.queue, where.queue)).fetchone()
        if in_status is not None and in_status <= STATUS_WALK_LIMIT:
            index, terms = "ix_jobs_queue_newest", [by_queue, by_status, by_task]
        else:
            index, terms = "ix_jobs_task_newest", [by_task, by_queue]
            if status is not None:
                terms.append(by_status)
    return index, [sql for sql, _ in terms], [value for _, values in terms for value in values]


def _listing(conn: sqlite3.Connection, where: JobFilter) -> tuple[str, list[Any]]:
    """The statement that lists the jobs `where` matches, and its parameters but the page's."""
    index, terms, params = _selection(conn, where)
    return _list_jobs_statement(index, tuple(terms)), params


def _bulk_selection(
    conn: sqlite3.Connection,
    where: JobFilter,
    status: JobStatus,
    extra: tuple[str, Sequence[Any]],
    limit: int,
) -> list[int]:
    """Up to `limit` ids of the jobs in `status` that `where` matches and the term `extra`
    (with its parameters) accepts."""
    index, terms, params = _selection(conn, dataclasses.replace(where, status=status))
    statement = BULK_SELECT.format(index=index, terms=" AND ".join([*terms, extra[0]]))
    return [job_id for (job_id,) in conn.execute(statement, [*params, *extra[1], limit])]


class WorkersRunElsewhere(StoreUnavailable):
    """Another process runs workers on this file, so this one must not."""


class SqliteJobStore:
    """Jobs in one SQLite file; one process at a time runs workers on it (see
    `rescue_orphaned_jobs`), any number may serve the API."""

    def __init__(
        self,
        database_url: str,
        clock: Clock,
        *,
        priority_aging_seconds: float = 300.0,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        self._clock = clock
        # How long a write waits for another process's write lock before it fails.
        self._timeout = timeout
        self._aging = timedelta(seconds=priority_aging_seconds)
        self._listeners: list[Callable[[], None]] = []
        self._cancel_listeners: list[Callable[[int], None]] = []
        self._engine = open_engine(database_url, timeout)
        self._writer = GroupCommitter(self._commit)
        self._outcomes = OutcomeTally()
        # The one connection that writes (pooled, and its sqlite3 connection), opened by open().
        self._pooled_write_connection: Any = None
        self._write_connection: sqlite3.Connection
        self._checkpointer: asyncio.Task[None]
        # The open file whose lock makes this the process that runs workers, once it is.
        self._workers_lock: int | None = None
        # Since when writes fail for want of disk space; None while they do not.
        self._full_since: float | None = None

    async def open(self) -> None:
        await asyncio.to_thread(self._migrate)
        with _store_errors():
            self._pooled_write_connection = self._engine.raw_connection()
            conn = cast(sqlite3.Connection, self._pooled_write_connection.driver_connection)
            # Checkpoints would stall the event loop on fsync: they run elsewhere.
            conn.execute("PRAGMA wal_autocheckpoint = 0")
            # SQLite's busy handler would sleep on the event loop's thread: _begin waits instead.
            conn.execute("PRAGMA busy_timeout = 0")
            # Every insert fires the counts trigger, so SQLite keeps a statement journal to
            # undo the row should the trigger fail: in a temporary file, that was half the
            # cost of an insert. The writer's temporary data is that small journal: memory.
            conn.execute("PRAGMA temp_store = MEMORY")
        self._write_connection = conn
        self._checkpointer = asyncio.create_task(self._checkpoint_periodically())

    async def close(self) -> None:
        self._checkpointer.cancel()
        with suppress(asyncio.CancelledError):
            await self._checkpointer
        with suppress(StoreUnavailable):
            await self._write_outcomes()
        await self._writer.drain()
        if self._pooled_write_connection is not None:
            self._pooled_write_connection.close()
        await self._checkpoint()
        self._engine.dispose()
        if self._workers_lock is not None:
            os.close(self._workers_lock)
            self._workers_lock = None

    async def ping(self) -> None:
        await self._read(lambda conn: conn.execute("SELECT 1").fetchone())
        if self._full_since is not None and self._free_space() < SPACE_WANTED:
            raise StoreFull(DISK_FULL)

    def subscribe(self, on_new_jobs: Callable[[], None]) -> None:
        self._listeners.append(on_new_jobs)

    def subscribe_cancellations(self, on_cancel: Callable[[int], None]) -> None:
        self._cancel_listeners.append(on_cancel)

    async def insert_job(self, new_job: NewJob) -> Enqueued:
        return (await self.insert_all_jobs([new_job]))[0]

    async def insert_all_jobs(self, new_jobs: Sequence[NewJob]) -> list[Enqueued]:
        now = self._clock.now()
        now_in_db = _to_db(now)
        rows = [self._row(new_job, now, now_in_db) for new_job in new_jobs]
        outcomes = await self._writer.write(_insert_jobs, rows)
        enqueued = [
            Enqueued(new_job.inserted(outcome, now), created=True)
            if isinstance(outcome, int)
            else Enqueued(_job_from_row(outcome), created=False)
            for new_job, outcome in zip(new_jobs, outcomes, strict=True)
        ]
        if any(created for _, created in enqueued):
            self._wake()
        return enqueued

    async def fetch_jobs(self, limits: Mapping[str, int]) -> list[Job]:
        if not any(limit > 0 for limit in limits.values()):
            return []
        claim = (dict(limits), self._clock.now(), self._aging)
        claimed: list[Job] = await self._writer.write(_claim_jobs, claim)
        return claimed

    async def complete_job(self, job: Job, result: Any) -> None:
        now = self._clock.now()
        self._outcomes.add(now, COMPLETED)
        await self._writer.write(_complete_jobs, (dumps(result), _to_db(now), job.id))

    async def error_job(self, job: Job, error: str, retry_at: datetime | None) -> None:
        errors = dumps([*job.errors, error])
        moment = self._clock.now()
        self._outcomes.add(moment, FAILED)
        now = _to_db(moment)
        change: Row
        if retry_at is None:
            change = (errors, None, None, now, job.id)
        else:
            claim_at = _to_db(retry_at + job.priority * self._aging)
            change = (errors, _to_db(retry_at), claim_at, now, job.id)
        await self._writer.write(_fail_attempts, change)

    async def release_jobs(self, jobs: Sequence[Job]) -> None:
        now = _to_db(self._clock.now())
        await asyncio.gather(
            *(self._writer.write(_release_jobs, (self._claim_at(job), now, job.id)) for job in jobs)
        )

    async def rescue_orphaned_jobs(self) -> int:
        # Only one process runs workers on a SQLite file, so at start-up every running job
        # belongs to a process that has died. A second one would take the first's running
        # jobs for orphans and run them again: it is refused here, before it takes any.
        self._hold_workers_lock()
        rescue = (self._clock.now(), self._aging)
        rescued: int = await self._writer.write(_rescue_running_jobs, rescue)
        if rescued:
            self._outcomes.add(self._clock.now(), FAILED, rescued)
        return rescued

    async def cancel_job(self, job_id: int) -> Job | None:
        cancel = (job_id, _to_db(self._clock.now()))
        row, conflict, asked = await self._writer.write(_cancel_jobs, cancel)
        if conflict is not None:
            raise JobConflict(conflict)
        if row is None:
            return None
        # Told at once to this process's engine, which runs the job unless workers run in a
        # process of their own (START_HTTP=false): that one asks cancel_requested_among.
        if asked:
            for on_cancel in self._cancel_listeners:
                on_cancel(job_id)
        return _job_from_row(row)

    async def cancel_requested_among(self, job_ids: Sequence[int]) -> list[int]:
        rows = await self._read(
            lambda conn: conn.execute(CANCEL_REQUESTED_AMONG, (dumps(list(job_ids)),)).fetchall()
        )
        requested = {job_id for (job_id,) in rows}
        return [job_id for job_id in job_ids if job_id in requested]

    async def retry_job(self, job_id: int) -> Job | None:
        retry = (job_id, self._clock.now(), self._aging)
        row, conflict = await self._writer.write(_retry_jobs, retry)
        if conflict is not None:
            raise JobConflict(conflict)
        if row is None:
            return None
        self._wake()
        return _job_from_row(row)

    async def cancel_jobs(self, where: JobFilter, inserted_by: datetime, limit: int) -> list[Job]:
        cancel = (where, _to_db(inserted_by), _to_db(self._clock.now()), limit)
        rows, asked = await self._writer.write(_cancel_many, cancel)
        for job_id in asked:
            for on_cancel in self._cancel_listeners:
                on_cancel(job_id)
        return [_job_from_row(row) for row in rows]

    async def retry_jobs(self, where: JobFilter, finished_by: datetime, limit: int) -> list[Job]:
        retry = (where, _to_db(finished_by), self._clock.now(), self._aging, limit)
        rows = await self._writer.write(_retry_many, retry)
        if rows:
            self._wake()
        return [_job_from_row(row) for row in rows]

    async def count_jobs_ahead(self, job: Job, limit: int) -> int:
        now = self._clock.now()
        place = (_to_db(job.run_at + job.priority * self._aging), job.id)

        def count(conn: sqlite3.Connection) -> int:
            ahead = 0
            for (priority,) in conn.execute(QUEUED_PRIORITIES, (job.queue,)).fetchall():
                if ahead >= limit:
                    break
                due_by = _to_db(now + priority * self._aging)
                params = (job.queue, priority, due_by, *place, limit - ahead)
                ahead += conn.execute(AHEAD_AT_PRIORITY, params).fetchone()[0]
            return ahead

        return await self._read(count)

    async def next_run_at(self, limits: Mapping[str, int]) -> datetime | None:
        # The engine asks after every claim that left a worker idle. A lookup per queue and
        # priority in the index of queued jobs takes microseconds on the writer's connection,
        # where a thread hop cost a lone request a quarter of a millisecond; no write
        # transaction is open between group commits, and WAL lets this read run while another
        # process writes.
        try:
            rows = self._write_connection.execute(FIRST_CLAIM_ATS).fetchall()
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode != sqlite3.SQLITE_BUSY:
                raise StoreUnavailable(str(exc)) from exc
            # Rare (another connection recovering the file): wait in a thread instead.
            rows = await self._read(lambda conn: conn.execute(FIRST_CLAIM_ATS).fetchall())
        except sqlite3.Error as exc:
            raise StoreUnavailable(str(exc)) from exc
        run_ats = [
            _from_db(claim_at) - priority * self._aging
            for queue, priority, claim_at in rows
            if claim_at is not None and limits.get(_slot(queue, limits), 0) > 0
        ]
        return min(run_ats, default=None)

    async def delete_finished_jobs(
        self, status: JobStatus, finished_before: datetime, limit: int
    ) -> int:
        deleted: int = await self._writer.write(
            _delete_finished_jobs, (status.value, _to_db(finished_before), limit)
        )
        return deleted

    async def get_job(self, job_id: int) -> Job | None:
        row = await self._read(lambda conn: conn.execute(GET_JOB, (job_id,)).fetchone())
        return _job_from_row(row) if row else None

    async def list_jobs(self, where: JobFilter, limit: int, offset: int) -> list[Job]:
        def read(conn: sqlite3.Connection) -> list[Row]:
            query, params = _listing(conn, where)
            return conn.execute(query, [*params, limit, offset]).fetchall()

        return [_job_from_row(row) for row in await self._read(read)]

    async def recent_outcomes(self, since: datetime) -> list[MinuteOutcomes]:
        start = _to_db(minute_of(max(since, self._clock.now() - OUTCOMES_KEPT)))
        rows = await self._read(lambda conn: conn.execute(RECENT_OUTCOMES, (start,)).fetchall())
        return by_minute((_from_db(minute), outcome, n) for minute, outcome, n in rows)

    async def count_jobs(self) -> dict[JobStatus, int]:
        rows = await self._read(lambda conn: conn.execute(COUNT_JOBS).fetchall())
        return {**dict.fromkeys(JobStatus, 0), **{JobStatus(status): n for status, n in rows}}

    async def list_queues(self) -> list[QueueCounts]:
        def read(conn: sqlite3.Connection) -> tuple[list[Row], list[Row]]:
            return conn.execute(QUEUE_COUNTS).fetchall(), conn.execute(QUEUES).fetchall()

        count_rows, queue_rows = await self._read(read)
        counts: dict[str, dict[JobStatus, int]] = {}
        for queue, status, n in count_rows:
            counts.setdefault(queue, dict.fromkeys(JobStatus, 0))[JobStatus(status)] = n
        paused = {name: bool(is_paused) for name, is_paused in queue_rows}
        # A queue whose jobs have all been deleted keeps rows of zeros: it is no longer listed.
        names = {name for name, by_status in counts.items() if any(by_status.values())}
        return [
            QueueCounts(
                name, counts.get(name, dict.fromkeys(JobStatus, 0)), paused.get(name, False)
            )
            for name in sorted(names | paused.keys())
        ]

    async def pause_queue(self, name: str) -> None:
        await self._writer.write(_set_paused, (name, True))

    async def resume_queue(self, name: str) -> None:
        await self._writer.write(_set_paused, (name, False))
        self._wake()

    async def add_schedules(self, names: Sequence[str]) -> None:
        now = _to_db(self._clock.now())
        await asyncio.gather(*(self._writer.write(_add_schedules, (name, now)) for name in names))

    async def enqueue_tick(self, name: str, tick: datetime, new_job: NewJob) -> Job | None:
        now = self._clock.now()
        now_in_db = _to_db(now)
        row = self._row(new_job, now, now_in_db)
        record = (name, _to_db(tick), _to_db(tick - TICKS_KEPT), row)
        job_id: int | None = await self._writer.write(_enqueue_ticks, record)
        if job_id is None:
            return None
        self._wake()
        return new_job.inserted(job_id, now)

    async def list_schedules(self) -> list[ScheduleState]:
        rows = await self._read(lambda conn: conn.execute(SCHEDULES).fetchall())
        return [
            ScheduleState(name, bool(paused), _from_db(since), _maybe_from_db(tick), job_id)
            for name, paused, since, tick, job_id in rows
        ]

    async def pause_schedule(self, name: str) -> None:
        await self._writer.write(_pause_schedules, (name, _to_db(self._clock.now())))

    async def resume_schedule(self, name: str) -> None:
        await self._writer.write(_resume_schedules, (name, _to_db(self._clock.now())))

    def _hold_workers_lock(self) -> None:
        """Become the process that runs workers on this file, or raise WorkersRunElsewhere.

        An flock on `<file>.workers-lock`, held while the store is open. The kernel lets go
        of it when the process ends however it ends, kill -9 too: a dead process never
        blocks its successor, and a live one always blocks a second.
        """
        if self._workers_lock is not None:
            return
        path = f"{self._engine.url.database}.workers-lock"
        try:
            lock = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise StoreUnavailable(f"cannot open {path}: {exc.strerror}") from exc
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(lock, 32, 0).decode(errors="replace").strip() or "another process"
            os.close(lock)
            raise WorkersRunElsewhere(
                f"process {holder} already runs workers on {self._engine.url.database}"
            ) from None
        # Who holds it, for the message a second process gives.
        os.ftruncate(lock, 0)
        os.pwrite(lock, f"{os.getpid()}\n".encode(), 0)
        self._workers_lock = lock

    def _row(self, new_job: NewJob, now: datetime, now_in_db: str) -> Row:
        """The parameters that insert `new_job` (INSERT_JOB's), at `now`."""
        run_at = _to_db(new_job.run_at) if new_job.run_at else now_in_db
        claim_at = run_at
        if new_job.priority:
            claim_at = _to_db((new_job.run_at or now) + new_job.priority * self._aging)
        return (
            dumps(new_job.payload),
            new_job.max_attempts,
            new_job.queue,
            new_job.priority,
            run_at,
            now_in_db,
            claim_at,
            new_job.unique_key,
        )

    def _claim_at(self, job: Job) -> str:
        """Where a job that becomes queued again stands in line."""
        return _to_db(job.run_at + job.priority * self._aging)

    def _wake(self) -> None:
        for notify in self._listeners:
            notify()

    async def _commit(self, group: Group) -> Group:
        """Run a group of writes in one transaction.

        On the event loop's own thread: a group takes a fraction of a millisecond, and a
        writer thread was slower, trading the GIL with the loop around every SQLite call.
        What can take long, waiting for another process's write lock and the fsync of a
        checkpoint, happens off this thread or without holding it.
        """
        conn = self._write_connection
        changes_before = conn.total_changes
        try:
            with _store_errors():
                await _begin(conn, self._timeout)
                try:
                    results = {
                        batch: cast(WriteBatch, batch)(conn, items)
                        for batch, items in group.items()
                    }
                    conn.execute("COMMIT")
                except BaseException:
                    # SQLite may have rolled back already (a full disk at COMMIT, say).
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
        except StoreFull:
            if self._full_since is None:
                self._full_since = time.monotonic()
                logger.error("Job store is full: %s; writes fail until space is freed", DISK_FULL)
            raise
        if self._full_since is not None and conn.total_changes > changes_before:
            logger.warning(
                "Job store writes again after %.0f s of a full disk",
                time.monotonic() - self._full_since,
            )
            self._full_since = None
        return results

    def _free_space(self) -> int:
        """Bytes free for this process on the filesystem of the database file."""
        directory = os.path.dirname(os.path.abspath(str(self._engine.url.database)))
        try:
            stats = os.statvfs(directory)
        except OSError:
            return 0
        return stats.f_bavail * stats.f_frsize

    async def _write_outcomes(self) -> None:
        """Add the outcomes counted since the last time to job_outcomes; forget old ones."""

        async def write(counted: list[OutcomeCount]) -> None:
            forget_before = _to_db(self._clock.now() - OUTCOMES_KEPT)
            await self._writer.write(_record_outcomes, (counted, forget_before))

        await self._outcomes.write_out(write)

    async def _checkpoint_periodically(self) -> None:
        """Copy the WAL into the database file now and then, off the event loop's thread,
        and write the outcomes counted meanwhile."""
        checkpointed_at = self._writer.commits
        while True:
            await asyncio.sleep(CHECKPOINT_INTERVAL)
            try:
                await self._write_outcomes()
            except StoreFull:
                pass  # said once, when the disk filled
            except StoreUnavailable as exc:
                logger.warning("Could not write the outcomes counted, will retry: %s", exc)
            if self._writer.commits != checkpointed_at:
                checkpointed_at = self._writer.commits
                try:
                    await self._checkpoint()
                except StoreFull:
                    pass
                except StoreUnavailable as exc:
                    logger.warning("WAL checkpoint failed, will retry: %s", exc)

    async def _checkpoint(self) -> None:
        # PASSIVE never waits for, nor blocks, readers and the writer.
        await self._read(lambda conn: conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone())

    async def _read(self, query: Callable[[sqlite3.Connection], T]) -> T:
        def run() -> T:
            with _store_errors(), _driver_connection(self._engine) as conn:
                return query(conn)

        return await asyncio.to_thread(run)

    def _migrate(self) -> None:
        """Bring the schema up to date: a plain read when it is, so a restart locks nothing."""
        with _store_errors():
            with _driver_connection(self._engine) as conn:
                if sqlite_migrations.is_up_to_date(conn):
                    return
            # BEGIN IMMEDIATE (see open_engine): a process starting at the same moment waits
            # here for the write lock, then finds nothing left to migrate.
            with self._engine.begin() as connection:
                sqlite_migrations.upgrade(connection)


async def _begin(conn: sqlite3.Connection, timeout: float) -> None:
    """Take the write lock (BEGIN IMMEDIATE), waiting without blocking the event loop.

    Another process using the same file may hold the lock; IMMEDIATE takes it up front, so
    a transaction never fails half-way for want of it.
    """
    deadline = time.monotonic() + timeout
    delay = 0.001
    while True:
        try:
            conn.execute("BEGIN IMMEDIATE")
            return
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode != sqlite3.SQLITE_BUSY or time.monotonic() > deadline:
                raise
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.05)


def _slot(queue: str, limits: Mapping[str, int]) -> str:
    """The entry of `limits` a queue's jobs count against (see jobs/store/base.py)."""
    return queue if queue in limits else DEFAULT_QUEUE


@lru_cache(maxsize=256)
def _claim_statement(queues_per_priority: tuple[int, ...]) -> str:
    """A claim of the due jobs of some queues: one index range per priority and queue, merged
    in claim order. Its parameters: started_at, then each priority's queues, the priority,
    its bound on claim_at and the limit, then the limit again when there are several."""
    if len(queues_per_priority) == 1:
        (count,) = queues_per_priority
        due = CLAIM_ARM.format(columns="id", queues=", ".join("?" * count))
    else:
        arms = " UNION ALL ".join(
            f"SELECT * FROM ({CLAIM_ARM.format(columns='id, claim_at', queues=', '.join('?' * n))})"
            for n in queues_per_priority
        )
        due = f"SELECT id FROM ({arms}) ORDER BY claim_at, id LIMIT ?"
    return CLAIM_JOBS.format(due=due)


# The functions below run on the event loop's thread, inside the transaction of a group commit.
# Each takes the items of every caller in the group and returns one result per item. None
# raises for what a caller did wrong, which would fail everyone's writes: they return it.


def _insert_jobs(conn: sqlite3.Connection, batches: list[list[Row]]) -> list[Sequence[int | Row]]:
    """Each row's new id, or the row of the job that holds its unique_key."""
    if all(row[UNIQUE_KEY] is None for batch in batches for row in batch):
        ids = _insert_rows(conn, [row for batch in batches for row in batch])
        ranges: list[Sequence[int | Row]] = []
        for batch in batches:
            ranges.append(ids[: len(batch)])
            ids = ids[len(batch) :]
        return ranges
    outcomes: list[Sequence[int | Row]] = []
    for batch in batches:
        outcome: list[int | Row] = []
        plain: list[Row] = []
        for row in batch:
            if row[UNIQUE_KEY] is None:
                plain.append(row)
                continue
            outcome += _insert_rows(conn, plain)
            plain = []
            inserted = conn.execute(INSERT_UNIQUE_JOB, row).fetchone()
            if inserted is None:
                outcome.append(conn.execute(HOLDER_OF_KEY, (row[UNIQUE_KEY],)).fetchone())
            else:
                outcome.append(inserted[0])
        outcome += _insert_rows(conn, plain)
        outcomes.append(outcome)
    return outcomes


def _insert_rows(conn: sqlite3.Connection, rows: list[Row]) -> range:
    """Insert rows that have no unique_key; their ids, in order."""
    if not rows:
        return range(0)
    conn.executemany(INSERT_JOB, rows)
    # Within this transaction nothing else inserts, and SQLite gives a row inserted without
    # an id the largest id so far plus one: the rows got the ids up to the last one, in order.
    (last_id,) = conn.execute("SELECT last_insert_rowid()").fetchone()
    return range(last_id - len(rows) + 1, last_id + 1)


def _claim_jobs(
    conn: sqlite3.Connection, claims: list[tuple[dict[str, int], datetime, timedelta]]
) -> list[list[Job]]:
    claimed = []
    for limits, now, aging in claims:
        # Per entry of `limits`: its queues with queued jobs, by priority.
        served: dict[str, dict[int, list[str]]] = {}
        for queue, priority in conn.execute(CLAIMABLE):
            slot = _slot(queue, limits)
            if limits.get(slot, 0) > 0:
                served.setdefault(slot, {}).setdefault(priority, []).append(queue)
        batch: list[Job] = []
        now_in_db = _to_db(now)
        for slot, by_priority in served.items():
            limit = limits[slot]
            params: list[Any] = [now_in_db]
            for priority, queues in by_priority.items():
                due_by = _to_db(now + priority * aging) if priority else now_in_db
                params += [*queues, priority, due_by, limit]
            if len(by_priority) > 1:
                params.append(limit)
            statement = _claim_statement(tuple(len(queues) for queues in by_priority.values()))
            rows = conn.execute(statement, params).fetchall()
            # RETURNING promises no order.
            rows.sort(key=itemgetter(-1, ID))
            batch += [_job_from_row(row[:-1]) for row in rows]
        claimed.append(batch)
    return claimed


def _executemany(statement: str) -> WriteBatch:
    """A write batch that runs `statement` once for each caller's parameters."""

    def apply(conn: sqlite3.Connection, params: list[Row]) -> list[None]:
        conn.executemany(statement, params)
        return [None] * len(params)

    return apply


_complete_jobs = _executemany(COMPLETE_JOB)
_fail_attempts = _executemany(FAIL_ATTEMPT)
_release_jobs = _executemany(RELEASE_JOB)
_set_paused = _executemany(SET_PAUSED)
_add_schedules = _executemany(ADD_SCHEDULE)
_pause_schedules = _executemany(PAUSE_SCHEDULE)
_resume_schedules = _executemany(RESUME_SCHEDULE)


def _enqueue_ticks(conn: sqlite3.Connection, records: list[tuple[Any, ...]]) -> list[int | None]:
    """Per tick: the id of the job inserted for it, or None if it was taken or paused.

    This connection holds the file's write lock (BEGIN IMMEDIATE), so no other process can
    take the tick between the check and the insert; the primary key would refuse it anyway.
    """
    job_ids: list[int | None] = []
    for name, tick, forget_before, row in records:
        (taken,) = conn.execute(TICK_TAKEN, (name, tick)).fetchone()
        if taken:
            job_ids.append(None)
            continue
        (job_id,) = _insert_rows(conn, [row])
        conn.execute(RECORD_TICK, (name, tick, job_id))
        conn.execute(FORGET_TICKS, (name, forget_before))
        job_ids.append(job_id)
    return job_ids


def _rescue_running_jobs(
    conn: sqlite3.Connection, rescues: list[tuple[datetime, timedelta]]
) -> list[int]:
    counts = []
    for now, aging in rescues:
        running = conn.execute(RUNNING_JOBS).fetchall()
        conn.executemany(
            RESCUE_JOB,
            [
                (_to_db(now), LOST_WORKER_STOPPED, _to_db(_from_db(run_at) + priority * aging), id_)
                for id_, run_at, priority in running
            ],
        )
        counts.append(len(running))
    return counts


def _delete_finished_jobs(conn: sqlite3.Connection, deletes: list[Row]) -> list[int]:
    return [conn.execute(DELETE_FINISHED, delete).rowcount for delete in deletes]


def _cancel_jobs(
    conn: sqlite3.Connection, cancels: list[tuple[int, str]]
) -> list[tuple[Row | None, str | None, bool]]:
    """Per cancel: the job's row as it is now, why it cannot be cancelled, and whether a
    running job was asked to stop just now."""
    outcomes: list[tuple[Row | None, str | None, bool]] = []
    for job_id, now in cancels:
        state = conn.execute(JOB_STATE, (job_id,)).fetchone()
        if state is None:
            outcomes.append((None, None, False))
            continue
        status, cancel_requested, _, _ = state
        if status in FINISHED:
            outcomes.append((None, f"Job {job_id} is {status}", False))
        elif status == JobStatus.QUEUED:
            outcomes.append(
                (conn.execute(CANCEL_QUEUED_JOB, (now, job_id)).fetchone(), None, False)
            )
        elif cancel_requested:
            outcomes.append((conn.execute(GET_JOB, (job_id,)).fetchone(), None, False))
        else:
            outcomes.append((conn.execute(ASK_TO_CANCEL, (job_id,)).fetchone(), None, True))
    return outcomes


def _retry_jobs(
    conn: sqlite3.Connection, retries: list[tuple[int, datetime, timedelta]]
) -> list[tuple[Row | None, str | None]]:
    """Per retry: the job's row as it is now, or why it cannot be retried."""
    outcomes: list[tuple[Row | None, str | None]] = []
    for job_id, now, aging in retries:
        state = conn.execute(JOB_STATE, (job_id,)).fetchone()
        if state is None:
            outcomes.append((None, None))
            continue
        status, _, unique_key, priority = state
        if status not in (JobStatus.FAILED, JobStatus.CANCELLED):
            outcomes.append((None, f"Job {job_id} is {status}"))
            continue
        # Checked first: the unique index would refuse the update, failing the whole group.
        holder = unique_key and conn.execute(HOLDER_OF_KEY, (unique_key,)).fetchone()
        if holder:
            conflict = f"Job {job_id} has unique_key {unique_key!r}, which job {holder[ID]} holds"
            outcomes.append((None, conflict))
            continue
        change = (_to_db(now), _to_db(now + priority * aging), job_id)
        outcomes.append((conn.execute(RETRY_JOB, change).fetchone(), None))
    return outcomes


def _cancel_many(
    conn: sqlite3.Connection, cancels: list[tuple[JobFilter, str, str, int]]
) -> list[tuple[list[Row], list[int]]]:
    """Per bulk cancel: the rows of the jobs it changed, and the running ones it asked to stop."""
    outcomes: list[tuple[list[Row], list[int]]] = []
    for where, inserted_by, now, limit in cancels:
        rows: list[Row] = []
        running: list[int] = []
        if where.status in (None, JobStatus.QUEUED):
            bound = ("inserted_at <= ?", [inserted_by])
            queued = _bulk_selection(conn, where, JobStatus.QUEUED, bound, limit)
            rows += conn.execute(CANCEL_QUEUED_JOBS, (now, dumps(queued))).fetchall()
        if where.status in (None, JobStatus.RUNNING) and len(rows) < limit:
            bound = ("inserted_at <= ? AND NOT cancel_requested", [inserted_by])
            running = _bulk_selection(conn, where, JobStatus.RUNNING, bound, limit - len(rows))
            rows += conn.execute(ASK_TO_CANCEL_JOBS, (dumps(running),)).fetchall()
        outcomes.append((rows, running))
    return outcomes


def _retry_many(
    conn: sqlite3.Connection, retries: list[tuple[JobFilter, str, datetime, timedelta, int]]
) -> list[list[Row]]:
    """Per bulk retry: the rows of the jobs it queued again."""
    outcomes: list[list[Row]] = []
    for where, finished_by, now, aging, limit in retries:
        extra = (f"finished_at <= ? AND {KEY_FREE}", [finished_by])
        chosen: list[int] = []
        for status in (JobStatus.FAILED, JobStatus.CANCELLED):
            if where.status in (None, status) and len(chosen) < limit:
                chosen += _bulk_selection(conn, where, status, extra, limit - len(chosen))
        rows = []
        for job_id, unique_key, priority in conn.execute(RETRY_STATE, (dumps(chosen),)).fetchall():
            # An earlier job of this round may have taken the same unique_key.
            if unique_key is not None and conn.execute(HOLDER_OF_KEY, (unique_key,)).fetchone():
                continue
            change = (_to_db(now), _to_db(now + priority * aging), job_id)
            rows.append(conn.execute(RETRY_JOB, change).fetchone())
        outcomes.append(rows)
    return outcomes


def _record_outcomes(
    conn: sqlite3.Connection, records: list[tuple[list[OutcomeCount], str]]
) -> list[None]:
    for counted, forget_before in records:
        conn.executemany(RECORD_OUTCOMES, [(_to_db(m), outcome, n) for m, outcome, n in counted])
        conn.execute(FORGET_OUTCOMES, (forget_before,))
    return [None] * len(records)


def _to_db(moment: datetime) -> str:
    """The text form the table keeps moments in: naive UTC that sorts as it reads."""
    return moment.astimezone(UTC).replace(tzinfo=None).isoformat(" ", "microseconds")


def _from_db(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def _maybe_from_db(text: str | None) -> datetime | None:
    return None if text is None else _from_db(text)


def _from_json(text: str | None) -> Any:
    return None if text is None else orjson.loads(text)


def _decoder(name: str) -> Callable[[Any], Any] | None:
    """How a column's text becomes the Job field's value, None when it is that value already;
    pydantic does the rest."""
    column_type = JobRow.metadata.tables["jobs"].columns[name].type
    if isinstance(column_type, JSON):
        return _from_json
    if isinstance(column_type, DateTime):
        return _maybe_from_db
    return None


# Only the columns that need decoding: the others go to pydantic as SQLite returns them.
ROW_DECODERS = tuple(
    (name, decode) for name in JOB_COLUMNS if (decode := _decoder(name)) is not None
)


def _job_from_row(row: Row) -> Job:
    """A row selected as COLUMNS."""
    fields = dict(zip(JOB_COLUMNS, row, strict=True))
    for name, decode in ROW_DECODERS:
        fields[name] = decode(fields[name])
    return Job.model_validate(fields)


def open_engine(database_url: str, timeout: float = DEFAULT_TIMEOUT) -> Engine:
    """An engine on the file whose connections are set up as the store needs them: a write
    waits up to `timeout` seconds for another process's write lock."""
    engine = create_engine(database_url, pool_size=5, max_overflow=10)

    @event.listens_for(engine, "connect")
    def configure(connection: sqlite3.Connection, _record: object) -> None:
        # Transactions begin where this module says, not where the sqlite3 module guesses.
        connection.isolation_level = None
        connection.execute(f"PRAGMA busy_timeout = {int(timeout * 1000)}")
        # WAL lets readers work beside the writer; NORMAL syncs at checkpoints, which keeps
        # every committed job through a crash of this process (not of the machine's power).
        _use_wal(connection, timeout)
        connection.execute("PRAGMA synchronous = NORMAL")

    @event.listens_for(engine, "begin")
    def begin_immediate(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def _use_wal(connection: sqlite3.Connection, timeout: float) -> None:
    """Put the file in WAL mode (a no-op once it is), waiting while another connection
    holds it: processes opening a new file at once get "database is locked" from this
    pragma without SQLite's busy handler waiting for them."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            connection.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode != sqlite3.SQLITE_BUSY or time.monotonic() > deadline:
                raise
            time.sleep(0.005)


@contextmanager
def _driver_connection(engine: Engine) -> Iterator[sqlite3.Connection]:
    pooled = engine.raw_connection()
    try:
        yield cast(sqlite3.Connection, pooled.driver_connection)
    finally:
        pooled.close()


@contextmanager
def _store_errors() -> Iterator[None]:
    try:
        yield
    except (sqlite3.Error, DBAPIError) as exc:
        error = exc.orig if isinstance(exc, DBAPIError) else exc
        if getattr(error, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL:
            raise StoreFull(DISK_FULL) from exc
        raise StoreUnavailable(str(exc)) from exc
