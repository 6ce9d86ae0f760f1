{%- if cookiecutter.use_auth == "yes" -%}
"""Who is using the dashboard and what they may do: sign-in, roles, and CSRF tokens.

The session is Starlette's signed cookie (HttpOnly, SameSite=Strict). It holds the name of
the key signed in with, never its secret, and the token every form must send back. It is
signed with a secret derived from every key's, so changing any key ends every session.
"""

import hashlib
{% else -%}
"""The dashboard's CSRF tokens: every form sends back the one its page was given.

The token lives in Starlette's signed session cookie (HttpOnly, SameSite=Strict).
"""

{% endif -%}
import hmac
import secrets
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Form, HTTPException, Request
{%- if cookiecutter.use_auth == "yes" %}

from ..api.auth import RequireApiKey
from ..api_keys import ApiKey, Role
{%- endif %}


class SignInRequired(Exception):
    """Raised by a page that needs a signed-in key; answered with a redirect to sign-in."""


@dataclass(frozen=True, slots=True)
class Visitor:
    # The key signed in with; None on a dashboard open to anyone.
    key_name: str | None
    may_act: bool
    csrf_token: str


class Access:
    """The keys that may sign in, and the session secret derived from them."""

{%- if cookiecutter.use_auth == "yes" %}

    def __init__(self, keys: tuple[ApiKey, ...]) -> None:
        self._keys = {key.name: key for key in keys}
        self._checker = RequireApiKey(keys)
        # Every instance given the same keys signs sessions alike, and changing a key
        # ends the sessions signed with the old ones. No keys: a secret of this process.
        material = "\n".join(sorted(key.secret.get_secret_value() for key in keys))
        self.session_secret = (
            hmac.new(material.encode(), b"dashboard session", hashlib.sha256).hexdigest()
            if keys
            else secrets.token_hex(32)
        )

    @property
    def open(self) -> bool:
        return not self._keys

    def identify(self, secret: str) -> ApiKey | None:
        return self._checker.identify(secret)

    def sign_in(self, request: Request, key: ApiKey) -> None:
        request.session.clear()
        request.session.update(key=key.name, csrf=secrets.token_urlsafe(32))

    def visitor(self, request: Request) -> Visitor | None:
        """Who sent the request; None when the dashboard needs a key and none signed in."""
        session = request.session
        if self.open:
            return Visitor(None, True, _csrf_token(session))
        key = self._keys.get(session.get("key", ""))
        if key is None:
            return None
        return Visitor(key.name, key.role is Role.ADMIN, _csrf_token(session))
{%- else %}

    def __init__(self) -> None:
        # Signs the cookie that carries the CSRF token; forms outlive only this process.
        self.session_secret = secrets.token_hex(32)

    def visitor(self, request: Request) -> Visitor:
        return Visitor(None, True, _csrf_token(request.session))
{%- endif %}


def _csrf_token(session: dict[str, Any]) -> str:
    if "csrf" not in session:
        session["csrf"] = secrets.token_urlsafe(32)
    token: str = session["csrf"]
    return token


def get_access(request: Request) -> Access:
    access: Access = request.app.state.dashboard_access
    return access


async def current_visitor(request: Request) -> Visitor:
    """The signed-in visitor of a page; anyone else is sent to sign in."""
    visitor = get_access(request).visitor(request)
    if visitor is None:
        raise SignInRequired
    return visitor


async def acting_visitor(
    visitor: Annotated[Visitor, Depends(current_visitor)],
    csrf_token: Annotated[str, Form()] = "",
) -> Visitor:
    """The visitor of an action{% if cookiecutter.use_auth == "yes" %}: an admin key (or an open dashboard){% endif %}, with the form's token."""
{%- if cookiecutter.use_auth == "yes" %}
    if not visitor.may_act:
        raise HTTPException(403, f"The API key {visitor.key_name!r} may only read")
{%- endif %}
    check_csrf_token(visitor, csrf_token)
    return visitor


def check_csrf_token(visitor: Visitor, sent: str) -> None:
    """Refuse a form that does not carry the token of the visitor's session: it was not
    sent from one of our pages (or the session it came with has ended)."""
    if not hmac.compare_digest(sent.encode(), visitor.csrf_token.encode()):
        raise HTTPException(403, "The form has expired: reload the page and try again")


VisitorDep = Annotated[Visitor, Depends(current_visitor)]
ActingVisitorDep = Annotated[Visitor, Depends(acting_visitor)]
