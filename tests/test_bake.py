"""Bake the template with many answers and check each render, inside and out."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from .baking import JOB_STORES, PROMPTS, Bake, resolve_answers
from .databases import suite_environment
from .processes import LOCAL_OPENER, became_healthy, free_port
from .render_checks import (
    find_auth_mentions,
    find_dashboard_mentions,
    find_forbidden_mentions,
    find_leftover_template_syntax,
    find_matches,
    find_metrics_mentions,
)

# A project name of its own, with API keys but neither metrics nor the dashboard.
ACME_REPORTS = {
    "project_name": "Acme Reports",
    "job_store": "sqlite",
    "worker_count": "1",
    "port": "9001",
    "use_metrics": "no",
    "use_dashboard": "no",
}
# Together the renders take every choice of every prompt (a test checks that they do) and the
# answers at their limits. Each render runs its own suite, the slowest part of these tests,
# so a render covers several answers rather than one each.
RENDERS: dict[str, dict[str, str]] = {
    "default": {},
    **{f"job_store={store}": {"job_store": store} for store in JOB_STORES[1:]},
    "acme-reports-sqlite-1-worker-port-9001-no-metrics-no-dashboard": ACME_REPORTS,
    "memory-256-workers-port-65535-no-metrics-no-auth-no-dashboard": {
        "job_store": "memory",
        "worker_count": "256",
        "port": "65535",
        "use_metrics": "no",
        "use_auth": "no",
        "use_dashboard": "no",
    },
    # The dashboard without API keys: open, like the API.
    "postgres-2-workers-port-8123-no-metrics-no-auth": {
        "job_store": "postgres",
        "worker_count": "2",
        "port": "8123",
        "use_metrics": "no",
        "use_auth": "no",
    },
}

# Files beyond the store modules that only some stores keep, with the stores keeping them.
STORE_FILE_OWNERS: dict[str, set[str]] = {
    "src/<package>/jobs/store/group_commit.py": {"sqlite", "postgres"},
    "tests/test_scale_out.py": {"postgres"},
    "tests/test_postgres_store.py": {"postgres"},
    "tests/test_sqlite_store.py": {"sqlite"},
    "tests/test_disk_full.py": {"sqlite"},
}
# A PostgreSQL render's settings need a DATABASE_URL; only its format is checked, so
# nothing has to listen there.
SETTINGS_ENV: dict[str, dict[str, str]] = {
    "postgres": {"DATABASE_URL": "postgresql://postgres@127.0.0.1:5432/test"},
}

QUALITY_GATES: dict[str, list[str]] = {
    "ruff-check": ["ruff", "check", "."],
    "ruff-format": ["ruff", "format", "--check", "."],
    "mypy": ["mypy", "src", "tests"],
}

TOOL_TIMEOUT = 300
SUITE_TIMEOUT = 900


@dataclass(frozen=True)
class Render:
    answers: dict[str, Any]
    project_dir: Path

    @property
    def package_dir(self) -> Path:
        package_name: str = self.answers["package_name"]
        return self.project_dir / "src" / package_name


@pytest.fixture(params=list(RENDERS.values()), ids=list(RENDERS))
def rendered(request: pytest.FixtureRequest, bake: Bake) -> Render:
    answers: dict[str, str] = request.param
    return Render(resolve_answers(answers), bake(**answers))


def test_renders_cover_every_choice_of_every_prompt() -> None:
    rendered_answers = [resolve_answers(answers) for answers in RENDERS.values()]
    choice_prompts = {
        prompt: choices
        for prompt, choices in PROMPTS.items()
        if not prompt.startswith("_") and isinstance(choices, list)
    }

    for prompt, choices in choice_prompts.items():
        assert {answers[prompt] for answers in rendered_answers} == set(choices), prompt
    # The dashboard signs users in only with API keys: all four ways the two combine.
    auth_and_dashboard = {
        (answers["use_auth"], answers["use_dashboard"]) for answers in rendered_answers
    }
    assert auth_and_dashboard == {("yes", "yes"), ("yes", "no"), ("no", "yes"), ("no", "no")}


def clean_env(**variables: str) -> dict[str, str]:
    """An environment with no settings in it, so the render's defaults show."""
    return {"PATH": os.environ["PATH"], "PYTHONDONTWRITEBYTECODE": "1", **variables}


