"""Days and times as callers say them, for tools that book things.

A model passes on what it heard: "Friday", "tomorrow", "2pm", "10:30". These
turn it into a date and minutes after midnight, with an error that tells the
model how to ask again when the words are not a day or a time.
"""

from __future__ import annotations

import datetime as dt
import re

WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_TIME = re.compile(r"(\d{1,2})(?:[:.h](\d{2}))?\s*([ap])?\.?\s*m?\.?")


def parse_day(text: str, first: dt.date) -> dt.date:
    """An ISO date, "today", "tomorrow" or a weekday name (the next one from `first`)."""
    word = text.strip().lower().removeprefix("this ").strip()
    if word == "today":
        return first
    if word == "tomorrow":
        return first + dt.timedelta(days=1)
    for index, name in enumerate(WEEKDAYS):
        if len(word) >= 3 and name.startswith(word):
            return first + dt.timedelta(days=(index - first.weekday()) % 7)
    try:
        return dt.date.fromisoformat(word)
    except ValueError:
        raise ValueError(
            f'"{text}" is not a day: give a date as YYYY-MM-DD or a weekday name'
        ) from None


def parse_time(text: str, *, afternoon_below: int = 8) -> int:
    """Minutes after midnight from "10:00", "14:30", "2pm" or "2:30 p.m.".

    A bare hour below `afternoon_below` is taken as the afternoon: a business
    open in the daytime hears "at 2" as 14:00.
    """
    match = _TIME.fullmatch(text.strip().lower())
    if not match:
        raise ValueError(f'"{text}" is not a time: give it as HH:MM, e.g. 14:30')
    hour, minute = int(match[1]), int(match[2] or 0)
    if match[3] == "p" and hour < 12:
        hour += 12
    elif match[3] == "a" and hour == 12:
        hour = 0
    elif not match[3] and 1 <= hour < afternoon_below:
        hour += 12
    if hour > 23 or minute > 59:
        raise ValueError(f'"{text}" is not a time of day')
    return hour * 60 + minute


def hhmm(minutes: int) -> str:
    """Minutes after midnight as "HH:MM"."""
    return f"{minutes // 60:02d}:{minutes % 60:02d}"
