"""Fixtures that render the template; each set of answers renders once per session."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .baking import Bake, render


@pytest.fixture(scope="session")
def cookiecutter_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cookiecutter config that ignores ~/.cookiecutterrc and writes nothing to $HOME."""
    home = tmp_path_factory.mktemp("cookiecutter-home")
    config_file = home / "config.yaml"
    # JSON is valid YAML and quotes the paths for us.
    config_file.write_text(
        json.dumps(
            {
                "cookiecutters_dir": str(home / "templates"),
                "replay_dir": str(home / "replay"),
            }
        )
    )
    return config_file


@pytest.fixture(scope="session")
def bake(tmp_path_factory: pytest.TempPathFactory, cookiecutter_config: Path) -> Bake:
    """`bake(**answers)` renders once per session and returns the project directory.

    Renders are shared between tests: copy one before changing it.
    """
    projects: dict[tuple[tuple[str, str], ...], Path] = {}

    def bake_once(**answers: str) -> Path:
        key = tuple(sorted(answers.items()))
        if key not in projects:
            output_dir = tmp_path_factory.mktemp("bake")
            projects[key] = render(output_dir, answers, cookiecutter_config)
        return projects[key]

    return bake_once
