"""The render's Grafana dashboard against a real Prometheus: every query in it returns data.

Needs the `prometheus` binary (Debian's package; `python3 dev.py test` installs it when it
can). Without it the test skips and says why, unless REQUIRE_PROMETHEUS=1 (CI), where it fails.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .baking import Bake, resolve_answers
from .processes import LOCAL_OPENER, Process, became_healthy, free_port, required_program

DASHBOARD = Path("monitoring", "grafana", "dashboards", "jobs.json")
SCRAPE_INTERVAL = "1s"
# What Grafana would put for $__rate_interval: several scrapes, and all of this test's jobs.
RATE_INTERVAL = "30s"


def get_json(url: str) -> Any:
    with LOCAL_OPENER.open(url, timeout=10) as response:
        return json.load(response)


def post_json(url: str, body: dict[str, Any]) -> None:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with LOCAL_OPENER.open(request, timeout=10) as response:
        assert response.status == 202


def dashboard_queries(project_dir: Path) -> list[str]:
    """Every PromQL expression of every panel."""
    dashboard = json.loads((project_dir / DASHBOARD).read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]


def has_finite_value(result: list[dict[str, Any]]) -> bool:
    return any(math.isfinite(float(series["value"][1])) for series in result)


@pytest.fixture
def service(bake: Bake, tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """The default render serving on a free port: its directory and its host:port."""
    project_dir = bake()
    port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": str(project_dir / "src"),
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "DATABASE_URL": f"sqlite:///{tmp_path / 'jobs.db'}",
        "RETRY_BACKOFF_BASE": "0.2",
        "RETRY_BACKOFF_MAX": "0.2",
    }
    package = resolve_answers({})["package_name"]
    process = Process([sys.executable, "-m", package], tmp_path, env, tmp_path / "service.log")
    try:
        assert became_healthy(f"http://127.0.0.1:{port}/health", process.popen, 30), (
            process.output()
        )
        yield project_dir, f"127.0.0.1:{port}"
    finally:
        process.stop()


@pytest.fixture
def prometheus(service: tuple[Path, str], tmp_path: Path) -> Iterator[str]:
    """A real Prometheus scraping the service every second: its base URL."""
    binary = required_program("prometheus", "REQUIRE_PROMETHEUS")
    _, target = service
    config = tmp_path / "prometheus.yml"
    # JSON is YAML.
    config.write_text(
        json.dumps(
            {
                "global": {"scrape_interval": SCRAPE_INTERVAL},
                "scrape_configs": [
                    {"job_name": "service", "static_configs": [{"targets": [target]}]}
                ],
            }
        )
    )
    port = free_port()
    command = [
        binary,
        f"--config.file={config}",
        f"--storage.tsdb.path={tmp_path / 'tsdb'}",
        f"--web.listen-address=127.0.0.1:{port}",
    ]
    process = Process(command, tmp_path, dict(os.environ), tmp_path / "prometheus.log")
    try:
        url = f"http://127.0.0.1:{port}"
        assert became_healthy(f"{url}/-/ready", process.popen, 30), process.output()
        yield url
    finally:
        process.stop()


def query(prometheus_url: str, expression: str) -> list[dict[str, Any]]:
    answer = get_json(
        f"{prometheus_url}/api/v1/query?" + urllib.parse.urlencode({"query": expression})
    )
    assert answer["status"] == "success", answer
    result: list[dict[str, Any]] = answer["data"]["result"]
    return result


def test_every_dashboard_query_returns_data_from_a_real_prometheus(
    service: tuple[Path, str], prometheus: str
) -> None:
    project_dir, target = service
    jobs_url = f"http://{target}/jobs"
    # Jobs of every kind over several scrapes: done, retried then failed, and slow ones
    # that keep workers busy while Prometheus looks.
    deadline = time.monotonic() + 8
    while time.monotonic() < deadline:
        post_json(jobs_url, {"payload": {"task": "report"}})
        post_json(jobs_url, {"payload": {"task": "fail"}, "max_attempts": 2})
        post_json(jobs_url, {"payload": {"task": "sleep", "seconds": 0.5}})
        time.sleep(0.2)

    def scraped_after_the_jobs() -> bool:
        finished = query(prometheus, "sum(jobs_finished_total)")
        return bool(finished) and float(finished[0]["value"][1]) > 0

    deadline = time.monotonic() + 30
    while not scraped_after_the_jobs():
        assert time.monotonic() < deadline, "Prometheus never scraped a finished job"
        time.sleep(0.5)
    time.sleep(3)  # a few more scrapes, so that every rate has two samples to compare

    queries = dashboard_queries(project_dir)
    assert queries, "the dashboard has no queries"
    empty = []
    for expression in queries:
        result = query(prometheus, expression.replace("$__rate_interval", RATE_INTERVAL))
        if not has_finite_value(result):
            empty.append(f"{expression} -> {result}")
    assert empty == [], "\n".join(empty)
