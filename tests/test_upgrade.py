"""A database made by an earlier release upgrades at start-up and keeps every job.

Each release in RELEASES is rendered from this repository's own history, its store fills a
database with jobs in every status it has, and the current render's store then opens that
database: its migrations run, and every job must come back with every field it had, fields
added since at their defaults, paused queues still paused, the due ones still claimable.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cookiecutter.main import cookiecutter

from .baking import TEMPLATE_DIR, Bake
from .databases import UNREACHABLE, database_of_its_own, run_sql

# Releases whose databases the current render must upgrade: what each one fills a database
# with (every status it has, a retry waiting for later) and the fields added since.
BEFORE_MIGRATIONS = "8803f57c1f583586d541c5e1bd0c30841f314798"
FIRST_WITH_MIGRATIONS = "7e91a73824ab133d79be6496ca75e0cb06b54e8d"
FILL_BEFORE_MIGRATIONS = """
import asyncio, json
from datetime import timedelta
from job_service.jobs.clock import SystemClock
from job_service.jobs.store import NewJob, make_store
from job_service.settings import Settings

async def main():
    clock = SystemClock()
    store = make_store(Settings(), clock)
    await store.open()
    await store.insert_all_jobs(
        [NewJob(payload={"task": "report", "n": n, "text": "caf\\u00e9"}, max_attempts=2)
         for n in range(6)]
    )
    await store.insert_job(NewJob(payload={"n": "later"}, run_at=clock.now() + timedelta(days=9)))
    done, failed, retried, _running = await store.fetch_jobs(4)
    await store.complete_job(done, {"ok": [1, "two", None]})
    await store.error_job(failed, "RuntimeError: boom", None)
    await store.error_job(retried, "RuntimeError: again", clock.now() + timedelta(hours=1))
    jobs = await store.list_jobs(None, 100, 0)
    print(json.dumps([job.model_dump(mode="json") for job in jobs]))
    await store.close()

asyncio.run(main())
"""
FILL_WITH_QUEUES = """
import asyncio, json
from datetime import timedelta
from job_service.jobs.clock import SystemClock
from job_service.jobs.store import JobFilter, NewJob, make_store
from job_service.settings import Settings

def new(n, **fields):
    payload = {"task": "report", "n": n, "text": "caf\\u00e9"}
    return NewJob(payload=payload, max_attempts=2, **fields)

async def main():
    clock = SystemClock()
    store = make_store(Settings(), clock)
    await store.open()
    await store.insert_all_jobs(
        [new(n, queue="reports" if n % 2 else "default", priority=n, unique_key=f"k{n}")
         for n in range(5)]
    )
    done, failed, retried, cancelled, _running = await store.fetch_jobs({"default": 5})
    await store.complete_job(done, {"ok": [1, "two", None]})
    await store.error_job(failed, "RuntimeError: boom", None)
    await store.error_job(retried, "RuntimeError: again", clock.now() + timedelta(hours=1))
    await store.cancel_job(cancelled.id)
    await store.error_job(cancelled, "CancelledError", None)
    await store.insert_all_jobs([new(5, queue="reports", priority=7, unique_key="k5"), new(6)])
    await store.insert_job(NewJob(payload={"n": "later"}, run_at=clock.now() + timedelta(days=9)))
    (queued_cancelled,) = await store.insert_all_jobs([new(7, queue="reports")])
    await store.cancel_job(queued_cancelled.job.id)
    await store.pause_queue("held")
    jobs = await store.list_jobs(JobFilter(), 100, 0)
    print(json.dumps([job.model_dump(mode="json") for job in jobs]))
    await store.close()

asyncio.run(main())
"""
DURABLE_STORES = ["sqlite", "postgres"]
RELEASES = {
    BEFORE_MIGRATIONS: (
        FILL_BEFORE_MIGRATIONS,
        {"queue": "default", "priority": 0, "unique_key": None, "cancel_requested": False},
        [],
    ),
    FIRST_WITH_MIGRATIONS: (FILL_WITH_QUEUES, {}, ["held"]),
}
# Run by the current render, twice: the second start finds nothing to migrate.
READ = """
import asyncio, json
from job_service.jobs.clock import SystemClock
from job_service.jobs.store import JobFilter, make_store
from job_service.settings import Settings

