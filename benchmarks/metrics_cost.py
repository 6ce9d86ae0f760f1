"""What metrics cost: a render with use_metrics=yes against the same render without them.

    python3 dev.py metrics-cost [key=value ...] [--rounds N] [--seconds S] [--with-workers]

Benchmark runs one after the other move by 10-25% on a shared machine, more than the cost
being measured, so this runs the two renders at the same time instead, under the same
conditions: both servers on one CPU, the load on another. Each round loads both for the same
seconds, with the load of the render's own benchmark (`<package>.bench`: POST /jobs, and
its bare endpoint that parses the body and stores nothing), and reads each server's
requests per second and CPU time per request. End to end, both renders run the benchmark's
no-op jobs at once, each reporting jobs/s and CPU per job. PostgreSQL renders read
DATABASE_URL (or TEST_DATABASE_URL) and use a schema of their own each.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import asyncpg
import httpx
from cookiecutter.exceptions import FailedHookException
from cookiecutter.main import cookiecutter

TEMPLATE_DIR = Path(__file__).resolve().parent.parent
# The first two CPUs this process may run on: one for both servers, one for the load.
USABLE_CPUS = sorted(os.sched_getaffinity(0))
SERVER_CPU, LOAD_CPU = set(USABLE_CPUS[:1]), set(USABLE_CPUS[1:2])
VARIANTS = ("yes", "no")  # use_metrics of the two renders
PATHS = ("/bench/bare", "/jobs")
JOB_BODY = b'{"payload": {"task": "noop", "value": 42}}'
# The render's own end-to-end benchmark on an empty store, timed by the process's CPU clock.
END_TO_END = (
    "import time\n"
    "from {package} import event_loop\n"
    "from {package}.__main__ import tune_garbage_collector\n"
    "from {package}.bench import bench_end_to_end, empty_store\n"
    # As `python -m <package>` runs the engine.
    "tune_garbage_collector()\n"
    "with empty_store():\n"
    "    cpu = time.process_time()\n"
    "    event_loop.run(bench_end_to_end({jobs}))\n"
    "    print(f'cpu {{time.process_time() - cpu}}')\n"
)


class Render:
    """One rendered project: its package, and the environment its processes get."""

    def __init__(self, package: str, env: dict[str, str], store: str) -> None:
        self.package = package
        self.env = env
        self.store = store


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("answers", nargs="*", help="cookiecutter answers, key=value")
    # Even, so that each render goes first as often as the other.
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=5.0, help="length of a round")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--jobs", type=int, default=20_000, help="jobs end to end")
    parser.add_argument(
        "--with-workers", action="store_true", help="servers run the jobs they accept"
    )
    args = parser.parse_args()
    answers = dict(answer.partition("=")[::2] for answer in args.answers)
    if "use_metrics" in answers:
        sys.exit("error: use_metrics is what this compares; give the other answers only")
    if len(USABLE_CPUS) < 2:
        sys.exit("error: this needs two CPUs: one for both servers, one for the load")
    with tempfile.TemporaryDirectory() as scratch:
        renders = {variant: render(Path(scratch), answers, variant) for variant in VARIANTS}
        # The memory store runs its jobs in the process that accepts them.
        workers = args.with_workers or answers.get("job_store") == "memory"
        compare_requests(renders, args.rounds, args.seconds, args.connections, workers)
        compare_end_to_end(renders, args.rounds, args.jobs)


def render(scratch: Path, answers: dict[str, str], use_metrics: str) -> Render:
    # The hook prints one clear line for a bad answer; keep cookiecutter from adding a traceback.
    logging.getLogger("cookiecutter").addHandler(logging.NullHandler())
    try:
        project = Path(
            cookiecutter(
                str(TEMPLATE_DIR),
                no_input=True,
                extra_context={**answers, "use_metrics": use_metrics},
                output_dir=str(scratch / f"metrics-{use_metrics}"),
                default_config=True,
            )
        )
    except ValueError as error:  # cookiecutter's way of refusing an unknown choice
        sys.exit(f"error: {error}")
    except FailedHookException:
        sys.exit(1)
    package = next(path.name for path in (project / "src").iterdir() if path.is_dir())
    env = {**os.environ, "PYTHONPATH": str(project / "src"), "LOG_LEVEL": "warning"}
    store = answers.get("job_store", "sqlite")
    if store == "postgres":
        database_url = os.environ.get("DATABASE_URL") or os.environ.get("TEST_DATABASE_URL")
        if not database_url:
            sys.exit("error: set DATABASE_URL to a PostgreSQL database for this render")
        env["DATABASE_URL"] = database_url
    return Render(package, env, store)


@contextmanager
def empty_store(render: Render) -> Iterator[dict[str, str]]:
    """The render's environment, pointing at a new, empty store that is removed afterwards."""
    if render.store == "sqlite":
        with tempfile.TemporaryDirectory() as scratch:
            yield {**render.env, "DATABASE_URL": f"sqlite:///{scratch}/bench.db"}
    elif render.store == "postgres":
        database_url = render.env["DATABASE_URL"]
        schema = f"metrics_cost_{uuid.uuid4().hex[:8]}"
        asyncio.run(run_sql(database_url, f"CREATE SCHEMA {schema}"))
        separator = "&" if "?" in database_url else "?"
        try:
            yield {**render.env, "DATABASE_URL": f"{database_url}{separator}search_path={schema}"}
        finally:
            asyncio.run(run_sql(database_url, f"DROP SCHEMA {schema} CASCADE"))
    else:
        yield render.env


