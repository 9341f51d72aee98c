"""Timestamp and .NET TimeSpan formats used on the wire."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

_TIMESPAN = re.compile(
    r"^(?P<sign>-)?(?:(?P<days>\d{1,8})\.)?(?P<hours>\d{1,2}):(?P<minutes>\d{2}):(?P<seconds>\d{2})"
    r"(?:\.(?P<fraction>\d{1,7}))?$"
)
_TICKS_PER_MICROSECOND = 10


def utcnow() -> datetime:
    return datetime.now(UTC)


def format_timestamp(value: datetime | None) -> str | None:
    """Format as ISO-8601 UTC with milliseconds and `Z`, e.g. `2023-08-28T08:29:58.864Z`."""
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    value = value.astimezone(UTC)
    return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"


def parse_timespan(text: str) -> timedelta:
    """Parse the .NET TimeSpan constant format `[-][d.]hh:mm:ss[.fffffff]`.

    Raises `ValueError` with a message naming the expected format.
    """
    match = _TIMESPAN.fullmatch(text)
    if match is None:
        raise ValueError(
            f"'{text}' is not a duration in the format [-][d.]hh:mm:ss[.fffffff], e.g. 00:05:00"
        )
    hours = int(match["hours"])
    minutes = int(match["minutes"])
    seconds = int(match["seconds"])
    if hours > 23 or minutes > 59 or seconds > 59:
        raise ValueError(f"'{text}' is out of range: hours must be 0-23, minutes and seconds 0-59")
    fraction = match["fraction"] or ""
    ticks = int(fraction.ljust(7, "0")) if fraction else 0
    value = timedelta(
        days=int(match["days"] or 0),
        hours=hours,
        minutes=minutes,
        seconds=seconds,
        microseconds=ticks // _TICKS_PER_MICROSECOND,
    )
    return -value if match["sign"] else value


def format_timespan(value: timedelta) -> str:
    """Format a duration in the .NET TimeSpan constant format."""
    sign = "-" if value < timedelta(0) else ""
    value = abs(value)
    days = value.days
    hours, remainder = divmod(value.seconds, 3600)
    minutes, seconds = divmod(remainder, 60)
    text = f"{sign}{days}." if days else sign
    text += f"{hours:02d}:{minutes:02d}:{seconds:02d}"
    if value.microseconds:
        text += f".{value.microseconds * _TICKS_PER_MICROSECOND:07d}"
    return text
