"""Argument types and shared options of the ``tend`` command's verbs."""

from __future__ import annotations

import argparse
import datetime as dt
from collections.abc import Sequence

__all__ = ["date", "positive", "print_lines", "shop_arg", "store_arg"]


def date(value: str) -> dt.date:
    """An ISO date; the parser's error says the format to use."""
    try:
        return dt.date.fromisoformat(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{value!r} is not a date; use YYYY-MM-DD") from exc


def positive(value: str) -> int:
    """A whole number >= 1."""
    try:
        n = int(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number") from exc
    if n < 1:
        raise argparse.ArgumentTypeError("must be a whole number >= 1")
    return n


def shop_arg(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--db", help="shop database URL (default: TEND_SHOP_URL or var/shop.db)")


def store_arg(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--store", help="contact store URL (default: TEND_STORE_URL or "
                                    "var/store.db)")


def print_lines(lines: Sequence[str]) -> None:
    for line in lines:
        print(line)
