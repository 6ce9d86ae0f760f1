"""The render checks find what they look for, so a clean render means something."""

from __future__ import annotations

from pathlib import Path

import pytest

from .baking import JOB_STORES
from .render_checks import (
    FORBIDDEN_MENTIONS,
    find_auth_mentions,
    find_dashboard_mentions,
    find_forbidden_mentions,
    find_leftover_template_syntax,
    find_metrics_mentions,
)


def make_tree(root: Path, files: dict[str, str]) -> Path:
    for relative, content in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)
    return root


def test_every_job_store_has_forbidden_mentions() -> None:
    assert set(FORBIDDEN_MENTIONS) == set(JOB_STORES)


def test_clean_tree_has_no_findings(tmp_path: Path) -> None:
    root = make_tree(tmp_path, {"src/app/store.py": "class Store:\n    pass\n"})

    assert find_leftover_template_syntax(root) == []
    for job_store in FORBIDDEN_MENTIONS:
        assert find_forbidden_mentions(root, job_store) == []


@pytest.mark.parametrize(
    "line",
    [
        "port = {{ cookiecutter.port }}",
        "name = {{ project_name }}",
        "{{x}}{{ y }}",
        "{% if x %}",
        "{# why #}",
        "cookiecutter.x",
    ],
)
def test_leftover_template_syntax_in_a_file_is_found(tmp_path: Path, line: str) -> None:
    root = make_tree(tmp_path, {"docs/README.md": f"# Title\n{line}\n"})

    [finding] = find_leftover_template_syntax(root)
    assert finding.startswith("docs/README.md:2: ")


def test_grafana_legend_placeholders_are_not_leftover_syntax(tmp_path: Path) -> None:
    root = make_tree(tmp_path, {"dashboard.json": '{"legendFormat": "p95 {{task}} {{le}}"}\n'})

    assert find_leftover_template_syntax(root) == []


PAGE_TEMPLATE = "src/app/dashboard/templates/job.html"


def test_the_dashboard_s_own_jinja_is_not_leftover_syntax(tmp_path: Path) -> None:
    root = make_tree(
        tmp_path, {PAGE_TEMPLATE: "{% extends 'base.html' %}\n<h1>{{ job.id }}</h1>\n"}
    )

    assert find_leftover_template_syntax(root) == []


def test_cookiecutter_left_in_a_dashboard_template_is_found(tmp_path: Path) -> None:
    root = make_tree(
        tmp_path,
        {PAGE_TEMPLATE: "<h1>{{ job.id }}</h1>\n<title>{{ cookiecutter.project_name }}</title>\n"},
    )

    [finding] = find_leftover_template_syntax(root)
    assert finding.startswith(f"{PAGE_TEMPLATE}:2: ")


def test_jinja_in_a_template_outside_the_dashboard_is_found(tmp_path: Path) -> None:
    root = make_tree(tmp_path, {"src/app/templates/job.html": "<h1>{{ job.id }}</h1>\n"})

    [finding] = find_leftover_template_syntax(root)
    assert finding.startswith("src/app/templates/job.html:1: ")


@pytest.mark.parametrize(
    ("line", "found"),
    [
        ("Open http://localhost:8000/dashboard to see the jobs.", "'/dashboard'"),
        ("jinja2>=3.1", "'jinja'"),
        ("Every form carries a CSRF token.", "'CSRF'"),
        ("A Grafana dashboard shows the job metrics.", None),
        ("monitoring/grafana/dashboards/jobs.json", None),
    ],
)
def test_dashboard_mentions_are_found_but_not_grafana_s(
    tmp_path: Path, line: str, found: str | None
) -> None:
    root = make_tree(tmp_path, {"README.md": f"{line}\n"})

    findings = find_dashboard_mentions(root)

    assert findings == ([] if found is None else [f"README.md:1: {found}: {line}"])


@pytest.mark.parametrize(
    "line",
    ["API_KEYS=ops:secret", "Authorization: Bearer <secret>", "an API key", "authentication"],
)
def test_auth_mentions_are_found(tmp_path: Path, line: str) -> None:
    root = make_tree(tmp_path, {"README.md": f"{line}\n"})

    [finding] = find_auth_mentions(root)
    assert finding.startswith("README.md:1: ")


