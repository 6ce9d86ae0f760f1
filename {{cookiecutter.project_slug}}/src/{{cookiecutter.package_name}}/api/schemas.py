"""The API's answers, as pydantic models: `/docs` and `/openapi.json` are built from them."""

from typing import Literal

from pydantic import BaseModel, Field

from ..jobs.model import Moment


class ErrorBody(BaseModel):
    """Every error the API answers."""

    error: str = Field(examples=["Job not found"])


class JobAccepted(BaseModel):
    message: Literal["Job accepted"] = "Job accepted"
    job_id: int = Field(examples=[123])


class JobScheduled(BaseModel):
    message: Literal["Job scheduled"] = "Job scheduled"
    job_id: int = Field(examples=[124])
    run_at: Moment = Field(description="When the job becomes due, in UTC.")


class Stats(BaseModel):
    """How many jobs there are in each status."""

    queued: int
    running: int
    done: int
    failed: int
    total: int


class Health(BaseModel):
    status: Literal["OK", "DEGRADED"]
    engine: str | None = Field(
        default=None, description="What is wrong with the job engine; absent when it runs."
    )
    store: str | None = Field(
        default=None, description="What is wrong with the job store; absent when it answers."
    )


def error_responses(*codes: int) -> dict[int | str, dict[str, object]]:
    """The OpenAPI `responses` of a route that can answer these error statuses."""
    return {code: {"model": ErrorBody, "description": ERRORS[code]} for code in codes}


ERRORS = {
    400: "The request is invalid; the message names the field and what is wrong with it.",
    404: "No such job.",
    413: "The request body is larger than MAX_BODY_BYTES.",
    503: "The job store cannot be reached; try again later.",
}
