"""Request bodies over MAX_BODY_BYTES are refused with 413 and a JSON error, on every route.

FastAPI's own `max_body_size` (Starlette's RequestBodyLimitMiddleware) replaces whatever the
app answers to a body declared too large with a plain-text "Content Too Large", which would
break the promise that every error is `{"error": ...}`.
"""

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import error_response


class BodySizeLimitMiddleware:
    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.message = f"Request body is larger than {max_bytes} bytes"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = scope["headers"]
        declared = next((value for name, value in headers if name == b"content-length"), b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await error_response(413, self.message)(scope, receive, send)
            return
        received = 0

        async def receive_within_limit() -> Message:
            # A body sent in chunks, without a Content-Length, is counted as it arrives.
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    # FastAPI passes an HTTPException raised while reading on to the handlers.
                    raise HTTPException(413, self.message)
            return message

        await self.app(scope, receive_within_limit, send)
