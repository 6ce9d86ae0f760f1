"""The pre-generation hook refuses bad answers cleanly; the post-generation one prunes."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from cookiecutter.environment import StrictEnvironment
from cookiecutter.exceptions import FailedHookException
from cookiecutter.main import cookiecutter

from .baking import JOB_STORES, PROMPTS, TEMPLATE_DIR, Bake, render, resolve_answers

HOOKS_DIR = TEMPLATE_DIR / "hooks"

BAD_ANSWERS: dict[str, list[str]] = {
    "project_slug": [
        "My-Project",
        "1service",
        "job--service",
        "job service",
        "job-",
        "_job",
        "jöb",
        "job.service",
        'job\'s-"service"\\',
    ],
    "package_name": [
        "JobService",
        "job-service",
        "2jobs",
        "_jobs",
        "class",
        "async",
        "json",
        "typing",
        "asyncio",
        "fastapi",
        "sqlalchemy",
        "asyncpg",
        "pydantic_settings",
        "pytest",
    ],
    "worker_count": [
        "abc",
        "4.0",
        " ",
        "",
        "-1",
        "true",
        "0",
        "257",
        "08",
        "1e2",
        " 4",
    ],
    "port": ["0", "65536", "-1", "http", "80.0", "", "0x50", "8000 "],
}
# A replay file is not checked against cookiecutter.json's choices, so the hook is the
# only guard there.
BAD_CHOICES: dict[str, list[str]] = {
    "job_store": ["mysql", "SQLite", "Postgres", ""],
    "use_metrics": ["y", "true", "Yes", ""],
    "use_auth": ["y", "true", "Yes", ""],
    "use_dashboard": ["y", "true", "Yes", ""],
}


def load_hook(name: str) -> ModuleType:
    """Import an unrendered hook; its Jinja sits in string constants only."""
    spec = importlib.util.spec_from_file_location(name, HOOKS_DIR / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def assert_one_error_line(stderr: str, name: str, value: str) -> None:
    assert len(stderr.splitlines()) == 1, stderr
    assert stderr.startswith(f"ERROR: {name} "), stderr
    assert repr(value) in stderr, stderr


@pytest.mark.parametrize(
    ("name", "value"),
    [(name, value) for name, values in BAD_ANSWERS.items() for value in values],
    ids=[f"{name}={value!r}" for name, values in BAD_ANSWERS.items() for value in values],
)
def test_bad_answer_is_refused_with_one_line_and_nothing_rendered(
    name: str,
    value: str,
    tmp_path: Path,
    cookiecutter_config: Path,
    capfd: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(FailedHookException):
        render(tmp_path, {name: value}, cookiecutter_config)

    assert list(tmp_path.iterdir()) == []
    assert_one_error_line(capfd.readouterr().err, name, value)


@pytest.mark.parametrize(
    ("name", "value"),
    [(name, value) for name, values in BAD_CHOICES.items() for value in values],
    ids=[f"{name}={value!r}" for name, values in BAD_CHOICES.items() for value in values],
)
def test_unknown_choice_in_a_replay_is_refused_and_nothing_rendered(
    name: str,
    value: str,
    tmp_path: Path,
    cookiecutter_config: Path,
    capfd: pytest.CaptureFixture[str],
) -> None:
    replay_file = tmp_path / "replay" / "server-core.json"
    replay_file.parent.mkdir()
    answers = resolve_answers({}) | {name: value}
    replay_file.write_text(json.dumps({"cookiecutter": answers}))
    output_dir = tmp_path / "output"
    output_dir.mkdir()

    with pytest.raises(FailedHookException):
        cookiecutter(
            str(TEMPLATE_DIR),
            replay=str(replay_file),
            output_dir=str(output_dir),
            config_file=str(cookiecutter_config),
        )

    assert list(output_dir.iterdir()) == []
    assert_one_error_line(capfd.readouterr().err, name, value)


def test_command_line_refusal_is_our_one_line_on_stderr(
    tmp_path: Path, cookiecutter_config: Path
) -> None:
    command = [sys.executable, "-m", "cookiecutter", "--no-input"]
    options = ["--config-file", str(cookiecutter_config), "-o", str(tmp_path)]
    result = subprocess.run(
        [*command, *options, str(TEMPLATE_DIR), "worker_count=0"],
        capture_output=True,
        text=True,
        check=False,
    )

    assert result.returncode != 0
    # Our hook owns stderr. (cookiecutter itself logs its FailedHookException, with a
    # traceback, to stdout; that is cookiecutter's output, not the hook's.)
    assert result.stderr == "ERROR: worker_count must be an integer from 1 to 256, got '0'\n"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "answers",
    [
        {"worker_count": "1", "port": "1"},
        {"job_store": "memory", "worker_count": "256", "port": "65535"},
    ],
    ids=["lowest-worker_count-and-port", "highest-worker_count-and-port"],
)
def test_boundary_answers_render(bake: Bake, answers: dict[str, str]) -> None:
    assert (bake(**answers) / "pyproject.toml").is_file()


def test_quotes_and_backslashes_in_answers_reach_the_hook_intact(
    tmp_path: Path, cookiecutter_config: Path
) -> None:
    # The hook embeds the answers in its own source; they must not break it.
    answers = {"author_name": "O'Brien \"OB\" \\ '''", "description": 'Say """hi"""'}

    project_dir = render(tmp_path, answers, cookiecutter_config)

    assert project_dir.is_dir()


@pytest.mark.parametrize(
    "name",
    ["a", "app", "jobs2", "my_jobs", "billing_service_v2"],
)
def test_package_name_check_accepts_plain_lowercase_identifiers(name: str) -> None:
    load_hook("pre_gen_project").check_package_name(name)


@pytest.mark.parametrize("slug", ["a", "jobs", "job-service", "job_service", "a1-b2_c3"])
def test_project_slug_check_accepts_distribution_names(slug: str) -> None:
    load_hook("pre_gen_project").check_project_slug(slug)


@pytest.mark.parametrize("value", [1, 256, "1", "256"], ids=repr)
def test_worker_count_check_accepts_ints_and_digit_strings(value: object) -> None:
    hook = load_hook("pre_gen_project")

    hook.check_integer("worker_count", value, hook.WORKER_COUNT_RANGE)


@pytest.mark.parametrize("value", [True, 0, 257, 4.0, None], ids=repr)
def test_worker_count_check_refuses_other_types_and_out_of_range_ints(
    value: object,
) -> None:
    hook = load_hook("pre_gen_project")

    with pytest.raises(hook.InvalidAnswer, match="worker_count must be an integer"):
        hook.check_integer("worker_count", value, hook.WORKER_COUNT_RANGE)


def test_hooks_and_cookiecutter_json_agree_on_the_choices() -> None:
    pre_gen, post_gen = load_hook("pre_gen_project"), load_hook("post_gen_project")

    assert set(pre_gen.JOB_STORES) == set(JOB_STORES)
    assert set(post_gen.STORE_FILES) == set(JOB_STORES)
    assert set(pre_gen.YES_NO) == set(PROMPTS["use_metrics"])
    assert set(pre_gen.YES_NO) == set(PROMPTS["use_auth"])
    assert set(pre_gen.YES_NO) == set(PROMPTS["use_dashboard"])


def rendered_hook(name: str, answers: dict[str, Any], destination: Path) -> Path:
    """Render a hook with Jinja the way cookiecutter does before running it."""
    context = {"cookiecutter": answers}
    source = (HOOKS_DIR / f"{name}.py").read_text()
    rendered = StrictEnvironment(context=context).from_string(source).render(**context)
    destination.write_text(rendered)
    return destination


# What the hook keeps besides the files every render has, relative to the package's
# jobs/store/ directory ("store/") or to the project root; written out here rather than
# derived from the hook's STORE_FILES, so a wrong entry there fails. (A store missing
# here is still checked by tests/test_bake.py, which bakes every store.)
KEPT_STORE_FILES: dict[str, set[str]] = {
    "sqlite": {
        "store/sqlite.py",
        "store/group_commit.py",
        "tests/test_sqlite_store.py",
        "tests/test_disk_full.py",
    },
    "memory": {"store/memory.py"},
    "postgres": {"store/postgres.py", "store/group_commit.py", "tests/test_scale_out.py"},
}
SHARED_FILES = {"store/__init__.py", "store/base.py", "tests/test_api.py"}
ALL_STORE_FILES = set().union(*KEPT_STORE_FILES.values())


@pytest.mark.parametrize("job_store", KEPT_STORE_FILES)
def test_post_gen_hook_keeps_exactly_the_chosen_store_files_and_can_run_twice(
    job_store: str, tmp_path: Path
) -> None:
    answers = resolve_answers({"job_store": job_store})
    project_dir = tmp_path / "project"
    store_dir = project_dir / "src" / answers["package_name"] / "jobs" / "store"
    places = {"store": store_dir, "tests": project_dir / "tests"}
    for relative in SHARED_FILES | ALL_STORE_FILES:
        place, name = relative.split("/")
        places[place].mkdir(parents=True, exist_ok=True)
        (places[place] / name).write_text("")
    hook = rendered_hook("post_gen_project", answers, tmp_path / "post_gen_project.py")

    for _ in range(2):
        subprocess.run([sys.executable, str(hook)], cwd=project_dir, check=True)

    left = {
        f"{place}/{path.name}"
        for place, directory in places.items()
        for path in directory.iterdir()
    }
    assert left == SHARED_FILES | KEPT_STORE_FILES[job_store]


# Everything of the metrics feature, relative to the project root; "<package>" is replaced.
METRICS_FILES = {
    "src/<package>/metrics.py",
    "tests/test_metrics.py",
    "monitoring/prometheus.yml",
    "monitoring/grafana/dashboards/jobs.json",
}
# Everything of API-key authentication, relative to the project root.
AUTH_FILES = {
    "src/<package>/api_keys.py",
    "src/<package>/api/auth.py",
    "tests/test_auth.py",
    "src/<package>/dashboard/templates/login.html",
}
# Everything of the dashboard, relative to the project root.
DASHBOARD_FILES = {
    "src/<package>/dashboard/__init__.py",
    "src/<package>/dashboard/pages.py",
    "src/<package>/dashboard/templates/base.html",
    "src/<package>/dashboard/static/dashboard.css",
    "tests/test_dashboard.py",
}


def run_post_gen_hook_over(
    answer: str, value: str, feature_files: set[str], tmp_path: Path
) -> tuple[Path, list[Path], Path]:
    """Make a project holding a feature's files and one file every render keeps, run the
    post-generation hook twice with `answer=value`; the project, those files, the kept one."""
    answers = resolve_answers({answer: value})
    project_dir = tmp_path / "project"
    files = [
        project_dir / relative.replace("<package>", answers["package_name"])
        for relative in feature_files
    ]
    kept = project_dir / "src" / answers["package_name"] / "api" / "jobs.py"
    for path in [*files, kept]:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("")
    hook = rendered_hook("post_gen_project", answers, tmp_path / "post_gen_project.py")

    for _ in range(2):
        subprocess.run([sys.executable, str(hook)], cwd=project_dir, check=True)
    return project_dir, files, kept


@pytest.mark.parametrize("use_metrics", ["yes", "no"])
def test_post_gen_hook_removes_every_metrics_file_when_metrics_are_off(
    use_metrics: str, tmp_path: Path
) -> None:
    project_dir, files, kept = run_post_gen_hook_over(
        "use_metrics", use_metrics, METRICS_FILES, tmp_path
    )

    assert [path.exists() for path in files] == [use_metrics == "yes"] * len(files)
    assert (project_dir / "monitoring").exists() == (use_metrics == "yes")
    assert kept.exists()


@pytest.mark.parametrize("use_auth", ["yes", "no"])
def test_post_gen_hook_removes_every_auth_file_when_auth_is_off(
    use_auth: str, tmp_path: Path
) -> None:
    _, files, kept = run_post_gen_hook_over("use_auth", use_auth, AUTH_FILES, tmp_path)

    assert [path.exists() for path in files] == [use_auth == "yes"] * len(files)
    assert kept.exists()


@pytest.mark.parametrize("use_dashboard", ["yes", "no"])
def test_post_gen_hook_removes_the_whole_dashboard_when_it_is_off(
    use_dashboard: str, tmp_path: Path
) -> None:
    _, files, kept = run_post_gen_hook_over(
        "use_dashboard", use_dashboard, DASHBOARD_FILES, tmp_path
    )

    assert [path.exists() for path in files] == [use_dashboard == "yes"] * len(files)
    # kept is <package>/api/jobs.py
    assert (kept.parents[1] / "dashboard").exists() == (use_dashboard == "yes")
    assert kept.exists()
