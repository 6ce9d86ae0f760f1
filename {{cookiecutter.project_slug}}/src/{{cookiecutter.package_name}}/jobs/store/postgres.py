"""The PostgreSQL job store: several service instances share one database.

- Claims take a batch with one `UPDATE ... WHERE id IN (SELECT ... FOR UPDATE SKIP LOCKED)`,
  so two instances never start the same job.
- Writes are group-committed: whatever queues while one transaction commits goes into the
  next, so a burst of requests costs one round trip and one commit, not one each. Inserts
  and the workers' writes (claims, outcomes) commit apart, so that a request never waits
  behind a worker's transaction.
- An insert notifies every instance (LISTEN/NOTIFY) so an idle worker anywhere starts at once;
  a listening connection that drops (a database restart) is opened again. With
  DATABASE_NOTIFY=false, workers poll instead.
- A running job holds a lease that its instance renews. When an instance dies, any other
  requeues its jobs once their leases expire (the lost attempt counted), or fails them when
  no attempt is left.

The table comes from the SQLModel model; statements are SQL text on asyncpg connections:
the ORM's work per statement would cost more than the statement, and asyncpg was the
faster of the two drivers tried.
"""

import asyncio
import logging
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from datetime import datetime, timedelta
from typing import Any

import asyncpg
import orjson
from sqlalchemy.dialects.postgresql.base import PGDialect
from sqlalchemy.schema import CreateIndex, CreateTable

from ..clock import Clock
from ..codec import dumps
from ..model import JOB_COLUMNS, Job, JobRow, JobStatus, NewJob
from .base import StoreUnavailable
from .group_commit import Group, GroupCommitter

logger = logging.getLogger(__name__)

LOST_LEASE_EXPIRED = "lost: lease expired"
NOTIFY_CHANNEL = "jobs_inserted"
# Any fixed number: instances starting together take turns creating the schema.
SCHEMA_LOCK = 7_310_114_420
Batch = Callable[[asyncpg.Connection, list[Any]], Awaitable[list[Any]]]
# What reaching the database can raise: refused or dropped connections, server errors.
CONNECTION_ERRORS = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError)
# Of those, the ones that mean the connection itself is lost, not that a statement failed.
LOST_CONNECTION = (OSError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError)

