"""Fixtures that render the template; each set of answers renders once per session.

And the order the tests run in under pytest-xdist: the slowest first.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .baking import JOB_STORES, Bake, render

# Roughly how many seconds the slowest tests take on a 2-CPU machine. Only their order
# matters; a test not named here is quick. A render's own suite depends on its store.
SUITE_SECONDS = {"postgres": 300, "sqlite": 100, "memory": 50}
SLOW_TEST_SECONDS = {
    "test_default_render_installs_runs_and_benchmarks_in_a_fresh_venv": 150,
    "test_cruft_update_brings_template_changes_and_keeps_the_user_s_work": 30,
    "test_service_conforms_to_its_own_openapi_document": 20,
    "test_compares_requests_and_end_to_end_in_every_round": 20,
    "test_every_dashboard_query_returns_data_from_a_real_prometheus": 15,
    "test_an_operator_signs_in_retries_a_failed_job_and_pauses_a_queue": 15,
    "test_render_passes_ruff_and_mypy": 5,
    "test_a_database_of_an_earlier_release_upgrades_keeping_every_job": 5,
}


def expected_seconds(item: pytest.Item) -> float:
    if not isinstance(item, pytest.Function):
        return 0
    if item.originalname == "test_render_own_test_suite_passes":
        answers: dict[str, str] = item.callspec.params["rendered"]
        return SUITE_SECONDS[answers.get("job_store", JOB_STORES[0])]
    return SLOW_TEST_SECONDS.get(item.originalname, 0)


# Last: after -k and -m have deselected what they do.
@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under pytest-xdist, the slowest tests first, dealt to the workers in turn.

    Its worksteal scheduler gives each worker an equal, unbroken run of the collection,
    and a worker with nothing left takes the end of another's. Dealt like cards, longest
    first, every run starts with its share of the slow tests and ends with quick ones, so
    no slow test is left to start last. Without xdist, the order stays the files' own.
    """
    workers: int | None = getattr(config, "workerinput", {}).get("workercount")
    if not workers:
        return
    ranked = sorted(items, key=expected_seconds, reverse=True)
    # The scheduler's runs are len(items) // workers long, the last ones one longer when
    # that does not divide; the hands dealt first are the longer ones, so they go last.
    hands = [ranked[first::workers] for first in range(workers)]
    items[:] = [item for hand in reversed(hands) for item in hand]


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
