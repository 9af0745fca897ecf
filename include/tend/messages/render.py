"""Render Tend's emails from Jinja templates: subject, preheader, HTML and plain text.

Templates live under one directory (``templates/email``)::

    layouts/base.html.j2, layouts/base.txt.j2     shared frame: header, content, footer
    layouts/email.css                             the stylesheet, inlined at load time
    partials/*.j2                                 header, footer, offer box, product card, ...
    {locale}/strings.j2                           shared words for one language, exposed as ``t``
    {locale}/{template}.subject.j2                one line
    {locale}/{template}.preheader.j2              one line, the inbox preview text
    {locale}/{template}.html.j2                   extends layouts/base.html.j2
    {locale}/{template}.txt.j2                    extends layouts/base.txt.j2

What each template expects in its context, with a realistic sample, is in
:mod:`tend.messages.contracts` (``sample_context("winback")``).

Design choices, and why:

* **Autoescape only for ``.html.j2``.** Customer data (a first name) is escaped in HTML, but
  not mangled into ``&amp;`` in the text part or the subject.
* **StrictUndefined.** A typo or a variable the program does not provide fails the render with
  a :class:`~tend.errors.TemplateError` naming the file, line and variable, instead of quietly
  sending "Hi ," to ten thousand people. ``None`` values print as an empty string.
* **CSS inlined once, at load.** Templates carry classes; when Jinja loads a ``.html.j2`` file,
  the loader hides the Jinja tags behind placeholders, lets css-inline write
  ``layouts/email.css`` into every element's ``style`` attribute, and puts the tags back. The
  compiled template therefore already holds the inline styles: no CSS work per message.
* **Links are checked.** Every expression inside an ``href``/``src`` attribute, and every
  variable whose name ends in ``url``, goes through a check that refuses an empty value,
  ``None`` or an unrendered ``{{``: the error names the template and the variable.
* **Single-line subject and preheader.** Their output is stripped and every run of control
  characters (CR, LF, tab, ...) becomes one space, so customer data can never inject a header.
* **Compliance is enforced, not hoped for.** For marketing and service messages the renderer
  makes signed unsubscribe and preferences links (see :mod:`tend.messages.tokens`), sets the RFC
  8058 one-click ``List-Unsubscribe`` headers, and refuses a message whose HTML or text lacks the
  link. Transactional messages (a first-order thank-you) need none.
* **Locale fallback.** ``fr-CA`` uses ``fr_CA/`` templates if they exist, else ``fr/``, else
  the shop's default locale; money and dates keep the customer's region when the language
  matches (``fr-CA`` customer, ``fr/`` templates: "10,00 $", "12 mars 2027").
* **Fast.** Locale resolution, compiled templates and the ``t`` strings are cached per
  (template, locale); Babel formatting is cached per value and locale; templates render into a
  shared context without Jinja's per-call copies. ``make bench-render`` measures it.
* **User-typed text is sandboxed.** Text a marketing user types in the campaign form goes
  through :func:`render_user_text` (an immutable sandbox with no globals), never through the
  main environment.
"""

from __future__ import annotations

import contextlib
import functools
import html as html_lib
import re
import traceback
from bisect import bisect_right
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import css_inline
import jinja2
import markupsafe
from babel import Locale, UnknownLocaleError, localedata
from babel.dates import format_date, format_skeleton
from babel.numbers import format_currency, format_decimal, format_percent
from jinja2 import nodes
from jinja2.loaders import split_template_path
from jinja2.runtime import Macro
from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError
from jinja2.utils import missing

from tend.config import ShopSettings
from tend.errors import ConfigError, TemplateError
from tend.messages.contracts import (
    TEMPLATE_SPECS,
    TemplateSpec,
    sample_context,
    sample_contexts,
    template_spec,
)
from tend.messages.tokens import token_maker

__all__ = [
    "KINDS",
    "PARTS",
    "TEMPLATE_SPECS",
    "UNSUBSCRIBE_KINDS",
    "RenderedEmail",
    "Renderer",
    "TemplateSpec",
    "format_discount",
    "format_long_date",
    "format_money",
    "format_number",
    "format_ordinal",
    "format_plural",
    "render_user_text",
    "sample_context",
    "sample_contexts",
    "template_spec",
]

PARTS: tuple[str, ...] = ("subject", "preheader", "html", "txt")
"""The four files every template has in each locale: ``{locale}/{template}.{part}.j2``."""

KINDS: tuple[str, ...] = ("marketing", "service", "transactional")
"""Message kinds (as in programs.yaml). Unknown kinds are refused: a typo must not skip the
unsubscribe link."""

UNSUBSCRIBE_KINDS: frozenset[str] = frozenset({"marketing", "service"})
"""Kinds that must carry the signed unsubscribe link and the RFC 8058 headers. Service mail
(reminders, surveys) honours unsubscribes, so it carries the link too."""

CSS_FILE = "layouts/email.css"

_TEMPLATE_NAME = re.compile(r"[a-z0-9][a-z0-9_-]*")
# CR, LF, tabs, other C0/C1 controls, Unicode line/paragraph separators, and plain spaces
# (so a run of them collapses to one space). Non-breaking spaces are kept on purpose:
# Babel puts them in "10,00 $" and they are harmless in a header.
_LINE_BREAKERS = re.compile(r"[ \x00-\x1f\x7f-\x9f\u2028\u2029]+")
_PARAGRAPH_BREAK = re.compile(r"\n[^\S\n]*\n\s*")
_T = TypeVar("_T")


@dataclass(frozen=True)
class RenderedEmail:
    """One rendered message for one customer: ready to become an OutgoingMessage."""

    subject: str
    preheader: str
    html: str
    text: str
    headers: dict[str, str]
    template: str = ""
    """The template file set used, e.g. ``fr/winback`` (after locale fallback)."""
    locale: str = ""
    """The Babel locale money and dates were formatted in, e.g. ``fr_CA``."""


# --- formatting (Babel, cached: a night formats the same few values thousands of times) --------


@functools.lru_cache(maxsize=512)
def _babel_locale(locale: str | None) -> Locale | None:
    try:
        return Locale.parse(str(locale).strip().replace("-", "_"))
    except (ValueError, TypeError, UnknownLocaleError):
        return None


def _require_locale(locale: str, what: str) -> Locale:
    parsed = _babel_locale(locale)
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


def _field(obj: Any, name: str) -> Any:
    return obj[name] if isinstance(obj, Mapping) else getattr(obj, name)


@functools.lru_cache(maxsize=1024)
def _percent(amount: Any, locale: str) -> str:
    return format_percent(Decimal(str(amount)) / 100, locale=_require_locale(locale, "percent"))


def format_discount(offer: Any, locale: str) -> str:
    """``{{ offer|discount(locale) }}`` -> "$10.00" or "15%" / "15 %" from an offer's kind.

    ``offer.kind`` is "amount" (``amount`` in ``currency``) or "percent" (``amount`` = 15 for
    15 %). Anything else is an error rather than a guess, since the number is a promise.
    """
    kind = _defined(_field(_defined(offer), "kind"))
    amount = _field(offer, "amount")
    if kind == "amount":
        return format_money(amount, _field(offer, "currency"), locale)
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


