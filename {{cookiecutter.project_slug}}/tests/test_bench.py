"""The benchmark (`python -m <package>.bench`) runs every measure it documents, at small sizes.

Its numbers are not checked (they depend on the machine); that it runs them all, with every
process it starts ending cleanly, is.
"""

import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = "{{ cookiecutter.package_name }}"
SECTIONS = (
    "POST throughput",
    "one client, one request at a time",
    "End to end, 300 no-op jobs, pool size",
    "Wake-up latency",
{%- if cookiecutter.job_store == "postgres" %}
    "End to end, 300 no-op jobs, 2 worker processes",
    "Cross-instance wake-up",
{%- endif %}
    "Reads with 2000 jobs in the store",
    "Retention: 2000 expired done jobs, 300 no-op jobs run beside them",
)
# POST /jobs compared with the bare endpoint: once per server, a server per worker mode.
COMPARISONS = {% if cookiecutter.job_store == "memory" %}1{% else %}2{% endif %}


@pytest.fixture
def bench_env(service_env: dict[str, str]{% if cookiecutter.job_store == "postgres" %}, postgres_url: str{% endif %}) -> dict[str, str]:
{%- if cookiecutter.job_store == "postgres" %}
    # The benchmark makes schemas of its own in the database, and drops them.
    return {**service_env, "DATABASE_URL": postgres_url}
{%- else %}
    # The benchmark gives each measure a new, empty store of its own.
    return service_env
{%- endif %}


def test_the_benchmark_runs_every_measure(bench_env: dict[str, str], tmp_path: Path) -> None:
    sizes = ["--requests", "300", "--connections", "4", "--jobs", "300", "--wakeups", "5"]
    sizes += ["--large-store", "2000", "--prune", "2000"]
    result = subprocess.run(
        [sys.executable, "-m", f"{PACKAGE}.bench", *sizes],
        env=bench_env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stderr
    for section in SECTIONS:
        assert section in result.stdout, f"no {section!r} in:\n{result.stdout}"
    assert result.stdout.count("of bare (turns") == COMPARISONS
