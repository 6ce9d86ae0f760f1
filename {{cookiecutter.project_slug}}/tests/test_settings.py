"""Settings come from the environment; a bad one stops start-up with one line naming it."""

import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest

from {{ cookiecutter.package_name }}.jobs.model import JobStatus
from {{ cookiecutter.package_name }}.settings import Settings, SettingsError, load_settings


@pytest.fixture(autouse=True)
def empty_working_directory(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No `.env` file but the one a test writes; the environment is cleaned by conftest."""
    monkeypatch.chdir(tmp_path)
{%- if cookiecutter.job_store == "postgres" %}
    # The one setting without a default; only its form is checked here, nothing connects.
    monkeypatch.setenv("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/jobs")
{%- endif %}


def test_defaults_are_the_documented_ones_and_the_template_answers() -> None:
    settings = load_settings()

    assert settings.host == "0.0.0.0"
    assert settings.port == {{ cookiecutter.port }}
    assert settings.worker_pool_size == {{ cookiecutter.worker_count }}
{%- if cookiecutter.job_store == "sqlite" %}
    assert settings.database_url == "sqlite:///./jobs.db"
{%- elif cookiecutter.job_store == "postgres" %}
    assert settings.database_connect_timeout == 30.0
    assert settings.database_notify is True
    assert settings.job_lease_seconds == 30.0
    assert settings.job_lost_limit == 3
{%- endif %}
    assert settings.poll_interval == 1.0
    assert (settings.start_http, settings.start_workers) == (True, True)
    assert settings.log_level == "info"
    assert (settings.retry_backoff_base, settings.retry_backoff_max) == (1.0, 300.0)
    assert settings.shutdown_grace == 25.0
    assert settings.max_body_bytes == 1_048_576
    day = 24 * 60 * 60
    assert settings.retention == {
        JobStatus.DONE: timedelta(seconds=7 * day),
        JobStatus.FAILED: timedelta(seconds=30 * day),
        JobStatus.CANCELLED: timedelta(seconds=7 * day),
    }
    assert settings.retention_interval == 60.0
    assert settings.cron_catch_up_seconds == 0.0


def test_a_retention_of_zero_keeps_that_status_for_good(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RETAIN_DONE_SECONDS", "0")
    monkeypatch.setenv("RETAIN_FAILED_SECONDS", "3600")

    assert load_settings().retention == {
        JobStatus.FAILED: timedelta(hours=1),
        JobStatus.CANCELLED: timedelta(days=7),
    }


def test_environment_variables_are_read(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PORT", "9123")
    monkeypatch.setenv("WORKER_POOL_SIZE", "7")
    monkeypatch.setenv("LOG_LEVEL", "debug")
    monkeypatch.setenv("RETRY_BACKOFF_BASE", "0.5")
    monkeypatch.setenv("SHUTDOWN_GRACE", "0")
    monkeypatch.setenv("MAX_BODY_BYTES", "1024")
{%- if cookiecutter.job_store == "sqlite" %}
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path}/jobs.db")
{%- endif %}

    settings = load_settings()

    assert (settings.port, settings.worker_pool_size) == (9123, 7)
    assert settings.log_level == "debug"
    assert settings.retry_backoff_base == 0.5
    assert settings.shutdown_grace == 0.0
    assert settings.max_body_bytes == 1024
{%- if cookiecutter.job_store == "sqlite" %}
    assert settings.database_url == f"sqlite:///{tmp_path}/jobs.db"
{%- endif %}


def test_a_dotenv_file_is_read_and_the_environment_wins_over_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / ".env").write_text("WORKER_POOL_SIZE=9\nPORT=9001\n")
    monkeypatch.setenv("PORT", "9002")

    settings = load_settings()

    assert (settings.worker_pool_size, settings.port) == (9, 9002)


{%- if cookiecutter.job_store == "postgres" %}


def test_database_url_is_required(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DATABASE_URL")

    with pytest.raises(SettingsError, match=r"^DATABASE_URL is required$"):
        load_settings()
{%- endif %}


def test_log_level_is_read_in_any_case(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOG_LEVEL", "WARNING")

    assert load_settings().log_level == "warning"


def test_keyword_overrides_win_over_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORKER_POOL_SIZE", "7")

    assert Settings(worker_pool_size=2).worker_pool_size == 2


def test_queues_name_each_served_queue_and_its_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QUEUES", " default=4, emails=2 ,reports=1")

    settings = load_settings()

    assert settings.queue_limits == {"default": 4, "emails": 2, "reports": 1}
    monkeypatch.delenv("QUEUES")
    assert Settings(worker_pool_size=7).queue_limits == {"default": 7}


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("PORT", "abc"),
        ("PORT", "70000"),
        ("PORT", "0"),
        ("WORKER_POOL_SIZE", "0"),
        ("WORKER_POOL_SIZE", "many"),
        ("RETRY_BACKOFF_BASE", "-1"),
        ("RETRY_BACKOFF_BASE", "0"),
        ("RETRY_BACKOFF_MAX", "0.5"),
        ("SHUTDOWN_GRACE", "-1"),
        ("MAX_BODY_BYTES", "0"),
        ("START_HTTP", "maybe"),
        ("START_WORKERS", "2"),
        ("LOG_LEVEL", "loud"),
        ("POLL_INTERVAL", "0"),
        ("QUEUES", "default"),
        ("QUEUES", "default=two"),
        ("QUEUES", "default=0"),
        ("QUEUES", "Emails=2"),
        ("QUEUES", ","),
        ("QUEUES", "default=2,emails=2000"),
        ("PRIORITY_AGING_SECONDS", "-1"),
        ("RETAIN_DONE_SECONDS", "-1"),
        ("RETAIN_FAILED_SECONDS", "a week"),
        ("RETAIN_CANCELLED_SECONDS", "1e12"),
        ("RETENTION_INTERVAL", "0"),
        ("CRON_CATCH_UP_SECONDS", "-5"),
{%- if cookiecutter.job_store == "postgres" %}
        ("DATABASE_URL", "mysql://localhost/jobs"),
        ("DATABASE_NOTIFY", "sometimes"),
        ("JOB_LEASE_SECONDS", "0.5"),
        ("JOB_LOST_LIMIT", "0"),
        ("DATABASE_CONNECT_TIMEOUT", "-1"),
{%- endif %}
{%- if cookiecutter.job_store == "sqlite" %}
        ("DATABASE_URL", "mysql://localhost/jobs"),
        ("DATABASE_URL", "sqlite:////no/such/directory/jobs.db"),
        ("DATABASE_URL", "sqlite:///:memory:"),
{%- endif %}
    ],
)
def test_a_bad_value_raises_settings_error_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)

    with pytest.raises(SettingsError) as raised:
        load_settings()

    message = str(raised.value)
    assert variable in message
    assert "\n" not in message


{%- if cookiecutter.job_store == "memory" %}


@pytest.mark.parametrize("variable", ["START_HTTP", "START_WORKERS"])
def test_http_and_workers_cannot_run_in_separate_processes_sharing_no_jobs(
    monkeypatch: pytest.MonkeyPatch, variable: str
) -> None:
    monkeypatch.setenv(variable, "false")

    with pytest.raises(SettingsError, match="START_HTTP and START_WORKERS"):
        load_settings()
{%- else %}


@pytest.mark.parametrize(
    ("variable", "http", "workers"),
    [("START_HTTP", False, True), ("START_WORKERS", True, False)],
)
def test_http_and_workers_can_run_in_separate_processes(
    monkeypatch: pytest.MonkeyPatch, variable: str, http: bool, workers: bool
) -> None:
    monkeypatch.setenv(variable, "false")

    settings = load_settings()

    assert (settings.start_http, settings.start_workers) == (http, workers)
{%- endif %}


def test_turning_off_both_http_and_workers_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("START_HTTP", "false")
    monkeypatch.setenv("START_WORKERS", "false")

    with pytest.raises(SettingsError, match="START_HTTP and START_WORKERS"):
        load_settings()


def run_service(env: dict[str, str], cwd: Path) -> "subprocess.CompletedProcess[str]":
    """Run `python -m` the way a user would, until it exits."""
    return subprocess.run(
        [sys.executable, "-m", "{{ cookiecutter.package_name }}"],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_a_bad_setting_stops_start_up_with_one_line_and_no_traceback(
    service_env: dict[str, str], tmp_path: Path
) -> None:
    finished = run_service({**service_env, "PORT": "abc"}, tmp_path)

    assert finished.returncode != 0
    lines = finished.stderr.splitlines()
    assert len(lines) == 1, finished.stderr
    assert "PORT" in lines[0]
    assert "Traceback" not in finished.stderr
{%- if cookiecutter.job_store == "postgres" %}


def test_an_unreachable_database_stops_start_up_with_a_clear_line(
    service_env: dict[str, str], tmp_path: Path
) -> None:
    unreachable = {"DATABASE_URL": "postgresql://postgres@127.0.0.1:1/jobs"}
    env = {**service_env, **unreachable, "DATABASE_CONNECT_TIMEOUT": "1"}

    finished = run_service(env, tmp_path)

    assert finished.returncode != 0
    last_line = finished.stderr.splitlines()[-1]
    assert last_line.startswith("error: job store unavailable: cannot reach the database")
    assert "Traceback" not in finished.stderr
{%- endif %}
