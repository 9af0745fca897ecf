"""Render Tend's emails from Jinja templates: subject, preheader, HTML and plain text.

Templates live under one directory (``templates/email``)::

    layouts/base.html.j2, layouts/base.txt.j2     shared frame: header, content, footer
    partials/*.j2                                 header, footer, offer box, product card, ...
    {locale}/strings.j2                           shared words for one language, exposed as ``t``
    {locale}/{template}.subject.j2                one line
    {locale}/{template}.preheader.j2              one line, the inbox preview text
    {locale}/{template}.html.j2                   extends layouts/base.html.j2
    {locale}/{template}.txt.j2                    extends layouts/base.txt.j2

Design choices, and why:

* **Autoescape only for ``.html.j2``.** Customer data (a first name) is escaped in HTML, but
  not mangled into ``&amp;`` in the text part or the subject.
* **StrictUndefined.** A typo or a variable the program does not provide fails the render with
  a :class:`~tend.errors.TemplateError` naming the file, line and variable, instead of quietly
  sending "Hi ," to ten thousand people. ``None`` values print as an empty string.
* **Single-line subject and preheader.** Their output is stripped and every run of control
  characters (CR, LF, tab, ...) becomes one space, so customer data can never inject a header.
* **Compliance is enforced, not hoped for.** For ``kind="marketing"`` the renderer makes signed
  unsubscribe and preferences links (see :mod:`tend.tokens`), sets the RFC 8058 one-click
  ``List-Unsubscribe`` headers, and refuses a message whose HTML or text lacks the link.
* **Locale fallback.** ``fr-CA`` uses ``fr_CA/`` templates if they exist, else ``fr/``, else
  the shop's default locale; money and dates keep the customer's region when the language
  matches (``fr-CA`` customer, ``fr/`` templates: "10,00 $", "12 mars 2027").
"""

from __future__ import annotations

import contextlib
import copy
import functools
import re
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import jinja2
import markupsafe
from babel import Locale, UnknownLocaleError, localedata
from babel.dates import format_date
from babel.numbers import format_currency, format_percent
from jinja2.runtime import Macro
from jinja2.utils import missing

from tend.errors import ConfigError, TemplateError
from tend.tokens import make_token

__all__ = [
    "KINDS",
    "PARTS",
    "RenderedEmail",
    "Renderer",
    "ShopIdentity",
    "format_discount",
    "format_long_date",
    "format_money",
    "sample_context",
]

PARTS: tuple[str, ...] = ("subject", "preheader", "html", "txt")
"""The four files every template has in each locale: ``{locale}/{template}.{part}.j2``."""

KINDS: tuple[str, ...] = ("marketing", "transactional")
"""Message kinds. Unknown kinds are refused: a typo must not skip the unsubscribe link."""

_TEMPLATE_NAME = re.compile(r"[a-z0-9][a-z0-9_-]*")
# CR, LF, tabs, other C0/C1 controls, Unicode line/paragraph separators, and plain spaces
# (so a run of them collapses to one space). Non-breaking spaces are kept on purpose:
# Babel puts them in "10,00 $" and they are harmless in a header.
_LINE_BREAKERS = re.compile(r"[ \x00-\x1f\x7f-\x9f\u2028\u2029]+")
_BLANK_LINES = re.compile(r"\n{3,}")
_T = TypeVar("_T")


@dataclass(frozen=True)
class ShopIdentity:
    """Who the email is from; shown in the footer as CASL and CAN-SPAM require."""

    name: str
    postal_address: str
    from_email: str
    from_name: str
    reply_to: str | None
    base_url: str
    """Where Tend's unsubscribe/preferences pages live, e.g. ``http://localhost:8080/tend``."""
    default_locale: str = "en"
    website_url: str | None = None
    """The shop's storefront; when set, emails show a button to it."""


@dataclass(frozen=True)
class RenderedEmail:
    """One rendered message for one customer: ready to become an OutgoingMessage."""

    subject: str
    preheader: str
    html: str
    text: str
    headers: dict[str, str]


# --- filters -------------------------------------------------------------------------------


def _babel_locale(locale: str) -> Locale | None:
    try:
        return Locale.parse(str(locale).strip().replace("-", "_"))
    except (ValueError, TypeError, UnknownLocaleError):
        return None


def format_money(amount: Decimal | float | int, currency: str, locale: str) -> str:
    """``{{ offer.amount|money(offer.currency, locale) }}`` -> "$10.00", "10,00 $".

    A bare language ("fr", "en") says nothing about the region, and Babel then writes
    "10,00 $CA". When the currency belongs to one country (CAD -> CA, USD -> US, CHF -> CH)
    and Babel knows that language there, we format as that region: a customer paying in CAD
    reads "10,00 $" and "$10.00". Multi-country currencies (EUR) stay as they are.
    """
    parsed = _babel_locale(locale)
    if parsed is None:
        raise ValueError(f"unknown locale {locale!r} for money formatting")
    babel_id = str(parsed)
    if parsed.territory is None:
        regional = f"{parsed.language}_{currency[:2].upper()}"
        if localedata.exists(regional):
            babel_id = regional
    return format_currency(amount, currency, locale=babel_id)


