"""Prometheus metrics: job metrics of our own and HTTP metrics, all fed by the event bus.

HTTP metrics are prometheus-fastapi-instrumentator's `http_requests_total` and
`http_request_duration_seconds`, recorded from RequestStopped events rather than by its
middleware: requests are observed once, and its middleware measured 20-35 us a request
here, over 10% of POST /jobs.

Several processes: each process counts what it does. Processes that each answer their own
scrapes (an API process and worker processes) are separate Prometheus targets, summed in
PromQL. Processes sharing one port (`uvicorn --workers N`) must share an empty directory
named by PROMETHEUS_MULTIPROC_DIR, so that whichever answers reports the sum of all.
"""

import logging
import os

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_fastapi_instrumentator import metrics as http_metrics

from .events import EventBus, JobEnqueued, JobErrored, JobStarted, JobStopped, RequestStopped
from .jobs.engine import Engine
from .jobs.model import JobStatus
from .jobs.store import JobStore, StoreUnavailable

logger = logging.getLogger(__name__)

# Seconds; from a no-op job (well under a millisecond) to a half-hour report.
RUN_SECONDS_BUCKETS = (0.001, 0.005, 0.025, 0.1, 0.5, 1, 2.5, 10, 30, 60, 300, 1800)
WAIT_SECONDS_BUCKETS = (0.001, 0.005, 0.025, 0.1, 0.5, 1, 5, 30, 60, 300, 1800, 3600)
REQUEST_SECONDS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
# Any other method a client sends is counted as "other": labels must stay few.
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class ServiceMetrics:
    """The service's metrics, in a registry of its own (tests build many apps per process)."""

    def __init__(self) -> None:
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
            "Job attempts that ended, by task and outcome: done, retried or failed.",
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
            "Jobs that may run at once (WORKER_POOL_SIZE of each process running workers).",
            multiprocess_mode="livesum",
            registry=self.registry,
        )
        http_requests = http_metrics.requests(registry=self.registry)
        http_latency = http_metrics.latency(
            should_include_status=False,
            buckets=REQUEST_SECONDS_BUCKETS,
            registry=self.registry,
        )
        # Each returns None only when its metric already exists in the registry.
        assert http_requests is not None and http_latency is not None
        self._http_instrumentations = (http_requests, http_latency)

    def subscribe(self, events: EventBus, engine: Engine | None) -> None:
        """Start counting what `events` reports; `engine` is this process's, if it runs one."""
        events.subscribe(JobEnqueued, self._on_enqueued)
        events.subscribe(RequestStopped, self._on_request)
        if engine is None:
            return
        self.workers.set(engine.pool_size)

        def on_started(event: JobStarted) -> None:
            self.busy_workers.set(engine.busy_workers)
            self.queue_wait.labels(event.task).observe(event.queue_wait)

        def on_stopped(event: JobStopped) -> None:
            self.busy_workers.set(engine.busy_workers)
            self.finished.labels(event.task, "done").inc()
            self.run_seconds.labels(event.task).observe(event.duration)

        def on_errored(event: JobErrored) -> None:
            self.busy_workers.set(engine.busy_workers)
            outcome = "failed" if event.retry_at is None else "retried"
            self.finished.labels(event.task, outcome).inc()
            self.run_seconds.labels(event.task).observe(event.duration)

        events.subscribe(JobStarted, on_started)
        events.subscribe(JobStopped, on_stopped)
        events.subscribe(JobErrored, on_errored)

    async def exposition(self, store: JobStore) -> bytes:
        """Every metric in Prometheus's text format, with the store's counts read now."""
        try:
            counts = await store.count_jobs()
        except StoreUnavailable as exc:
            # No reading is better than a stale one passed off as current.
            logger.warning("/metrics: job counts unavailable: %s", exc)
            self.jobs.clear()
        else:
            for status in JobStatus:
                self.jobs.labels(status.value).set(counts.get(status, 0))
        if "PROMETHEUS_MULTIPROC_DIR" in os.environ:
            every_process = CollectorRegistry()
            MultiProcessCollector(every_process)
            return generate_latest(every_process)
        return generate_latest(self.registry)

    def _on_enqueued(self, event: JobEnqueued) -> None:
        self.enqueued.labels(event.task).inc()

    def _on_request(self, event: RequestStopped) -> None:
        method = event.request.method
        info = http_metrics.Info(
            request=event.request,
            response=None,
            method=method if method in HTTP_METHODS else "other",
            modified_handler=event.route or "none",
            modified_status=f"{event.status // 100}xx",
            modified_duration=event.duration,
        )
        for instrumentation in self._http_instrumentations:
            instrumentation(info)
