"""The one place HTTP requests are observed: it emits RequestStarted and RequestStopped."""

import time
from collections.abc import Awaitable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..events import EventBus, RequestStarted, RequestStopped


class RequestEventsMiddleware:
    """A plain ASGI middleware: cheaper per request than Starlette's BaseHTTPMiddleware."""

    def __init__(self, app: ASGIApp, events: EventBus) -> None:
        self.app = app
        self.events = events

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # Nothing is built for events nobody listens to: this runs on every request.
        is_http = scope["type"] == "http"
        if is_http and self.events.wants(RequestStarted):
            self.events.emit(RequestStarted(scope))
        if not (is_http and self.events.wants(RequestStopped)):
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        # What an exception escaping the app turns into, one layer further out.
        status = 500

        # A plain function handing back send's awaitable: an async one would add a coroutine
        # to every message sent.
        def send_noting_status(message: Message) -> Awaitable[None]:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            return send(message)

        try:
            await self.app(scope, receive, send_noting_status)
        finally:
            # Routing records the matched route in the scope, which is this same dict.
            route = getattr(scope.get("route"), "path", None)
            duration = time.perf_counter() - started
            self.events.emit(RequestStopped(scope, route, status, duration))
