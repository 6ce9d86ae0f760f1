"""Your event subscribers live here: every app the service builds passes its bus to subscribe().

The log lines{% if cookiecutter.use_metrics == "yes" %} and the metrics{% endif %} are subscribed already. Add your own, for example:

    from .events import JobErrored

    def alert_when_out_of_attempts(event: JobErrored) -> None:
        if event.retry_at is None:
            pager.send(f"job {event.job.id} failed for good: {event.error}")

    def subscribe(events: EventBus) -> None:
        events.subscribe(JobErrored, alert_when_out_of_attempts)

Subscribers run inline on the event loop: keep them quick, and hand slow work to a task.
"""

from .events import EventBus


def subscribe(events: EventBus) -> None:
    """Subscribe your own handlers to `events`."""