def _with_query(url: Any, **params: Any) -> str:
    """``{{ survey.url|with_query(rating=5) }}``: add query parameters, properly encoded."""
    if _defined(url) is None:
        return "None"  # the link check then names the variable
    return _with_query_cached(str(url), tuple((k, str(v)) for k, v in params.items()))


@functools.lru_cache(maxsize=1024)
def _with_query_cached(url: str, params: tuple[tuple[str, str], ...]) -> str:
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True) + list(params)
    return urlunsplit(parts._replace(query=urlencode(query)))


def _paragraphs(text: Any) -> list[str]:
    """``{% for p in newsletter.intro|paragraphs %}``: a blank line starts a new paragraph."""
    if text is None:
        return []
    return [p.strip() for p in _PARAGRAPH_BREAK.split(str(text).replace("\r", "")) if p.strip()]


def _lcfirst(value: Any) -> str:
    """"Annual boiler service" -> "annual boiler service", but "ABS brakes" stays as is."""
    text = "" if value is None else str(value)
    if len(text) > 1 and text[0].isupper() and not text[1].isupper():
        return text[0].lower() + text[1:]
    return text


_BROKEN_LINK = re.compile(r"^\s*(?:None|none|null|undefined)\b|\{\{|\}\}|\{%|%\}")


class _BrokenLink(jinja2.TemplateRuntimeError):
    def __init__(self, expression: str, value: Any) -> None:
        super().__init__(f"broken link {expression}")
        self.expression = expression
        self.value = value


def _link(value: Any, expression: str) -> Any:
    """Inserted by the loader around every link expression: refuses what would be a broken
    link, so the error names the variable instead of a customer finding the dead link."""
    if value is None or isinstance(value, jinja2.Undefined):
        raise _BrokenLink(expression, value)
    text = str(value)
    if not text.strip() or _BROKEN_LINK.search(text):
        raise _BrokenLink(expression, value)
    return value


# --- undefined variables ---------------------------------------------------------------------


class _MissingVariable(jinja2.UndefinedError):
    """An UndefinedError that remembers *which* name was missing, and on what object."""

    def __init__(self, message: str | None = None, *, variable: str | None, owner: Any) -> None:
        super().__init__(message)
        self.variable = variable
        self.owner = owner


class _StrictUndefined(jinja2.StrictUndefined):
    """StrictUndefined whose error carries the variable name, for a message that says more
    than Jinja's "'dict object' has no attribute 'code'"."""

    __slots__ = ()

    def __init__(
        self,
        hint: str | None = None,
        obj: Any = missing,
        name: str | None = None,
        exc: type[jinja2.TemplateRuntimeError] = jinja2.UndefinedError,
    ) -> None:
        del exc  # always ours: a factory that builds _MissingVariable with name and owner
        factory: Any = functools.partial(_MissingVariable, variable=name, owner=obj)
        super().__init__(hint, obj, name, factory)


class _Strings:
    """``t`` in templates: the sets and macros of ``{locale}/strings.j2``, resolved once.

    Why not ``{% import %}``: Jinja marks a macro's output as safe HTML when it is *called*
    from an autoescaped template, even though strings.j2 (not ``.html.j2``) never escaped the
    arguments. ``t.greeting(customer.first_name)`` would then put a raw ``<script>`` into the
    HTML. Calling the macro from Python returns a plain ``str``, which the calling template
    escapes (HTML) or leaves alone (text, subject) like any other value.

    Every name is a plain instance attribute (no lookup logic per access); a missing one makes
    Jinja ask ``__getattr__``/``__getitem__``, which fail, so StrictUndefined names it.
    """

    def __init__(self, module: Any, file: str) -> None:
        self._tend_file = file
        for key, value in vars(module).items():
            if key.startswith("_"):
                continue
            if isinstance(value, Macro):
                value = self._wrap(value)
            setattr(self, key, value)

    @staticmethod
    def _wrap(macro: Macro) -> Callable[..., str]:
        # strings.j2 macros see only their arguments (the module has no render context), so
        # the same arguments give the same words: remember the last few thousand.
        @functools.lru_cache(maxsize=4096)
        def cached(*args: Any) -> str:
            return str(macro(*args))

        def call(*args: Any, **kwargs: Any) -> str:
            if not kwargs:
                try:
                    return cached(*args)
                except TypeError as exc:  # an unhashable argument (a dict): no memo
                    if "unhashable" not in str(exc):
                        raise
            return str(macro(*args, **kwargs))

        call._tend_plain = True  # type: ignore[attr-defined]
        return call

    def __getattr__(self, key: str) -> Any:
        raise AttributeError(key)

    def __repr__(self) -> str:
        return f"<strings from {self._tend_file}>"


class _Context(jinja2.runtime.Context):
    """Jinja's Context, with short paths for the two calls every email makes many times:
    ``t.*`` strings (they take no context, environment or loop variables) and partial macros
    called with exactly their positional arguments (``offer_box(offer, t, locale)``: no
    defaults, keywords, varargs or caller to sort out). Both give what Jinja's generic
    ``Context.call`` / ``Macro.__call__`` give (tests compare with a stock Context)."""

    def call(self, obj: Any, /, *args: Any, **kwargs: Any) -> Any:
        if kwargs:
            kwargs.pop("_block_vars", None)
            kwargs.pop("_loop_vars", None)
        if type(obj) is Macro:
            if (not kwargs and len(args) == obj._argument_count and not obj.caller
                    and not obj.catch_kwargs and not obj.catch_varargs
                    and not obj._environment.is_async):
                rv = obj._func(*args)
                if self.eval_ctx.autoescape:
                    return (_new_str(markupsafe.Markup, rv) if rv.__class__ is str
                            else markupsafe.Markup(rv))
                return rv
        elif getattr(obj, "_tend_plain", False):
            return obj(*args, **kwargs)
        return jinja2.runtime.Context.call(self, obj, *args, **kwargs)


_DICT_ATTRIBUTES = frozenset(dir(dict))
_escape_inner = markupsafe._escape_inner  # markupsafe's C escaper (what escape() calls)
_new_str = str.__new__


def _fast_escape(value: Any) -> markupsafe.Markup:
    """``markupsafe.escape`` for the common case, a plain str, without ``Markup.__new__``'s
    Python-level checks: same result (tests compare with stock Jinja), a third of the cost,
    and HTML templates call it for every ``{{ }}``."""
    if value.__class__ is str:
        return _new_str(markupsafe.Markup, _escape_inner(value))  # type: ignore[no-any-return]
    return markupsafe.escape(value)


class _Template(jinja2.Template):
    """Compiled templates look ``escape`` up in their module namespace: give them the fast
    one."""

    @classmethod
    def from_code(cls, environment: jinja2.Environment, code: Any, globals: Any,
                  uptodate: Callable[[], bool] | None = None) -> jinja2.Template:
        template = super().from_code(environment, code, globals, uptodate)
        namespace = template.root_render_func.__globals__
        if namespace.get("escape") is markupsafe.escape:
            namespace["escape"] = _fast_escape
        return template


