"""Regenerating a render: replaying its recorded answers, and a real `cruft update`."""

from __future__ import annotations

import filecmp
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from cookiecutter.main import cookiecutter

from .baking import TEMPLATE_DIR, render
from .render_checks import project_paths

CRUFT = Path(sys.executable).parent / "cruft"
ANSWERS_FILE = ".cookiecutter-answers.json"
# What `cruft create` copies: the template, without its tests and tooling.
TEMPLATE_PARTS = ("cookiecutter.json", "hooks", "{{cookiecutter.project_slug}}")
COMMAND_TIMEOUT = 300
SUITE_TIMEOUT = 900

USER_README_LINE = "Owned by the reporting team; page #reports-oncall."
TEMPLATE_README_LINE = "Template news: this line arrived with a template update."
USER_TASK = '''

@registry.task("greet")
def greet(job: Job) -> dict[str, str]:
    """A task of the user's own, which an update must keep."""
    return {"greeting": f"hello {job.payload.get('name', 'world')}"}
'''
# The user's test of that task, with the render's own fixtures: the app, its store and engine.
USER_TEST = '''"""Our greet task, through the API."""

import httpx

from .conftest import wait_until


async def test_greet_greets_by_name(client: httpx.AsyncClient) -> None:
    submitted = await client.post("/jobs", json={"payload": {"task": "greet", "name": "Ada"}})
    job_url = f"/jobs/{submitted.json()['job_id']}"

    async def done() -> bool:
        return (await client.get(job_url)).json()["status"] == "done"

    await wait_until(done, message="the greet job to be done")
    assert (await client.get(job_url)).json()["result"] == {"greeting": "hello Ada"}
'''


def differences(left: Path, right: Path) -> list[str]:
    """Paths that exist in only one tree, or whose bytes differ."""
    left_paths, right_paths = set(project_paths(left)), set(project_paths(right))
    found = [f"only in one: {path}" for path in sorted(left_paths ^ right_paths)]
    for path in sorted(left_paths & right_paths):
        if (left / path).is_file() and not filecmp.cmp(left / path, right / path, shallow=False):
            found.append(f"differs: {path}")
    return found


def test_recorded_answers_replay_into_the_same_render(
    tmp_path: Path, cookiecutter_config: Path
) -> None:
    answers = {"project_name": "Acme Reports", "job_store": "memory", "port": "9001"}
    original = render(tmp_path / "original", answers, cookiecutter_config)

    replayed = cookiecutter(
        str(TEMPLATE_DIR),
        replay=str(original / ANSWERS_FILE),
        output_dir=str(tmp_path / "replayed"),
        config_file=str(cookiecutter_config),
    )

    assert differences(original, Path(replayed)) == []


def git_env(home: Path) -> dict[str, str]:
    """git and cruft with a throwaway identity and HOME, whatever this machine has set."""
    identity = {
        f"GIT_{role}_{field}": value
        for role in ("AUTHOR", "COMMITTER")
        for field, value in (("NAME", "Template Tests"), ("EMAIL", "tests@example.invalid"))
    }
    return {
        "PATH": os.environ["PATH"],
        "HOME": str(home),
        "GIT_CONFIG_NOSYSTEM": "1",
        "PYTHONDONTWRITEBYTECODE": "1",
        **identity,
    }


class Shell:
    """Runs commands in a fixed environment; a failing command fails the test, with output."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env

    def run(self, *command: str | Path, cwd: Path) -> str:
        result = subprocess.run(
            [str(part) for part in command],
            cwd=cwd,
            env=self.env,
            capture_output=True,
            text=True,
            check=False,
            timeout=COMMAND_TIMEOUT,
        )
        if result.returncode != 0:
            pytest.fail(
                f"{' '.join(map(str, command))} exited {result.returncode} in {cwd}\n"
                f"{result.stdout}\n{result.stderr}"
            )
        return result.stdout

    def commit_all(self, repo: Path, message: str) -> None:
        self.run("git", "add", "--all", cwd=repo)
        self.run("git", "commit", "--quiet", "-m", message, cwd=repo)


def insert_before(path: Path, marker: str, line: str) -> None:
    """Put `line` and a blank line before the first line that starts with `marker`."""
    text = path.read_text()
    assert f"\n{marker}" in text, f"{marker!r} not in {path}"
    path.write_text(text.replace(f"\n{marker}", f"\n{line}\n\n{marker}", 1))


def test_cruft_update_brings_template_changes_and_keeps_the_user_s_work(
    tmp_path: Path,
) -> None:
    shell = Shell(git_env(tmp_path / "home"))
    (tmp_path / "home").mkdir()
    template = tmp_path / "template"
    template.mkdir()
    for part in TEMPLATE_PARTS:
        source = TEMPLATE_DIR / part
        if source.is_dir():
            shutil.copytree(source, template / part, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, template / part)
    shell.run("git", "init", "--quiet", "--initial-branch=main", cwd=template)
    shell.commit_all(template, "The template as it is")

    shell.run(CRUFT, "create", "--no-input", "--output-dir", tmp_path, template, cwd=tmp_path)
    project = tmp_path / "job-service"
    shell.run("git", "init", "--quiet", "--initial-branch=main", cwd=project)
    shell.commit_all(project, "Rendered with cruft")
    # The user's own work: a line in a template-owned file, and a task.
    insert_before(project / "README.md", "## Two commands", USER_README_LINE)
    with (project / "src" / "job_service" / "jobs" / "tasks.py").open("a") as tasks:
        tasks.write(USER_TASK)
    (project / "tests" / "test_greet.py").write_text(USER_TEST)
    shell.commit_all(project, "Our own README line, task and test")
    # The template moves on: another place in the same file, and a new file.
    insert_before(
        template / "{{cookiecutter.project_slug}}" / "README.md", "## Layout", TEMPLATE_README_LINE
    )
    (template / "{{cookiecutter.project_slug}}" / "CHANGES.md").write_text(
        "# Changes to {{ cookiecutter.project_name }}\n"
    )
    shell.commit_all(template, "A README line and CHANGES.md")

    shell.run(CRUFT, "update", "--skip-apply-ask", cwd=project)

    readme = (project / "README.md").read_text()
    tasks_source = (project / "src" / "job_service" / "jobs" / "tasks.py").read_text()
    assert USER_README_LINE in readme
    assert TEMPLATE_README_LINE in readme
    assert USER_TASK in tasks_source
    assert (project / "tests" / "test_greet.py").read_text() == USER_TEST
    assert (project / "CHANGES.md").read_text() == "# Changes to Job Service\n"
    assert list(project.rglob("*.rej")) == []
    shell.run(CRUFT, "check", cwd=project)
    shell.run(sys.executable, "-m", "ruff", "check", "--no-cache", "src", "tests", cwd=project)
    # The render's whole suite runs in tests/test_bake.py; here, the updated project must run
    # the user's task, tested with the render's own fixtures.
    suite = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_greet.py"],
        cwd=project,
        env={**os.environ, "PYTHONPATH": "src", "PYTHONDONTWRITEBYTECODE": "1"},
        capture_output=True,
        text=True,
        check=False,
        timeout=SUITE_TIMEOUT,
    )
    assert suite.returncode == 0, f"{suite.stdout}\n{suite.stderr}"
