"""Geometry of the usage page's inline SVG charts. No drawing here: the templates draw.

A time chart is a row of columns in a `viewBox` of one unit per window and
100 units high, stretched to the page's width (`preserveAspectRatio="none"`),
so it fits a phone as well as a desktop; its labels are HTML beside it, so
text never stretches. Coordinates are preformatted strings: a template
renders them as they are, whatever the locale.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass
from typing import Any

from completions.models import UsageRollup

HEIGHT = 100
# A column fills this much of its window; the rest is the gap between columns.
COLUMN_WIDTH = 0.8


@dataclass(frozen=True)
class Segment:
    name: str
    css: str
    value: int
    y: str
    height: str


@dataclass(frozen=True)
class Column:
    label: str
    x: str
    total: int
    segments: tuple[Segment, ...]


@dataclass(frozen=True)
class TimeChart:
    title: str
    columns: tuple[Column, ...]
    windows: int
    top: int
    legend: tuple[tuple[str, str], ...]
    first_label: str
    last_label: str

    @property
    def empty(self) -> bool:
        return self.top == 0


@dataclass(frozen=True)
class RankRow:
    label: str
    value: int
    width: str  # percent of the widest row
    row: dict[str, Any]


def nice_ceiling(value: int) -> int:
    """The axis top: the smallest of 1, 2, 5 x 10^k at or above `value`."""
    if value <= 0:
        return 0
    power = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 5, 10):
        if step * power >= value:
            return step * power
    return 10 * power  # pragma: no cover - the loop always returns


def window_label(granularity: str, start: dt.datetime) -> str:
    if granularity == UsageRollup.Granularity.HOUR:
        return start.strftime("%b %d %H:00")
    return start.strftime("%b %d")


def windows(granularity: str, start: dt.datetime, end: dt.datetime) -> list[dt.datetime]:
    step = dt.timedelta(hours=1) if granularity == UsageRollup.Granularity.HOUR else (
        dt.timedelta(days=1))
    moments, moment = [], start
    while moment < end:
        moments.append(moment)
        moment += step
    return moments


def time_chart(*, title: str, series: list[dict[str, Any]], granularity: str,
               start: dt.datetime, end: dt.datetime,
               parts: list[tuple[str, str, str]]) -> TimeChart:
    """Stacked columns over every window of [start, end), zero where `series` has no row.

    `parts` are (field of a series row, name, css class), drawn bottom up.
    """
    by_window = {dt.datetime.fromisoformat(row["window_start"]): row for row in series}
    moments = windows(granularity, start, end)
    values = [[int(by_window.get(m, {}).get(field, 0)) for field, _, _ in parts]
              for m in moments]
    top = nice_ceiling(max((sum(v) for v in values), default=0))
    columns = []
    for index, (moment, parts_values) in enumerate(zip(moments, values, strict=True)):
        base = 0.0
        segments = []
        for (_, name, css), value in zip(parts, parts_values, strict=True):
            height = HEIGHT * value / top if top else 0.0
            base += height
            segments.append(Segment(name=name, css=css, value=value, y=f"{HEIGHT - base:.3f}",
                                    height=f"{height:.3f}"))
        columns.append(Column(label=window_label(granularity, moment),
                              x=f"{index + (1 - COLUMN_WIDTH) / 2:.3f}",
                              total=sum(parts_values), segments=tuple(segments)))
    return TimeChart(
        title=title, columns=tuple(columns), windows=len(moments), top=top,
        legend=tuple((name, css) for _, name, css in parts),
        first_label=window_label(granularity, moments[0]) if moments else "",
        last_label=window_label(granularity, moments[-1]) if moments else "",
    )


def ranking(rows: list[dict[str, Any]], *, label_field: str, value_field: str) -> list[RankRow]:
    """Horizontal bars, widest first, scaled to the largest value."""
    ordered = sorted(rows, key=lambda row: (-int(row[value_field]), str(row[label_field])))
    top = max((int(row[value_field]) for row in ordered), default=0)
    return [RankRow(label=str(row[label_field]), value=int(row[value_field]),
                    width=f"{100 * int(row[value_field]) / top:.2f}" if top else "0", row=row)
            for row in ordered]