class _Environment(jinja2.Environment):
    """``customer.first_name`` on a dict: Jinja tries the attribute first and, failing,
    the key, paying for an AttributeError on every lookup. Contexts are dicts, so for a dict
    and a name that is not a dict method the key is looked up directly: same result."""

    def getattr(self, obj: Any, attribute: str) -> Any:
        if type(obj) is dict and attribute not in _DICT_ATTRIBUTES:
            try:
                return obj[attribute]
            except KeyError:
                return self.undefined(obj=obj, name=attribute)
        return super().getattr(obj, attribute)


def _finalize(value: Any) -> Any:
    """Print None as nothing: "Hi ," is caught by templates' fallbacks; "Hi None," is not."""
    return "" if value is None else value


# --- loading: CSS inlined once per template, link checks wired in ------------------------------

_JINJA_TAG = re.compile(r"\{\{.*?\}\}|\{%.*?%\}|\{#.*?#\}", re.DOTALL)
_PLACEHOLDER = re.compile("\ue000(\\d+)\ue001|<!--\ue002(\\d+)\ue003-->")
_LINK_ATTRIBUTE = re.compile(r"""\s(?:href|src)\s*=\s*(?:"([^"]*)"|'([^']*)')""", re.IGNORECASE)
_EXPRESSION = re.compile(r"^\{\{(-?)(.*?)(-?)\}\}$", re.DOTALL)
_URL_NAME = re.compile(r"^\s*\(?\s*([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*)")
_EVENT = re.compile("<([a-zA-Z][a-zA-Z0-9]*)\\b|\ue000\\d+\ue001|<!--\ue002\\d+\ue003-->")
_INSERTED_BY_PARSER = {"tbody", "html", "head", "body"}


def _is_url_name(expression: str) -> bool:
    """``product.url``, ``shop.website_url``, ``survey.url|with_query(...)``: links by name."""
    m = _URL_NAME.match(expression)
    return bool(m) and m.group(1).lower().endswith("url")


def _wrap_link(tag: str) -> str:
    m = _EXPRESSION.match(tag)
    if m is None:  # pragma: no cover - the scanner only hands us {{ ... }}
        return tag
    left, inner, right = m.groups()
    expression = " ".join(inner.split())
    label = expression.replace("\\", "\\\\").replace("'", "\\'")
    return f"{{{{{left} ({inner})|_link('{label}') {right}}}}}"


@dataclass
class _LineMap:
    """Maps a line of the processed (inlined) source back to the file the author edits."""

    processed: list[int] = field(default_factory=list)
    original: list[int] = field(default_factory=list)

    def __call__(self, line: int) -> int:
        i = bisect_right(self.processed, line) - 1
        if i < 0:
            return line
        return self.original[i] + (line - self.processed[i])


class _EmailLoader(jinja2.BaseLoader):
    """Reads templates from the templates directory; ``.html.j2`` files get the stylesheet
    inlined and their links checked, ``.txt.j2`` files their links checked. Templates never
    change during a run (``uptodate`` is always true): no file system calls per message."""

    def __init__(self, root: Path, css: str | None) -> None:
        self.root = root
        self.css = css
        self.line_maps: dict[str, _LineMap] = {}
        self._full = (
            css_inline.CSSInliner(inline_style_tags=False, keep_style_tags=True,
                                  load_remote_stylesheets=False, extra_css=css)
            if css else None
        )

    def get_source(self, environment: jinja2.Environment, template: str
                   ) -> tuple[str, str, Callable[[], bool]]:
        path = self.root.joinpath(*split_template_path(template))
        if not path.is_file():
            raise jinja2.TemplateNotFound(template)
        source = path.read_text(encoding="utf-8")
        if template.endswith(".html.j2"):
            source, line_map = self._prepare_html(source, template)
            self.line_maps[str(path)] = line_map
        elif template.endswith(".txt.j2"):
            source = _JINJA_TAG.sub(
                lambda m: _wrap_link(m.group(0))
                if m.group(0).startswith("{{") and _is_url_name(m.group(0)[2:-2].strip("-"))
                else m.group(0),
                source,
            )
        return source, str(path), lambda: True

    def list_templates(self) -> list[str]:
        return sorted(p.relative_to(self.root).as_posix() for p in self.root.rglob("*.j2"))

    def _prepare_html(self, source: str, name: str) -> tuple[str, _LineMap]:
        tags: list[tuple[str, int]] = []
        line = 1
        last = 0

        def protect(m: re.Match[str]) -> str:
            nonlocal line, last
            line += source.count("\n", last, m.start())
            last = m.start()
            tags.append((m.group(0), line))
            k = len(tags) - 1
            return f"\ue000{k}\ue001" if m.group(0).startswith("{{") else f"<!--\ue002{k}\ue003-->"

        protected = _JINJA_TAG.sub(protect, source)
        if "{{" in protected or "{%" in protected or "{#" in protected:
            # Unbalanced tags: hand Jinja the file as it is, so it reports the syntax error
            # with the author's line numbers.
            return source, _LineMap()
        if self.css is None or self._full is None:
            inlined = protected
        else:
            try:
                if re.search(r"<html[\s>]", protected, re.IGNORECASE):
                    inlined = self._full.inline(protected)
                else:
                    inlined = css_inline.inline_fragment(
                        protected, self.css, inline_style_tags=False,
                        load_remote_stylesheets=False,
                    )
            except (css_inline.InlineError, ValueError) as exc:
                raise TemplateError(
                    f"inlining {CSS_FILE} into {name} failed: {exc}; fix the stylesheet "
                    "(one-element selectors, no quotes in values)",
                    template=name,
                ) from exc
        self._check_structure(protected, inlined, name, len(tags))
        links: set[int] = set()
        for m in _LINK_ATTRIBUTE.finditer(inlined):
            value = m.group(1) if m.group(1) is not None else m.group(2)
            links.update(int(k) for k in re.findall("\ue000(\\d+)\ue001", value))
        out: list[str] = []
        line_map = _LineMap()
        pos = 0
        line = 1
        for m in _PLACEHOLDER.finditer(inlined):
            chunk = inlined[pos:m.start()]
            out.append(chunk)
            line += chunk.count("\n")
            k = int(m.group(1) if m.group(1) is not None else m.group(2))
            tag, original_line = tags[k]
            if tag.startswith("{{") and (k in links or _is_url_name(tag[2:-2].strip("-"))):
                tag = _wrap_link(tag)
            line_map.processed.append(line)
            line_map.original.append(original_line)
            out.append(tag)
            line += tag.count("\n")
            pos = m.end()
        out.append(inlined[pos:])
        return "".join(out), line_map

    @staticmethod
    def _check_structure(protected: str, inlined: str, name: str, n_tags: int) -> None:
        """css-inline parses HTML like a browser: a Jinja expression between a <table> and its
        rows is moved before the table, a statement inside a tag or a <tr> outside a table
        vanishes. The sequence of start tags and Jinja tags must come out as it went in;
        refuse the template at load rather than send a mangled email."""

        def events(html: str) -> list[str]:
            out = []
            for m in _EVENT.finditer(html):
                if m.group(1):
                    tag = m.group(1).lower()
                    if tag not in _INSERTED_BY_PARSER:
                        out.append(tag)
                else:
                    out.append(m.group(0))
            return out

        before, after = events(protected), events(inlined)
        if before != after:
            where = next((i for i, (a, b) in enumerate(zip(before, after, strict=False))
                          if a != b), min(len(before), len(after)))
            near = [e if not e.startswith(("\ue000", "<!--")) else "{{ ... }}"
                    for e in before[max(where - 2, 0):where + 2]]
            raise TemplateError(
                f"{name} cannot be read safely as HTML to inline its CSS (around "
                f"{' '.join(near)}): keep Jinja statements where markup may stand, expressions "
                "inside text or attribute values (never between <table> and <tr> or among a "
                "tag's attributes), and table rows inside a <table>",
                template=name,
            )
        if len(_PLACEHOLDER.findall(inlined)) != n_tags:  # pragma: no cover - events cover it
            raise TemplateError(f"{name}: a Jinja tag vanished while inlining CSS",
                                template=name)


