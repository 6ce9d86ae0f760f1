"""A database made by the previous release upgrades at start-up and keeps every job.

The previous release is rendered from this repository's own history (PREVIOUS_RELEASE), its
store fills a database with jobs in every status it has, and the current render's store then
opens that database: its migrations run, and every job must come back with every field it
had, the new fields at their defaults, and the queued ones still claimable.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from cookiecutter.main import cookiecutter

from .baking import TEMPLATE_DIR, Bake
from .databases import UNREACHABLE, database_of_its_own, run_sql

# The last release landed before the schema became versioned migrations.
PREVIOUS_RELEASE = "8803f57c1f583586d541c5e1bd0c30841f314798"
DURABLE_STORES = ["sqlite", "postgres"]
# Run by the previous release: every status it knows, and a retry waiting for later.
FILL = """
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
    print(json.dumps({"jobs": [job.model_dump(mode="json") for job in jobs], "counts": counts}))
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
NEW_FIELDS = {"queue": "default", "priority": 0, "unique_key": None, "cancel_requested": False}


@pytest.fixture(scope="module")
def previous_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The template as it was at PREVIOUS_RELEASE, from this repository's history."""
    archive = subprocess.run(
        ["git", "-C", str(TEMPLATE_DIR), "archive", "--format=tar", PREVIOUS_RELEASE],
        capture_output=True,
        check=False,
    )
    if archive.returncode != 0:
        pytest.fail(
            f"cannot read release {PREVIOUS_RELEASE[:12]} from git (a full clone is needed):"
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
def test_a_database_of_the_previous_release_upgrades_keeping_every_job(
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
    before = run_in(previous, FILL, database_url)
    assert sorted({job["status"] for job in before}) == ["done", "failed", "queued", "running"]

    upgraded = run_in(current, READ, database_url)
    again = run_in(current, READ, database_url)

    after = {job["id"]: job for job in upgraded["jobs"]}
    assert sorted(after) == sorted(job["id"] for job in before)
    for job in before:
        assert after[job["id"]] == {**job, **NEW_FIELDS}
    nonzero = {status: n for status, n in upgraded["counts"].items() if n}
    assert nonzero == Counter(job["status"] for job in before)
    assert again == upgraded
    # The queued jobs that are due are claimed as before: the two never started.
    assert run_in(current, CLAIM, database_url) == [4, 5]
