"""The service as a real process, started with `python -m`: signals, restarts, kill -9."""

import json
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
{%- if cookiecutter.job_store == "sqlite" %}
from concurrent.futures import ThreadPoolExecutor
{%- endif %}
from pathlib import Path
from typing import Any

import httpx
import pytest

from .conftest import free_port, poll_until, stop

PACKAGE = "{{ cookiecutter.package_name }}"


class Service:
    """One child process serving the API on a free port, its output going to a log file."""

    def __init__(self, env: dict[str, str], cwd: Path, log_path: Path) -> None:
        self.port = free_port()
        self.log_path = log_path
        with log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", PACKAGE],
                env={**env, "PORT": str(self.port)},
                cwd=cwd,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=5)

    def wait_until_healthy(self, timeout: float = 20) -> None:
        def healthy() -> bool:
            if self.process.poll() is not None:
                pytest.fail(f"the service exited with {self.process.returncode} while starting")
            try:
                return self.http.get("/health").status_code == 200
            except httpx.TransportError:
                return False

        poll_until(healthy, timeout, f"the service on port {self.port} to be healthy")

    def submit(self, payload: dict[str, Any]) -> int:
        response = self.http.post("/jobs", json={"payload": payload})
        assert response.status_code == 202, response.text
        job_id: int = response.json()["job_id"]
        return job_id

    def job(self, job_id: int) -> dict[str, Any]:
        response = self.http.get(f"/jobs/{job_id}")
        assert response.status_code == 200, response.text
        job: dict[str, Any] = response.json()
        return job

    def stats(self) -> dict[str, int]:
        stats: dict[str, int] = self.http.get("/stats").json()
        return stats

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def end(self) -> None:
        """Stop the process if it still runs: SIGTERM, then SIGKILL if it lingers."""
        self.http.close()
        stop(self.process)


ServiceStarter = Callable[..., Service]


@pytest.fixture
def start_service(service_env: dict[str, str], tmp_path: Path) -> Iterator[ServiceStarter]:
    """`start_service(**env)`: a healthy service on this test's store; logs shown on failure."""
    services: list[Service] = []

    def start(**env: str) -> Service:
        log_path = tmp_path / f"service-{len(services) + 1}.log"
        service = Service({**service_env, **env}, tmp_path, log_path)
        services.append(service)
        service.wait_until_healthy()
        return service

    yield start
    for number, service in enumerate(services, start=1):
        service.end()
        # pytest shows what a test printed only when the test fails.
        print(f"----- log of service {number} (exit code {service.process.returncode}) -----")
        print(service.log())


def test_log_format_json_writes_one_json_object_per_line(
    start_service: ServiceStarter,
) -> None:
    service = start_service(LOG_FORMAT="json")
    job_id = service.submit({"task": "sleep", "seconds": 0})
    poll_until(lambda: service.job(job_id)["status"] == "done", message="the job to finish")
    service.end()

    lines = [json.loads(line) for line in service.log().splitlines() if line.strip()]
    messages = {line["message"]: line for line in lines}
    assert "Worker started" in " ".join(messages)
    completed = messages[f"Job {job_id} completed successfully"]
    assert (completed["job_id"], completed["task"], completed["level"]) == (job_id, "sleep", "info")


