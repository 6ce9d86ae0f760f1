"""Request bodies parsed by orjson, through FastAPI's hook for a custom APIRoute class.

The standard library's parser, which FastAPI uses, accepts `NaN`, `Infinity`, `1e400`,
lone surrogates and a byte-order mark. No store can keep a lone surrogate, and NaN and
infinities would come back as `null`: a job would silently differ from what was sent.
orjson refuses them all, as malformed JSON (a 400), and parses faster.
"""

from collections.abc import Callable, Coroutine
from typing import Any

import orjson
from fastapi import Request, Response
from fastapi.routing import APIRoute


class OrjsonRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            # orjson.JSONDecodeError is a json.JSONDecodeError: FastAPI reports it as usual.
            self._json = orjson.loads(await self.body())
        return self._json


class OrjsonRoute(APIRoute):
    """A route whose JSON body is parsed by orjson."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handle = super().get_route_handler()

        async def handle_with_orjson(request: Request) -> Response:
            return await handle(OrjsonRequest(request.scope, request.receive))

        return handle_with_orjson