def format_long_date(value: date | datetime | str, locale: str) -> str:
    """``{{ offer.expires_on|date(locale) }}`` -> "March 12, 2027", "12 mars 2027".

    French writes the first of the month as an ordinal ("1er mars"), which Babel's long
    pattern does not, so we special-case it.
    """
    if isinstance(value, str):
        value = date.fromisoformat(value)
    if isinstance(value, datetime):
        value = value.date()
    parsed = _babel_locale(locale)
    if parsed is None:
        raise ValueError(f"unknown locale {locale!r} for date formatting")
    if parsed.language == "fr" and value.day == 1:
        return format_date(value, "d'er' MMMM y", locale=parsed)
    return format_date(value, format="long", locale=parsed)


def _field(obj: Any, name: str) -> Any:
    return obj[name] if isinstance(obj, Mapping) else getattr(obj, name)


def format_discount(offer: Any, locale: str) -> str:
    """``{{ offer|discount(locale) }}`` -> "$10.00" or "15%" / "15 %" from an offer's kind.

    ``offer.kind`` is "amount" (``amount`` in ``currency``) or "percent" (``amount`` = 15 for
    15 %). Anything else is an error rather than a guess, since the number is a promise.
    """
    kind = _field(offer, "kind")
    amount = _field(offer, "amount")
    if kind == "amount":
        return format_money(amount, _field(offer, "currency"), locale)
    if kind == "percent":
        parsed = _babel_locale(locale)
        if parsed is None:
            raise ValueError(f"unknown locale {locale!r} for percent formatting")
        return format_percent(Decimal(str(amount)) / 100, locale=parsed)
    raise ValueError(f"offer kind must be 'amount' or 'percent', got {kind!r}")


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
    """``t`` in templates: the sets and macros of ``{locale}/strings.j2``.

    Why a wrapper instead of ``{% import %}``: Jinja marks a macro's output as safe HTML when
    it is *called* from an autoescaped template, even though strings.j2 (not ``.html.j2``)
    never escaped the arguments. ``t.greeting(customer.first_name)`` would then put a raw
    ``<script>`` into the HTML. Calling the macro from Python returns a plain ``str``, which
    the calling template escapes (HTML) or leaves alone (text, subject) like any other value.
    """

    def __init__(self, module: Any, file: str) -> None:
        self._module = module
        self.file = file

    def __getattr__(self, key: str) -> Any:
        if key.startswith("_"):
            raise AttributeError(key)
        value = getattr(self._module, key)
        if isinstance(value, Macro):
            macro = value

            def call(*args: Any, **kwargs: Any) -> str:
                return str(macro(*args, **kwargs))

            return call
        return value

    def __repr__(self) -> str:
        return f"<strings from {self.file}>"


def _finalize(value: Any) -> Any:
    """Print None as nothing: "Hi ," is caught by templates' fallbacks; "Hi None," is not."""
    return "" if value is None else value


# --- the renderer ------------------------------------------------------------------------------


