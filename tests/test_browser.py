"""The dashboard in a real browser: headless Chromium driven through a running render.

Needs Debian's `chromium` (`python3 dev.py test` installs it when it can), driven by
Playwright from requirements-dev.txt; Playwright downloads no browser of its own here.
Without chromium the test skips and says why, unless REQUIRE_CHROMIUM=1 (CI), where it
fails. A screenshot of each step is saved in build/screenshots/, for a reviewer to look at.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from .baking import Bake, resolve_answers
from .processes import LOCAL_OPENER, Process, became_healthy, free_port, required_program

ROOT = Path(__file__).resolve().parent.parent
SCREENSHOTS = ROOT / "build" / "screenshots"
ADMIN_SECRET = "browser-admin-0123456789abcdef"
READER_SECRET = "browser-reader-0123456789abcdef"
# A task the way a user adds one: it fails until the file it waits for exists.
UNTIL_FILE_TASK = '''

@registry.task("until_file")
def until_file(job: Job) -> dict[str, str]:
    """Fail until the file `payload["path"]` exists."""
    from pathlib import Path

    if not Path(job.payload["path"]).exists():
        raise FileNotFoundError(f"waiting for {job.payload['path']}")
    return {"found": job.payload["path"]}
'''


@dataclass(frozen=True)
class Service:
    url: str

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        request = urllib.request.Request(
            f"{self.url}{path}",
            method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={
                "Authorization": f"Bearer {ADMIN_SECRET}",
                "Content-Type": "application/json",
            },
        )
        with LOCAL_OPENER.open(request, timeout=10) as response:
            return json.load(response)

    def wait_for_stats(self, expected: dict[str, int], within: float = 20) -> None:
        deadline = time.monotonic() + within
        while (stats := self.call("GET", "/stats")) and any(
            stats[status] != count for status, count in expected.items()
        ):
            assert time.monotonic() < deadline, f"stats {stats}, waiting for {expected}"
            time.sleep(0.1)


@pytest.fixture
def service(bake: Bake, tmp_path: Path) -> Iterator[Service]:
    """The default render, with a task added, serving on a free port with two keys."""
    project_dir = shutil.copytree(bake(), tmp_path / "project")
    package = resolve_answers({})["package_name"]
    tasks = project_dir / "src" / package / "jobs" / "tasks.py"
    tasks.write_text(tasks.read_text() + UNTIL_FILE_TASK)
    port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": str(project_dir / "src"),
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "DATABASE_URL": f"sqlite:///{tmp_path / 'jobs.db'}",
        "API_KEYS": f"ops:{ADMIN_SECRET},viewer:{READER_SECRET}:read",
    }
    process = Process([sys.executable, "-m", package], tmp_path, env, tmp_path / "service.log")
    try:
        url = f"http://127.0.0.1:{port}"
        assert became_healthy(f"{url}/health", process.popen, 30), process.output()
        yield Service(url)
    finally:
        process.stop()


@pytest.fixture
def screenshots(request: pytest.FixtureRequest) -> Path:
    directory = SCREENSHOTS / request.node.name
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    return directory


def reload_until(page: Any, condition: Callable[[], bool], what: str, within: float = 20) -> None:
    """Reload the page until `condition` holds: what it waits for is not pushed to pages."""
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)
        page.reload()


def test_an_operator_signs_in_retries_a_failed_job_and_pauses_a_queue(
    service: Service, screenshots: Path, tmp_path: Path
) -> None:
    from playwright.sync_api import expect, sync_playwright

    browser_binary = required_program("chromium", "REQUIRE_CHROMIUM")
    awaited = tmp_path / "input.csv"
    for _ in range(3):
        service.call("POST", "/jobs", {"payload": {"task": "sleep", "seconds": 0}})
    for _ in range(2):
        service.call(
            "POST", "/jobs", {"payload": {"task": "sleep", "seconds": 0}, "queue": "emails"}
        )
    failing = service.call(
        "POST",
        "/jobs",
        {"payload": {"task": "until_file", "path": str(awaited)}, "max_attempts": 1},
    )["job_id"]
    service.wait_for_stats({"done": 5, "failed": 1, "queued": 0, "running": 0})

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=browser_binary, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})

            def shot(name: str) -> None:
                page.screenshot(path=screenshots / f"{name}.png", full_page=True)

            page.goto(f"{service.url}/dashboard/")
            expect(page).to_have_url(f"{service.url}/dashboard/login")
            shot("01-sign-in")
            page.get_by_label("API key secret").fill(ADMIN_SECRET)
            page.get_by_role("button", name="Sign in").click()

            expect(page).to_have_url(f"{service.url}/dashboard/")
            expect(page.locator('[data-status="done"]')).to_have_text("5")
            expect(page.locator('[data-status="failed"]')).to_have_text("1")
            # The chart's counts are written out every second: reload until they are in.
            completed = page.locator('[data-outcome="completed"]')
            reload_until(
                page,
                lambda: completed.inner_text() == "5 completed",
                "the chart to count the 5 completed attempts",
            )
            expect(page.locator('[data-outcome="failed"]')).to_have_text("1 failed")
            expect(page.locator(".chart rect.completed")).to_have_count(60)
            shot("02-overview")

            page.get_by_role("link", name="Jobs", exact=True).click()
            page.get_by_label("status").select_option("failed")
            page.get_by_role("button", name="Filter").click()
            expect(page).to_have_url(f"{service.url}/dashboard/jobs?status=failed&queue=&task=")
            rows = page.locator("tbody tr")
            expect(rows).to_have_count(1)
            shot("03-failed-jobs")

            rows.get_by_role("link", name=str(failing)).click()
            expect(page.locator("ol.errors")).to_contain_text("FileNotFoundError: waiting for")
            shot("04-failed-job")

            awaited.write_text("ready\n")
            page.get_by_role("button", name="Retry").click()
            expect(page).to_have_url(f"{service.url}/dashboard/jobs/{failing}")
            reload_until(
                page,
                lambda: page.locator("h1 .status").inner_text() == "done",
                "the retried job to finish",
            )
            expect(page.locator("pre").nth(1)).to_contain_text(str(awaited))
            shot("05-retried-job-done")

            page.get_by_role("link", name="Queues").click()
            emails = page.locator("tr", has_text="emails")
            emails.get_by_role("button", name="Pause").click()
            expect(page.locator("tr", has_text="emails")).to_contain_text("paused")
            shot("06-queue-paused")
            paused = {queue["name"]: queue["paused"] for queue in service.call("GET", "/queues")}
            assert paused == {"default": False, "emails": True}

            # Jobs of the paused queue wait; the jobs page cancels all that its filters select.
            waiting = {"payload": {"task": "sleep", "seconds": 0}, "queue": "emails"}
            held = [service.call("POST", "/jobs", waiting) for _ in range(2)]
            page.goto(f"{service.url}/dashboard/jobs?status=queued&queue=emails")
            expect(page.locator("tbody tr")).to_have_count(2)
            page.once("dialog", lambda dialog: dialog.accept())
            page.get_by_role("button", name="Cancel all that match").click()
            expect(page.locator(".notice")).to_have_text(
                "Cancelled 2 queued jobs; asked 0 running jobs to stop."
            )
            expect(page.locator("tbody tr")).to_have_count(1)  # "No job matches."
            shot("07-bulk-cancelled")
            statuses = [service.call("GET", f"/jobs/{job['job_id']}")["status"] for job in held]
            assert statuses == ["cancelled", "cancelled"]

            page.get_by_role("link", name="Schedules").click()
            shot("08-schedules")

            reader = browser.new_page(viewport={"width": 1280, "height": 900})
            reader.goto(f"{service.url}/dashboard/login")
            reader.get_by_label("API key secret").fill(READER_SECRET)
            reader.get_by_role("button", name="Sign in").click()
            reader.goto(f"{service.url}/dashboard/queues")
            expect(reader.locator("header")).to_contain_text("viewer (read only)")
            expect(reader.locator("main button")).to_have_count(0)
            reader.screenshot(path=screenshots / "09-read-only-queues.png", full_page=True)
        finally:
            browser.close()
    print(f"screenshots in {screenshots}")