def compare_requests(
    renders: dict[str, Render], rounds: int, seconds: float, connections: int, workers: bool
) -> None:
    mode = "workers in the process" if workers else "START_WORKERS=false"
    print(f"POST, both servers on one CPU, {connections} connections each, {mode}")
    results: dict[str, list[dict[str, tuple[float, float]]]] = {path: [] for path in PATHS}
    os.sched_setaffinity(0, LOAD_CPU)
    for round_number in range(1, rounds + 1):
        with ExitStack() as stack:
            servers = {
                variant: stack.enter_context(serving(render, workers))
                for variant, render in taking_turns(renders, round_number)
            }
            for server, port in servers.values():  # started together, waited for together
                wait_until_healthy(server, port)
            for path in PATHS:
                # Warm-up; the first requests open connections and build what is built lazily.
                asyncio.run(load_together(servers, path, max(seconds / 5, 1.0), connections))
                measured = asyncio.run(load_together(servers, path, seconds, connections))
                results[path].append(measured)
                print(f"  round {round_number} {path:12} {describe(measured, 'req/s', 'us')}")
    for path in PATHS:
        summarize(path, results[path])


def taking_turns(renders: dict[str, Render], round_number: int) -> list[tuple[str, Render]]:
    """The renders, the other one first every other round: the first started and loaded
    does measurably worse (two copies of one render: 2% apart), so each goes first as often."""
    in_order = list(renders.items())
    return in_order if round_number % 2 else in_order[::-1]


@contextmanager
def serving(render: Render, workers: bool) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    port = free_port()
    command = [sys.executable, "-m", f"{render.package}.bench", "--serve", str(port)]
    with empty_store(render) as env:
        env["START_WORKERS"] = str(workers).lower()
        server = subprocess.Popen(command, env=env, preexec_fn=on_server_cpu)
        try:
            yield server, port
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(30)


def on_server_cpu() -> None:
    os.sched_setaffinity(0, SERVER_CPU)


def wait_until_healthy(server: subprocess.Popen[bytes], port: int) -> None:
    deadline = time.monotonic() + 30
    while server.poll() is None and time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise RuntimeError("a server did not start")


async def load_together(
    servers: dict[str, tuple[subprocess.Popen[bytes], int]],
    path: str,
    seconds: float,
    connections: int,
) -> dict[str, tuple[float, float]]:
    """Load every server for the same `seconds`: each one's req/s and CPU us per request."""
    until = time.perf_counter() + seconds
    cpu_before = {variant: cpu_seconds(server.pid) for variant, (server, _) in servers.items()}
    answered = await asyncio.gather(
        *(post_until(port, path, until, connections) for _, port in servers.values())
    )
    measured = {}
    for (variant, (server, _)), count in zip(servers.items(), answered, strict=True):
        cpu = cpu_seconds(server.pid) - cpu_before[variant]
        measured[variant] = (count / seconds, cpu / count * 1e6)
    return measured


async def post_until(port: int, path: str, until: float, connections: int) -> int:
    """POST over keep-alive connections until `until`; how many requests were answered."""
    request = (
        f"POST {path} HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(JOB_BODY)}\r\n\r\n"
    ).encode() + JOB_BODY
    answered = 0

    async def client() -> None:
        nonlocal answered
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        while time.perf_counter() < until:
            writer.write(request)
            status = await reader.readline()
            length = 0
            while (header := await reader.readline()) not in (b"\r\n", b""):
                if header.lower().startswith(b"content-length:"):
                    length = int(header.split(b":")[1])
            await reader.readexactly(length)
            if b" 202 " not in status:
                raise RuntimeError(f"{path} answered {status!r}")
            answered += 1
        writer.close()

    await asyncio.gather(*(client() for _ in range(connections)))
    return answered


def compare_end_to_end(renders: dict[str, Render], rounds: int, jobs: int) -> None:
    print(f"End to end, {jobs} no-op jobs, both renders at once on one CPU")
    results = []
    for round_number in range(1, rounds + 1):
        running = {
            variant: subprocess.Popen(
                [sys.executable, "-c", END_TO_END.format(package=render.package, jobs=jobs)],
                env=render.env,
                stdout=subprocess.PIPE,
                text=True,
                preexec_fn=on_server_cpu,
            )
            for variant, render in taking_turns(renders, round_number)
        }
        measured = {}
        for variant, process in running.items():
            output, _ = process.communicate(timeout=600)
            if process.returncode != 0:
                raise RuntimeError(f"the end-to-end run with use_metrics={variant} failed")
            rate = float(output.split("run to completion")[1].split()[0])
            cpu = float(output.split("cpu ")[1])
            measured[variant] = (rate, cpu / jobs * 1e6)
        results.append(measured)
        print(f"  round {round_number} {describe(measured, 'jobs/s', 'us CPU/job')}")
    summarize("end to end", results)


def describe(measured: dict[str, tuple[float, float]], rate_unit: str, cpu_unit: str) -> str:
    return "   ".join(
        f"metrics {variant}: {measured[variant][0]:6.0f} {rate_unit}"
        f" {measured[variant][1]:6.1f} {cpu_unit}"
        for variant in VARIANTS
    )


def summarize(name: str, results: list[dict[str, tuple[float, float]]]) -> None:
    """Metrics' cost over the rounds: how much throughput drops, and CPU rises, with them."""
    rates = [1 - result["yes"][0] / result["no"][0] for result in results]
    cpus = [result["yes"][1] / result["no"][1] - 1 for result in results]
    print(
        f"{name}: metrics cost {statistics.mean(rates):.1%} of the throughput"
        f" (rounds {min(rates):.1%} to {max(rates):.1%}),"
        f" {statistics.mean(cpus):+.1%} CPU per {'job' if name == 'end to end' else 'request'}"
    )


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of a process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def run_sql(database_url: str, statement: str) -> None:
    conn = await asyncpg.connect(database_url.replace("+asyncpg", ""))
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


if __name__ == "__main__":
    main()