class Renderer:
    """Renders every email of one shop. Build once per run: the Jinja environment (and its
    template cache) lives as long as the Renderer."""

    def __init__(
        self, templates_dir: Path, shop: ShopIdentity, unsubscribe_secret: str | bytes
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
        self._secret = unsubscribe_secret
        self.env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(self.templates_dir),
            autoescape=jinja2.select_autoescape(
                enabled_extensions=("html.j2",), default_for_string=False, default=False
            ),
            undefined=_StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
            finalize=_finalize,
        )
        self.env.filters["money"] = format_money
        self.env.filters["date"] = format_long_date
        self.env.filters["discount"] = format_discount
        self._strings: dict[str, _Strings] = {}

    # -- public API --

    def render(
        self,
        template: str,
        locale: str,
        context: Mapping[str, Any],
        *,
        customer_id: str,
        kind: str = "marketing",
    ) -> RenderedEmail:
        """Render ``template`` for one customer in (the closest available to) ``locale``.

        Besides ``context``, templates see ``shop``, ``kind``, ``locale`` (Babel id for the
        filters), ``lang`` (for ``<html lang>``), ``t`` (strings.j2), ``unsubscribe_url`` and
        ``preferences_url`` (None unless marketing), and ``subject``/``preheader`` in the HTML
        and text parts. These names are the renderer's: same-named context keys are ignored.

        Raises TemplateError when a template is missing or broken, uses a variable the context
        lacks, or (marketing) leaves out the unsubscribe link; the message says how to fix it.
        """
        template_locale = self.resolve_locale(template, locale)
        formatting_locale = _formatting_locale(locale, template_locale)
        return self._render_in(
            template,
            template_locale,
            formatting_locale,
            context,
            customer_id=customer_id,
            kind=kind,
        )

    def check(
        self,
        template: str,
        locales: Sequence[str],
        sample_context: Mapping[str, Any],
        *,
        kind: str = "marketing",
    ) -> list[str]:
        """Render ``template`` in each locale *without* fallback; return the problems found.

        An empty list means every locale has all four parts and renders cleanly with the
        sample. Used by tests and ``tend templates check`` before a night's run.
        """
        problems: list[str] = []
        try:
            self._check_template_name(template)
        except TemplateError as exc:
            return [str(exc)]
        customer = sample_context.get("customer")
        customer_id = "sample-customer"
        if customer is not None:
            with contextlib.suppress(KeyError, AttributeError):
                customer_id = str(_field(customer, "customer_id"))
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
            try:
                rendered = self._render_in(
                    template, locale, locale, sample_context, customer_id=customer_id, kind=kind
                )
            except TemplateError as exc:
                problems.append(f"{locale}: {exc}")
                continue
            if not rendered.preheader:
                problems.append(
                    f"{locale}: {locale}/{template}.preheader.j2 renders empty; inboxes will "
                    "show the first words of the body instead, so write a preview line"
                )
        return problems

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

    # -- internals --

    def _locale_candidates(self, locale: str | None) -> list[str]:
        candidates: list[str] = []
        parsed = _babel_locale(locale) if locale else None
        if parsed is not None:
            candidates.append(str(parsed))
            candidates.append(parsed.language)
        candidates.append(self.shop.default_locale)
        return list(dict.fromkeys(candidates))

    def _check_template_name(self, template: str) -> None:
        if not _TEMPLATE_NAME.fullmatch(template):
            raise TemplateError(
                f"template name {template!r} is not valid; use lowercase letters, digits, '_' "
                "and '-' only (e.g. 'winback')",
                template=template,
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

    def _render_in(
        self,
        template: str,
        template_locale: str,
        formatting_locale: str,
        context: Mapping[str, Any],
        *,
        customer_id: str,
        kind: str,
    ) -> RenderedEmail:
        if kind not in KINDS:
            raise ConfigError(
                f"message kind {kind!r} is unknown; use one of {', '.join(KINDS)} "
                "(check the program's kind in programs.yaml)"
            )
        base_url = self.shop.base_url.rstrip("/")
        unsubscribe_url: str | None = None
        preferences_url: str | None = None
        headers: dict[str, str] = {}
        if kind == "marketing":
            unsubscribe_url = f"{base_url}/unsubscribe/{make_token(self._secret, customer_id)}"
            preferences_url = (
                f"{base_url}/preferences/{make_token(self._secret, customer_id, 'preferences')}"
            )
            headers = {
                "List-Unsubscribe": f"<{unsubscribe_url}>",
                "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
            }
        # The renderer's own names win over the caller's: nobody can pass in a different
        # unsubscribe link or shop identity by accident.
        ctx: dict[str, Any] = {
            **context,
            "shop": self.shop,
            "kind": kind,
            "locale": formatting_locale,
            "lang": formatting_locale.replace("_", "-"),
            "t": self._strings_for(template_locale),
            "unsubscribe_url": unsubscribe_url,
            "preferences_url": preferences_url,
        }
        base = f"{template_locale}/{template}"
        subject = _single_line(self._render_file(f"{base}.subject.j2", ctx))
        if not subject:
            raise TemplateError(
                f"template {base}.subject.j2 rendered an empty subject; give it some text "
                "(or check the conditions around it)",
                template=f"{base}.subject.j2",
            )
        preheader = _single_line(self._render_file(f"{base}.preheader.j2", ctx))
        ctx["subject"] = subject
        ctx["preheader"] = preheader
        html = self._render_file(f"{base}.html.j2", ctx)
        text = _tidy_text(self._render_file(f"{base}.txt.j2", ctx))
        if unsubscribe_url is not None:
            escaped = str(markupsafe.escape(unsubscribe_url))
            missing_in = [
                part
                for part, present in (
                    ("html", unsubscribe_url in html or escaped in html),
                    ("txt", unsubscribe_url in text),
                )
                if not present
            ]
            if missing_in:
                files = " and ".join(f"{base}.{part}.j2" for part in missing_in)
                raise TemplateError(
                    f"template {files} is a marketing email but never shows "
                    "{{ unsubscribe_url }}; extend layouts/base.html.j2 / base.txt.j2 (their "
                    "footer has the link) or add the link yourself: CASL and RFC 8058 require it",
                    template=f"{base}.{missing_in[0]}.j2",
                )
        return RenderedEmail(
            subject=subject, preheader=preheader, html=html, text=text, headers=headers
        )

    def _render_file(self, name: str, ctx: Mapping[str, Any]) -> str:
        return self._run(name, lambda: self.env.get_template(name).render(ctx))

    def _run(self, name: str, action: Callable[[], _T]) -> _T:
        """Run a Jinja action, turning every Jinja failure into a TemplateError that says
        which file, which line and what to do."""
        try:
            return action()
        except _MissingVariable as exc:
            raise TemplateError(self._missing_message(name, exc), template=name) from exc
        except jinja2.UndefinedError as exc:  # raised by Jinja itself, not our Undefined
            where = self._where(name, exc.__traceback__)
            raise TemplateError(
                f"template {where} uses something undefined: {exc.message}; fix the template or "
                "pass the value in the context",
                template=name,
            ) from exc
        except jinja2.TemplateSyntaxError as exc:
            broken = exc.name or name
            raise TemplateError(
                f"template {broken} has a syntax error on line {exc.lineno}: {exc.message}"
                + (f" (while loading {name})" if broken != name else ""),
                template=broken,
            ) from exc
        except jinja2.TemplateNotFound as exc:
            if exc.name == name:
                msg = f"template {name} does not exist under {self.templates_dir}; create it"
            else:
                msg = (
                    f"template {name} includes or extends {exc.name}, which does not exist "
                    f"under {self.templates_dir}; create it or fix the name"
                )
            raise TemplateError(msg, template=name) from exc
        except TemplateError:
            raise
        except (TypeError, ValueError, ArithmeticError, KeyError, AttributeError) as exc:
            where = self._where(name, exc.__traceback__)
            raise TemplateError(
                f"template {where} failed: {exc}; check the values passed in the context "
                "(see sample_context() in tend/render.py for their expected types)",
                template=name,
            ) from exc

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
                f"template {where} uses t.{variable} but {owner.file} does not define it; add "
                f'{{% set {variable} = "..." %}} (or a macro) to {owner.file} and to every '
                "other locale's strings.j2"
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

    def _where(self, name: str, tb: TracebackType | None) -> str:
        """'en/winback.html.j2 line 12', or '... (in partials/footer.html.j2 line 3)'."""
        root = self.templates_dir.resolve()
        found: tuple[str, int | None] | None = None
        for frame in traceback.extract_tb(tb):
            try:
                relative = Path(frame.filename).resolve().relative_to(root)
            except (ValueError, OSError):
                continue
            found = (relative.as_posix(), frame.lineno)
        if found is None:
            return name
        file, line = found
        line_text = f" line {line}" if line else ""
        if file == name:
            return f"{name}{line_text}"
        return f"{name} (in {file}{line_text})"


# --- helpers ------------------------------------------------------------------------------------


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
    return _LINE_BREAKERS.sub(" ", value).strip()


def _tidy_text(value: str) -> str:
    """Plain text: no trailing spaces, at most one blank line in a row, one final newline."""
    lines = [line.rstrip() for line in re.sub(r"\r\n?", "\n", value).split("\n")]
    return _BLANK_LINES.sub("\n\n", "\n".join(lines)).strip() + "\n"


# --- sample contexts ---------------------------------------------------------------------------

_SAMPLES: dict[str, dict[str, Any]] = {
    "winback": {
        "customer": {
            "customer_id": "cus_000142",
            "first_name": "Marie",
            "last_name": "Tremblay",
            "email": "marie.tremblay@example.com",
            "locale": "fr-CA",
        },
        "signal": {
            "reason": "no order in 187 days after 4 orders (usual gap 41 days)",
            "days_since_last_order": 187,
            "orders_count": 4,
            "last_order_date": date(2026, 9, 6),
        },
        "offer": {
            "code": "REVIENS-7Q2F",
            "amount": Decimal("10.00"),
            "currency": "CAD",
            "kind": "amount",
            "expires_on": date(2027, 3, 12),
        },
    },
}


def sample_context(template: str) -> dict[str, Any]:
    """A realistic context for ``template``, exactly as the pipeline passes it.

    Used by :meth:`Renderer.check`, the tests and ``tend templates check``; it is also the
    reference for which variables a template may use. Returns a fresh copy each call.
    """
    try:
        return copy.deepcopy(_SAMPLES[template])
    except KeyError:
        raise TemplateError(
            f"no sample context for template {template!r} (known: {', '.join(sorted(_SAMPLES))}); "
            "add one to _SAMPLES in tend/render.py next to the template",
            template=template,
        ) from None