def output_of(result: subprocess.CompletedProcess[str]) -> str:
    return f"exit code {result.returncode}\n{result.stdout}\n{result.stderr}"


def test_render_has_no_leftover_template_syntax(rendered: Render) -> None:
    assert find_leftover_template_syntax(rendered.project_dir) == []


def test_render_never_mentions_a_job_store_it_does_not_have(rendered: Render) -> None:
    job_store = rendered.answers["job_store"]

    assert find_forbidden_mentions(rendered.project_dir, job_store) == []


def test_render_keeps_only_the_chosen_store_module(rendered: Render) -> None:
    store_dir = rendered.package_dir / "jobs" / "store"

    store_modules = {path.stem for path in store_dir.glob("*.py")} & set(JOB_STORES)

    assert store_modules == {rendered.answers["job_store"]}


@pytest.mark.parametrize("path", STORE_FILE_OWNERS, ids=lambda path: Path(path).name)
def test_render_keeps_a_store_file_only_for_the_stores_that_use_it(
    rendered: Render, path: str
) -> None:
    package_path = path.replace("<package>", rendered.answers["package_name"])

    exists = (rendered.project_dir / package_path).is_file()

    assert exists == (rendered.answers["job_store"] in STORE_FILE_OWNERS[path])


def test_render_has_metrics_files_and_dependencies_only_when_chosen(rendered: Render) -> None:
    chosen = rendered.answers["use_metrics"] == "yes"
    pyproject = (rendered.project_dir / "pyproject.toml").read_text()

    assert (rendered.package_dir / "metrics.py").is_file() == chosen
    assert (rendered.project_dir / "monitoring").is_dir() == chosen
    assert ("prometheus-client" in pyproject) == chosen
    if not chosen:
        assert find_metrics_mentions(rendered.project_dir) == []


def test_render_has_auth_files_only_when_chosen(rendered: Render) -> None:
    chosen = rendered.answers["use_auth"] == "yes"

    assert (rendered.package_dir / "api_keys.py").is_file() == chosen
    assert (rendered.package_dir / "api" / "auth.py").is_file() == chosen
    assert (rendered.project_dir / "tests" / "test_auth.py").is_file() == chosen
    if not chosen:
        assert find_auth_mentions(rendered.project_dir) == []


def test_render_has_the_dashboard_and_its_dependencies_only_when_chosen(rendered: Render) -> None:
    chosen = rendered.answers["use_dashboard"] == "yes"
    pyproject = (rendered.project_dir / "pyproject.toml").read_text()
    login_page = rendered.package_dir / "dashboard" / "templates" / "login.html"

    assert (rendered.package_dir / "dashboard").is_dir() == chosen
    assert (rendered.project_dir / "tests" / "test_dashboard.py").is_file() == chosen
    assert login_page.is_file() == (chosen and rendered.answers["use_auth"] == "yes")
    assert ("jinja2" in pyproject) == ("python-multipart" in pyproject) == chosen
    if not chosen:
        assert find_dashboard_mentions(rendered.project_dir) == []


def test_settings_default_to_the_answered_worker_count_and_port(
    rendered: Render, tmp_path: Path
) -> None:
    package = rendered.answers["package_name"]
    program = (
        f"from {package}.settings import Settings\n"
        "settings = Settings()\n"
        "print(settings.worker_pool_size, settings.port)\n"
    )
    # An empty working directory: no .env file can change the defaults.
    result = subprocess.run(
        [sys.executable, "-c", program],
        cwd=tmp_path,
        env=clean_env(
            PYTHONPATH=str(rendered.project_dir / "src"),
            **SETTINGS_ENV.get(rendered.answers["job_store"], {}),
        ),
        capture_output=True,
        text=True,
        check=False,
    )

    assert result.returncode == 0, output_of(result)
    assert result.stdout.split() == [
        rendered.answers["worker_count"],
        rendered.answers["port"],
    ]


