"""API keys: every route but the probes needs one, `read` keys only read, secrets never show."""

import logging
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from {{ cookiecutter.package_name }}.api.auth import RequireApiKey
from {{ cookiecutter.package_name }}.api_keys import ApiKey, Role, parse_api_keys
from {{ cookiecutter.package_name }}.app import create_app
from {{ cookiecutter.package_name }}.settings import Settings, SettingsError, load_settings

from .conftest import SettingsFactory

ADMIN_SECRET = "admin-secret-0123456789abcdef"
READER_SECRET = "reader-secret-0123456789abcdef"
API_KEYS = f"ops:{ADMIN_SECRET},dashboard:{READER_SECRET}:read"
# Routes anyone may call whatever API_KEYS says: probes{% if cookiecutter.use_metrics == "yes" %}, Prometheus{% endif %} and the API's own documentation.
OPEN_PATHS = ["/", "/health"{% if cookiecutter.use_metrics == "yes" %}, "/metrics"{% endif %}, "/docs", "/redoc", "/openapi.json"]
PATH_PARAMETERS = {"job_id": "1", "name": "default"}
CHALLENGE = 'Bearer realm="{{ cookiecutter.project_slug }}"'
SCHEME_DESCRIPTION = "A secret of API_KEYS, sent as `Authorization: Bearer <secret>`."


@pytest.fixture
def settings(make_settings: SettingsFactory) -> Settings:
    return make_settings(api_keys=API_KEYS)


def operations(app: FastAPI) -> list[tuple[str, str]]:
    """Every (method, concrete path) the OpenAPI document lists, parameters filled in."""
    found = []
    for template, methods in app.openapi()["paths"].items():
        path = re.sub(r"\{(\w+)\}", lambda match: PATH_PARAMETERS[match[1]], template)
        found += [(method.upper(), path) for method in methods]
    return found


def protected_operations(app: FastAPI) -> list[tuple[str, str]]:
    return [(method, path) for method, path in operations(app) if path not in OPEN_PATHS]


async def call(
    client: httpx.AsyncClient, method: str, path: str, secret: str | None
) -> httpx.Response:
    headers = {"Authorization": f"Bearer {secret}"} if secret else {}
    bodies: dict[str, dict[str, Any]] = {
        "/jobs": {"payload": {}},
        "/jobs/schedule": {"payload": {}, "run_at": "2030-01-01T00:00:00Z"},
        "/jobs/bulk": {"jobs": [{"payload": {}}]},
    }
    body = bodies.get(path) if method == "POST" else None
    return await client.request(method, path, headers=headers, json=body)


def assert_refused(response: httpx.Response, status: int, challenge: str) -> None:
    assert response.status_code == status, response.text
    assert set(response.json()) == {"error"}
    assert response.headers["WWW-Authenticate"].startswith(challenge)


# --- API_KEYS, as a setting ---


def test_keys_are_listed_with_a_role_each_admin_unless_read() -> None:
    keys = parse_api_keys(API_KEYS)

    assert [(key.name, key.secret.get_secret_value(), key.role) for key in keys] == [
        ("ops", ADMIN_SECRET, Role.ADMIN),
        ("dashboard", READER_SECRET, Role.READ),
    ]


def test_keys_can_come_from_a_mounted_file_with_comments(tmp_path: Path) -> None:
    key_file = tmp_path / "api-keys"
    key_file.write_text(
        f"# rotated 2026-01\nops:{ADMIN_SECRET}\n\ndashboard:{READER_SECRET}:read\n"
    )

    keys = parse_api_keys(str(key_file))

    assert [key.name for key in keys] == ["ops", "dashboard"]


def test_empty_api_keys_means_none() -> None:
    assert parse_api_keys("  ") == ()


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("ops:short", "the secret of key 'ops' is 5 characters; use at least 16"),
        (f"ops:{ADMIN_SECRET}:owner", "key 'ops' has the role 'owner'; roles are read and admin"),
        (f"ops:{ADMIN_SECRET},ops:{READER_SECRET}", "two keys are named 'ops'"),
        (f"a:{ADMIN_SECRET},b:{ADMIN_SECRET}", "keys 'a' and 'b' have the same secret"),
        (ADMIN_SECRET, "key 'admi...' has no secret"),
        (f"-ops:{ADMIN_SECRET}", "'-ops' is not a key name"),
        ("/nonexistent/api-keys", "cannot read the key file /nonexistent/api-keys"),
    ],
)
def test_a_bad_key_is_one_line_that_never_shows_a_secret(
    monkeypatch: pytest.MonkeyPatch, value: str, message: str
) -> None:
    monkeypatch.setenv("API_KEYS", value)
{%- if cookiecutter.job_store == "postgres" %}
    monkeypatch.setenv("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/jobs")
{%- endif %}

    with pytest.raises(SettingsError) as raised:
        load_settings()

    assert str(raised.value).startswith(f"API_KEYS is invalid: {message}")
    assert "\n" not in str(raised.value)
    assert ADMIN_SECRET not in str(raised.value)
    assert READER_SECRET not in str(raised.value)


def test_a_key_file_without_keys_is_refused(tmp_path: Path) -> None:
    key_file = tmp_path / "api-keys"
    key_file.write_text("# nothing yet\n")

    with pytest.raises(ValueError, match="the key file names no key"):
        parse_api_keys(str(key_file))


def test_settings_never_show_a_secret(make_settings: SettingsFactory) -> None:
    settings = make_settings(api_keys=API_KEYS)

    assert ADMIN_SECRET not in repr(settings)
    assert ADMIN_SECRET not in settings.model_dump_json()