def test_uvicorn_s_limits_come_from_the_settings(start_service: ServiceStarter) -> None:
    service = start_service(HTTP_CONCURRENCY_LIMIT="3", HTTP_KEEP_ALIVE_SECONDS="1")
    port = service.port
    # Clients that send half a request keep their connections...
    slow = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(3)]
    for connection in slow:
        connection.sendall(b"GET /health HTTP/1.1\r\nHost: test\r\n")
    try:
        # ...so that, past the limit, a request is refused at once rather than queued.
        refused = httpx.get(f"http://127.0.0.1:{port}/health", timeout=5)
    finally:
        for connection in slow:
            connection.close()
    assert refused.status_code == 503

    # Under the default keep-alive (5 s) this would wait past the socket's timeout (3 s).
    idle = socket.create_connection(("127.0.0.1", port), timeout=3)
    try:
        idle.sendall(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n")
        answer = b""
        while not answer.endswith(b"Server is running"):
            answer += idle.recv(65536)
        assert answer.startswith(b"HTTP/1.1 200")
        # Nothing more is sent: the server closes the idle connection after a second.
        assert idle.recv(65536) == b""
    finally:
        idle.close()
    assert service.http.get("/health").status_code == 200


def test_sigterm_drains_running_jobs_within_the_grace_period_and_exits_0(
    start_service: ServiceStarter,
) -> None:
    service = start_service(SHUTDOWN_GRACE="3", WORKER_POOL_SIZE="2")
    short = service.submit({"task": "sleep", "seconds": 1})
    long = service.submit({"task": "sleep", "seconds": 60})
    poll_until(
        lambda: all(service.job(job_id)["status"] == "running" for job_id in (short, long)),
        message="both jobs to run",
    )

    signalled = time.monotonic()
    service.process.send_signal(signal.SIGTERM)
    exit_code = service.process.wait(timeout=15)

    assert exit_code == 0
    assert time.monotonic() - signalled < 10
    log = service.log()
    assert "Traceback" not in log
    # The short job finished during the drain, not before the signal.
    assert log.index("Waiting up to") < log.index(f"Job {short} completed successfully")
    assert f"Job {long} completed" not in log
    assert "Released 1 unfinished jobs back to the queue" in log
{%- if cookiecutter.job_store != "memory" %}

    # The store outlives the process: the short job stays done, and the long one starts
    # again as attempt 1, as if it had never been claimed.
    restarted = start_service(SHUTDOWN_GRACE="0")
    finished = restarted.job(short)
    assert (finished["status"], finished["attempt"], finished["errors"]) == ("done", 1, [])
    poll_until(
        lambda: restarted.job(long)["status"] == "running", message="the long job to run again"
    )
    again = restarted.job(long)
    assert (again["attempt"], again["errors"]) == (1, [])
{%- endif %}
{%- if cookiecutter.job_store == "sqlite" %}


# --- Durability: an accepted job survives kill -9.


def test_every_accepted_job_survives_kill_9_and_runs_to_done_after_a_restart(
    start_service: ServiceStarter,
) -> None:
    service = start_service(WORKER_POOL_SIZE="4")
    # Running for sure when the process dies, so its lost attempt must show after restart.
    running_at_kill = service.submit({"task": "sleep", "seconds": 3})
    poll_until(
        lambda: service.job(running_at_kill)["status"] == "running",
        message="the long job to run",
    )
    payloads = [{"task": "sleep", "seconds": 0.05} if n % 2 else {"n": n} for n in range(200)]
    # Eight at a time: all accepted well within the long job's three seconds, however
    # busy the machine.
    with ThreadPoolExecutor(8) as pool:
        accepted = [running_at_kill, *pool.map(service.submit, payloads)]
    assert service.job(running_at_kill)["status"] == "running"

    service.process.kill()
    service.process.wait(timeout=5)

    restarted = start_service(WORKER_POOL_SIZE="4")

    def drained() -> bool:
        stats = restarted.stats()
        return stats["queued"] + stats["running"] == 0

    poll_until(drained, timeout=30, message="every job to finish after the restart")
    stats = restarted.stats()
    assert stats == {
        "queued": 0,
        "running": 0,
        "done": 201,
        "failed": 0,
        "cancelled": 0,
        "total": 201,
    }
    lost = []
    for job_id in accepted:
        job = restarted.job(job_id)
        assert job["status"] == "done", job
        if job["errors"]:
            assert (job["errors"], job["attempt"]) == (["lost: worker stopped"], 2), job
            lost.append(job_id)
        else:
            assert job["attempt"] == 1, job
    assert running_at_kill in lost


# --- One process runs workers on a file.


def test_a_second_process_on_the_file_runs_no_workers_and_takes_no_running_job(
    start_service: ServiceStarter, service_env: dict[str, str], tmp_path: Path
) -> None:
    first = start_service()
    running = first.submit({"task": "sleep", "seconds": 2})
    poll_until(lambda: first.job(running)["status"] == "running", message="the job to run")

    second = Service(service_env, tmp_path, tmp_path / "second.log")
    try:

        def refused() -> bool:
            try:
                health = second.http.get("/health")
            except httpx.TransportError:
                return False
            degraded: bool = health.json() == {"status": "DEGRADED", "engine": "not running"}
            return degraded

        poll_until(refused, 20, "the second process to answer /health")
        submitted = second.submit({"task": "sleep", "seconds": 0})
        poll_until(lambda: first.job(submitted)["status"] == "done", message="the first to run it")
        poll_until(lambda: first.job(running)["status"] == "done", message="the long job to end")
    finally:
        second.end()

    assert (first.job(running)["attempt"], first.job(running)["errors"]) == (1, [])
    log = second.log()
    assert f"This process runs no workers: process {first.process.pid} already runs workers" in log
    assert "Requeued" not in log
    assert "Traceback" not in log

    # Its lock goes with the process, however the process ends.
    first.process.kill()
    first.process.wait(timeout=5)
    successor = start_service()
    assert successor.http.get("/health").json() == {"status": "OK"}
{%- endif %}
