"""Each store's render against its own OpenAPI document, with schemathesis.

The render is started as a real process (`python -m <package>`, as its README says) and
schemathesis (pinned in requirements-dev.txt) reads the service's own `/openapi.json` and
tests every operation in it: the document must tell the truth about what the service
accepts and answers, so that clients generated from it work.

Checks. Schemathesis runs every check it has unless told otherwise, so the list is
explicit (`CHECKS`) and a schemathesis upgrade cannot change it silently:

- `not_a_server_error`: no input, however malformed, yields a 5xx (SPEC: never a 500).
- `status_code_conformance`: every status the service sends is documented for that
  operation (the 400s, 404, 405, 413 of SPEC.md, not just the success).
- `content_type_conformance`: the Content-Type sent is the one documented.
- `response_schema_conformance`: bodies match the documented schemas, formats included.
- `response_headers_conformance`: documented response headers are sent and match.
- `positive_data_acceptance`, `negative_data_rejection`: a request the documented
  parameters and body allow is not rejected, and one they forbid is rejected with a 4xx.
  Without these, documenting a 400 everywhere would pass while the request schemas lied.
- `missing_required_header`: a documented required header left out gets a 4xx.
- `unsupported_method`: a method the document does not list for a path gets 405 with an
  `Allow` header (nothing undocumented answers); `allow_header_conformance`: that `Allow`
  lists exactly the documented methods (RFC 9110).
- `ensure_resource_availability`, `use_after_free` (stateful, on links schemathesis
  infers): a job just accepted can be read back; a deleted resource stays gone.

With API keys (the renders with `use_auth=yes`) the service runs with API_KEYS set,
schemathesis sends the admin key on every request, and one check more runs:
- `ignored_auth`: an operation that declares the bearer scheme refuses a request without
  the key, or with a wrong one.

Left out: `object_level_authorization` (keys have roles, jobs have no owners) and
`max_response_time` (timing on a shared 2-CPU machine is noise; see the benchmarks). No
check notices a documented status the service never sends (FastAPI's default 422, say):
review the document for those.

Phases: all four (`examples`; `coverage`, deterministic boundary and negative cases and the
undocumented methods; `fuzzing`, Hypothesis; `stateful`, sequences along inferred links),
in positive and negative mode, at most MAX_EXAMPLES cases an operation, with a fixed seed
and one worker, so a CI failure reproduces locally with the same command. After a failure
an operation keeps going (`--continue-on-failure`), so one run lists every kind of failure
it has; a refused or reset connection is retried twice, so a busy CI machine is not taken
for a crashed service. Everything schemathesis and Hypothesis would persist (example
database, replay cache, crash files) stays in the test's tmp directory or is disabled, and
the only network used is loopback. One render takes 5 to 15 seconds.

Run alone: `.venv/bin/python -m pytest tests/test_openapi_contract.py -n 0`; a failure
shows schemathesis's report (operation, check, a curl command that reproduces it), the
exact command, and the service's log.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from .baking import JOB_STORES, Bake, resolve_answers
from .databases import DEFAULT_URL, UNREACHABLE, database_of_its_own, run_sql
from .processes import LOCAL_OPENER, became_healthy, free_port, stop

# Every job store, with API keys; plus a render without metrics (one operation less) nor
# API keys (a document without a security scheme).
RENDERS: dict[str, dict[str, str]] = {
    **{f"job_store={store}": {"job_store": store} for store in JOB_STORES},
    "use_metrics=no-use_auth=no": {"use_metrics": "no", "use_auth": "no"},
}

CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_schema_conformance",
    "response_headers_conformance",
    "positive_data_acceptance",
    "negative_data_rejection",
    "missing_required_header",
    "unsupported_method",
    "allow_header_conformance",
    "ensure_resource_availability",
    "use_after_free",
)
AUTH_CHECKS = ("ignored_auth",)
# The admin key schemathesis sends where the render has API keys.
API_SECRET = "schemathesis-admin-secret-0123456789"
PHASES = ("examples", "coverage", "fuzzing", "stateful")
MAX_EXAMPLES = 50
SEED = 1
# No schemathesis.toml from a parent directory applies; the replay cache (and with it the
# crash files) would make a run depend on the runs before it.
SCHEMATHESIS_TOML = "[cache]\nenabled = false\n"
# Generous: a run takes seconds; this only stops a hung one.
SCHEMATHESIS_TIMEOUT = 300
REQUEST_TIMEOUT = 10
# Proxies must not see loopback traffic, and no schemathesis setting may leak in.
DROPPED_ENV_PREFIXES = ("SCHEMATHESIS_", "HYPOTHESIS_")
PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")


@dataclass(frozen=True)
class Service:
    base_url: str
    popen: subprocess.Popen[bytes]
    log: Path
    # The API key to send, when the service has API keys.
    secret: str | None

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def status(self) -> str:
        code = self.popen.poll()
        return "still running" if code is None else f"exited with code {code}"


def skip_or_fail(reason: str) -> None:
    if os.environ.get("REQUIRE_POSTGRES") == "1":
        pytest.fail(f"REQUIRE_POSTGRES=1 but {reason}")
    pytest.skip(reason)


@contextmanager
def store_environment(job_store: str, tmp_path: Path) -> Iterator[dict[str, str]]:
    """Where the service keeps its jobs: a fresh SQLite file or a PostgreSQL database."""
    if job_store == "sqlite":
        yield {"DATABASE_URL": f"sqlite:///{tmp_path / 'jobs.db'}"}
    elif job_store == "postgres":
        server_url = (
            os.environ.get("TEST_DATABASE_URL") or os.environ.get("DATABASE_URL") or DEFAULT_URL
        )
        with database_of_its_own(server_url) as database_url:
            try:
                run_sql(database_url, "SELECT 1")
            except UNREACHABLE as exc:
                unreachable = f"PostgreSQL unreachable at {server_url} ({exc})"
            else:
                unreachable = ""
            if unreachable:
                skip_or_fail(f"{unreachable}; set TEST_DATABASE_URL")
            yield {"DATABASE_URL": database_url}
    else:
        yield {}


@pytest.fixture(params=list(RENDERS.values()), ids=list(RENDERS))
def service(request: pytest.FixtureRequest, bake: Bake, tmp_path: Path) -> Iterator[Service]:
    """The render serving on a free loopback port, on a store of its own."""
    answers: dict[str, str] = request.param
    resolved = resolve_answers(answers)
    project_dir = bake(**answers)
    port = free_port()
    log = tmp_path / "service.log"
    with store_environment(resolved["job_store"], tmp_path) as store_env:
        env = {key: value for key, value in os.environ.items() if key != "DATABASE_URL"}
        env.update(
            PYTHONPATH=str(project_dir / "src"),
            HOST="127.0.0.1",
            PORT=str(port),
            LOG_LEVEL="warning",
            # A fuzzed job may still be running at the end; do not wait long for it.
            SHUTDOWN_GRACE="2",
            **store_env,
        )
        secret = API_SECRET if resolved["use_auth"] == "yes" else None
        if secret:
            env["API_KEYS"] = f"schemathesis:{secret}"
        # The working directory is empty: no .env file changes the settings.
        workdir = tmp_path / "service"
        workdir.mkdir()
        with log.open("wb") as output:
            popen = subprocess.Popen(
                [sys.executable, "-m", resolved["package_name"]],
                cwd=workdir,
                env=env,
                stdout=output,
                stderr=subprocess.STDOUT,
            )
        running = Service(f"http://127.0.0.1:{port}", popen, log, secret)
        try:
            assert became_healthy(f"{running.base_url}/health", popen, within=30), (
                f"the service did not become healthy:\n{running.output()}"
            )
            yield running
        finally:
            stop(popen)


def documented_operations(base_url: str) -> list[str]:
    with LOCAL_OPENER.open(f"{base_url}/openapi.json", timeout=10) as response:
        document: dict[str, Any] = json.load(response)
    methods = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}
    return [
        f"{method.upper()} {path}"
        for path, item in document["paths"].items()
        for method in item
        if method in methods
    ]


def schemathesis_env(tmp_path: Path) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(DROPPED_ENV_PREFIXES) and key.lower() not in PROXY_VARIABLES
    }
    env.update(
        NO_PROXY="127.0.0.1,localhost",
        no_proxy="127.0.0.1,localhost",
        NO_COLOR="1",
        HYPOTHESIS_STORAGE_DIRECTORY=str(tmp_path / "hypothesis"),
    )
    return env


def schemathesis_command(
    base_url: str, config_file: Path, report: Path, secret: str | None
) -> list[str]:
    checks = (*CHECKS, *AUTH_CHECKS) if secret else CHECKS
    credentials = ["--header", f"Authorization: Bearer {secret}"] if secret else []
    return [
        sys.executable,
        "-m",
        "schemathesis.cli",
        "--config-file",
        str(config_file),
        "--no-color",
        "run",
        f"{base_url}/openapi.json",
        *credentials,
        "--checks",
        ",".join(checks),
        "--phases",
        ",".join(PHASES),
        "--mode",
        "all",
        "--max-examples",
        str(MAX_EXAMPLES),
        "--seed",
        str(SEED),
        "--workers",
        "1",
        "--generation-database",
        "none",
        "--continue-on-failure",
        "--request-retries",
        "2",
        "--request-timeout",
        str(REQUEST_TIMEOUT),
        "--report",
        "json",
        "--report-json-path",
        str(report),
    ]


def summary_of(report: dict[str, Any]) -> str:
    """One line per kind of failure, naming the operations; then the errors."""
    lines = [
        f"{failure['code']} {failure['title']}: {', '.join(failure['operations'])}"
        for failure in report.get("failures", [])
    ]
    lines += [f"error: {json.dumps(error)}" for error in report.get("errors", [])]
    return "\n".join(lines)


def test_service_conforms_to_its_own_openapi_document(service: Service, tmp_path: Path) -> None:
    operations = documented_operations(service.base_url)
    config_file = tmp_path / "schemathesis.toml"
    config_file.write_text(SCHEMATHESIS_TOML)
    report_file = tmp_path / "schemathesis-report.json"
    command = schemathesis_command(service.base_url, config_file, report_file, service.secret)
    # schemathesis and Hypothesis write what they keep under the working directory.
    workdir = tmp_path / "schemathesis"
    workdir.mkdir()
    started = time.monotonic()
    try:
        result = subprocess.run(
            command,
            cwd=workdir,
            env=schemathesis_env(tmp_path),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            check=False,
            timeout=SCHEMATHESIS_TIMEOUT,
        )
        exit_code: int | str = result.returncode
        output = result.stdout
    except subprocess.TimeoutExpired as timeout:
        exit_code = f"killed after {SCHEMATHESIS_TIMEOUT} s"
        partial = timeout.stdout or ""
        output = partial if isinstance(partial, str) else partial.decode(errors="replace")
    elapsed = time.monotonic() - started
    report: dict[str, Any] = (
        json.loads(report_file.read_text()) if report_file.is_file() else {"failures": []}
    )
    tested = report.get("operations", {})

    def explanation() -> str:
        return (
            f"schemathesis exit code {exit_code} after {elapsed:.1f} s; "
            f"{len(operations)} operations documented, schemathesis counted {tested}\n"
            f"{summary_of(report)}\n\n"
            f"$ {shlex.join(command)}\n{output}\n"
            f"--- service log ({service.log}), service {service.status()} ---\n"
            f"{service.output()}"
        )

    assert operations, "the OpenAPI document has no operations"
    every_operation_tested = (
        tested.get("total") == tested.get("tested") == len(operations)
        and tested.get("skipped") == tested.get("errored") == 0
    )
    if exit_code != 0 or not every_operation_tested:
        # The report is the message; this function's source would only bury it.
        pytest.fail(explanation(), pytrace=False)
