"""API keys as API_KEYS gives them: `name:secret[:role]`, listed or in a mounted file.

Parse errors name the key, never its secret: they are printed at start-up.
"""

import re
from enum import StrEnum
from pathlib import Path

from pydantic import BaseModel, ConfigDict, SecretStr

KEY_NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
# A secret short enough to guess is refused at start-up; `secrets.token_urlsafe(32)` makes
# a good one.
MIN_SECRET_LENGTH = 16
SECRET_PATTERN = re.compile(r"[^\s:,]+")


class Role(StrEnum):
    READ = "read"  # GET routes only
    ADMIN = "admin"  # every route


class ApiKey(BaseModel):
    """A key the service accepts; its secret stays masked in reprs and dumps."""

    model_config = ConfigDict(frozen=True)

    name: str
    secret: SecretStr
    role: Role = Role.ADMIN


def parse_api_keys(value: str) -> tuple[ApiKey, ...]:
    """The keys of API_KEYS: entries separated by commas or lines, or, when the value starts
    with `/` or `.`, the entries of that file (`#` starts a comment line). Empty: none."""
    value = value.strip()
    if not value:
        return ()
    if value.startswith(("/", ".")):
        try:
            value = Path(value).read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"cannot read the key file {value}: {exc}") from None
        lines = (line for line in value.splitlines() if not line.lstrip().startswith("#"))
        value = ",".join(lines)
        if not value.strip(", \t"):
            raise ValueError("the key file names no key")
    keys = [_parse_entry(entry.strip()) for entry in re.split(r"[,\n]", value) if entry.strip()]
    _refuse_duplicates(keys)
    return tuple(keys)


def _parse_entry(entry: str) -> ApiKey:
    name, _, rest = entry.partition(":")
    secret, _, role = rest.partition(":")
    if not KEY_NAME_PATTERN.fullmatch(name):
        raise ValueError(
            f"{_quoted_name(name)} is not a key name (1-64 of A-Z a-z 0-9 _ . -); each key is"
            " name:secret or name:secret:read"
        )
    if not secret:
        raise ValueError(f"key {_quoted_name(name)} has no secret; each key is name:secret[:role]")
    if not SECRET_PATTERN.fullmatch(secret):
        raise ValueError(f"the secret of key {name!r} holds a space, ':' or ','")
    if len(secret) < MIN_SECRET_LENGTH:
        raise ValueError(
            f"the secret of key {name!r} is {len(secret)} characters; use at least"
            f" {MIN_SECRET_LENGTH}"
        )
    try:
        chosen = Role(role or Role.ADMIN)
    except ValueError:
        raise ValueError(f"key {name!r} has the role {role!r}; roles are read and admin") from None
    return ApiKey(name=name, secret=SecretStr(secret), role=chosen)


def _quoted_name(name: str) -> str:
    # A misplaced separator could put a secret where the name goes: quote only its start.
    return repr(name if len(name) <= 8 else f"{name[:4]}...")


def _refuse_duplicates(keys: list[ApiKey]) -> None:
    names: set[str] = set()
    secrets: dict[str, str] = {}
    for key in keys:
        if key.name in names:
            raise ValueError(f"two keys are named {key.name!r}")
        names.add(key.name)
        secret = key.secret.get_secret_value()
        if secret in secrets:
            raise ValueError(f"keys {secrets[secret]!r} and {key.name!r} have the same secret")
        secrets[secret] = key.name
