"""Prometheus metrics: HTTP from prometheus-fastapi-instrumentator, jobs fed by the event bus.

`instrument_app` sets the instrumentator up the way its README shows and serves `/metrics`.
The job metrics are prometheus_client's own Counter, Histogram and Gauge, updated from the
job events, in the same registry.

Several processes: each process counts what it does. Processes that each answer their own
scrapes (an API process and worker processes) are separate Prometheus targets, summed in
PromQL. Processes sharing one port (`uvicorn --workers N`) must share an empty directory
named by PROMETHEUS_MULTIPROC_DIR, so that whichever answers reports the sum of all.
"""

import logging
import os
from dataclasses import dataclass

from fastapi import Depends, FastAPI
from fastapi.responses import PlainTextResponse
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.multiprocess import mark_process_dead
from prometheus_fastapi_instrumentator import Instrumentator
from prometheus_fastapi_instrumentator.metrics import latency, requests

from .api.deps import StoreDep
from .events import EventBus, JobCancelled, JobEnqueued, JobErrored, JobStarted, JobStopped
from .jobs.engine import Engine
from .jobs.model import JobStatus
from .jobs.store import StoreUnavailable

logger = logging.getLogger(__name__)

# Seconds; from a no-op job (well under a millisecond) to a half-hour report.
RUN_SECONDS_BUCKETS = (0.001, 0.005, 0.025, 0.1, 0.5, 1, 2.5, 10, 30, 60, 300, 1800)
WAIT_SECONDS_BUCKETS = (0.001, 0.005, 0.025, 0.1, 0.5, 1, 5, 30, 60, 300, 1800, 3600)
# The instrumentator's default (0.1, 0.5, 1) cannot tell a 2 ms POST /jobs from a 90 ms one.
REQUEST_SECONDS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
# Scraping and probing are not traffic worth counting.
NOT_COUNTED = ["^/metrics$", "^/health$", "^/$"]


@dataclass(frozen=True, slots=True)
class TaskSeries:
    """One task's label children, looked up once: `labels()` costs more than the update."""

    enqueued: Counter
    done: Counter
    retried: Counter
    failed: Counter
    cancelled: Counter
    run_seconds: Histogram
    queue_wait: Histogram


