"""Turning untrusted bodies and query strings into typed values, or a 400."""

from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from {{ cookiecutter.package_name }}.api.errors import BadRequest
from {{ cookiecutter.package_name }}.api.validation import (
    MAX_OFFSET,
    MISSING_PAYLOAD,
    SCHEDULE_FIELDS,
    parse_job_id,
    parse_moment,
    parse_new_job,
    parse_page,
    parse_scheduled_job,
    parse_status,
)
from {{ cookiecutter.package_name }}.jobs.codec import MAX_DEPTH, nesting_depth
from {{ cookiecutter.package_name }}.jobs.model import JobStatus


def body(document: Any) -> bytes:
    return orjson.dumps(document)


def nested(depth: int) -> dict[str, Any]:
    """An object `depth` levels deep."""
    value: dict[str, Any] = {}
    for _ in range(depth - 1):
        value = {"a": value}
    return value


def bad_request(call: Any, *args: Any) -> str:
    with pytest.raises(BadRequest) as raised:
        call(*args)
    assert raised.value.status_code == 400
    return raised.value.message


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2030-01-02T03:04:05Z", datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)),
        ("2030-01-02T03:04:05.123456Z", datetime(2030, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)),
        ("2030-01-02T03:04:05+02:00", datetime(2030, 1, 2, 1, 4, 5, tzinfo=UTC)),
        ("2030-01-02T03:04:05-05:30", datetime(2030, 1, 2, 8, 34, 5, tzinfo=UTC)),
        ("2030-01-01T01:00:00+02:00", datetime(2029, 12, 31, 23, 0, tzinfo=UTC)),
        ("2030-01-02T03:04:05", datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)),
        ("2030-01-02 03:04", datetime(2030, 1, 2, 3, 4, tzinfo=UTC)),
        ("2030-01-02", datetime(2030, 1, 2, tzinfo=UTC)),
        ("1999-12-31T23:59:59Z", datetime(1999, 12, 31, 23, 59, 59, tzinfo=UTC)),
    ],
)
def test_parse_moment_reads_iso_8601_as_a_utc_moment(text: str, expected: datetime) -> None:
    moment = parse_moment(text)

    assert moment == expected
    assert moment is not None and moment.tzinfo is UTC


@pytest.mark.parametrize(
    "value",
    [
        None,
        123,
        1.5,
        True,
        ["2030-01-02T03:04:05Z"],
        {"at": "2030-01-02"},
        "",
        "tomorrow",
        "2030-13-01T00:00:00Z",
        "2030-02-30",
        "2030-01-02T25:00:00",
        "9999-12-31T23:59:59-01:00",
        "0001-01-01T00:00:00+01:00",
    ],
)
def test_parse_moment_is_none_for_anything_that_is_not_a_moment(value: Any) -> None:
    assert parse_moment(value) is None


def test_parse_page_defaults_to_the_first_50() -> None:
    assert parse_page({}) == (50, 0)


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ({"page": "1", "per_page": "10"}, (10, 0)),
        ({"page": "3", "per_page": "20"}, (20, 40)),
        ({"page": "2"}, (50, 50)),
        ({"per_page": "200"}, (200, 0)),
        ({"per_page": "201"}, (200, 0)),
        ({"page": "2", "per_page": "1000000"}, (200, 200)),
        ({"page": "1" * 30}, (50, MAX_OFFSET)),
    ],
)
def test_parse_page_gives_limit_and_offset_with_per_page_capped_at_200(
    query: dict[str, str], expected: tuple[int, int]
) -> None:
    assert parse_page(query) == expected


@pytest.mark.parametrize(
    "query",
    [
        {"page": "0"},
        {"page": "-1"},
        {"page": "abc"},
        {"page": "1.5"},
        {"page": ""},
        {"page": " 1"},
        {"page": "+1"},
        {"page": "1" * 31},
        {"per_page": "0"},
        {"per_page": "-1"},
        {"per_page": "1e3"},
    ],
)
def test_parse_page_refuses_anything_but_positive_integers(query: dict[str, str]) -> None:
    name = next(iter(query))
    assert bad_request(parse_page, query) == f"'{name}' must be a positive integer"


@pytest.mark.parametrize("status", list(JobStatus))
def test_parse_status_accepts_every_status(status: JobStatus) -> None:
    assert parse_status(status.value) is status


def test_parse_status_of_nothing_is_no_filter() -> None:
    assert parse_status(None) is None


@pytest.mark.parametrize("value", ["finished", "", "QUEUED", "queued "])
def test_parse_status_refuses_unknown_statuses(value: str) -> None:
    assert bad_request(parse_status, value).startswith("Unknown status")