COLUMNS = ", ".join(JOB_COLUMNS)
# The rows arrive as one JSON array: one orjson call encodes it, where arrays of parameters
# cost the client nearly twice the CPU (asyncpg encodes each timestamp in Python). Payloads
# travel as JSON text inside it, because PostgreSQL refuses "\u0000" in any JSON it takes
# apart. The ids come back as one array.
INSERT_JOBS = (
    "WITH inserted AS ("
    " INSERT INTO jobs (payload, status, attempt, max_attempts, run_at, inserted_at, errors)"
    " SELECT payload::json, 'queued', 0, max_attempts, run_at, inserted_at, '[]'::json"
    " FROM json_to_recordset($1::json)"
    " AS new(payload text, max_attempts int, run_at timestamptz, inserted_at timestamptz)"
    " RETURNING id)"
    " SELECT (SELECT coalesce(array_agg(id ORDER BY id), '{}') FROM inserted),"
    # NOTIFYs with the same payload in one transaction are delivered once.
    f" CASE WHEN $2 THEN pg_notify('{NOTIFY_CHANNEL}', '') END"
)
CLAIM_DUE_JOBS = (
    "UPDATE jobs SET status = 'running', attempt = attempt + 1, started_at = $1,"
    " locked_by = $2, lease_expires_at = $3"
    " WHERE id IN (SELECT id FROM jobs WHERE status = 'queued' AND run_at <= $1"
    " ORDER BY run_at, id LIMIT $4 FOR UPDATE SKIP LOCKED)"
    f" RETURNING {COLUMNS}"
)
# Outcomes only apply while this instance still holds the job: once its lease has expired
# and another instance has taken the job over, a late outcome changes nothing. `locked_by`
# is set exactly while a job runs, so it alone says so. With `status = 'running'` added, the
# planner, which statistics tell that few jobs run, walked ix_jobs_status_newest's running
# entries (dead ones of every job finished since the last vacuum included) instead of the
# primary key, several times slower on a large table.
HELD = "id = $1 AND locked_by = $2"
RELEASED = "locked_by = NULL, lease_expires_at = NULL"
# Jobs that end done or failed stay so: the statement that ends one also appends a row to
# job_counts, so counting them never reads the jobs table (see count_jobs). Appended rows,
# not one row per status updated in place: instances never wait for each other's lock.
COMPLETE_JOB = (
    "WITH changed AS (UPDATE jobs SET status = 'done', result = $3, finished_at = $4,"
    f" {RELEASED} WHERE {HELD} RETURNING status)"
    " INSERT INTO job_counts (status, n) SELECT status, 1 FROM changed"
)
FAIL_ATTEMPT = (
    "WITH changed AS (UPDATE jobs SET status = $3, errors = $4, run_at = $5,"
    f" finished_at = $6, {RELEASED} WHERE {HELD} RETURNING status)"
    " INSERT INTO job_counts (status, n) SELECT status, 1 FROM changed WHERE status = 'failed'"
)
# Folds the appended rows into one per status (see _keep_leases). Rows appended meanwhile
# by other instances are not in this statement's snapshot and stay; two instances folding
# at once each fold only the rows they deleted.
FOLD_COUNTS = (
    "WITH folded AS (DELETE FROM job_counts RETURNING status, n)"
    " INSERT INTO job_counts (status, n) SELECT status, sum(n) FROM folded GROUP BY status"
)
RELEASE_JOB = (
    "UPDATE jobs SET status = 'queued', attempt = attempt - 1,"
    f" started_at = CASE WHEN attempt = 1 THEN NULL ELSE started_at END, {RELEASED}"
    f" WHERE {HELD}"
)
# Skips the rows locked now: the jobs whose outcomes are being stored, in an order of their
# own (waiting for them could deadlock with that transaction), or being rescued.
RENEW_LEASES = (
    "UPDATE jobs SET lease_expires_at = $3 WHERE id IN (SELECT id FROM jobs"
    " WHERE id = ANY($1::bigint[]) AND locked_by = $2"
    " FOR UPDATE SKIP LOCKED)"
)
RESCUE_EXPIRED_LEASES = (
    "WITH changed AS (UPDATE jobs SET"
    " status = CASE WHEN attempt >= max_attempts THEN 'failed' ELSE 'queued' END,"
    " finished_at = CASE WHEN attempt >= max_attempts THEN $1 END,"
    f" errors = (errors::jsonb || jsonb_build_array($2::text))::json, {RELEASED}"
    # A row locked now is being finished by its owner, alive after all: skipped, not waited on.
    " WHERE id IN (SELECT id FROM jobs WHERE status = 'running' AND lease_expires_at < $1"
    " FOR UPDATE SKIP LOCKED) RETURNING status),"
    " counted AS (INSERT INTO job_counts (status, n)"
    " SELECT status, count(*) FROM changed WHERE status = 'failed' GROUP BY status)"
    " SELECT count(*) FROM changed"
)
# Claims and outcomes need not wait for the disk flush: if the database itself crashes and
# loses the last of them, those jobs come back through their leases and run again. SET LOCAL,
# so it ends with the transaction, as it must where PgBouncer shares server connections.
BEGIN_WITHOUT_WAITING_FOR_FLUSH = "BEGIN; SET LOCAL synchronous_commit = off"
NEXT_RUN_AT = "SELECT min(run_at) FROM jobs WHERE status = 'queued'"
GET_JOB = f"SELECT {COLUMNS} FROM jobs WHERE id = $1"
NEWEST_FIRST = "ORDER BY inserted_at DESC, id DESC"
LIST_JOBS = f"SELECT {COLUMNS} FROM jobs {NEWEST_FIRST} LIMIT $1 OFFSET $2"
LIST_JOBS_BY_STATUS = (
    f"SELECT {COLUMNS} FROM jobs WHERE status = $3 {NEWEST_FIRST} LIMIT $1 OFFSET $2"
)
# Queued and running jobs are counted through their partial indexes, which hold only them;
# finished ones are added up from job_counts.
COUNT_JOBS = (
    "SELECT 'queued', count(*) FROM jobs WHERE status = 'queued'"
    " UNION ALL SELECT 'running', count(*) FROM jobs WHERE status = 'running'"
    " UNION ALL SELECT status, sum(n)::bigint FROM job_counts GROUP BY status"
)
# Tables made before ids were 64 bits hold integer ones, which run out at 2,147,483,647.
ID_TYPE = (
    "SELECT atttypid::regtype::text FROM pg_attribute"
    " WHERE attrelid = 'jobs'::regclass AND attname = 'id'"
)
ID_SEQUENCE = "SELECT pg_get_serial_sequence('jobs', 'id')"
COUNTS_TABLE = "CREATE TABLE job_counts (status text NOT NULL, n bigint NOT NULL)"
COUNT_EXISTING_FINISHED_JOBS = (
    "INSERT INTO job_counts (status, n) SELECT status, count(*) FROM jobs"
    " WHERE status IN ('done', 'failed') GROUP BY status"
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
    ) -> None:
        # asyncpg speaks plain postgresql:// URLs; SQLAlchemy-style ones name a driver.
        self._dsn = database_url.replace("postgresql+asyncpg://", "postgresql://", 1)
        self._clock = clock
        self._notify = notify
        self._lease = timedelta(seconds=lease_seconds)
        self._connect_timeout = connect_timeout
        # Names this process in `locked_by`, so its outcomes and renewals touch only its jobs.
        self._instance = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._listeners: list[Callable[[], None]] = []
        self._inserts = GroupCommitter(self._commit_inserts)
        self._writer = GroupCommitter(self._commit)
        self._pool: asyncpg.Pool | None = None
        # Each group committer commits one group at a time, always on the same connection.
        self._insert_connection = _HeldConnection(self._open_pool)
        self._writer_connection = _HeldConnection(self._open_pool)
        self._notifications: asyncpg.Connection | None = None
        self._relisten: asyncio.Task[None] | None = None
        self._closing = False
        self._held: set[int] = set()
        self._lease_keeper: asyncio.Task[None] | None = None

    async def open(self) -> None:
        self._pool = await self._connect()
        await self._create_schema()
        if self._notify:
            await self._listen()
        self._lease_keeper = asyncio.create_task(self._keep_leases())

    async def close(self) -> None:
        self._closing = True
        if self._relisten is not None:
            self._relisten.cancel()
            with suppress(asyncio.CancelledError):
                await self._relisten
        if self._lease_keeper is not None:
            self._lease_keeper.cancel()
            with suppress(asyncio.CancelledError):
                await self._lease_keeper
        await self._inserts.drain()
        await self._writer.drain()
        # The pool's close waits for every connection to come back.
        await self._insert_connection.release()
        await self._writer_connection.release()
        if self._notifications is not None:
            await self._notifications.close()
        if self._pool is not None:
            await self._pool.close()

    async def ping(self) -> None:
        await self._fetch("SELECT 1")

    def subscribe(self, on_new_jobs: Callable[[], None]) -> None:
        self._listeners.append(on_new_jobs)

    async def insert_job(self, new_job: NewJob) -> Job:
        return (await self.insert_all_jobs([new_job]))[0]

    async def insert_all_jobs(self, new_jobs: Sequence[NewJob]) -> list[Job]:
        now = self._clock.now()
        ids: list[int] = await self._inserts.write(self._insert_jobs, (now, new_jobs))
        self._wake_local_workers()
        return [
            new_job.inserted(job_id, now) for new_job, job_id in zip(new_jobs, ids, strict=True)
        ]

    async def fetch_jobs(self, limit: int) -> list[Job]:
        claimed: list[Job] = await self._writer.write(self._claim_jobs, limit)
        return claimed

    async def complete_job(self, job: Job, result: Any) -> None:
        change = (job.id, self._instance, result, self._clock.now())
        with self._letting_go(job):
            await self._writer.write(self._complete_jobs, change)

    async def error_job(self, job: Job, error: str, retry_at: datetime | None) -> None:
        errors = [*job.errors, error]
        change: tuple[Any, ...]
        if retry_at is None:
            now = self._clock.now()
            change = (job.id, self._instance, JobStatus.FAILED.value, errors, job.run_at, now)
        else:
            change = (job.id, self._instance, JobStatus.QUEUED.value, errors, retry_at, None)
        with self._letting_go(job):
            await self._writer.write(self._fail_attempts, change)

    async def release_jobs(self, jobs: Sequence[Job]) -> None:
        held = [(job.id, self._instance) for job in jobs]
        with self._letting_go(*jobs):
            await asyncio.gather(*(self._writer.write(self._release_jobs, job) for job in held))

    async def rescue_orphaned_jobs(self) -> int:
        # A transaction of its own, never in a group with claims and outcomes: it locks other
        # instances' jobs, and a group holding those locks could wait on one of theirs that
        # waits on it: a deadlock.
        async with self._connection() as conn:
            now = self._clock.now()
            rescued: int = await conn.fetchval(RESCUE_EXPIRED_LEASES, now, LOST_LEASE_EXPIRED)
            if rescued and self._notify:
                await conn.execute("SELECT pg_notify($1, '')", NOTIFY_CHANNEL)
        if rescued:
            self._wake_local_workers()
        return rescued

    @contextmanager
    def _letting_go(self, *jobs: Job) -> Iterator[None]:
        """Stop renewing the jobs' leases once their outcome is stored, or failed to be.

        An outcome that could not be stored (a dropped connection) would otherwise leave a
        job running, its lease renewed for as long as this instance lives; let go, the lease
        expires and any instance rescues the job, the lost attempt counted.
        """
        try:
            yield
        finally:
            self._held.difference_update(job.id for job in jobs)

    async def next_run_at(self) -> datetime | None:
        rows = await self._fetch(NEXT_RUN_AT)
        next_run_at: datetime | None = rows[0][0]
        return next_run_at

    async def get_job(self, job_id: int) -> Job | None:
        rows = await self._fetch(GET_JOB, job_id)
        return _job_from_row(rows[0]) if rows else None

    async def list_jobs(self, status: JobStatus | None, limit: int, offset: int) -> list[Job]:
        if status is None:
            rows = await self._fetch(LIST_JOBS, limit, offset)
        else:
            rows = await self._fetch(LIST_JOBS_BY_STATUS, limit, offset, status.value)
        return [_job_from_row(row) for row in rows]

    async def count_jobs(self) -> dict[JobStatus, int]:
        rows = await self._fetch(COUNT_JOBS)
        return {JobStatus(status): count for status, count in rows}

    # Batches: each runs once per group commit, with the items of every caller in the group.

    async def _insert_jobs(
        self, conn: asyncpg.Connection, requests: list[tuple[datetime, Sequence[NewJob]]]
    ) -> list[list[int]]:
        # One statement for every caller in the group.
        rows = [
            {
                "payload": dumps(new_job.payload),
                "max_attempts": new_job.max_attempts,
                "run_at": new_job.run_at or now,
                "inserted_at": now,
            }
            for now, new_jobs in requests
            for new_job in new_jobs
        ]
        # The id sequence hands out ids in the order the rows are read, so ordered ids are
        # the callers' order.
        ids = iter(await conn.fetchval(INSERT_JOBS, rows, self._notify))
        return [[next(ids) for _ in new_jobs] for _, new_jobs in requests]

    async def _claim_jobs(self, conn: asyncpg.Connection, limits: list[int]) -> list[list[Job]]:
        claimed = []
        for limit in limits:
            now = self._clock.now()
            rows = await conn.fetch(CLAIM_DUE_JOBS, now, self._instance, now + self._lease, limit)
            batch = sorted((_job_from_row(row) for row in rows), key=lambda j: (j.run_at, j.id))
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
                # One round trip for both, where asyncpg's transaction() would take two.
                await conn.execute(BEGIN_WITHOUT_WAITING_FOR_FLUSH)
                results: Group = {}
                for batch, items in group.items():
                    apply: Batch = batch  # type: ignore[assignment]
                    results[batch] = await apply(conn, items)
                await conn.execute("COMMIT")
            except BaseException:
                # asyncpg would roll back on release too, but reports it as an error.
                if not conn.is_closed() and conn.is_in_transaction():
                    with suppress(*CONNECTION_ERRORS):
                        await conn.execute("ROLLBACK")
                raise
            return results

    async def _keep_leases(self) -> None:
        """Renew this instance's leases, rescue other instances' expired ones, fold counts."""
        interval = self._lease.total_seconds() / 3
        while True:
            await asyncio.sleep(interval)
            try:
                if self._held:
                    now = self._clock.now()
                    held = list(self._held)
                    await self._execute(RENEW_LEASES, held, self._instance, now + self._lease)
                if rescued := await self.rescue_orphaned_jobs():
                    logger.warning("Requeued %d jobs whose instance stopped renewing them", rescued)
                await self._execute(FOLD_COUNTS)
            except StoreUnavailable as exc:
                logger.error("Could not renew job leases: %s", exc)

    async def _listen(self) -> None:
        conn = await asyncpg.connect(self._dsn)
        conn.add_termination_listener(self._on_listener_lost)
        await conn.add_listener(NOTIFY_CHANNEL, self._on_notification)
        self._notifications = conn

    def _on_listener_lost(self, _conn: asyncpg.Connection) -> None:
        if self._closing:
            return
        logger.warning("Lost the connection that listens for new jobs; opening it again")
        self._relisten = asyncio.create_task(self._listen_again())

    async def _listen_again(self) -> None:
        delay = 0.2
        while True:
            try:
                await self._listen()
            except CONNECTION_ERRORS as exc:
                logger.warning("Cannot listen for new jobs yet (%s); retrying", exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
            else:
                logger.info("Listening for new jobs again")
                # What was inserted while nobody listened is waiting: look now.
                self._wake_local_workers()
                return

    def _on_notification(self, *_: object) -> None:
        self._wake_local_workers()

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
        return _PooledConnection(self._open_pool())

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

    async def _create_schema(self) -> None:
        table = JobRow.metadata.tables["jobs"]
        dialect = PGDialect()  # type: ignore[no-untyped-call]  # untyped in SQLAlchemy
        statements = [str(CreateTable(table, if_not_exists=True).compile(dialect=dialect))]
        statements += [
            str(CreateIndex(index, if_not_exists=True).compile(dialect=dialect))
            for index in sorted(table.indexes, key=lambda index: str(index.name))
        ]
        async with self._connection() as conn, conn.transaction():
            # IF NOT EXISTS alone still races when instances start together.
            await conn.execute("SELECT pg_advisory_xact_lock($1)", SCHEMA_LOCK)
            for statement in statements:
                await conn.execute(statement)
            if await conn.fetchval(ID_TYPE) == "integer":
                await _widen_ids(conn)
            if await conn.fetchval("SELECT to_regclass('job_counts')") is None:
                await conn.execute(COUNTS_TABLE)
                await conn.execute(COUNT_EXISTING_FINISHED_JOBS)


class _PooledConnection:
    """A pool connection whose connection errors surface as StoreUnavailable."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._acquiring = pool.acquire()

    async def __aenter__(self) -> asyncpg.Connection:
        try:
            conn: asyncpg.Connection = await self._acquiring.__aenter__()
        except CONNECTION_ERRORS as exc:
            raise StoreUnavailable(str(exc)) from exc
        return conn

    async def __aexit__(self, *exc_info: Any) -> None:
        await self._acquiring.__aexit__(*exc_info)
        error = exc_info[1]
        if isinstance(error, LOST_CONNECTION):
            raise StoreUnavailable(str(error)) from error


class _HeldConnection:
    """A pool connection kept from one use to the next, for a user that needs one at a time.

    Taking a connection from the pool and giving it back for each group commit cost a fifth
    of the end-to-end throughput with two worker instances.
    After any error the connection goes back to the pool, which rolls it back or closes it,
    and the next use takes another.
    """

    def __init__(self, pool: Callable[[], asyncpg.Pool]) -> None:
        self._pool = pool
        self._conn: asyncpg.Connection | None = None

    async def __aenter__(self) -> asyncpg.Connection:
        if self._conn is None:
            try:
                self._conn = await self._pool().acquire()
            except CONNECTION_ERRORS as exc:
                raise StoreUnavailable(str(exc)) from exc
        return self._conn

    async def __aexit__(self, *exc_info: Any) -> None:
        error = exc_info[1]
        if error is None:
            return
        await self.release()
        if isinstance(error, LOST_CONNECTION):
            raise StoreUnavailable(str(error)) from error

    async def release(self) -> None:
        """Give the connection back to the pool, if one is held."""
        conn, self._conn = self._conn, None
        if conn is not None:
            # The pool closes a connection it cannot reset: one that broke needs nothing more.
            with suppress(*CONNECTION_ERRORS):
                await self._pool().release(conn)


async def _widen_ids(conn: asyncpg.Connection) -> None:
    """Make a table's ids 64 bits: it is rewritten once, and other instances wait meanwhile."""
    rows = await conn.fetchval("SELECT count(*) FROM jobs")
    logger.warning("Widening the jobs table's ids to 64 bits (%d jobs, done once)", rows)
    await conn.execute("ALTER TABLE jobs ALTER COLUMN id TYPE bigint")
    # The name comes from the database itself, quoted as SQL needs it; none if someone gave
    # the column another default, whose range is theirs to mind.
    sequence = await conn.fetchval(ID_SEQUENCE)
    if sequence is not None:
        await conn.execute(f"ALTER SEQUENCE {sequence} AS bigint")


async def _set_up_connection(conn: asyncpg.Connection) -> None:
    # `json`, not `jsonb`: it keeps payloads exactly as sent, "\u0000" included.
    await conn.set_type_codec(
        "json", encoder=dumps, decoder=orjson.loads, schema="pg_catalog", format="text"
    )


async def _keep_session(_conn: asyncpg.Connection) -> None:
    """Return a connection to the pool as it is: no reset query, one round trip less a use.

    asyncpg's default reset clears session state (settings, LISTENs, advisory locks) with
    a query on every release. This store leaves none: its settings are SET LOCAL, its lock
    is transaction-scoped, it listens on a connection of its own. An open transaction is
    still rolled back by asyncpg before this runs.
    """


def _job_from_row(row: asyncpg.Record) -> Job:
    """A row selected as COLUMNS: asyncpg has already decoded its JSON and timestamps."""
    return Job.model_validate(dict(row.items()))
