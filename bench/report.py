"""Result rows and the table the runner prints."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass
class Row:
    """One line of the results table: medians over runs, errors summed over runs."""

    scenario: str
    throughput: float | None
    unit: str
    p50_ms: float | None
    p99_ms: float | None
    reference: float | None
    reference_label: str
    ratio: float | None
    target: str
    passed: bool
    errors: int
    runs: int


def median(values: Sequence[float | None]) -> float | None:
    present = [value for value in values if value is not None]
    return statistics.median(present) if present else None


def _number(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}"


COLUMNS = (
    "scenario",
    "throughput",
    "p50 ms",
    "p99 ms",
    "reference",
    "ratio",
    "target",
    "result",
    "errors",
    "runs",
)


def format_table(rows: Sequence[Row]) -> str:
    lines = [
        [
            row.scenario,
            f"{_number(row.throughput, 0 if (row.throughput or 0) >= 100 else 1)} {row.unit}",
            _number(row.p50_ms, 2),
            _number(row.p99_ms, 2),
            row.reference_label,
            _number(row.ratio, 2),
            row.target,
            "PASS" if row.passed else "FAIL",
            str(row.errors),
            str(row.runs),
        ]
        for row in rows
    ]
    widths = [
        max([len(column)] + [len(line[index]) for line in lines])
        for index, column in enumerate(COLUMNS)
    ]

    def render(cells: Sequence[str]) -> str:
        return (
            "| "
            + " | ".join(cell.ljust(width) for cell, width in zip(cells, widths, strict=True))
            + " |"
        )

    separator = "|" + "|".join("-" * (width + 2) for width in widths) + "|"
    return "\n".join([render(COLUMNS), separator, *(render(line) for line in lines)])
