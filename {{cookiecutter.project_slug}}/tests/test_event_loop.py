import asyncio

import pytest

from {{ cookiecutter.package_name }} import event_loop


async def running_loop() -> asyncio.AbstractEventLoop:
    return asyncio.get_running_loop()


def test_the_service_runs_on_uvloop_where_it_is_installed() -> None:
    uvloop = pytest.importorskip("uvloop", reason="uvloop has no build for this platform")
    assert isinstance(event_loop.run(running_loop()), uvloop.Loop)