# --- the renderer ------------------------------------------------------------------------------


_FRAME_KEYS = ("subject", "preheader", "unsubscribe_url", "preferences_url", "content")
_FRAME_MARK = re.compile("\ue100(\\d)\ue101")
_Frame = tuple[str, tuple[tuple[int, str], ...]]
"""A rendered layout: its first static piece, then (which value, the static piece after it)
pairs; values are 0 subject, 1 preheader, 2 unsubscribe URL, 3 preferences URL, 4 the content
block. (Joining pieces costs a microsecond; str.format on an 8 KB layout costs twenty.)"""


@dataclass(frozen=True)
class _Part:
    """One of the html/txt templates of a bundle, with what the fast path needs."""

    template: jinja2.Template
    imports: dict[str, Any] | None
    """The child's top-level imports (macros, modules), or None when the template has other
    top-level code and must be rendered the plain Jinja way."""
    escape: bool
    frames: dict[str, _Frame | None] = field(default_factory=dict)
    """Per message kind: the layout rendered once with markers (None: not possible)."""


@dataclass(frozen=True)
class _Bundle:
    """Everything that is the same for every message of one (template, locale)."""

    template: str
    template_locale: str
    formatting_locale: str
    subject: jinja2.Template
    preheader: jinja2.Template
    html: _Part
    text: _Part
    fixed: dict[str, Any]


