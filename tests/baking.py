"""Where the template is, what it asks, and how the tests render it."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cookiecutter.generate import generate_context
from cookiecutter.main import cookiecutter
from cookiecutter.prompt import prompt_for_config

TEMPLATE_DIR = Path(__file__).resolve().parent.parent
COOKIECUTTER_JSON = TEMPLATE_DIR / "cookiecutter.json"
PROMPTS: dict[str, Any] = json.loads(COOKIECUTTER_JSON.read_text())
# In cookiecutter.json order; the first one is the default.
JOB_STORES: list[str] = PROMPTS["job_store"]

# The `bake` fixture: `bake(**answers)` returns the rendered project directory.
Bake = Callable[..., Path]


def resolve_answers(answers: dict[str, str]) -> dict[str, Any]:
    """All answers cookiecutter uses with --no-input and `answers`, derived ones too."""
    context = generate_context(str(COOKIECUTTER_JSON), extra_context=answers)
    return dict(prompt_for_config(context, no_input=True))


def render(output_dir: Path, answers: dict[str, Any], config_file: Path) -> Path:
    """Render the template into `output_dir` without prompting; return the project."""
    project_dir = cookiecutter(
        str(TEMPLATE_DIR),
        no_input=True,
        extra_context=answers,
        output_dir=str(output_dir),
        config_file=str(config_file),
    )
    return Path(project_dir)
