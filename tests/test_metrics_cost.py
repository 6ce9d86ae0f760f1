"""benchmarks/metrics_cost.py (`python3 dev.py metrics-cost`) runs every comparison, small.

Its numbers depend on the machine and are not checked; that it renders both variants, runs
both servers and both end-to-end runs in every round, and reports each measure, is.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from .baking import TEMPLATE_DIR

SCRIPT = TEMPLATE_DIR / "benchmarks" / "metrics_cost.py"


def run_script(*arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *arguments],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@pytest.mark.skipif(
    len(os.sched_getaffinity(0)) < 2,
    reason="LOUD SKIP: the metrics-cost comparison needs two CPUs, this machine has one",
)
def test_compares_requests_and_end_to_end_in_every_round() -> None:
    result = run_script("--rounds", "2", "--seconds", "0.5", "--jobs", "300")
    assert result.returncode == 0, result.stderr
    for measure in ("/bench/bare", "/jobs"):
        assert result.stdout.count(f"{measure:12} metrics yes:") == 2, result.stdout
        assert f"{measure}: metrics cost" in result.stdout, result.stdout
    assert result.stdout.count("jobs/s") == 4, result.stdout  # two renders, two rounds
    assert "end to end: metrics cost" in result.stdout, result.stdout


def test_refuses_to_be_told_use_metrics_in_one_line() -> None:
    result = run_script("use_metrics=no")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "error: use_metrics is what this compares; give the other answers only"
    ]
