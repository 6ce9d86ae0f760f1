"""Starting and watching a render's service from the template tests."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

# Straight to localhost, whatever http_proxy says.
LOCAL_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def became_healthy(url: str, service: subprocess.Popen[bytes], within: float) -> bool:
    """Poll `url` until it answers 200, the service exits, or `within` seconds pass."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline and service.poll() is None:
        try:
            with LOCAL_OPENER.open(url, timeout=2) as response:
                if response.status == 200:
                    return True
        except OSError:  # not listening yet, or an error status such as 503
            pass
        time.sleep(0.1)
    return False


def stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL if it is still there after a while."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class Process:
    """A child process logging to a file, stopped with SIGTERM (then SIGKILL) at the end."""

    def __init__(self, command: list[str], cwd: Path, env: dict[str, str], log: Path) -> None:
        self.log = log
        with log.open("wb") as output:
            self.popen = subprocess.Popen(
                command, cwd=cwd, env=env, stdout=output, stderr=subprocess.STDOUT
            )

    def stop(self) -> None:
        stop(self.popen)

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def required_program(program: str, required_by: str) -> str:
    """The path of a program a test needs, from Debian's package of that name; without it
    the test skips and says why, unless `required_by` (REQUIRE_PROMETHEUS, ...) is 1: CI."""
    found = shutil.which(program)
    if found is None:
        reason = (
            f"{program} not found: install Debian's package (apt-get install {program}), "
            "which `python3 dev.py test` does when run as root"
        )
        if os.environ.get(required_by) == "1":
            pytest.fail(f"{reason} ({required_by}=1)")
        pytest.skip(reason)
    return found
