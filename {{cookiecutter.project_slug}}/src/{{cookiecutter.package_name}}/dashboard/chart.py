"""The overview's chart of the last hour: one bar a minute, completed attempts below the
failed ones, drawn as SVG on the server so the page needs no script."""

from dataclasses import dataclass

from ..api.schemas import MinuteThroughput

WIDTH = 600
HEIGHT = 120
GAP = 1


@dataclass(frozen=True, slots=True)
class Bar:
    x: float
    width: float
    completed: float  # heights, in the chart's units
    failed: float
    title: str


@dataclass(frozen=True, slots=True)
class Chart:
    bars: list[Bar]
    completed: int
    failed: int
    tallest: int  # what the chart's full height stands for
    width: int = WIDTH
    height: int = HEIGHT


def chart_of(minutes: list[MinuteThroughput]) -> Chart:
    tallest = max((minute.completed + minute.failed for minute in minutes), default=0)
    scale = HEIGHT / tallest if tallest else 0.0
    step = WIDTH / max(len(minutes), 1)
    bars = [
        Bar(
            x=index * step,
            width=step - GAP,
            completed=minute.completed * scale,
            failed=minute.failed * scale,
            title=f"{minute.minute:%H:%M} UTC: {minute.completed} completed,"
            f" {minute.failed} failed",
        )
        for index, minute in enumerate(minutes)
    ]
    return Chart(
        bars=bars,
        completed=sum(minute.completed for minute in minutes),
        failed=sum(minute.failed for minute in minutes),
        tallest=tallest,
    )