@pytest.fixture(scope="session")
def mypy_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One mypy cache for every render this test process checks.

    The third-party packages then get analysed once, not once per render. The cache is
    keyed by module and checked against each source file's hash, so a render's own
    modules, which share their names with other renders', are checked again wherever
    they or what they import differ. A cache per process: two mypy runs never write one.
    """
    return tmp_path_factory.mktemp("mypy-cache")


@pytest.mark.parametrize("gate", QUALITY_GATES.values(), ids=QUALITY_GATES.keys())
def test_render_passes_ruff_and_mypy(
    rendered: Render, gate: list[str], mypy_cache_dir: Path
) -> None:
    result = subprocess.run(
        [sys.executable, "-m", *gate],
        cwd=rendered.project_dir,
        env={**os.environ, "MYPY_CACHE_DIR": str(mypy_cache_dir)},
        capture_output=True,
        text=True,
        check=False,
        timeout=TOOL_TIMEOUT,
    )

    assert result.returncode == 0, output_of(result)


def test_render_own_test_suite_passes(rendered: Render) -> None:
    env = {**os.environ, "PYTHONPATH": "src", "PYTHONDONTWRITEBYTECODE": "1"}
    with suite_environment(rendered.answers["job_store"]) as suite_env:
        result = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
            cwd=rendered.project_dir,
            env={**env, **suite_env},
            capture_output=True,
            text=True,
            check=False,
            timeout=SUITE_TIMEOUT,
        )

    assert result.returncode == 0, output_of(result)


def test_project_name_sets_slug_and_package_name(bake: Bake) -> None:
    project_dir = bake(**ACME_REPORTS)

    assert project_dir.name == "acme-reports"
    packages = [path.name for path in (project_dir / "src").iterdir() if path.is_dir()]
    assert packages == ["acme_reports"]


def test_project_name_leaves_no_trace_of_the_default_names(bake: Bake) -> None:
    project_dir = bake(**ACME_REPORTS)

    default_names = re.compile(r"job[_-]service", re.IGNORECASE)

    assert find_matches(project_dir, default_names) == []


def fetch_status(url: str) -> int:
    with LOCAL_OPENER.open(url, timeout=10) as response:
        status: int = response.status
        return status


@pytest.mark.slow
def test_default_render_installs_runs_and_benchmarks_in_a_fresh_venv(
    bake: Bake, tmp_path: Path
) -> None:
    package = resolve_answers({})["package_name"]
    # pip builds a local project in place; a copy keeps build output out of the render.
    source = shutil.copytree(bake(), tmp_path / "source")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    pip_install = [str(python), "-m", "pip", "install", "--quiet", str(source)]
    subprocess.run(pip_install, check=True, timeout=SUITE_TIMEOUT)
    port = free_port()
    env = clean_env(
        HOST="127.0.0.1",
        PORT=str(port),
        DATABASE_URL=f"sqlite:///{tmp_path / 'jobs.db'}",
    )
    log_file = tmp_path / "service.log"

    with log_file.open("wb") as log:
        service = subprocess.Popen(
            [str(python), "-m", package],
            cwd=tmp_path,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            healthy = became_healthy(f"http://127.0.0.1:{port}/health", service, within=60)
            # Served from the installed package: its templates and stylesheet were packaged.
            dashboard = [
                fetch_status(f"http://127.0.0.1:{port}/dashboard/{path}")
                for path in ("", "static/dashboard.css")
            ]
            service.send_signal(signal.SIGTERM)
            exit_code = service.wait(timeout=60)
        finally:
            if service.poll() is None:
                service.kill()
                service.wait()

    assert healthy, log_file.read_text()
    assert dashboard == [200, 200], log_file.read_text()
    assert exit_code == 0, log_file.read_text()
    # The benchmark needs nothing a plain install lacks (no test dependency).
    sizes = ["--requests", "100", "--connections", "2", "--jobs", "100", "--wakeups", "3"]
    # Each store-filling measure too: by default they fill a million jobs.
    sizes += ["--large-store", "100", "--prune", "100"]
    bench = subprocess.run(
        [str(python), "-m", f"{package}.bench", *sizes],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=SUITE_TIMEOUT,
    )
    assert bench.returncode == 0, output_of(bench)