@pytest.mark.parametrize(("text", "expected"), [("1", 1), ("42", 42), (str(2**63 - 1), 2**63 - 1)])
def test_parse_job_id_reads_integers(text: str, expected: int) -> None:
    assert parse_job_id(text) == expected


@pytest.mark.parametrize("text", ["0", "-7", str(2**63), str(2**64), "9" * 30])
def test_parse_job_id_is_none_for_integers_no_job_can_have(text: str) -> None:
    assert parse_job_id(text) is None


@pytest.mark.parametrize("text", ["abc", "1.5", "", " 1", "1e3", "0x10", "9" * 31])
def test_parse_job_id_refuses_non_integers(text: str) -> None:
    assert bad_request(parse_job_id, text) == "Job id must be an integer"


def test_parse_new_job_reads_payload_and_max_attempts() -> None:
    new_job = parse_new_job(body({"payload": {"task": "x"}, "max_attempts": 7}))

    assert (new_job.payload, new_job.max_attempts, new_job.run_at) == ({"task": "x"}, 7, None)


def test_parse_new_job_defaults_max_attempts_to_3() -> None:
    assert parse_new_job(body({"payload": {}})).max_attempts == 3


@pytest.mark.parametrize("max_attempts", [1, 100])
def test_parse_new_job_accepts_max_attempts_from_1_to_100(max_attempts: int) -> None:
    parsed = parse_new_job(body({"payload": {}, "max_attempts": max_attempts}))
    assert parsed.max_attempts == max_attempts


@pytest.mark.parametrize("max_attempts", [0, 101, -1, "3", 3.0, True, None, [3]])
def test_parse_new_job_refuses_other_max_attempts(max_attempts: Any) -> None:
    message = bad_request(parse_new_job, body({"payload": {}, "max_attempts": max_attempts}))
    assert message == "'max_attempts' must be an integer from 1 to 100"


def test_parse_new_job_without_payload_names_the_missing_field() -> None:
    assert bad_request(parse_new_job, body({"max_attempts": 3})) == MISSING_PAYLOAD


def test_payload_nesting_is_accepted_up_to_the_limit_and_refused_beyond() -> None:
    assert nesting_depth(nested(MAX_DEPTH)) == MAX_DEPTH
    assert parse_new_job(body({"payload": nested(MAX_DEPTH)})).payload == nested(MAX_DEPTH)

    message = bad_request(parse_new_job, body({"payload": nested(MAX_DEPTH + 1)}))
    assert message == f"'payload' is nested more than {MAX_DEPTH} levels deep"


def test_a_scheduled_payload_nested_too_deep_is_refused_too() -> None:
    document = {"payload": nested(MAX_DEPTH + 1), "run_at": "2030-01-02T03:04:05Z"}
    message = bad_request(parse_scheduled_job, body(document))
    assert message == f"'payload' is nested more than {MAX_DEPTH} levels deep"


def test_a_payload_of_many_brackets_side_by_side_is_not_too_deep() -> None:
    payload = {"rows": [[n] for n in range(2 * MAX_DEPTH)]}
    assert parse_new_job(body({"payload": payload})).payload == payload


def test_nesting_depth_counts_lists_and_objects_but_not_scalars() -> None:
    assert nesting_depth(5) == 0
    assert nesting_depth({}) == 1
    assert nesting_depth({"a": [1, {"b": []}], "c": 2}) == 4


def test_parse_scheduled_job_reads_run_at_as_utc() -> None:
    document = {"payload": {"n": 1}, "run_at": "2030-01-02T03:04:05+01:00", "max_attempts": 2}

    new_job = parse_scheduled_job(body(document))

    assert new_job.run_at == datetime(2030, 1, 2, 2, 4, 5, tzinfo=UTC)
    assert (new_job.payload, new_job.max_attempts) == ({"n": 1}, 2)


@pytest.mark.parametrize(
    "document",
    [
        {"payload": {}},
        {"run_at": "2030-01-02T03:04:05Z"},
        {"payload": "x", "run_at": "2030-01-02T03:04:05Z"},
        {"payload": {}, "run_at": None},
        {"payload": {}, "run_at": 1893553445},
        {"payload": {}, "run_at": "next tuesday"},
    ],
)
def test_parse_scheduled_job_names_the_required_fields(document: dict[str, Any]) -> None:
    assert bad_request(parse_scheduled_job, body(document)) == SCHEDULE_FIELDS


@pytest.mark.parametrize("raw", [b"", b"{", b"[]", b'"text"', b"null", b"NaN", b'"\\ud800"'])
def test_bodies_that_are_not_json_objects_are_bad_requests(raw: bytes) -> None:
    bad_request(parse_new_job, raw)
    bad_request(parse_scheduled_job, raw)
