"""Bearer API keys: who may call the API, and which keys may change anything."""

import hashlib
import hmac
from collections.abc import Sequence
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from ..api_keys import ApiKey, Role

# The slug: a header-safe name for the service (project names may hold quotes).
REALM = 'Bearer realm="{{ cookiecutter.project_slug }}"'
# A `read` key may call these; everything else needs an `admin` key.
READ_METHODS = frozenset({"GET", "HEAD"})

# Declares the scheme in the OpenAPI document, which gives /docs its Authorize button.
# It answers None rather than raising, so every refusal is ours: JSON, with its reason.
bearer = HTTPBearer(
    scheme_name="ApiKey",
    description="A secret of API_KEYS, sent as `Authorization: Bearer <secret>`.",
    auto_error=False,
)
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]


class RequireApiKey:
    """A dependency that refuses a request without a known key, or with a `read` key on a
    route that changes something; it answers the key that was presented."""

    def __init__(self, keys: Sequence[ApiKey]) -> None:
        # Secrets are compared as digests: equal lengths, so compare_digest takes the same
        # time whatever a wrong secret has in common with a right one.
        self._keys = [(_digest(key.secret.get_secret_value()), key) for key in keys]

    async def __call__(self, request: Request, credentials: Credentials) -> ApiKey:
        if credentials is None:
            raise HTTPException(
                401,
                "An API key is required: send Authorization: Bearer <secret>",
                headers={"WWW-Authenticate": REALM},
            )
        key = self.identify(credentials.credentials)
        if key is None:
            raise HTTPException(
                401,
                "The API key is not valid",
                headers={"WWW-Authenticate": f'{REALM}, error="invalid_token"'},
            )
        if key.role is not Role.ADMIN and request.method not in READ_METHODS:
            raise HTTPException(
                403,
                f"The API key {key.name!r} may only read: {request.method} {request.url.path}"
                " needs an admin key",
                headers={"WWW-Authenticate": f'{REALM}, error="insufficient_scope"'},
            )
        return key

    def identify(self, secret: str) -> ApiKey | None:
        """The key whose secret this is, or None; every key is compared, found or not."""
        digest = _digest(secret)
        found = None
        for known, key in self._keys:
            if hmac.compare_digest(known, digest):
                found = key
        return found


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()
