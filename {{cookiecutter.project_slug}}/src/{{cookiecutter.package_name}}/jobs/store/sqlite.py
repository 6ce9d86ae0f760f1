"""The SQLite job store: one file in WAL mode, every write group-committed on one connection.

Writes (inserts, claims, outcomes) go through one connection, group-committed: whatever queues
while one transaction commits goes into the next, so a burst of requests costs one commit
instead of one each, and there is never a second writer to meet "database is locked". Reads
run in threads on their own connections, which WAL lets proceed while the writer works.

The table comes from the SQLModel model; the statements are SQL text on the driver's
connection, because the ORM's per-statement overhead was most of the cost of a job.
"""

import asyncio
import logging
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from typing import Any, TypeVar, cast

import orjson
from sqlalchemy import JSON, DateTime, Engine, create_engine, event
from sqlalchemy.exc import DBAPIError
from sqlmodel import SQLModel

from ..clock import Clock
from ..codec import dumps
from ..model import JOB_COLUMNS, Job, JobRow, JobStatus, NewJob
from .base import StoreUnavailable
from .group_commit import Group, GroupCommitter

T = TypeVar("T")
LOST_WORKER_STOPPED = "lost: worker stopped"
logger = logging.getLogger(__name__)
# Seconds between checkpoints of the write-ahead log (when anything was written).
CHECKPOINT_INTERVAL = 1.0
# Seconds a write waits for another process to release the file's write lock.
LOCK_TIMEOUT = 10.0
Row = tuple[Any, ...]
WriteBatch = Callable[[sqlite3.Connection, list[Any]], list[Any]]

COLUMNS = ", ".join(JOB_COLUMNS)
# Claims name the partial index of queued jobs: left to itself, the planner may prefer the
# status index and sort every queued job to find the oldest few.
QUEUED_BY_RUN_AT = "jobs INDEXED BY ix_jobs_due WHERE status = 'queued'"
INSERT_JOB = (
    "INSERT INTO jobs (payload, status, attempt, max_attempts, run_at, inserted_at, result,"
    " errors) VALUES (?, 'queued', 0, ?, ?, ?, 'null', '[]')"
)
CLAIM_DUE_JOBS = (
    "UPDATE jobs SET status = 'running', attempt = attempt + 1, started_at = :now"
    f" WHERE id IN (SELECT id FROM {QUEUED_BY_RUN_AT} AND run_at <= :now"
    f" ORDER BY run_at, id LIMIT :limit) RETURNING {COLUMNS}"
)
COMPLETE_JOB = (
    "UPDATE jobs SET status = 'done', result = ?, finished_at = ?"
    " WHERE id = ? AND status = 'running'"
)
FAIL_ATTEMPT = (
    "UPDATE jobs SET status = ?, errors = ?, run_at = ?, finished_at = ?"
    " WHERE id = ? AND status = 'running'"
)
RELEASE_JOB = (
    "UPDATE jobs SET status = 'queued', attempt = attempt - 1,"
    " started_at = CASE WHEN attempt = 1 THEN NULL ELSE started_at END"
    " WHERE id = ? AND status = 'running'"
)
RESCUE_RUNNING_JOBS = (
    "UPDATE jobs SET"
    " status = CASE WHEN attempt >= max_attempts THEN 'failed' ELSE 'queued' END,"
    " finished_at = CASE WHEN attempt >= max_attempts THEN :now ELSE NULL END,"
    " errors = json_insert(errors, '$[#]', :error)"
    " WHERE status = 'running'"
)
NEXT_RUN_AT = f"SELECT min(run_at) FROM {QUEUED_BY_RUN_AT}"
GET_JOB = f"SELECT {COLUMNS} FROM jobs WHERE id = ?"
# Page through a narrow index first, then read only the rows on the page.
NEWEST_FIRST = "ORDER BY inserted_at DESC, id DESC"
LIST_JOBS = (
    f"SELECT {COLUMNS} FROM jobs WHERE id IN"
    f" (SELECT id FROM jobs {NEWEST_FIRST} LIMIT ? OFFSET ?) {NEWEST_FIRST}"
)
LIST_JOBS_BY_STATUS = (
    f"SELECT {COLUMNS} FROM jobs WHERE id IN"
    f" (SELECT id FROM jobs WHERE status = ? {NEWEST_FIRST} LIMIT ? OFFSET ?) {NEWEST_FIRST}"
)
# Triggers keep job_counts exact, so /stats stays instant at millions of jobs.
COUNT_JOBS = "SELECT status, n FROM job_counts"
COUNTS_SCHEMA = [
    "CREATE TABLE job_counts (status TEXT PRIMARY KEY, n INTEGER NOT NULL)",
    "INSERT INTO job_counts SELECT value, 0 FROM json_each(?)",
    "UPDATE job_counts SET n = (SELECT count(*) FROM jobs WHERE jobs.status = job_counts.status)",
    """CREATE TRIGGER jobs_count_insert AFTER INSERT ON jobs BEGIN
        UPDATE job_counts SET n = n + 1 WHERE status = NEW.status; END""",
    """CREATE TRIGGER jobs_count_update AFTER UPDATE OF status ON jobs
        WHEN OLD.status <> NEW.status BEGIN
        UPDATE job_counts SET n = n - 1 WHERE status = OLD.status;
        UPDATE job_counts SET n = n + 1 WHERE status = NEW.status; END""",
    """CREATE TRIGGER jobs_count_delete AFTER DELETE ON jobs BEGIN
        UPDATE job_counts SET n = n - 1 WHERE status = OLD.status; END""",
]