class Renderer:
    """Renders every email of one shop. Build once per run: the Jinja environment, its compiled
    (CSS-inlined) templates and the per-locale caches live as long as the Renderer."""

    def __init__(
        self, templates_dir: Path, shop: ShopSettings, unsubscribe_secret: str | bytes
    ) -> None:
        self.templates_dir = Path(templates_dir)
        if not self.templates_dir.is_dir():
            raise ConfigError(
                f"email templates directory {self.templates_dir} does not exist; point Tend at "
                "the project's templates/email directory"
            )
        if not (self.templates_dir / "layouts" / "base.html.j2").is_file():
            raise ConfigError(
                f"{self.templates_dir} has no layouts/base.html.j2; is this the templates/email "
                "directory (not templates/)?"
            )
        if not unsubscribe_secret:
            raise ConfigError(
                "the unsubscribe secret is empty; set a long random secret in Tend's "
                "configuration, or nobody could unsubscribe safely"
            )
        self.shop = shop
        self._secret = (
            unsubscribe_secret.encode("utf-8")
            if isinstance(unsubscribe_secret, str) else bytes(unsubscribe_secret)
        )
        self._base_url = shop.base_url.rstrip("/")
        self._unsubscribe_token = token_maker(self._secret, "unsubscribe")
        self._preferences_token = token_maker(self._secret, "preferences")
        css_path = self.templates_dir / CSS_FILE
        css = css_path.read_text(encoding="utf-8") if css_path.is_file() else None
        self._loader = _EmailLoader(self.templates_dir, css)
        self.env = _Environment(
            loader=self._loader,
            autoescape=jinja2.select_autoescape(
                enabled_extensions=("html.j2",), default_for_string=False, default=False
            ),
            undefined=_StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
            finalize=_finalize,
            auto_reload=False,
            cache_size=-1,
        )
        self.env.filters.update(
            money=format_money,
            date=format_long_date,
            discount=format_discount,
            number=format_number,
            plural=format_plural,
            ordinal=format_ordinal,
            with_query=_with_query,
            paragraphs=_paragraphs,
            lcfirst=_lcfirst,
            _link=_link,
        )
        self.env.context_class = _Context
        self.env.template_class = _Template
        self._globals = dict(self.env.globals)
        self._strings: dict[str, _Strings] = {}
        self._bundles: dict[tuple[str, str | None], _Bundle] = {}
        self._exact: dict[tuple[str, str], _Bundle] = {}
        self._protos: dict[jinja2.Template, tuple[Any, Any, Any, bool]] = {}

    # -- public API --

    def render(
        self,
        template: str,
        locale: str | None,
        context: Mapping[str, Any],
        *,
        customer_id: str,
        kind: str = "marketing",
    ) -> RenderedEmail:
        """Render ``template`` for one customer in (the closest available to) ``locale``.

        Besides ``context``, templates see ``shop``, ``kind``, ``locale`` (Babel id for the
        filters), ``lang`` (for ``<html lang>``), ``t`` (strings.j2), ``unsubscribe_url`` and
        ``preferences_url`` (None for transactional mail), and ``subject``/``preheader`` in the
        HTML and text parts. These names are the renderer's: same-named context keys are
        ignored.

        Raises TemplateError when a template is missing or broken, uses a variable the context
        lacks, makes a broken link, or (marketing, service) leaves out the unsubscribe link;
        the message says how to fix it.
        """
        bundle = self._bundles.get((template, locale))
        if bundle is None:
            bundle = self._bundle(template, locale)
        return self._render_bundle(bundle, context, customer_id, kind)

    def check(
        self,
        template: str,
        locales: Sequence[str],
        sample_context: Mapping[str, Any] | None = None,
        *,
        kind: str | None = None,
    ) -> list[str]:
        """Render ``template`` in each locale *without* fallback; return the problems found.

        The context is ``sample_context`` (default: the template's own sample) plus each of the
        template's variants and, when it has optional variables, the context without them, so
        every branch is rendered. ``kind`` defaults to the kind the template is written for.
        Problems: a missing part or locale, a missing variable (named), a broken link (named),
        an empty preheader or text part, an unrendered placeholder, "None" printed, and for
        marketing and service mail a missing unsubscribe or preferences link, missing
        List-Unsubscribe headers, or a footer without the shop's name and postal address.
        An empty list means the template is ready.
        """
        try:
            self._check_template_name(template)
        except TemplateError as exc:
            return [str(exc)]
        spec = TEMPLATE_SPECS.get(template)
        if kind is None:
            kind = spec.kind if spec else "marketing"
        if kind not in KINDS:
            return [f"message kind {kind!r} is unknown; use one of {', '.join(KINDS)}"]
        if spec is None and sample_context is None:
            return [str(_no_spec(template))]
        problems: list[str] = []
        for locale in locales:
            missing_parts = [
                f"{locale}/{template}.{part}.j2"
                for part in PARTS
                if not self._exists(f"{locale}/{template}.{part}.j2")
            ]
            if missing_parts:
                problems.append(
                    f"{locale}: missing {', '.join(missing_parts)}; create them (copy the "
                    f"{self.shop.default_locale}/ versions and translate)"
                )
                continue
            contexts = (sample_contexts(template, sample_context, locale) if spec is not None
                        else [("sample", dict(sample_context or {}))])
            for label, ctx in contexts:
                where = locale if label == "sample" else f"{locale} ({label})"
                try:
                    bundle = self._exact_bundle(template, locale)
                    rendered = self._render_bundle(bundle, ctx, _sample_id(ctx), kind)
                except TemplateError as exc:
                    problems.append(f"{where}: {exc}")
                    break  # the other variants would repeat the same error
                problems += [f"{where}: {p}" for p in self._inspect(rendered, kind)]
                # The fast path pours the content block into a layout rendered once per kind;
                # it must give exactly what rendering the whole template gives.
                whole = self._render_bundle(bundle, ctx, _sample_id(ctx), kind, fast=False)
                for part in ("html", "text"):
                    if getattr(whole, part) != getattr(rendered, part):
                        problems.append(
                            f"{where}: {rendered.template} renders differently through its "
                            f"layout frame ({part}); keep message data inside "
                            "{% block content %} (layouts and their partials may use only "
                            "shop, t, kind, lang, locale, subject, preheader, unsubscribe_url "
                            "and preferences_url)"
                        )
        return problems

    def check_all(
        self, locales: Sequence[str] | None = None, templates: Iterable[str] | None = None
    ) -> dict[str, list[str]]:
        """``tend templates check``: every template (on disk or in the specs) in every locale."""
        locales = list(locales or self.locales())
        names = sorted(set(templates) if templates is not None
                       else set(self.templates()) | set(TEMPLATE_SPECS))
        return {name: self.check(name, locales) for name in names}

    def templates(self) -> list[str]:
        """Template names that exist on disk in at least one locale."""
        return sorted({
            p.name[: -len(".subject.j2")]
            for loc in self.locales()
            for p in (self.templates_dir / loc).glob("*.subject.j2")
        })

    def locales(self) -> list[str]:
        """Locale directories (those with a strings.j2)."""
        return sorted(p.parent.name for p in self.templates_dir.glob("*/strings.j2"))

    def resolve_locale(self, template: str, locale: str | None) -> str:
        """The template directory to use: ``fr_CA`` -> ``fr_CA``, else ``fr``, else default."""
        self._check_template_name(template)
        for candidate in self._locale_candidates(locale):
            present = [p for p in PARTS if self._exists(f"{candidate}/{template}.{p}.j2")]
            if len(present) == len(PARTS):
                return candidate
            if present:
                absent = [f"{candidate}/{template}.{p}.j2" for p in PARTS if p not in present]
                raise TemplateError(
                    f"template {template!r} is only partly translated for {candidate!r}: "
                    f"{', '.join(absent)} missing; add them or remove the other "
                    f"{candidate}/{template}.*.j2 files",
                    template=f"{candidate}/{template}",
                )
        raise TemplateError(
            f"no templates for {template!r} in locale {locale!r} nor the shop's default "
            f"{self.shop.default_locale!r}; create {self.shop.default_locale}/{template}."
            f"{{subject,preheader,html,txt}}.j2 under {self.templates_dir}",
            template=template,
        )

    def render_user_text(self, source: str, context: Mapping[str, Any], *,
                         single_line: bool = False) -> str:
        """:func:`render_user_text` with this shop's Babel locale default."""
        return render_user_text(source, context, single_line=single_line)

    # -- internals --

    def _bundle(self, template: str, locale: str | None) -> _Bundle:
        template_locale = self.resolve_locale(template, locale)
        formatting = _formatting_locale(locale, template_locale)
        bundle = self._make_bundle(template, template_locale, formatting)
        self._bundles[(template, locale)] = bundle
        return bundle

    def _exact_bundle(self, template: str, locale: str) -> _Bundle:
        bundle = self._exact.get((template, locale))
        if bundle is None:
            bundle = self._make_bundle(template, locale, locale)
            self._exact[(template, locale)] = bundle
        return bundle

    def _make_bundle(self, template: str, template_locale: str, formatting: str) -> _Bundle:
        base = f"{template_locale}/{template}"
        subject, preheader, html, text = (self._load(f"{base}.{part}.j2") for part in PARTS)
        fixed = {
            "shop": self.shop,
            "locale": formatting,
            "lang": formatting.replace("_", "-"),
            "t": self._strings_for(template_locale),
        }
        return _Bundle(
            template, template_locale, formatting, subject, preheader,
            _Part(html, self._top_level_imports(html), escape=True),
            _Part(text, self._top_level_imports(text), escape=False),
            fixed=fixed,
        )

    def _load(self, name: str) -> jinja2.Template:
        return self._run(name, lambda: self.env.get_template(name))

    def _top_level_imports(self, template: jinja2.Template) -> dict[str, Any] | None:
        """What a child template imports at its top level ({% from %}, {% import %}), loaded
        once; None unless the template is only extends + imports + blocks (then the fast path
        renders its content block alone, inside a layout rendered once)."""
        name = template.name or ""
        try:
            source, filename, _ = self._loader.get_source(self.env, name)
            tree = self.env.parse(source, name, filename)
        except Exception:  # a broken file was already reported by get_template
            return None
        imports: dict[str, Any] = {}
        extends = False
        for node in tree.body:
            if isinstance(node, nodes.Extends):
                extends = True
            elif isinstance(node, nodes.Block) or (isinstance(node, nodes.Output) and all(
                isinstance(n, nodes.TemplateData) and not n.data.strip() for n in node.nodes
            )):
                continue
            elif isinstance(node, nodes.FromImport | nodes.Import) and not node.with_context \
                    and isinstance(node.template, nodes.Const):
                module = self._run(node.template.value,
                                   lambda n=node: self.env.get_template(n.template.value).module)
                if isinstance(node, nodes.Import):
                    imports[node.target] = module
                    continue
                for entry in node.names:
                    imported, alias = entry if isinstance(entry, tuple) else (entry, entry)
                    if not hasattr(module, imported):
                        return None
                    imports[alias] = getattr(module, imported)
            else:
                return None
        if not extends or "content" not in template.blocks:
            return None
        return imports

    def _frame(self, bundle: _Bundle, part: _Part, kind: str) -> _Frame | None:
        """Render the part's layout once for this kind, with markers where the per-message
        values go (subject, preheader, links, content block). None if the layout needs anything
        else: then every message renders the whole template."""
        if kind in part.frames:
            return part.frames[kind]
        frame: _Frame | None = None
        if part.imports is not None:
            marks = {key: f"\ue100{i}\ue101" for i, key in enumerate(_FRAME_KEYS)}
            ctx = {**self._globals, **bundle.fixed, **part.imports, "kind": kind,
                   "subject": marks["subject"], "preheader": marks["preheader"],
                   "unsubscribe_url": None, "preferences_url": None}
            if kind in UNSUBSCRIBE_KINDS:
                ctx["unsubscribe_url"] = marks["unsubscribe_url"]
                ctx["preferences_url"] = marks["preferences_url"]
            template = part.template
            context = template.new_context(ctx, shared=True)
            context.blocks["content"] = [lambda _context: iter((marks["content"],))]
            try:
                out = "".join(template.root_render_func(context))
            except Exception:
                out = None  # the layout uses message data: no frame
            if out is not None:
                pieces = _FRAME_MARK.split(out)
                statics = pieces[0::2]
                keys = pieces[1::2]
                if keys.count(str(_FRAME_KEYS.index("content"))) == 1 and not any(
                        "\ue100" in static or "\ue101" in static for static in statics):
                    frame = (statics[0], tuple((int(key), static) for key, static
                                               in zip(keys, statics[1:], strict=True)))
        part.frames[kind] = frame
        return frame

    def _render_fast(self, bundle: _Bundle, part: _Part, ctx: dict[str, Any], kind: str,
                     values: tuple[str, str, str, str]) -> str:
        """The content block alone, poured into the layout rendered once for this kind.
        ``values``: subject, preheader, unsubscribe and preferences URLs, escaped as the part
        needs."""
        frame = self._frame(bundle, part, kind)
        if frame is None:
            return self._render_part(part.template, ctx)
        template = part.template
        local = {**ctx, **part.imports} if part.imports else ctx
        try:
            try:
                content = "".join(template.blocks["content"](
                    self._context(template, local, block_only=True)))
            except Exception:
                self.env.handle_exception()
        except TemplateError:
            raise
        except Exception as exc:
            error = self._template_error(template.name or "?", exc)
            if error is exc:
                raise
            raise error from exc
        first, rest = frame
        every = (*values, content)
        out = [first]
        for key, static in rest:
            out.append(every[key])
            out.append(static)
        return "".join(out)

    def _render_bundle(
        self, bundle: _Bundle, context: Mapping[str, Any], customer_id: str, kind: str,
        *, fast: bool = True,
    ) -> RenderedEmail:
        if kind not in KINDS:
            raise ConfigError(
                f"message kind {kind!r} is unknown; use one of {', '.join(KINDS)} "
                "(check the program's kind in programs.yaml)"
            )
        headers: dict[str, str]
        if kind in UNSUBSCRIBE_KINDS:
            unsubscribe_url: str | None = (
                f"{self._base_url}/unsubscribe/{self._unsubscribe_token(customer_id)}"
            )
            preferences_url: str | None = (
                f"{self._base_url}/preferences/{self._preferences_token(customer_id)}"
            )
            headers = {
                "List-Unsubscribe": f"<{unsubscribe_url}>",
                "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
            }
        else:
            unsubscribe_url = preferences_url = None
            headers = {}
        # Jinja's globals, then the caller's context, then the renderer's own names, which win:
        # nobody can pass in a different unsubscribe link or shop identity by accident.
        ctx = {**self._globals, **context, **bundle.fixed, "kind": kind,
               "unsubscribe_url": unsubscribe_url, "preferences_url": preferences_url}
        subject = _single_line(self._render_part(bundle.subject, ctx))
        if not subject:
            name = bundle.subject.name or ""
            raise TemplateError(
                f"template {name} rendered an empty subject; give it some text (or check "
                "the conditions around it)",
                template=name,
            )
        preheader = _single_line(self._render_part(bundle.preheader, ctx))
        ctx["subject"] = subject
        ctx["preheader"] = preheader
        if fast:
            plain = (subject, preheader, unsubscribe_url or "", preferences_url or "")
            html = self._render_fast(bundle, bundle.html, ctx, kind,
                                     tuple(map(_escape, plain)))  # type: ignore[arg-type]
            text = _tidy_text(self._render_fast(bundle, bundle.text, ctx, kind, plain))
        else:
            html = self._render_part(bundle.html.template, ctx)
            text = _tidy_text(self._render_part(bundle.text.template, ctx))
        if unsubscribe_url is not None:
            missing_in = [part for part, body in (("html", html), ("txt", text))
                          if unsubscribe_url not in body]
            if missing_in:
                base = f"{bundle.template_locale}/{bundle.template}"
                files = " and ".join(f"{base}.{part}.j2" for part in missing_in)
                raise TemplateError(
                    f"template {files} is a {kind} email but never shows "
                    "{{ unsubscribe_url }}; extend layouts/base.html.j2 / base.txt.j2 (their "
                    "footer has the link) or add the link yourself: CASL and RFC 8058 require it",
                    template=f"{base}.{missing_in[0]}.j2",
                )
        return RenderedEmail(
            subject=subject, preheader=preheader, html=html, text=text, headers=headers,
            template=f"{bundle.template_locale}/{bundle.template}",
            locale=bundle.formatting_locale,
        )

    def _render_part(self, template: jinja2.Template, ctx: dict[str, Any]) -> str:
        """``Template.render`` without its two dict copies; errors keep template lines."""
        try:
            try:
                return "".join(template.root_render_func(self._context(template, ctx)))
            except Exception:
                self.env.handle_exception()
        except TemplateError:
            raise
        except Exception as exc:
            error = self._template_error(template.name or "?", exc)
            if error is exc:
                raise
            raise error from exc

    def _context(self, template: jinja2.Template, parent: dict[str, Any], *,
                 block_only: bool = False) -> jinja2.runtime.Context:
        """``template.new_context(parent, shared=True)`` at a fraction of the cost: the parts
        that never change for a template (its evaluation context, globals, blocks) are made
        once and shared; ``parent``, ``vars`` and ``exported_vars`` are per render. Only for
        templates that do not extend another (extending appends to ``blocks``) and are not
        rendered on their own root with ``{% extends %}``: subjects, preheaders, and the
        content blocks of the fast path."""
        proto = self._protos.get(template)
        if proto is None:
            made = template.new_context({}, shared=True)
            proto = (made.eval_ctx, made.globals_keys, made.blocks, self._extends(template))
            self._protos[template] = proto
        eval_ctx, globals_keys, blocks, extends = proto
        if extends and not block_only:
            return template.new_context(parent, shared=True)
        context = _Context.__new__(_Context)
        context.parent = parent
        context.vars = {}
        context.environment = self.env
        context.eval_ctx = eval_ctx
        context.exported_vars = set()
        context.name = template.name
        context.globals_keys = globals_keys
        context.blocks = blocks
        return context

    def _extends(self, template: jinja2.Template) -> bool:
        """Whether the template's root render would extend another (block-only renders are
        fine either way: they never touch ``blocks``)."""
        return "parent_template" in (template.root_render_func.__code__.co_varnames or ())

    def _inspect(self, rendered: RenderedEmail, kind: str) -> list[str]:
        """What a clean render can still get wrong (see :meth:`check`)."""
        base = rendered.template
        problems: list[str] = []
        if not rendered.preheader:
            problems.append(
                f"{base}.preheader.j2 renders empty; inboxes will show the first words of "
                "the body instead, so write a preview line"
            )
        for m in _LINK_ATTRIBUTE.finditer(rendered.html):
            raw = m.group(1) if m.group(1) is not None else m.group(2)
            value = html_lib.unescape(raw)
            if (not value.strip() or _BROKEN_LINK.search(value)
                    or not re.match(r"(?:https?://|mailto:|tel:|#)", value)):
                problems.append(
                    f"{base}.html.j2 has a broken link{m.group(0).rstrip()}: links must be "
                    "full http(s)/mailto URLs; fix the value or the template"
                )
        body = _visible_text(rendered.html)
        if not _visible_text(rendered.text).strip():
            problems.append(f"{base}.txt.j2 renders no text; write the plain-text twin")
        for part, content in (("html", body), ("txt", rendered.text),
                              ("subject", rendered.subject), ("preheader", rendered.preheader)):
            leftover = re.search(r"\{\{|\}\}|\{%|%\}|\bNone\b|\bUndefined\b", content)
            if leftover:
                start = max(leftover.start() - 30, 0)
                problems.append(
                    f"{base}.{part}.j2 prints "
                    f"{leftover.group(0)!r} (near {content[start:leftover.end() + 30]!r}): "
                    "a placeholder that did not render or a None value; fix the template or "
                    "the sample context"
                )
        if kind in UNSUBSCRIBE_KINDS:
            if rendered.headers.get("List-Unsubscribe-Post") != "List-Unsubscribe=One-Click" \
                    or not rendered.headers.get("List-Unsubscribe", "").startswith("<http"):
                problems.append(f"{base}: the RFC 8058 List-Unsubscribe headers are missing")
            for part, content in (("html", rendered.html), ("txt", rendered.text)):
                if "/preferences/" not in content:
                    problems.append(
                        f"{base}.{part}.j2 has no preferences link ({{{{ preferences_url }}}}); "
                        "the layout footer has it"
                    )
                plain = _visible_text(content) if part == "html" else content
                address = next((ln.strip() for ln in self.shop.postal_address.splitlines()
                                if ln.strip()), "")
                for label, needed in (("the shop's name", self.shop.name),
                                      ("the shop's postal address", address)):
                    if needed and needed not in plain:
                        problems.append(
                            f"{base}.{part}.j2 does not show {label} ({needed!r}); CASL and "
                            "CAN-SPAM require it in every marketing message (the layout "
                            "footer has it)"
                        )
        return problems

    def _locale_candidates(self, locale: str | None) -> list[str]:
        candidates: list[str] = []
        parsed = _babel_locale(locale) if locale else None
        if parsed is not None:
            candidates.append(str(parsed))
            candidates.append(parsed.language)
        candidates.append(self.shop.default_locale)
        return list(dict.fromkeys(candidates))

    def _check_template_name(self, template: str) -> None:
        if not isinstance(template, str) or not _TEMPLATE_NAME.fullmatch(template):
            raise TemplateError(
                f"template name {template!r} is not valid; use lowercase letters, digits, '_' "
                "and '-' only (e.g. 'winback')",
                template=str(template),
            )

    def _exists(self, name: str) -> bool:
        return (self.templates_dir / name).is_file()

    def _strings_for(self, template_locale: str) -> _Strings:
        """The ``t`` object: ``{locale}/strings.j2`` as a module (its sets and macros)."""
        if template_locale not in self._strings:
            name = f"{template_locale}/strings.j2"
            if not self._exists(name):
                raise TemplateError(
                    f"{name} is missing; every locale needs one for the shared words of the "
                    f"layout and footer (copy {self.shop.default_locale}/strings.j2 and "
                    "translate it)",
                    template=name,
                )
            module = self._run(name, lambda: self.env.get_template(name).module)
            self._strings[template_locale] = _Strings(module, name)
        return self._strings[template_locale]

    def _run(self, name: str, action: Callable[[], _T]) -> _T:
        """Run a Jinja action, turning every Jinja failure into a TemplateError that says
        which file, which line and what to do."""
        try:
            return action()
        except TemplateError:
            raise
        except Exception as exc:
            error = self._template_error(name, exc)
            if error is exc:
                raise
            raise error from exc

    def _template_error(self, name: str, exc: BaseException) -> BaseException:
        if isinstance(exc, _MissingVariable):
            return TemplateError(self._missing_message(name, exc), template=name)
        if isinstance(exc, _BrokenLink):
            where = self._where(name, exc.__traceback__)
            shown = "empty" if exc.value is None or not str(exc.value).strip() \
                else f"{str(exc.value)[:60]!r}"
            return TemplateError(
                f"template {where} links to {{{{ {exc.expression} }}}}, which is {shown}: a "
                f"broken link; pass a full URL in {_first_name(exc.expression)!r} or guard the "
                f"link with {{% if {_first_name(exc.expression)} %}}",
                template=name,
            )
        if isinstance(exc, jinja2.UndefinedError):  # raised by Jinja itself, not our Undefined
            where = self._where(name, exc.__traceback__)
            return TemplateError(
                f"template {where} uses something undefined: {exc.message}; fix the template or "
                "pass the value in the context",
                template=name,
            )
        if isinstance(exc, jinja2.TemplateSyntaxError):
            broken = exc.name or name
            line = self._original_line(exc.filename, exc.lineno)
            return TemplateError(
                f"template {broken} has a syntax error on line {line}: {exc.message}"
                + (f" (while loading {name})" if broken != name else ""),
                template=broken,
            )
        if isinstance(exc, jinja2.TemplateNotFound):
            if exc.name == name:
                msg = f"template {name} does not exist under {self.templates_dir}; create it"
            else:
                msg = (
                    f"template {name} includes or extends {exc.name}, which does not exist "
                    f"under {self.templates_dir}; create it or fix the name"
                )
            return TemplateError(msg, template=name)
        if isinstance(exc, TypeError | ValueError | ArithmeticError | KeyError | AttributeError
                      | IndexError | jinja2.TemplateError):
            where = self._where(name, exc.__traceback__)
            return TemplateError(
                f"template {where} failed: {exc}; check the values passed in the context "
                "(see sample_context() in tend/email_contexts.py for their expected types)",
                template=name,
            )
        return exc

    def _missing_message(self, name: str, exc: _MissingVariable) -> str:
        where = self._where(name, exc.__traceback__)
        variable = exc.variable or "?"
        owner = exc.owner
        if owner is missing:
            return (
                f"template {where} uses {{{{ {variable} }}}} but the context has no "
                f"{variable!r}; pass {variable!r} when rendering (for a program, give it one in "
                f"programs.yaml) or guard it with {{% if {variable} is defined %}}"
            )
        if isinstance(owner, _Strings):
            return (
                f"template {where} uses t.{variable} but {owner._tend_file} does not define it; "
                f'add {{% set {variable} = "..." %}} (or a macro) to {owner._tend_file} and to '
                "every other locale's strings.j2"
            )
        if isinstance(owner, Mapping):
            keys = ", ".join(sorted(map(str, owner))) or "none"
            return (
                f"template {where} uses .{variable} on a mapping that has no {variable!r} "
                f"(it has: {keys}); add {variable!r} to what the pipeline passes, or fix the "
                "name in the template"
            )
        return (
            f"template {where} uses .{variable} on a {type(owner).__name__} that has no "
            f"{variable!r}; fix the name in the template or pass a value that has it"
        )

    def _original_line(self, filename: str | None, line: int | None) -> int | None:
        if filename is None or line is None:
            return line
        line_map = self._loader.line_maps.get(filename)
        return line_map(line) if line_map else line

    def _where(self, name: str, tb: TracebackType | None) -> str:
        """'en/winback.html.j2 line 12', or '... (in partials/footer.html.j2 line 3)'."""
        root = self.templates_dir.resolve()
        found: tuple[str, int | None] | None = None
        for frame in traceback.extract_tb(tb):
            try:
                relative = Path(frame.filename).resolve().relative_to(root)
            except (ValueError, OSError):
                continue
            found = (relative.as_posix(), self._original_line(frame.filename, frame.lineno))
        if found is None:
            return name
        file, line = found
        line_text = f" line {line}" if line else ""
        if file == name:
            return f"{name}{line_text}"
        return f"{name} (in {file}{line_text})"