async def main():
    store = make_store(Settings(), SystemClock())
    await store.open()
    jobs = await store.list_jobs(JobFilter(), 100, 0)
    counts = {str(status): n for status, n in (await store.count_jobs()).items()}
    paused = [queue.name for queue in await store.list_queues() if queue.paused]
    jobs = [job.model_dump(mode="json") for job in jobs]
    print(json.dumps({"jobs": jobs, "counts": counts, "paused": paused}))
    await store.close()

asyncio.run(main())
"""
CLAIM = """
import asyncio, json
from job_service.jobs.clock import SystemClock
from job_service.jobs.store import make_store
from job_service.settings import Settings

async def main():
    store = make_store(Settings(), SystemClock())
    await store.open()
    claimed = await store.fetch_jobs({"default": 100})
    print(json.dumps(sorted(job.payload["n"] for job in claimed)))
    await store.close()

asyncio.run(main())
"""


@pytest.fixture(scope="module", params=list(RELEASES), ids=lambda release: release[:7])
def release(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def previous_template(release: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The template as it was at `release`, from this repository's history."""
    archive = subprocess.run(
        ["git", "-C", str(TEMPLATE_DIR), "archive", "--format=tar", release],
        capture_output=True,
        check=False,
    )
    if archive.returncode != 0:
        pytest.fail(
            f"cannot read release {release[:12]} from git (a full clone is needed):"
            f" {archive.stderr.decode().strip()}"
        )
    target = tmp_path_factory.mktemp("previous-template")
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(target, filter="data")
    return target


@pytest.fixture
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    store = request.param
    if store == "sqlite":
        yield f"sqlite:///{tmp_path / 'jobs.db'}"
        return
    server_url = (
        os.environ.get("TEST_DATABASE_URL")
        or os.environ.get("DATABASE_URL")
        or "postgresql://postgres@127.0.0.1:5432/postgres"
    )
    try:
        run_sql(server_url, "SELECT 1")
    except UNREACHABLE as exc:
        reason = f"PostgreSQL unreachable at {server_url} ({exc}); set TEST_DATABASE_URL"
        if os.environ.get("REQUIRE_POSTGRES") == "1":
            pytest.fail(f"REQUIRE_POSTGRES=1 but {reason}")
        pytest.skip(reason)
    with database_of_its_own(server_url) as url:
        yield url


def run_in(project: Path, script: str, database_url: str) -> Any:
    """Run `script` with `project`'s package on the path; its printed JSON."""
    env = {
        **os.environ,
        "PYTHONPATH": str(project / "src"),
        "DATABASE_URL": database_url,
        "LOG_LEVEL": "warning",
    }
    result = subprocess.run(
        [sys.executable, "-c", script],
        env=env,
        cwd=project,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("database_url", DURABLE_STORES, indirect=True, ids=DURABLE_STORES)
def test_a_database_of_an_earlier_release_upgrades_keeping_every_job(
    release: str,
    previous_template: Path,
    bake: Bake,
    cookiecutter_config: Path,
    tmp_path: Path,
    database_url: str,
) -> None:
    store = "sqlite" if database_url.startswith("sqlite") else "postgres"
    previous = Path(
        cookiecutter(
            str(previous_template),
            no_input=True,
            extra_context={"job_store": store},
            output_dir=str(tmp_path / "previous"),
            config_file=str(cookiecutter_config),
        )
    )
    current = bake(job_store=store)
    fill, new_fields, paused = RELEASES[release]
    before = run_in(previous, fill, database_url)
    statuses = {"done", "failed", "queued", "running"}
    assert statuses <= {job["status"] for job in before}

    upgraded = run_in(current, READ, database_url)
    again = run_in(current, READ, database_url)

    after = {job["id"]: job for job in upgraded["jobs"]}
    assert sorted(after) == sorted(job["id"] for job in before)
    for job in before:
        assert after[job["id"]] == {**job, **new_fields}
    nonzero = {status: n for status, n in upgraded["counts"].items() if n}
    assert nonzero == Counter(job["status"] for job in before)
    assert upgraded["paused"] == paused
    assert again == upgraded
    # The queued jobs that are due are claimed as before.
    now = datetime.now(UTC)
    due = [
        job["payload"]["n"]
        for job in before
        if job["status"] == "queued" and datetime.fromisoformat(job["run_at"]) <= now
    ]
    assert due
    assert run_in(current, CLAIM, database_url) == sorted(due)