class SqliteJobStore:
    """Jobs in one SQLite file; one process at a time should run the workers against it."""

    def __init__(self, database_url: str, clock: Clock) -> None:
        self._clock = clock
        self._listeners: list[Callable[[], None]] = []
        self._engine = _create_engine(database_url)
        self._writer = GroupCommitter(self._commit)
        # The one connection that writes (pooled, and its sqlite3 connection), opened by open().
        self._pooled_write_connection: Any = None
        self._write_connection: sqlite3.Connection
        self._checkpointer: asyncio.Task[None]

    async def open(self) -> None:
        await asyncio.to_thread(self._create_schema)
        with _store_errors():
            self._pooled_write_connection = self._engine.raw_connection()
            conn = cast(sqlite3.Connection, self._pooled_write_connection.driver_connection)
            # Checkpoints would stall the event loop on fsync: they run elsewhere.
            conn.execute("PRAGMA wal_autocheckpoint = 0")
            # SQLite's busy handler would sleep on the event loop's thread: _begin waits instead.
            conn.execute("PRAGMA busy_timeout = 0")
        self._write_connection = conn
        self._checkpointer = asyncio.create_task(self._checkpoint_periodically())

    async def close(self) -> None:
        self._checkpointer.cancel()
        with suppress(asyncio.CancelledError):
            await self._checkpointer
        await self._writer.drain()
        if self._pooled_write_connection is not None:
            self._pooled_write_connection.close()
        await self._checkpoint()
        self._engine.dispose()

    async def ping(self) -> None:
        await self._read(lambda conn: conn.execute("SELECT 1").fetchone())

    def subscribe(self, on_new_jobs: Callable[[], None]) -> None:
        self._listeners.append(on_new_jobs)

    async def insert_job(self, new_job: NewJob) -> Job:
        return (await self.insert_all_jobs([new_job]))[0]

    async def insert_all_jobs(self, new_jobs: Sequence[NewJob]) -> list[Job]:
        now = self._clock.now()
        now_in_db = _to_db(now)
        rows = [
            (
                dumps(new_job.payload),
                new_job.max_attempts,
                _to_db(new_job.run_at) if new_job.run_at else now_in_db,
                now_in_db,
            )
            for new_job in new_jobs
        ]
        ids = await self._writer.write(_insert_jobs, rows)
        for notify in self._listeners:
            notify()
        return [
            new_job.inserted(job_id, now) for new_job, job_id in zip(new_jobs, ids, strict=True)
        ]

    async def fetch_jobs(self, limit: int) -> list[Job]:
        claimed: list[Job] = await self._writer.write(_claim_jobs, (limit, self._clock.now()))
        return claimed

    async def complete_job(self, job: Job, result: Any) -> None:
        change = (dumps(result), _to_db(self._clock.now()), job.id)
        await self._writer.write(_complete_jobs, change)

    async def error_job(self, job: Job, error: str, retry_at: datetime | None) -> None:
        errors = dumps([*job.errors, error])
        change: Row
        if retry_at is None:
            now = _to_db(self._clock.now())
            change = (JobStatus.FAILED.value, errors, _to_db(job.run_at), now, job.id)
        else:
            change = (JobStatus.QUEUED.value, errors, _to_db(retry_at), None, job.id)
        await self._writer.write(_fail_attempts, change)

    async def release_jobs(self, jobs: Sequence[Job]) -> None:
        await asyncio.gather(*(self._writer.write(_release_jobs, (job.id,)) for job in jobs))

    async def rescue_orphaned_jobs(self) -> int:
        # Only one process runs workers on a SQLite file, so at start-up every running job
        # belongs to a process that has died.
        rescued: int = await self._writer.write(_rescue_running_jobs, _to_db(self._clock.now()))
        return rescued

    async def next_run_at(self) -> datetime | None:
        # The engine asks after every claim that left a worker idle. A lookup in the index of
        # queued jobs takes microseconds on the writer's connection, where a thread hop cost a
        # lone request a quarter of a millisecond; no write transaction is open between
        # group commits, and WAL lets this read run while another process writes.
        try:
            row = self._write_connection.execute(NEXT_RUN_AT).fetchone()
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode != sqlite3.SQLITE_BUSY:
                raise StoreUnavailable(str(exc)) from exc
            # Rare (another connection recovering the file): wait in a thread instead.
            row = await self._read(lambda conn: conn.execute(NEXT_RUN_AT).fetchone())
        except sqlite3.Error as exc:
            raise StoreUnavailable(str(exc)) from exc
        return _maybe_from_db(row[0]) if row else None

    async def get_job(self, job_id: int) -> Job | None:
        row = await self._read(lambda conn: conn.execute(GET_JOB, (job_id,)).fetchone())
        return _job_from_row(row) if row else None

    async def list_jobs(self, status: JobStatus | None, limit: int, offset: int) -> list[Job]:
        params: Row
        if status is None:
            query, params = LIST_JOBS, (limit, offset)
        else:
            query, params = LIST_JOBS_BY_STATUS, (status.value, limit, offset)
        rows = await self._read(lambda conn: conn.execute(query, params).fetchall())
        return [_job_from_row(row) for row in rows]

    async def count_jobs(self) -> dict[JobStatus, int]:
        rows = await self._read(lambda conn: conn.execute(COUNT_JOBS).fetchall())
        return {JobStatus(status): n for status, n in rows}

    async def _commit(self, group: Group) -> Group:
        """Run a group of writes in one transaction.

        On the event loop's own thread: a group takes a fraction of a millisecond, and a
        writer thread was slower, trading the GIL with the loop around every SQLite call.
        What can take long, waiting for another process's write lock and the fsync of a
        checkpoint, happens off this thread or without holding it.
        """
        conn = self._write_connection
        with _store_errors():
            await _begin(conn)
            try:
                results = {
                    batch: cast(WriteBatch, batch)(conn, items) for batch, items in group.items()
                }
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            return results

    async def _checkpoint_periodically(self) -> None:
        """Copy the WAL into the database file now and then, off the event loop's thread."""
        checkpointed_at = self._writer.commits
        while True:
            await asyncio.sleep(CHECKPOINT_INTERVAL)
            if self._writer.commits != checkpointed_at:
                checkpointed_at = self._writer.commits
                try:
                    await self._checkpoint()
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

    def _create_schema(self) -> None:
        with _store_errors(), self._engine.begin() as conn:
            SQLModel.metadata.create_all(conn, tables=[JobRow.metadata.tables["jobs"]])
            exists = "SELECT 1 FROM sqlite_master WHERE name = 'job_counts'"
            if conn.exec_driver_sql(exists).first() is None:
                statuses = dumps([status.value for status in JobStatus])
                for statement in COUNTS_SCHEMA:
                    conn.exec_driver_sql(statement, (statuses,) if "?" in statement else ())


