"""The year circle: days (since 1970-01-01, UTC) as angles, for the seasonal features.

A day's ``phase`` is its place in the year as an angle, so "the same time of year" is a
distance on a circle (``circular_distance_days``) and a window around New Year is not cut in
two. ``SEASON_HALF_WIDTH`` is how far from its centre a visit still counts as in season.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import numpy as np
import pandas as pd

#: Half width, in days, of a seasonal window ("the same calendar window": ±3 weeks).
SEASON_HALF_WIDTH = 21
YEAR_DAYS = 365.2425
TWO_PI = 2.0 * np.pi


@dataclass
class Days:
    """Everything that depends on the day alone, once per day of the history (a few thousand)
    instead of once per order or line: the same numbers as computing them per row."""

    lo: int  # first day (days since 1970-01-01)
    angle: np.ndarray  # phase
    cos: np.ndarray
    sin: np.ndarray
    years: np.ndarray  # day / YEAR_DAYS
    cycle: np.ndarray  # its floor: the calendar-ish year of the first seasonal pass

    @classmethod
    def span(cls, lo: int, hi: int) -> Days:
        days = np.arange(lo, hi + 1, dtype=np.int64)
        angle = phase(days)
        years = days / YEAR_DAYS
        return cls(lo, angle, np.cos(angle), np.sin(angle), years,
                   np.floor(years).astype(np.int64))


def phase(day: np.ndarray) -> np.ndarray:
    """Position of a day (days since 1970-01-01) in its year, as an angle in [0, 2 pi)."""
    return TWO_PI * np.mod(day / YEAR_DAYS, 1.0)


def phase_to_doy(angle: np.ndarray | float) -> np.ndarray:
    """The inverse of ``phase``: 1 = 1 January."""
    return np.mod(np.asarray(angle) / TWO_PI, 1.0) * YEAR_DAYS + 1.0


def day_phase(days: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``phase`` of each day with its cosine and sine, computed once per distinct day (a few
    thousand) and gathered: the same numbers as computing them per row, for a fraction of the
    time on millions of rows."""
    if not len(days):
        empty = np.zeros(0)
        return empty, empty, empty
    d0 = int(days.min())
    table = phase(np.arange(d0, int(days.max()) + 1, dtype=np.int64))
    at = days - d0
    return table[at], np.cos(table)[at], np.sin(table)[at]


def circular_distance_days(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Shortest distance in days between two angles on the year circle."""
    d = np.mod(a - b + np.pi, TWO_PI) - np.pi
    return np.abs(d) * YEAR_DAYS / TWO_PI


def days_between(later: dt.date, earlier: pd.Series) -> pd.Series:
    """Whole days from each timestamp's UTC date to ``later`` (vectorised)."""
    return (pd.Timestamp(later) - earlier.dt.tz_convert("UTC").dt.tz_localize(None).dt.floor("D")
            ).dt.days