def test_a_bad_key_stops_start_up_with_one_line(
    service_env: dict[str, str], tmp_path: Path
) -> None:
    finished = subprocess.run(
        [sys.executable, "-m", "{{ cookiecutter.package_name }}"],
        env={**service_env, "API_KEYS": "ops:tooshort"},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )

    assert finished.returncode != 0
    assert finished.stderr.strip().splitlines() == [
        "error: API_KEYS is invalid: the secret of key 'ops' is 8 characters; use at least 16"
    ]


def test_identify_compares_every_key_and_matches_only_a_whole_secret() -> None:
    keys = [ApiKey(name=f"k{n}", secret=f"secret-number-{n:04}-padding") for n in range(50)]
    require = RequireApiKey(keys)

    found = require.identify("secret-number-0042-padding")

    assert found is not None
    assert found.name == "k42"
    assert require.identify("secret-number-0042-paddin") is None
    assert require.identify("secret-number-0042-padding ") is None


# --- Routes ---


async def test_every_route_but_the_open_ones_needs_a_key(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    refused = protected_operations(app)
    assert ("POST", "/jobs") in refused
    assert ("GET", "/stats") in refused

    for method, path in refused:
        response = await call(client, method, path, None)
        assert_refused(response, 401, CHALLENGE)
        assert response.json()["error"] == (
            "An API key is required: send Authorization: Bearer <secret>"
        ), (method, path)


async def test_a_wrong_secret_or_another_scheme_is_refused(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    wrong = await call(client, "GET", "/jobs", ADMIN_SECRET[:-1])
    basic = await client.get("/jobs", headers={"Authorization": f"Basic {ADMIN_SECRET}"})

    assert_refused(wrong, 401, f'{CHALLENGE}, error="invalid_token"')
    assert wrong.json() == {"error": "The API key is not valid"}
    assert_refused(basic, 401, CHALLENGE)


async def test_open_routes_need_no_key(client: httpx.AsyncClient) -> None:
    for path in OPEN_PATHS:
        response = await client.get(path)
        assert response.status_code == 200, (path, response.text)


async def test_a_read_key_may_call_every_get_route_and_nothing_else(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    for method, path in protected_operations(app):
        response = await call(client, method, path, READER_SECRET)
        if method == "GET":
            assert response.status_code not in (401, 403), (method, path, response.text)
        else:
            assert_refused(response, 403, f'{CHALLENGE}, error="insufficient_scope"')
            assert response.json()["error"] == (
                f"The API key 'dashboard' may only read: {method} {path} needs an admin key"
            )


async def test_an_admin_key_may_call_every_route(app: FastAPI, client: httpx.AsyncClient) -> None:
    statuses = {}
    for method, path in protected_operations(app):
        response = await call(client, method, path, ADMIN_SECRET)
        statuses[method, path] = response.status_code
        assert response.status_code not in (401, 403), (method, path, response.text)

    assert statuses["POST", "/jobs"] == 202


async def test_a_refused_request_changes_nothing(client: httpx.AsyncClient) -> None:
    await call(client, "POST", "/jobs", READER_SECRET)
    await call(client, "POST", "/queues/default/pause", None)

    stats = await call(client, "GET", "/stats", READER_SECRET)
    queues = await call(client, "GET", "/queues", READER_SECRET)

    assert stats.json()["total"] == 0
    assert [queue["paused"] for queue in queues.json()] == [False]


# --- What the document says, and what nobody sees ---


def test_the_openapi_document_declares_the_bearer_scheme_on_every_protected_route(
    app: FastAPI,
) -> None:
    document = app.openapi()

    assert document["components"]["securitySchemes"]["ApiKey"] == {
        "type": "http",
        "scheme": "bearer",
        "description": SCHEME_DESCRIPTION,
    }
    for template, methods in document["paths"].items():
        for method, operation in methods.items():
            if template in OPEN_PATHS:
                assert "security" not in operation, (method, template)
            else:
                assert operation["security"] == [{"ApiKey": []}], (method, template)
                assert {"401", "403"} <= set(operation["responses"]), (method, template)


def test_without_keys_the_document_declares_no_scheme(make_settings: SettingsFactory) -> None:
    document = create_app(make_settings()).openapi()

    assert "securitySchemes" not in document.get("components", {})
    assert all(
        "security" not in operation
        for methods in document["paths"].values()
        for operation in methods.values()
    )


def test_without_keys_the_api_is_open_and_one_warning_says_so(
    make_settings: SettingsFactory, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        create_app(make_settings())

    warnings = [record.getMessage() for record in caplog.records if "API_KEYS" in record.message]
    assert warnings == [
        "API_KEYS is not set: anyone who can reach this service can submit, cancel and read"
        " its jobs"
    ]


async def test_secrets_appear_in_no_log_body_or_document(
    app: FastAPI, client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    seen = []
    with caplog.at_level(logging.DEBUG):
        for secret in (ADMIN_SECRET, READER_SECRET, ADMIN_SECRET + "x", None):
            for method, path in operations(app):
                response = await call(client, method, path, secret)
                seen.append(response.text)
                seen.append(str(response.headers))
        for path in OPEN_PATHS:
            seen.append((await client.get(path)).text)

    seen += [record.getMessage() for record in caplog.records]
    seen += [str(record.__dict__) for record in caplog.records]
    for shown in seen:
        assert ADMIN_SECRET not in shown
        assert READER_SECRET not in shown