async def _begin(conn: sqlite3.Connection) -> None:
    """Take the write lock (BEGIN IMMEDIATE), waiting without blocking the event loop.

    Another process using the same file may hold the lock; IMMEDIATE takes it up front, so
    a transaction never fails half-way for want of it.
    """
    deadline = time.monotonic() + LOCK_TIMEOUT
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


# The functions below run on the event loop's thread, inside the transaction of a group commit.
# Each takes the items of every caller in the group and returns one result per item.


def _insert_jobs(conn: sqlite3.Connection, batches: list[list[Row]]) -> list[range]:
    rows = [row for batch in batches for row in batch]
    conn.executemany(INSERT_JOB, rows)
    # Within this transaction nothing else inserts, and SQLite gives a row inserted without
    # an id the largest id so far plus one: the rows got the ids up to the last one, in order.
    (last_id,) = conn.execute("SELECT last_insert_rowid()").fetchone()
    ids = []
    next_id = last_id - len(rows) + 1
    for batch in batches:
        ids.append(range(next_id, next_id + len(batch)))
        next_id += len(batch)
    return ids


def _claim_jobs(conn: sqlite3.Connection, requests: list[tuple[int, datetime]]) -> list[list[Job]]:
    claimed = []
    for limit, now in requests:
        rows = conn.execute(CLAIM_DUE_JOBS, {"now": _to_db(now), "limit": limit}).fetchall()
        batch = [_job_from_row(row) for row in rows]
        # RETURNING promises no order.
        batch.sort(key=lambda job: (job.run_at, job.id))
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


