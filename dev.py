#!/usr/bin/env python3
"""Day-to-day commands for working on the server-core template.

    python3 dev.py serve [key=value ...]   render the project into build/ and run it
    python3 dev.py test [pytest args ...]  run every template test
    python3 dev.py metrics-cost [key=value ...] [--rounds N]
                                           measure what use_metrics=yes costs a render

Both keep .venv at the repository root with requirements-dev.txt installed in it.
This file needs only the standard library and Python >= 3.11; the cookiecutter part
runs as `.venv/bin/python dev.py _render`, inside the virtualenv that has cookiecutter.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent
DEV_VENV = ROOT / ".venv"
REQUIREMENTS = ROOT / "requirements-dev.txt"
BUILD_DIR = ROOT / "build"
COOKIECUTTER_JSON = ROOT / "cookiecutter.json"
# Holds the hash of what was last installed into a virtualenv, to skip reinstalling.
INSTALL_STAMP = ".installed-sha256"
USAGE = (
    "usage: python3 dev.py serve [key=value ...] | test [pytest args ...]"
    " | metrics-cost [key=value ...] [--rounds N]"
)


class DevError(Exception):
    """A failure that deserves one line for the user, not a traceback."""


def venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def create_venv(venv: Path) -> None:
    print(f"Creating {venv}", flush=True)
    result = subprocess.run(
        [sys.executable, "-m", "venv", str(venv)],
        check=False,
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        # A half-made virtualenv without pip would make every later run fail.
        shutil.rmtree(venv, ignore_errors=True)
        output = (result.stderr + result.stdout).strip()
        reason = output.splitlines()[-1] if output else f"exit code {result.returncode}"
        # Debian and Ubuntu ship venv (or its ensurepip) as a separate package.
        missing_venv = "ensurepip" in output or "No module named venv" in output
        hint = " (Debian/Ubuntu: apt install python3-venv)" if missing_venv else ""
        raise DevError(f"{sys.executable} -m venv {venv} failed: {reason}{hint}")


def ensure_venv(venv: Path, pip_args: list[str], installed_from: Path) -> Path:
    """Create `venv` if missing; pip install into it unless `installed_from` is unchanged.

    Returns the virtualenv's python.
    """
    python = venv_python(venv)
    if not python.exists():
        create_venv(venv)
    stamp = venv / INSTALL_STAMP
    digest = hashlib.sha256(installed_from.read_bytes()).hexdigest()
    if stamp.exists() and stamp.read_text() == digest:
        return python
    print(f"Installing into {venv}: pip install {' '.join(pip_args)}", flush=True)
    quiet_pip_install = [str(python), "-m", "pip", "install", "--quiet"]
    result = subprocess.run(
        [*quiet_pip_install, "--disable-pip-version-check", *pip_args], check=False
    )
    if result.returncode != 0:
        raise DevError(f"pip install {' '.join(pip_args)} failed in {venv}")
    stamp.write_text(digest)
    return python


def ensure_dev_venv() -> Path:
    return ensure_venv(DEV_VENV, ["-r", str(REQUIREMENTS)], REQUIREMENTS)


def parse_answers(arguments: list[str]) -> dict[str, str]:
    """Turn `key=value` arguments into cookiecutter answers, refusing unknown keys."""
    known = json.loads(COOKIECUTTER_JSON.read_text())
    answers = {}
    for argument in arguments:
        key, separator, value = argument.partition("=")
        if not separator:
            raise DevError(f"serve takes key=value answers, got {argument!r}")
        if key not in known or key.startswith("_"):
            prompts = ", ".join(name for name in known if not name.startswith("_"))
            raise DevError(f"unknown answer {key!r}; the prompts are: {prompts}")
        answers[key] = value
    return answers


def serve(arguments: list[str]) -> None:
    """Render the project into build/, install it into its own .venv and run it."""
    answers = parse_answers(arguments)
    dev_python = ensure_dev_venv()
    rendering = subprocess.run(
        [str(dev_python), str(ROOT / "dev.py"), "_render", json.dumps(answers)],
        check=False,
        stdout=subprocess.PIPE,
        text=True,
    )
    if rendering.returncode != 0:
        # The hook or cookiecutter has already printed the reason.
        sys.exit(rendering.returncode)
    # The last line is ours; anything before it was printed by cookiecutter or a hook.
    rendered = json.loads(rendering.stdout.splitlines()[-1])
    project_dir = Path(rendered["project_dir"])
    package_name = rendered["package_name"]
    # The rendered README's own command: install into the project's .venv, then run.
    project_python = ensure_venv(
        project_dir / ".venv",
        ["-e", str(project_dir)],
        installed_from=project_dir / "pyproject.toml",
    )
    print(f"Running {package_name} from {project_dir}", flush=True)
    os.chdir(project_dir)
    os.execv(project_python, [str(project_python), "-m", package_name])


def render_in_dev_venv(arguments: list[str]) -> None:
    """Render with cookiecutter (runs inside .venv); print the project dir and package."""
    import logging

    from cookiecutter.exceptions import FailedHookException
    from cookiecutter.generate import generate_context
    from cookiecutter.main import cookiecutter
    from cookiecutter.prompt import prompt_for_config

    (answers_json,) = arguments
    answers = json.loads(answers_json)
    # The hook prints one clear line; keep cookiecutter from adding a traceback to it.
    logging.getLogger("cookiecutter").addHandler(logging.NullHandler())
    try:
        # Resolve the answers the way cookiecutter does, to learn the derived names.
        context = generate_context(str(COOKIECUTTER_JSON), extra_context=answers)
        resolved = prompt_for_config(context, no_input=True)
        project_dir = cookiecutter(
            str(ROOT),
            no_input=True,
            extra_context=answers,
            overwrite_if_exists=True,
            output_dir=str(BUILD_DIR),
            # Ignore ~/.cookiecutterrc so the render matches the resolved answers.
            default_config=True,
        )
    except ValueError as error:  # cookiecutter's way of refusing an unknown choice
        raise DevError(str(error)) from None
    except FailedHookException:
        sys.exit(1)
    package_name = resolved["package_name"]
    print(json.dumps({"project_dir": project_dir, "package_name": package_name}))


def apt_get(*arguments: str) -> bool:
    """Run apt-get without questions or progress output; True if it succeeded."""
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    command = ["apt-get", "-q", *arguments]
    return subprocess.run(command, env=env, stdout=subprocess.DEVNULL, check=False).returncode == 0


def ensure_debian_package(program: str, package: str, needed_by: str) -> None:
    """Install a Debian package a test needs, when its program is missing and that is possible.

    Where it cannot be installed, the test skips and says why (CI's REQUIRE_* fails it).
    """
    if shutil.which(program) or not shutil.which("apt-get") or os.geteuid() != 0:
        return
    print(f"Installing {package} (Debian package) for {needed_by}", flush=True)
    install = ("install", "-y", "--no-install-recommends", package)
    # A fresh machine may not have read the package lists yet.
    if not apt_get(*install) and not (apt_get("update") and apt_get(*install)):
        print(f"WARNING: could not install {package}; {needed_by} will skip", file=sys.stderr)


def test(pytest_args: list[str]) -> None:
    """Run the template tests with pytest; exit with pytest's exit code."""
    dev_python = ensure_dev_venv()
    ensure_debian_package("prometheus", "prometheus", "the Grafana dashboard test")
    ensure_debian_package("chromium", "chromium", "the browser test")
    # From the root, pytest.ini's testpaths makes a bare run mean `pytest tests`, while
    # explicit paths such as tests/test_hooks.py still narrow it.
    os.chdir(ROOT)
    os.execv(dev_python, [str(dev_python), "-m", "pytest", *pytest_args])


def metrics_cost(arguments: list[str]) -> None:
    """Run benchmarks/metrics_cost.py, which renders with and without metrics and compares."""
    dev_python = ensure_dev_venv()
    script = ROOT / "benchmarks" / "metrics_cost.py"
    os.execv(dev_python, [str(dev_python), str(script), *arguments])


COMMANDS: dict[str, Callable[[list[str]], None]] = {
    "serve": serve,
    "test": test,
    "metrics-cost": metrics_cost,
    "_render": render_in_dev_venv,
}


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in COMMANDS:
        print(USAGE, file=sys.stderr)
        return 2
    command, *arguments = argv
    try:
        COMMANDS[command](arguments)
    except DevError as error:
        print(f"ERROR: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
