"""Delete the files of what was not chosen: other job stores, and metrics, API keys or the
dashboard when they are off.

A rendered project never mentions a backend it does not have. Cookiecutter renders
this file with Jinja and runs it inside the new project; running it again is harmless.
"""

from __future__ import annotations

import shutil
from pathlib import Path

CHOSEN_JOB_STORE = "{{ cookiecutter.job_store }}"
USE_METRICS = "{{ cookiecutter.use_metrics }}" == "yes"
USE_AUTH = "{{ cookiecutter.use_auth }}" == "yes"
USE_DASHBOARD = "{{ cookiecutter.use_dashboard }}" == "yes"
PACKAGE_DIR = Path("src", "{{ cookiecutter.package_name }}")
STORE_DIR = PACKAGE_DIR / "jobs" / "store"

# The files and directories each store needs and at least one other store does not; a
# path may belong to several stores. A new store is one more entry.
STORE_FILES: dict[str, tuple[Path, ...]] = {
    "sqlite": (
        STORE_DIR / "sqlite.py",
        STORE_DIR / "sqlite_migrations",
        STORE_DIR / "group_commit.py",
        Path("tests", "test_sqlite_store.py"),
        Path("tests", "test_disk_full.py"),
    ),
    "memory": (STORE_DIR / "memory.py",),
    "postgres": (
        STORE_DIR / "postgres.py",
        STORE_DIR / "postgres_migrations",
        STORE_DIR / "group_commit.py",
        Path("tests", "test_scale_out.py"),
        Path("tests", "test_postgres_store.py"),
    ),
}

# Everything of the metrics feature that is a file of its own.
METRICS_FILES: tuple[Path, ...] = (
    PACKAGE_DIR / "metrics.py",
    Path("tests", "test_metrics.py"),
    Path("monitoring"),
)

# Everything of API-key authentication that is a file of its own.
AUTH_FILES: tuple[Path, ...] = (
    PACKAGE_DIR / "api_keys.py",
    PACKAGE_DIR / "api" / "auth.py",
    Path("tests", "test_auth.py"),
    # The dashboard's sign-in page: without keys there is nothing to sign in with.
    PACKAGE_DIR / "dashboard" / "templates" / "login.html",
)

# Everything of the dashboard.
DASHBOARD_FILES: tuple[Path, ...] = (
    PACKAGE_DIR / "dashboard",
    Path("tests", "test_dashboard.py"),
)


def remove_path(path: Path) -> None:
    """Delete a file or a directory tree; one that is already gone is fine."""
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def unused_store_files(store: str) -> set[Path]:
    """Every path some store lists and `store` does not."""
    listed = {path for paths in STORE_FILES.values() for path in paths}
    return listed - set(STORE_FILES[store])


def remove_unused_store_files() -> None:
    for path in sorted(unused_store_files(CHOSEN_JOB_STORE)):
        remove_path(path)


def remove_metrics_files() -> None:
    for path in METRICS_FILES:
        remove_path(path)


def remove_auth_files() -> None:
    for path in AUTH_FILES:
        remove_path(path)


def remove_dashboard_files() -> None:
    for path in DASHBOARD_FILES:
        remove_path(path)


def main() -> None:
    remove_unused_store_files()
    if not USE_METRICS:
        remove_metrics_files()
    if not USE_AUTH:
        remove_auth_files()
    if not USE_DASHBOARD:
        remove_dashboard_files()


if __name__ == "__main__":
    main()