def _rescue_running_jobs(conn: sqlite3.Connection, moments: list[str]) -> list[int]:
    params = [{"now": now, "error": LOST_WORKER_STOPPED} for now in moments]
    return [conn.execute(RESCUE_RUNNING_JOBS, p).rowcount for p in params]


def _to_db(moment: datetime) -> str:
    """The text form the table keeps moments in: naive UTC that sorts as it reads."""
    return moment.astimezone(UTC).replace(tzinfo=None).isoformat(" ", "microseconds")


def _from_db(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def _maybe_from_db(text: str | None) -> datetime | None:
    return None if text is None else _from_db(text)


def _from_json(text: str | None) -> Any:
    return None if text is None else orjson.loads(text)


def _decoder(name: str) -> Callable[[Any], Any]:
    """How a column's text becomes the Job field's value; pydantic does the rest."""
    column_type = JobRow.metadata.tables["jobs"].columns[name].type
    if isinstance(column_type, JSON):
        return _from_json
    if isinstance(column_type, DateTime):
        return _maybe_from_db
    return lambda value: value


ROW_DECODERS = tuple((name, _decoder(name)) for name in JOB_COLUMNS)


def _job_from_row(row: Row) -> Job:
    """A row selected as COLUMNS."""
    return Job.model_validate(
        {name: decode(value) for (name, decode), value in zip(ROW_DECODERS, row, strict=True)}
    )


def _create_engine(database_url: str) -> Engine:
    engine = create_engine(database_url, pool_size=5, max_overflow=10)

    @event.listens_for(engine, "connect")
    def configure(connection: sqlite3.Connection, _record: object) -> None:
        # Transactions begin where this module says, not where the sqlite3 module guesses.
        connection.isolation_level = None
        # WAL lets readers work beside the writer; NORMAL syncs at checkpoints, which keeps
        # every committed job through a crash of this process (not of the machine's power).
        connection.execute("PRAGMA journal_mode = WAL")
        connection.execute("PRAGMA synchronous = NORMAL")
        connection.execute(f"PRAGMA busy_timeout = {int(LOCK_TIMEOUT * 1000)}")

    @event.listens_for(engine, "begin")
    def begin_immediate(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


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
        raise StoreUnavailable(str(exc)) from exc