# --- helpers ------------------------------------------------------------------------------------


def _no_spec(template: str) -> TemplateError:
    try:
        template_spec(template)
    except TemplateError as exc:
        return exc
    raise AssertionError("unreachable")  # pragma: no cover


def _sample_id(ctx: Mapping[str, Any]) -> str:
    customer = ctx.get("customer")
    if customer is not None:
        with contextlib.suppress(KeyError, AttributeError, TypeError):
            value = _field(customer, "customer_id")
            if value:
                return str(value)
    return "sample-customer"


def _first_name(expression: str) -> str:
    m = _URL_NAME.match(expression)
    return m.group(1) if m else expression


def _visible_text(markup: str) -> str:
    """Rough visible text of an HTML document: no tags, comments, head or style."""
    markup = re.sub(r"(?is)<head\b.*?</head>|<!--.*?-->|<style\b.*?</style>", " ", markup)
    return html_lib.unescape(re.sub(r"<[^>]+>", " ", markup))


def _formatting_locale(requested: str | None, template_locale: str) -> str:
    """Keep the customer's region when the language matches the templates used: a ``fr-CA``
    customer reading ``fr/`` templates gets Canadian formats. Otherwise (a ``de`` customer
    falling back to ``en/``) format like the templates, not like German."""
    parsed = _babel_locale(requested) if requested else None
    template = _babel_locale(template_locale)
    if parsed is not None and template is not None and parsed.language == template.language:
        return str(parsed)
    return str(template) if template is not None else template_locale


