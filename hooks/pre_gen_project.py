"""Reject answers that would render a broken project, before any file is written.

Cookiecutter renders this file with Jinja, runs it inside the still-empty project
directory and deletes that directory when the script exits non-zero.
"""

from __future__ import annotations

import json
import keyword
import re
import sys

# Cookiecutter pastes every answer here as JSON. JSON escapes quotes and backslashes, so
# inside a raw triple-quoted string any answer stays a string: a stray quote gets our
# message instead of a SyntaxError.
RENDERED_ANSWERS = r"""{{ cookiecutter | jsonify }}"""

JOB_STORES = ("sqlite", "memory", "postgres")
YES_NO = ("yes", "no")
WORKER_COUNT_RANGE = (1, 256)
PORT_RANGE = (1, 65535)

# Importing the project would import these instead of (or be shadowed by) the project.
DEPENDENCY_MODULES = frozenset(
    {
        "asyncpg",
        "fastapi",
        "httpx",
        "mypy",
        "orjson",
        "prometheus_client",
        "pydantic",
        "pydantic_settings",
        "pytest",
        "pytest_asyncio",
        "ruff",
        "sqlalchemy",
        "sqlmodel",
        "starlette",
        "uvicorn",
    }
)

SLUG_PATTERN = re.compile(r"[a-z][a-z0-9]*(?:[-_][a-z0-9]+)*")
PACKAGE_PATTERN = re.compile(r"[a-z][a-z0-9_]*")
# Integers are pasted into Python source as literals, where "08", "+8" or " 8" would not
# parse or would mean something else, so only plain decimal digits pass.
INTEGER_PATTERN = re.compile(r"[1-9][0-9]*")


class InvalidAnswer(Exception):
    """An answer the template cannot render; the message is shown to the user as is."""


def check_project_slug(slug: object) -> None:
    """Accept a distribution name: lowercase words joined by single '-' or '_'."""
    if not isinstance(slug, str) or not SLUG_PATTERN.fullmatch(slug):
        raise InvalidAnswer(
            "project_slug must start with a lowercase letter and contain only lowercase "
            f"letters and digits, with single '-' or '_' between them, got {slug!r}"
        )


def check_package_name(name: object) -> None:
    """Accept an import name that neither is a keyword nor hides another module."""
    if not isinstance(name, str) or not PACKAGE_PATTERN.fullmatch(name):
        raise InvalidAnswer(
            "package_name must be a lowercase Python identifier (letters, digits and '_', "
            f"starting with a letter), got {name!r}"
        )
    if keyword.iskeyword(name):
        raise InvalidAnswer(f"package_name {name!r} is a Python keyword")
    if name in sys.stdlib_module_names:
        raise InvalidAnswer(
            f"package_name {name!r} would shadow the standard-library module {name!r}"
        )
    if name in DEPENDENCY_MODULES:
        raise InvalidAnswer(f"package_name {name!r} would shadow the dependency {name!r}")


def check_job_store(store: object) -> None:
    """Accept only the stores this template can render."""
    if store not in JOB_STORES:
        raise InvalidAnswer(f"job_store must be one of {', '.join(JOB_STORES)}, got {store!r}")


def check_yes_no(name: str, value: object) -> None:
    if value not in YES_NO:
        raise InvalidAnswer(f"{name} must be yes or no, got {value!r}")


def check_integer(name: str, value: object, allowed: tuple[int, int]) -> None:
    """Accept an int, or a string of digits, within the inclusive range `allowed`."""
    low, high = allowed
    if isinstance(value, str) and INTEGER_PATTERN.fullmatch(value):
        number: int | None = int(value)
    elif isinstance(value, int) and not isinstance(value, bool):
        number = value
    else:
        number = None
    if number is None or not low <= number <= high:
        raise InvalidAnswer(f"{name} must be an integer from {low} to {high}, got {value!r}")


def check_answers(answers: dict[str, object]) -> None:
    """Raise InvalidAnswer for the first answer the template cannot render."""
    check_project_slug(answers["project_slug"])
    check_package_name(answers["package_name"])
    check_job_store(answers["job_store"])
    check_integer("worker_count", answers["worker_count"], WORKER_COUNT_RANGE)
    check_integer("port", answers["port"], PORT_RANGE)
    check_yes_no("use_metrics", answers["use_metrics"])
    check_yes_no("use_auth", answers["use_auth"])
    check_yes_no("use_dashboard", answers["use_dashboard"])


def main() -> int:
    try:
        check_answers(json.loads(RENDERED_ANSWERS))
    except InvalidAnswer as error:
        print(f"ERROR: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
