"""What the models accept from clients, and how what they refuse is put into words."""

from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import BaseModel, Field, ValidationError

from {{ cookiecutter.package_name }}.api.errors import describe_validation_errors
from {{ cookiecutter.package_name }}.jobs.codec import MAX_DEPTH, nesting_depth
from {{ cookiecutter.package_name }}.jobs.model import (
    MISSING_PAYLOAD,
    SCHEDULE_FIELDS,
    NewJob,
    ScheduledJob,
    parse_moment,
)


def nested(depth: int) -> dict[str, Any]:
    """An object `depth` levels deep."""
    value: dict[str, Any] = {}
    for _ in range(depth - 1):
        value = {"a": value}
    return value


def refusal(model: type[BaseModel], document: Any) -> str:
    """The 400 message the API gives for `document`."""
    with pytest.raises(ValidationError) as raised:
        model.model_validate(document)
    return describe_validation_errors(raised.value.errors())


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
    assert moment.tzinfo is UTC


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
def test_parse_moment_refuses_anything_that_is_not_a_moment(value: Any) -> None:
    with pytest.raises(ValueError):
        parse_moment(value)


def test_a_new_job_reads_payload_and_max_attempts() -> None:
    new_job = NewJob.model_validate({"payload": {"task": "x"}, "max_attempts": 7})

    assert (new_job.payload, new_job.max_attempts, new_job.run_at) == ({"task": "x"}, 7, None)


def test_a_new_job_defaults_max_attempts_to_3() -> None:
    assert NewJob.model_validate({"payload": {}}).max_attempts == 3


@pytest.mark.parametrize("max_attempts", [1, 100, 5.0])
def test_a_new_job_accepts_max_attempts_from_1_to_100(max_attempts: int) -> None:
    parsed = NewJob.model_validate({"payload": {}, "max_attempts": max_attempts})
    assert parsed.max_attempts == max_attempts


@pytest.mark.parametrize(
    ("max_attempts", "problem"),
    [
        (0, "Input should be greater than or equal to 1"),
        (101, "Input should be less than or equal to 100"),
        ("3", "Input should be a valid integer"),
        (3.5, "Input should be a valid integer, got a number with a fractional part"),
        (True, "Input should be a valid integer"),
        (None, "Input should be a valid integer"),
    ],
)
def test_a_new_job_refuses_other_max_attempts_naming_the_field(
    max_attempts: Any, problem: str
) -> None:
    message = refusal(NewJob, {"payload": {}, "max_attempts": max_attempts})
    assert message == f"max_attempts: {problem}"


def test_a_new_job_without_payload_gets_the_message_spec_gives() -> None:
    assert refusal(NewJob, {"max_attempts": 3}) == MISSING_PAYLOAD


@pytest.mark.parametrize("document", [[], "text", None, 42])
def test_a_new_job_that_is_not_an_object_is_refused_as_such(document: Any) -> None:
    assert refusal(NewJob, document) == "Request body must be a JSON object"


def test_payload_nesting_is_accepted_up_to_the_limit_and_refused_beyond() -> None:
    assert nesting_depth(nested(MAX_DEPTH)) == MAX_DEPTH
    assert NewJob.model_validate({"payload": nested(MAX_DEPTH)}).payload == nested(MAX_DEPTH)

    message = refusal(NewJob, {"payload": nested(MAX_DEPTH + 1)})
    assert message == f"payload: is nested more than {MAX_DEPTH} levels deep"


def test_a_scheduled_payload_nested_too_deep_gets_the_schedule_message() -> None:
    document = {"payload": nested(MAX_DEPTH + 1), "run_at": "2030-01-02T03:04:05Z"}
    assert refusal(ScheduledJob, document) == SCHEDULE_FIELDS


def test_a_payload_of_many_lists_side_by_side_is_not_too_deep() -> None:
    payload = {"rows": [[n] for n in range(2 * MAX_DEPTH)]}
    assert NewJob.model_validate({"payload": payload}).payload == payload


def test_nesting_depth_counts_lists_and_objects_but_not_scalars() -> None:
    assert nesting_depth(5) == 0
    assert nesting_depth({}) == 1
    assert nesting_depth({"a": [1, {"b": []}], "c": 2}) == 4


def test_a_scheduled_job_reads_run_at_as_utc() -> None:
    document = {"payload": {"n": 1}, "run_at": "2030-01-02T03:04:05+01:00", "max_attempts": 2}

    new_job = ScheduledJob.model_validate(document)

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
        [],
    ],
)
def test_a_scheduled_job_without_valid_payload_and_run_at_gets_the_spec_message(
    document: Any,
) -> None:
    assert refusal(ScheduledJob, document) == SCHEDULE_FIELDS


def test_a_scheduled_job_with_bad_max_attempts_names_that_field() -> None:
    document = {"payload": {}, "run_at": "2030-01-02T03:04:05Z", "max_attempts": 0}
    assert refusal(ScheduledJob, document).startswith("max_attempts: ")


class Order(BaseModel):
    """A model as a user of the template might add for a route of their own."""

    class Line(BaseModel):
        sku: str
        quantity: int = Field(ge=1)

    customer: str
    lines: list[Line]


def test_errors_in_nested_fields_name_the_path_to_the_field() -> None:
    document = {"customer": "acme", "lines": [{"sku": "a", "quantity": 1}, {"sku": "b"}]}
    assert refusal(Order, document) == "lines[1].quantity: Field required"


def test_several_errors_are_all_named_in_one_line() -> None:
    message = refusal(Order, {"lines": [{"sku": "a", "quantity": 0}]})
    assert message == (
        "customer: Field required; lines[0].quantity: Input should be greater than or equal to 1"
    )


def test_errors_as_fastapi_reports_them_name_the_field_without_where_it_came_from() -> None:
    url = "https://errors.pydantic.dev"
    errors: list[dict[str, Any]] = [
        {"type": "int_parsing", "loc": ("query", "page"), "msg": "Input should be a valid integer"},
        {"type": "missing", "loc": ("body",), "msg": "Field required"},
        {"type": "json_invalid", "loc": ("body", 7), "msg": "JSON decode error"},
    ]
    errors[0]["url"] = errors[1]["url"] = url
    errors[2]["ctx"] = {"error": "unexpected end"}
    assert describe_validation_errors(errors) == (
        "page: Input should be a valid integer; body: Field required;"
        " body: Malformed JSON: unexpected end"
    )