def _single_line(value: str) -> str:
    """Subjects and preheaders: no line breaks or control characters, ever."""
    if value.isprintable() and "  " not in value:  # the usual case: nothing to replace
        return value.strip()
    return _LINE_BREAKERS.sub(" ", value).strip()


def _escape(value: str) -> str:
    return str(markupsafe.escape(value))


def _tidy_text(value: str) -> str:
    """Plain text: no trailing spaces, at most one blank line in a row, one final newline.

    (Plain str methods: on a 1-2 KB message they are several times faster than regexes.)
    """
    if "\r" in value:
        value = value.replace("\r\n", "\n").replace("\r", "\n")
    value = "\n".join([line.rstrip() for line in value.split("\n")])
    while "\n\n\n" in value:
        value = value.replace("\n\n\n", "\n\n")
    return value.strip() + "\n"


# --- text typed by a marketing user (campaign form): sandboxed ----------------------------------

USER_TEXT_MAX_CHARS = 20_000
_USER_TEXT_FILTERS = frozenset({
    "abs", "capitalize", "count", "d", "default", "e", "escape", "first", "float", "int",
    "join", "last", "length", "lower", "replace", "round", "string", "striptags", "title",
    "trim", "truncate", "upper", "wordcount",
})


class _UserTextSandbox(ImmutableSandboxedEnvironment):
    """Jinja's immutable sandbox (no attribute starting with "_", no unsafe callables, no
    mutation of lists or dicts) with no globals at all, a short list of text filters, and
    operators that cannot allocate unbounded memory."""

    intercepted_binops = frozenset({"*", "**", "%", "//"})

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "**":
            raise SecurityError("the ** operator is not allowed in campaign text")
        if operator == "%" and isinstance(left, str):
            raise SecurityError("string formatting with % is not allowed in campaign text")
        if operator == "*":
            sizes = [x for x in (left, right) if isinstance(x, str | list | tuple)]
            counts = [x for x in (left, right) if isinstance(x, int)]
            if sizes and counts and max(counts) > 100:
                raise SecurityError("repeating text more than 100 times is not allowed")
        return super().call_binop(context, operator, left, right)