class ServiceMetrics:
    """The service's metrics, in a registry of its own (tests build many apps per process)."""

    def __init__(self) -> None:
        # prometheus_client chose where values live when it was imported, from this variable.
        self._multiprocess = "PROMETHEUS_MULTIPROC_DIR" in os.environ
        self.registry = CollectorRegistry()
        # Task labels are registered task names or "default", never a client's free text.
        self.enqueued = Counter(
            "jobs_enqueued_total",
            "Jobs stored through the API, by the task that will run them.",
            ["task"],
            registry=self.registry,
        )
        self.finished = Counter(
            "jobs_finished_total",
            "Job attempts that ended, by task and outcome: done, retried, failed or cancelled"
            " (a queued job cancelled before it started counts as cancelled too).",
            ["task", "outcome"],
            registry=self.registry,
        )
        self.run_seconds = Histogram(
            "job_run_duration_seconds",
            "How long job handlers ran, by task.",
            ["task"],
            buckets=RUN_SECONDS_BUCKETS,
            registry=self.registry,
        )
        self.queue_wait = Histogram(
            "job_queue_wait_seconds",
            "Time from a job's run_at to the start of its attempt, by task.",
            ["task"],
            buckets=WAIT_SECONDS_BUCKETS,
            registry=self.registry,
        )
        # Every process reads the same store, so with several processes the latest reading
        # is the one to report, not their sum.
        self.jobs = Gauge(
            "job_store_jobs",
            "Jobs in the store, by status.",
            ["status"],
            multiprocess_mode="mostrecent",
            registry=self.registry,
        )
        self.busy_workers = Gauge(
            "job_workers_busy",
            "Job handlers running now.",
            multiprocess_mode="livesum",
            registry=self.registry,
        )
        self.workers = Gauge(
            "job_workers",
            "Jobs that may run at once (QUEUES or WORKER_POOL_SIZE of each process with workers).",
            multiprocess_mode="livesum",
            registry=self.registry,
        )
        # Bounded by the registered tasks.
        self._tasks: dict[str, TaskSeries] = {}

    def instrument_app(self, app: FastAPI) -> None:
        """Count the app's requests and serve every metric at `/metrics`."""
        instrumentator = Instrumentator(
            should_group_status_codes=True,
            should_ignore_untemplated=True,
            excluded_handlers=NOT_COUNTED,
            registry=self.registry,
        )
        # The two metrics dashboards read, rather than its default five: each costs every request.
        instrumentator.add(requests(registry=self.registry))
        instrumentator.add(
            latency(
                buckets=REQUEST_SECONDS_BUCKETS,
                should_include_status=False,
                registry=self.registry,
            )
        )
        instrumentator.instrument(app).expose(
            app,
            tags=["system"],
            response_class=PlainTextResponse,
            dependencies=[Depends(self.read_job_counts)],
            summary="Metrics",
            description="Every metric of this process, in Prometheus's text format.",
        )

    def subscribe(self, events: EventBus, engine: Engine | None) -> None:
        """Start counting what `events` reports; `engine` is this process's, if it runs one."""
        events.subscribe(JobEnqueued, self._on_enqueued)
        # The API cancels queued jobs, so a process without workers counts those.
        events.subscribe(JobCancelled, self._on_cancelled)
        if engine is None:
            return
        self.workers.set(engine.pool_size)
        events.subscribe(JobStarted, self._on_started)
        events.subscribe(JobStopped, self._on_stopped)
        events.subscribe(JobErrored, self._on_errored)
        if self._multiprocess:
            # Other processes report what their files hold, so keep this one's file current.
            def count_busy(_: object) -> None:
                self.busy_workers.set(engine.busy_workers)

            events.subscribe(JobStarted, count_busy)
            events.subscribe(JobStopped, count_busy)
            events.subscribe(JobErrored, count_busy)
            events.subscribe(JobCancelled, count_busy)
        else:
            self.busy_workers.set_function(lambda: engine.busy_workers)

    async def read_job_counts(self, store: StoreDep) -> None:
        """Set `job_store_jobs` from the store, just before a scrape is answered."""
        try:
            counts = await store.count_jobs()
        except StoreUnavailable as exc:
            # No reading is better than a stale one passed off as current.
            logger.warning("/metrics: job counts unavailable: %s", exc)
            self.jobs.clear()
        else:
            for status in JobStatus:
                self.jobs.labels(status.value).set(counts.get(status, 0))

    def close(self) -> None:
        """At shutdown: with several processes, this one's busy and pool gauges stop counting."""
        if self._multiprocess:
            mark_process_dead(os.getpid())

    def _on_enqueued(self, event: JobEnqueued) -> None:
        self._series(event.task).enqueued.inc()

    def _on_started(self, event: JobStarted) -> None:
        self._series(event.task).queue_wait.observe(event.queue_wait)

    def _on_stopped(self, event: JobStopped) -> None:
        series = self._series(event.task)
        series.done.inc()
        series.run_seconds.observe(event.duration)

    def _on_errored(self, event: JobErrored) -> None:
        series = self._series(event.task)
        (series.failed if event.retry_at is None else series.retried).inc()
        series.run_seconds.observe(event.duration)

    def _on_cancelled(self, event: JobCancelled) -> None:
        series = self._series(event.task)
        series.cancelled.inc()
        if event.duration is not None:
            series.run_seconds.observe(event.duration)

    def _series(self, task: str) -> TaskSeries:
        series = self._tasks.get(task)
        if series is None:
            series = self._tasks[task] = TaskSeries(
                enqueued=self.enqueued.labels(task),
                done=self.finished.labels(task, "done"),
                retried=self.finished.labels(task, "retried"),
                failed=self.finished.labels(task, "failed"),
                cancelled=self.finished.labels(task, "cancelled"),
                run_seconds=self.run_seconds.labels(task),
                queue_wait=self.queue_wait.labels(task),
            )
        return series
