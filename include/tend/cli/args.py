"""Argument types and shared options of the ``tend`` command's verbs."""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from tend.errors import ConfigError

if TYPE_CHECKING:
    from tend.config import ShopSettings
    from tend.messages.render import Renderer

__all__ = ["checked_renderer", "date", "known_locale", "out_file", "positive", "print_lines",
           "ready_store", "shop_arg", "stdout_gone", "store_arg"]


def date(value: str) -> dt.date:
    """An ISO date within the shop data's range of dates; the parser's error says the format to
    use (a night in year 9999 would overflow every date computed from it)."""
    from tend.shop.rules import EARLIEST, LATEST

    try:
        day = dt.date.fromisoformat(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{value!r} is not a date; use YYYY-MM-DD") from exc
    if not EARLIEST.date() <= day < LATEST.date():
        raise argparse.ArgumentTypeError(
            f"{value} is outside {EARLIEST.date()}..{LATEST.date() - dt.timedelta(days=1)}")
    return day


def positive(value: str) -> int:
    """A whole number >= 1."""
    try:
        n = int(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number") from exc
    if n < 1:
        raise argparse.ArgumentTypeError("must be a whole number >= 1")
    return n


def out_file(value: str) -> Path:
    """A file to write, its folder made if need be: a path that cannot be written (a folder, a
    folder that cannot be made) fails at once rather than after the work that fills it."""
    path = Path(value)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{value} is a folder; give a file name in it")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise argparse.ArgumentTypeError(
            f"cannot make the folder {path.parent} ({exc.strerror}); fix the path") from exc
    existed = path.exists()
    try:  # the one sure test of a path: write to it (nothing is added; a new file goes again)
        with path.open("a"):
            pass
    except OSError as exc:
        raise argparse.ArgumentTypeError(f"cannot write {value} ({exc.strerror}); give a path "
                                         "in a folder you can write") from exc
    if not existed:
        path.unlink(missing_ok=True)
    return path


def shop_arg(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--db", help="shop database URL (default: TEND_SHOP_URL or var/shop.db)")


def store_arg(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--store", help="contact store URL (default: TEND_STORE_URL or "
                                    "var/store.db)")


def print_lines(lines: Sequence[str]) -> None:
    """Print, and keep working when the reader of the output has gone (``| head``): a night
    must not stop half-way because nobody reads its report."""
    try:
        for line in lines:
            print(line)
    except BrokenPipeError:
        stdout_gone()


def stdout_gone() -> None:
    """The output's reader closed the pipe: later output goes nowhere, quietly (Python's own
    flush at exit would otherwise print a BrokenPipeError)."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def ready_store(explicit: str | None) -> str:
    """The contact store's URL, once it is known to exist at the code's schema revision (the
    fix otherwise: ``tend migrate``)."""
    from tend import config
    from tend.store.db import require_current

    url = config.store_url(explicit)
    path = config.sqlite_file(url)
    if path is not None and not Path(path).is_file():
        raise ConfigError(f"no contact store at {path}: run `tend migrate --store {url}` first, "
                          "or fix the path (--store or TEND_STORE_URL)")
    require_current(url)
    return url


def checked_renderer(settings: ShopSettings | None = None) -> Renderer:
    """The renderer of the templates, once the shop's default locale is known to have them."""
    from tend import config, messages

    settings = settings or config.ShopSettings.from_env()
    r = messages.default_renderer(settings)
    known_locale(settings.default_locale, r.locales(), "TEND_DEFAULT_LOCALE")
    return r


def known_locale(locale: str | None, available: Sequence[str], what: str = "--locale") -> None:
    """Refuse a locale no template directory serves (rendering would fall back to the shop's
    default language without a word)."""
    if locale is None:
        return
    tag = locale.replace("-", "_")
    if tag not in available and tag.split("_")[0] not in available:
        raise ConfigError(f"unknown locale {locale!r} for {what}: templates exist for "
                          f"{', '.join(available)}; use one of them, or add its folder of "
                          "templates (docs/templates.md)")