def _make_user_env() -> _UserTextSandbox:
    env = _UserTextSandbox(undefined=jinja2.StrictUndefined, autoescape=False,
                           finalize=_finalize, auto_reload=False)
    env.globals.clear()
    env.filters = {k: v for k, v in env.filters.items() if k in _USER_TEXT_FILTERS}
    env.filters.update(money=format_money, date=format_long_date, number=format_number)
    return env


_USER_ENV = _make_user_env()


@functools.lru_cache(maxsize=256)
def _user_template(source: str) -> jinja2.Template:
    return _USER_ENV.from_string(source)


def render_user_text(source: str, context: Mapping[str, Any], *,
                     single_line: bool = False) -> str:
    """Render text a marketing user typed (campaign subject, intro, ...) in a sandbox.

    ``Hi {{ customer.first_name|default("there") }}!`` works; ``{{ customer.__class__ }}``,
    ``{{ "".__class__.__mro__ }}``, calling unsafe methods, mutating lists, ``range``,
    ``"x" * 10**9`` and every other escape attempt fail with a TemplateError, as do variables
    the context lacks. The result is plain text: HTML templates escape it like any value.
    ``single_line`` makes it fit a subject (no line breaks).
    """
    if not isinstance(source, str):
        raise TemplateError("campaign text must be a string", template="<campaign text>")
    if len(source) > USER_TEXT_MAX_CHARS:
        raise TemplateError(
            f"campaign text is {len(source):,} characters; keep it under "
            f"{USER_TEXT_MAX_CHARS:,}", template="<campaign text>")
    try:
        text = _user_template(source).render(dict(context))
    except SecurityError as exc:
        raise TemplateError(f"campaign text is not allowed to do that: {exc}",
                            template="<campaign text>") from exc
    except jinja2.UndefinedError as exc:
        names = ", ".join(sorted(map(str, context))) or "none"
        raise TemplateError(
            f"campaign text uses something the message does not have: {exc.message} "
            f"(available: {names})", template="<campaign text>") from exc
    except jinja2.TemplateSyntaxError as exc:
        raise TemplateError(f"campaign text has a syntax error on line {exc.lineno}: "
                            f"{exc.message}", template="<campaign text>") from exc
    except (jinja2.TemplateError, TypeError, ValueError, ArithmeticError, LookupError,
            AttributeError, RecursionError) as exc:
        raise TemplateError(f"campaign text failed: {exc}", template="<campaign text>") from exc
    if len(text) > 4 * USER_TEXT_MAX_CHARS:
        raise TemplateError("campaign text renders far too long", template="<campaign text>")
    return _single_line(text) if single_line else text
