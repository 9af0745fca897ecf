"""How values and text look in an email: the Babel filters templates use (money, dates,
numbers, discounts, plurals, ordinals), the small text filters (``with_query``, ``paragraphs``,
``lcfirst``), and the rules for a rendered subject line and text part.

Babel calls are cached: a night formats the same few values thousands of times.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import jinja2
from babel import Locale, UnknownLocaleError, localedata
from babel.dates import format_date, format_skeleton
from babel.numbers import format_currency, format_decimal, format_percent

__all__ = [
    "babel_locale",
    "finalize",
    "format_discount",
    "format_long_date",
    "format_money",
    "format_number",
    "format_ordinal",
    "format_plural",
    "formatting_locale",
    "get_field",
    "lcfirst",
    "one_line",
    "paragraphs",
    "tidy_text",
    "with_query",
]

# CR, LF, tabs, other C0/C1 controls, Unicode line/paragraph separators, and plain spaces
# (so a run of them collapses to one space). Non-breaking spaces are kept on purpose:
# Babel puts them in "10,00 $" and they are harmless in a header.
_LINE_BREAKERS = re.compile(r"[ \x00-\x1f\x7f-\x9f\u2028\u2029]+")
_PARAGRAPH_BREAK = re.compile(r"\n[^\S\n]*\n\s*")


@functools.lru_cache(maxsize=512)
def babel_locale(locale: str | None) -> Locale | None:
    try:
        return Locale.parse(str(locale).strip().replace("-", "_"))
    except (ValueError, TypeError, UnknownLocaleError):
        return None


def _require_locale(locale: str, what: str) -> Locale:
    parsed = babel_locale(locale)
    if parsed is None:
        raise ValueError(f"unknown locale {locale!r} for {what} formatting")
    return parsed


@functools.lru_cache(maxsize=512)
def _money_locale(locale: str, currency: str) -> str:
    """A bare language ("fr") says nothing about the region, and Babel then writes
    "10,00 $CA". When the currency belongs to one country (CAD -> CA, USD -> US, CHF -> CH)
    and Babel knows that language there, we format as that region."""
    parsed = _require_locale(locale, "money")
    if parsed.territory is None:
        regional = f"{parsed.language}_{currency[:2].upper()}"
        if localedata.exists(regional):
            return regional
    return str(parsed)


def _defined(value: Any) -> Any:
    """A filter given an undefined variable reports *that* (with its name), not a type error."""
    if isinstance(value, jinja2.Undefined):
        value._fail_with_undefined_error()
    return value


def _decimal(value: Any) -> Any:
    _defined(value)
    if isinstance(value, str):
        try:
            return Decimal(value.strip())
        except InvalidOperation:
            raise ValueError(f"{value!r} is not a number") from None
    if value is None or isinstance(value, bool):
        raise ValueError(f"{value!r} is not an amount")
    return value


@functools.lru_cache(maxsize=16384)
def _money(amount: Any, currency: str, locale: str) -> str:
    return format_currency(amount, currency, locale=_money_locale(locale, currency))


def format_money(amount: Decimal | float | int | str, currency: str, locale: str) -> str:
    """``{{ offer.amount|money(offer.currency, locale) }}`` -> "$10.00", "10,00 $".

    Multi-country currencies (EUR) keep the locale as given.
    """
    return _money(_decimal(amount), str(currency), str(locale))


@functools.lru_cache(maxsize=16384)
def _date(value: date, locale: str, style: str) -> str:
    parsed = _require_locale(locale, "date")
    if style == "long":
        if parsed.language == "fr" and value.day == 1:
            return format_date(value, "d'er' MMMM y", locale=parsed)
        return format_date(value, format="long", locale=parsed)
    if style == "month":
        return format_date(value, "LLLL", locale=parsed)
    if style == "month_year":
        return format_skeleton("yMMMM", value, locale=parsed)
    if style in ("short", "medium", "full"):
        return format_date(value, format=style, locale=parsed)
    raise ValueError(f"date style must be long, medium, short, full, month or month_year, "
                     f"got {style!r}")


def format_long_date(value: date | datetime | str, locale: str, style: str = "long") -> str:
    """``{{ offer.expires_on|date(locale) }}`` -> "March 12, 2027", "12 mars 2027".

    French writes the first of the month as an ordinal ("1er mars"), which Babel's long
    pattern does not, so we special-case it. ``style``: ``month`` ("March", "mars"),
    ``month_year`` ("March 2021", "mars 2021"), or Babel's short/medium/full.
    """
    if isinstance(_defined(value), str):
        value = date.fromisoformat(value)
    if isinstance(value, datetime):
        value = value.date()
    if not isinstance(value, date):
        raise ValueError(f"{value!r} is not a date")
    return _date(value, str(locale), style)


@functools.lru_cache(maxsize=4096)
def _number(value: Any, locale: str) -> str:
    return format_decimal(value, locale=_require_locale(locale, "number"))


def format_number(value: Any, locale: str) -> str:
    """``{{ n|number(locale) }}`` -> "1,234" / "1 234"."""
    return _number(_decimal(value), str(locale))


def get_field(obj: Any, name: str) -> Any:
    """``obj.name`` for a mapping (its key) or any other object (its attribute)."""
    return obj[name] if isinstance(obj, Mapping) else getattr(obj, name)


@functools.lru_cache(maxsize=1024)
def _percent(amount: Any, locale: str) -> str:
    return format_percent(Decimal(str(amount)) / 100, locale=_require_locale(locale, "percent"))


def format_discount(offer: Any, locale: str) -> str:
    """``{{ offer|discount(locale) }}`` -> "$10.00" or "15%" / "15 %" from an offer's kind.

    ``offer.kind`` is "amount" (``amount`` in ``currency``) or "percent" (``amount`` = 15 for
    15 %). Anything else is an error rather than a guess, since the number is a promise.
    """
    kind = _defined(get_field(_defined(offer), "kind"))
    amount = get_field(offer, "amount")
    if kind == "amount":
        return format_money(amount, get_field(offer, "currency"), locale)
    if kind == "percent":
        return _percent(_decimal(amount), str(locale))
    raise ValueError(f"offer kind must be 'amount' or 'percent', got {kind!r}")


def _count(n: Any) -> Any:
    if isinstance(n, bool) or not isinstance(n, int | Decimal | float | str):
        raise ValueError(f"{n!r} is not a number")
    return _decimal(n)


@functools.lru_cache(maxsize=4096)
def _plural_category(n: Any, locale: str, ordinal: bool) -> str:
    parsed = _require_locale(locale, "plural")
    return parsed.ordinal_form(n) if ordinal else parsed.plural_form(n)


def _pick(n: Any, locale: str, forms: Mapping[str, str], ordinal: bool) -> str:
    if "other" not in forms:
        raise ValueError("plural forms need at least other=...")
    number = _count(n)
    form = forms.get(_plural_category(number, str(locale), ordinal)) or forms["other"]
    return form.replace("{n}", format_number(number, locale))


def format_plural(n: Any, locale: str, **forms: str) -> str:
    """``{{ n|plural("fr", one="{n} commande", other="{n} commandes") }}`` with CLDR rules
    (French: 0 and 1 are singular; English: only 1). Forms: zero, one, two, few, many, other."""
    return _pick(n, locale, forms, ordinal=False)


def format_ordinal(n: Any, locale: str, **forms: str) -> str:
    """``{{ n|ordinal("en", one="{n}st", two="{n}nd", few="{n}rd", other="{n}th") }}``."""
    return _pick(n, locale, forms, ordinal=True)


def with_query(url: Any, **params: Any) -> str:
    """``{{ survey.url|with_query(rating=5) }}``: add query parameters, properly encoded."""
    if _defined(url) is None:
        return "None"  # the link check then names the variable
    return _with_query_cached(str(url), tuple((k, str(v)) for k, v in params.items()))


@functools.lru_cache(maxsize=1024)
def _with_query_cached(url: str, params: tuple[tuple[str, str], ...]) -> str:
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True) + list(params)
    return urlunsplit(parts._replace(query=urlencode(query)))


def paragraphs(text: Any) -> list[str]:
    """``{% for p in newsletter.intro|paragraphs %}``: a blank line starts a new paragraph."""
    if text is None:
        return []
    return [p.strip() for p in _PARAGRAPH_BREAK.split(str(text).replace("\r", "")) if p.strip()]


def lcfirst(value: Any) -> str:
    """"Annual boiler service" -> "annual boiler service", but "ABS brakes" stays as is."""
    text = "" if value is None else str(value)
    if len(text) > 1 and text[0].isupper() and not text[1].isupper():
        return text[0].lower() + text[1:]
    return text


def formatting_locale(requested: str | None, template_locale: str) -> str:
    """Keep the customer's region when the language matches the templates used: a ``fr-CA``
    customer reading ``fr/`` templates gets Canadian formats. Otherwise (a ``de`` customer
    falling back to ``en/``) format like the templates, not like German."""
    parsed = babel_locale(requested) if requested else None
    template = babel_locale(template_locale)
    if parsed is not None and template is not None and parsed.language == template.language:
        return str(parsed)
    return str(template) if template is not None else template_locale


def one_line(value: str) -> str:
    """Subjects and preheaders: no line breaks or control characters, ever."""
    if value.isprintable() and "  " not in value:  # the usual case: nothing to replace
        return value.strip()
    return _LINE_BREAKERS.sub(" ", value).strip()


def tidy_text(value: str) -> str:
    """Plain text: no trailing spaces, at most one blank line in a row, one final newline.

    (Plain str methods rather than regexes: this runs on every message's text part.)
    """
    if "\r" in value:
        value = value.replace("\r\n", "\n").replace("\r", "\n")
    value = "\n".join([line.rstrip() for line in value.split("\n")])
    while "\n\n\n" in value:
        value = value.replace("\n\n\n", "\n\n")
    return value.strip() + "\n"


def finalize(value: Any) -> Any:
    """Print None as nothing: "Hi ," is caught by templates' fallbacks; "Hi None," is not."""
    return "" if value is None else value
