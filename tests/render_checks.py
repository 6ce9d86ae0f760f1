"""Checks that read a rendered project as text and list what is wrong with it."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

# Written by the tools the tests run inside a render, not by the template.
TOOL_DIRS = frozenset({".mypy_cache", ".pytest_cache", ".ruff_cache", ".venv", "__pycache__"})

# `{{task}}` is Grafana's legend syntax, not Jinja's; rendered Jinja never leaves it.
LEFTOVER_TEMPLATE_SYNTAX = re.compile(r"\{\{(?!\w+\}\})|\{%|\{#|cookiecutter\.")
# The dashboard's page templates are Jinja of their own, copied unrendered
# (`_copy_without_render`): only a `cookiecutter.` left in them is a leftover.
PAGE_TEMPLATES = re.compile(r"(^|/)dashboard/templates/[^/]+\.html$")
LEFTOVER_IN_PAGE_TEMPLATES = re.compile(r"cookiecutter\.")

# What a render with each job store must never mention: the other stores, by any of
# their names. Matched case-insensitively against every file name and text line.
FORBIDDEN_MENTIONS: dict[str, tuple[str, ...]] = {
    "sqlite": (
        r"MemoryJobStore",
        r"\bmemory[ _-]store",
        r"\bin-memory\b",
        r"postgres",
        r"asyncpg",
    ),
    "memory": (r"sqlite", r"\bDATABASE_URL\b", r"\bWAL\b", r"postgres", r"asyncpg"),
    "postgres": (
        r"sqlite",
        r"\bWAL\b",
        r"MemoryJobStore",
        r"\bmemory[ _-]store",
        r"\bin-memory\b",
    ),
}

# What a render with use_metrics=no must never mention.
METRICS_MENTIONS = (r"prometheus", r"grafana", r"/metrics\b")

# What a render with use_dashboard=no must never mention ("Grafana dashboard" is metrics').
DASHBOARD_MENTIONS = (r"/dashboard\b", r"\bdashboard/", r"jinja", r"csrf", r"itsdangerous")

# What a render with use_auth=no must never mention.
AUTH_MENTIONS = (r"api[_ -]?keys?\b", r"\bbearer\b", r"authenticat", r"www-authenticate")


def project_paths(root: Path) -> Iterator[Path]:
    """Every directory and file under `root`, relative to it, tool caches left out."""
    for directory, subdirectories, files in os.walk(root):
        subdirectories[:] = sorted(set(subdirectories) - TOOL_DIRS)
        here = Path(directory).relative_to(root)
        for name in [*subdirectories, *sorted(files)]:
            yield here / name


def text_lines(path: Path) -> list[str]:
    """The lines of a UTF-8 text file; none for a binary file."""
    data = path.read_bytes()
    if b"\0" in data:
        return []
    try:
        return data.decode("utf-8").splitlines()
    except UnicodeDecodeError:
        return []


def find_matches(root: Path, pattern: re.Pattern[str]) -> list[str]:
    """`path: match` for each file name, `path:line: match: text` for each text line."""
    found = []
    for relative in project_paths(root):
        if name_match := pattern.search(str(relative)):
            found.append(f"{relative}: {name_match.group()!r} in the name")
        if not (root / relative).is_file():
            continue
        for number, line in enumerate(text_lines(root / relative), start=1):
            if line_match := pattern.search(line):
                found.append(f"{relative}:{number}: {line_match.group()!r}: {line.strip()}")
    return found


def find_leftover_template_syntax(root: Path) -> list[str]:
    """Jinja or `cookiecutter.` that survived rendering, in names or contents."""
    return [
        found
        for found in find_matches(root, LEFTOVER_TEMPLATE_SYNTAX)
        if not PAGE_TEMPLATES.search(found.split(":")[0])
        or LEFTOVER_IN_PAGE_TEMPLATES.search(found)
    ]


def find_forbidden_mentions(root: Path, job_store: str) -> list[str]:
    """Mentions of job stores other than `job_store`, in names or contents."""
    either = "|".join(f"(?:{pattern})" for pattern in FORBIDDEN_MENTIONS[job_store])
    return find_matches(root, re.compile(either, re.IGNORECASE))


def find_metrics_mentions(root: Path) -> list[str]:
    """Mentions of the metrics feature, in names or contents."""
    either = "|".join(f"(?:{pattern})" for pattern in METRICS_MENTIONS)
    return find_matches(root, re.compile(either, re.IGNORECASE))


def find_auth_mentions(root: Path) -> list[str]:
    """Mentions of API-key authentication, in names or contents."""
    either = "|".join(f"(?:{pattern})" for pattern in AUTH_MENTIONS)
    return find_matches(root, re.compile(either, re.IGNORECASE))


def find_dashboard_mentions(root: Path) -> list[str]:
    """Mentions of the dashboard, in names or contents."""
    either = "|".join(f"(?:{pattern})" for pattern in DASHBOARD_MENTIONS)
    return find_matches(root, re.compile(either, re.IGNORECASE))