def test_metrics_mentions_are_found_in_names_and_lines(tmp_path: Path) -> None:
    root = make_tree(
        tmp_path,
        {"monitoring/grafana.yml": "", "README.md": "Scrape /metrics with Prometheus.\n"},
    )

    findings = find_metrics_mentions(root)

    assert any(finding.startswith("monitoring/grafana.yml: ") for finding in findings)
    assert any(finding.startswith("README.md:1: '/metrics'") for finding in findings)


def test_leftover_template_syntax_in_a_directory_name_is_found(tmp_path: Path) -> None:
    root = make_tree(tmp_path, {"src/{{cookiecutter.package_name}}/x.py": ""})

    findings = find_leftover_template_syntax(root)

    assert findings
    assert all("{{cookiecutter.package_name}}" in finding for finding in findings)


@pytest.mark.parametrize(
    ("job_store", "line"),
    [
        ("memory", "Jobs live in SQLite."),
        ("memory", "url = settings.database_url"),
        ("memory", "PRAGMA journal_mode=WAL"),
        ("memory", "Set up PostgreSQL first."),
        ("sqlite", "store = MemoryJobStore()"),
        ("sqlite", "The Memory store is fastest."),
        ("sqlite", "an in-memory queue"),
        ("memory", "import asyncpg"),
        ("sqlite", "postgres://localhost/jobs"),
        ("sqlite", "pool = await asyncpg.create_pool(url)"),
        ("postgres", "Jobs live in SQLite."),
        ("postgres", "url = 'sqlite:///./jobs.db'"),
        ("postgres", "PRAGMA journal_mode=WAL"),
        ("postgres", "store = MemoryJobStore()"),
        ("postgres", "The memory store is fastest."),
        ("postgres", "an in-memory queue"),
    ],
)
def test_mention_of_an_unchosen_store_is_found(tmp_path: Path, job_store: str, line: str) -> None:
    root = make_tree(tmp_path, {"src/app/notes.py": f"# {line}\n"})

    [finding] = find_forbidden_mentions(root, job_store)
    assert finding.startswith("src/app/notes.py:1: ")


@pytest.mark.parametrize(
    ("job_store", "line"),
    [
        ("sqlite", "PRAGMA journal_mode=WAL"),
        ("sqlite", "DATABASE_URL=sqlite:///./jobs.db"),
        ("memory", "store = MemoryJobStore()"),
        ("postgres", "DATABASE_URL=postgresql://postgres@127.0.0.1:5432/jobs"),
        ("postgres", "pool = await asyncpg.create_pool(url)"),
        ("postgres", "The PostgreSQL store shares jobs between instances."),
    ],
)
def test_mention_of_the_chosen_store_is_not_a_finding(
    tmp_path: Path, job_store: str, line: str
) -> None:
    root = make_tree(tmp_path, {"src/app/notes.py": f"# {line}\n"})

    assert find_forbidden_mentions(root, job_store) == []


@pytest.mark.parametrize(
    ("job_store", "path", "name"),
    [
        ("memory", "src/app/store/sqlite.py", "sqlite"),
        ("memory", "src/app/store/postgres.py", "postgres"),
        ("sqlite", "src/app/store/postgres.py", "postgres"),
        ("postgres", "src/app/store/sqlite.py", "sqlite"),
    ],
)
def test_unchosen_store_in_a_file_name_is_found(
    tmp_path: Path, job_store: str, path: str, name: str
) -> None:
    root = make_tree(tmp_path, {path: ""})

    assert find_forbidden_mentions(root, job_store) == [f"{path}: {name!r} in the name"]


def test_tool_caches_are_not_part_of_the_render(tmp_path: Path) -> None:
    root = make_tree(tmp_path, {".mypy_cache/3.11/sqlite3.json": "{{ sqlite }}"})

    assert find_leftover_template_syntax(root) == []
    assert find_forbidden_mentions(root, "memory") == []
