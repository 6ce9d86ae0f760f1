"""A full disk under the SQLite file: real ENOSPC from a small tmpfs, not a mock.

Writes fail while it is full: requests are told so (507), /health says so, and a job that
finished meanwhile is recorded once there is room again, not left running.
"""

import asyncio
import errno
import logging
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from {{ cookiecutter.package_name }}.app import create_app
from {{ cookiecutter.package_name }}.jobs.model import Job
from {{ cookiecutter.package_name }}.jobs.registry import TaskRegistry

from .conftest import SettingsFactory, serve, wait_until

DISK_BYTES = 4 * 1024 * 1024
# Bigger than what the write-ahead log has room for once the disk is full: writing it
# needs new space.
LARGE = "x" * 300_000
FULL = "Job store is full: no space left on device"


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MB tmpfs of the test's own. Mounting one needs root: elsewhere the tests skip,
    saying why, unless REQUIRE_TMPFS=1 (the template's CI), where they fail."""
    mount_point = tmp_path / "small-disk"
    mount_point.mkdir()
    command = ["mount", "-t", "tmpfs", "-o", f"size={DISK_BYTES}", "tmpfs", str(mount_point)]
    try:
        mounted = subprocess.run(command, capture_output=True, text=True, check=False)
        reason = mounted.stderr.strip() if mounted.returncode else ""
    except FileNotFoundError:
        reason = "no mount command"
    if reason:
        message = f"cannot mount a tmpfs to fill ({reason}): the disk-full tests need root"
        if os.environ.get("REQUIRE_TMPFS") == "1":
            pytest.fail(message)
        pytest.skip(message)
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "--lazy", str(mount_point)], check=False)


def fill(disk: Path) -> Path:
    """Take every byte left on `disk` with one file; return it."""
    filler = disk / "filler"
    with filler.open("wb") as file:
        try:
            while True:
                file.write(b"\0" * 65536)
                file.flush()
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc
    return filler


async def test_a_full_disk_is_507_and_unhealthy_and_a_finished_job_is_stored_once_there_is_room(
    small_disk: Path, make_settings: SettingsFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    release = asyncio.Event()
    registry = TaskRegistry()

    @registry.task("hold")
    async def hold(_job: Job) -> str:
        await release.wait()
        return LARGE

    settings = make_settings(database_url=f"sqlite:///{small_disk / 'jobs.db'}")
    async with serve(create_app(settings, registry=registry)) as client:
        held = (await client.post("/jobs", json={"payload": {"task": "hold"}})).json()["job_id"]
        await wait_until(lambda: job_in(client, held, "running"), message="the job to run")
        filler = fill(small_disk)
        release.set()

        refused = [await client.post("/jobs", json={"payload": {"blob": LARGE}}) for _ in range(3)]
        health = await client.get("/health")
        while_full = (await client.get(f"/jobs/{held}")).json()

        assert [response.status_code for response in refused] == [507] * 3
        assert refused[0].json() == {"error": FULL}
        assert refused[0].headers["retry-after"] == "1"
        assert health.status_code == 503
        assert health.json()["store"] == "full: no space left on device"
        # Its handler returned, but the outcome could not be written: still running here.
        assert while_full["status"] == "running"

        filler.unlink()
        await wait_until(lambda: job_in(client, held, "done"), timeout=5, message="its outcome")
        await wait_until(lambda: health_ok(client), timeout=2, message="/health OK again")
        accepted = await client.post("/jobs", json={"payload": {"blob": LARGE}})

        assert accepted.status_code == 202, accepted.text
        done = (await client.get(f"/jobs/{held}")).json()
        assert (done["attempt"], done["result"]) == (1, LARGE)
        await wait_until(
            lambda: job_in(client, accepted.json()["job_id"], "done"), message="a job after"
        )
    said_full = [record for record in caplog.records if "is full" in record.getMessage()]
    assert len(said_full) == 1, [record.getMessage() for record in said_full]


async def job_in(client: httpx.AsyncClient, job_id: int, status: str) -> bool:
    response = await client.get(f"/jobs/{job_id}")
    return response.status_code == 200 and response.json()["status"] == status


async def health_ok(client: httpx.AsyncClient) -> bool:
    return (await client.get("/health")).status_code == 200
