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

Design choices, and why (each in the module named):

* **Autoescape only for ``.html.j2``.** Customer data (a first name) is escaped in HTML, but
  not mangled into ``&amp;`` in the text part or the subject (:mod:`.environment`).
* **StrictUndefined.** A typo or a variable the program does not provide fails the render with
  a :class:`~tend.errors.TemplateError` naming the file, line and variable, instead of quietly
  sending "Hi ," to ten thousand people. ``None`` values print as an empty string
  (:mod:`.environment`, :mod:`.template_errors`).
* **CSS inlined once, at load.** Templates carry classes; when Jinja loads a ``.html.j2`` file,
  the loader hides the Jinja tags behind placeholders, lets css-inline write
  ``layouts/email.css`` into every element's ``style`` attribute, and puts the tags back. The
  compiled template therefore already holds the inline styles: no CSS work per message
  (:mod:`.loader`).
* **Links are checked.** Every expression inside an ``href``/``src`` attribute, and every
  variable whose name ends in ``url``, goes through a check that refuses an empty value,
  ``None`` or an unrendered ``{{``: the error names the template and the variable
  (:mod:`.loader`).
* **Single-line subject and preheader.** Their output is stripped and every run of control
  characters (CR, LF, tab, ...) becomes one space, so customer data can never inject a header
  (:mod:`.formatting`).
* **Compliance is enforced, not hoped for.** For marketing and service messages the renderer
  makes signed unsubscribe and preferences links (see :mod:`tend.messages.tokens`), sets the RFC
  8058 one-click ``List-Unsubscribe`` headers, and refuses a message whose HTML or text lacks the
  link. Transactional messages (a first-order thank-you) need none (:mod:`.compliance`).
* **Locale fallback.** ``fr-CA`` uses ``fr_CA/`` templates if they exist, else ``fr/``, else
  the shop's default locale; money and dates keep the customer's region when the language
  matches (``fr-CA`` customer, ``fr/`` templates: "10,00 $", "12 mars 2027").
* **Fast.** Locale resolution, compiled templates and the ``t`` strings are cached per
  (template, locale); Babel formatting is cached per value and locale; templates render into a
  shared context without Jinja's per-call copies. ``make bench-render`` measures it.
* **User-typed text is sandboxed.** Text a marketing user types in the campaign form goes
  through :func:`~tend.messages.user_text.render_user_text` (an immutable sandbox with no
  globals), never through the main environment.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2
import markupsafe
from jinja2 import nodes

from tend.config import ShopSettings
from tend.errors import ConfigError, TemplateError
from tend.messages.compliance import (
    UNSUBSCRIBE_KINDS,
    ComplianceLinks,
    inspect_email,
    require_known_kind,
    require_unsubscribe_link,
)
from tend.messages.contracts import (
    TEMPLATE_SPECS,
    TemplateSpec,
    sample_context,
    sample_contexts,
    template_spec,
)
from tend.messages.environment import Context, Strings, email_environment
from tend.messages.formatting import babel_locale, formatting_locale, get_field, one_line, tidy_text
from tend.messages.loader import CSS_FILE, EmailLoader
from tend.messages.template_errors import TemplateErrors

__all__ = [
    "PARTS",
    "TEMPLATE_SPECS",
    "RenderedEmail",
    "Renderer",
    "TemplateSpec",
    "sample_context",
    "sample_contexts",
    "template_spec",
]

PARTS: tuple[str, ...] = ("subject", "preheader", "html", "txt")
"""The four files every template has in each locale: ``{locale}/{template}.{part}.j2``."""

_TEMPLATE_NAME = re.compile(r"[a-z0-9][a-z0-9_-]*")


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


# --- the renderer ------------------------------------------------------------------------------


_FRAME_KEYS = ("subject", "preheader", "unsubscribe_url", "preferences_url", "content")
_FRAME_MARK = re.compile("\ue100(\\d)\ue101")
_Frame = tuple[str, tuple[tuple[int, str], ...]]
"""A rendered layout: its first static piece, then (which value, the static piece after it)
pairs; values are 0 subject, 1 preheader, 2 unsubscribe URL, 3 preferences URL, 4 the content
block. (Joining the pieces is far cheaper than formatting the whole layout per message.)"""


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
        secret = (
            unsubscribe_secret.encode("utf-8")
            if isinstance(unsubscribe_secret, str) else bytes(unsubscribe_secret)
        )
        self._links = ComplianceLinks(shop.base_url, secret)
        css_path = self.templates_dir / CSS_FILE
        css = css_path.read_text(encoding="utf-8") if css_path.is_file() else None
        self._loader = EmailLoader(self.templates_dir, css)
        self.env = email_environment(self._loader)
        self._errors = TemplateErrors(self.templates_dir, self._loader.line_maps)
        self._globals = dict(self.env.globals)
        self._strings: dict[str, Strings] = {}
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
        try:
            require_known_kind(kind)
        except ConfigError as exc:
            return [str(exc)]
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
                problems += [f"{where}: {p}" for p in inspect_email(rendered, kind, self.shop)]
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

    def locales(self, *, regional: bool = True) -> list[str]:
        """Locale directories (those with a strings.j2). ``regional=False`` leaves out regional
        ones such as ``fr_CA``: they may override only some templates, the others falling back
        to their language's directory (``resolve_locale``)."""
        names = sorted(p.parent.name for p in self.templates_dir.glob("*/strings.j2"))
        return names if regional else [n for n in names if "_" not in n]

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

    def _bundle(self, template: str, locale: str | None) -> _Bundle:
        template_locale = self.resolve_locale(template, locale)
        formatting = formatting_locale(locale, template_locale)
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
        return self._errors.run(name, self.env.get_template, name)

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
                module = self._errors.run(node.template.value,
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
        content = self._rendered(template, template.blocks["content"],
                                 self._context(template, local, block_only=True))
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
        require_known_kind(kind)
        unsubscribe_url, preferences_url, headers = self._links.for_customer(
            customer_id, kind, bundle.template_locale)
        # Jinja's globals, then the caller's context, then the renderer's own names, which win:
        # nobody can pass in a different unsubscribe link or shop identity by accident.
        ctx = {**self._globals, **context, **bundle.fixed, "kind": kind,
               "unsubscribe_url": unsubscribe_url, "preferences_url": preferences_url}
        subject = one_line(self._render_part(bundle.subject, ctx))
        if not subject:
            name = bundle.subject.name or ""
            raise TemplateError(
                f"template {name} rendered an empty subject; give it some text (or check "
                "the conditions around it)",
                template=name,
            )
        preheader = one_line(self._render_part(bundle.preheader, ctx))
        ctx["subject"] = subject
        ctx["preheader"] = preheader
        if fast:
            plain = (subject, preheader, unsubscribe_url or "", preferences_url or "")
            html = self._render_fast(bundle, bundle.html, ctx, kind,
                                     tuple(map(_escape, plain)))  # type: ignore[arg-type]
            text = tidy_text(self._render_fast(bundle, bundle.text, ctx, kind, plain))
        else:
            html = self._render_part(bundle.html.template, ctx)
            text = tidy_text(self._render_part(bundle.text.template, ctx))
        if unsubscribe_url is not None:
            require_unsubscribe_link(unsubscribe_url, html, text,
                                     f"{bundle.template_locale}/{bundle.template}", kind)
        return RenderedEmail(
            subject=subject, preheader=preheader, html=html, text=text, headers=headers,
            template=f"{bundle.template_locale}/{bundle.template}",
            locale=bundle.formatting_locale,
        )

    def _render_part(self, template: jinja2.Template, ctx: dict[str, Any]) -> str:
        """``Template.render`` without its two dict copies; errors keep template lines."""
        return self._rendered(template, template.root_render_func, self._context(template, ctx))

    def _rendered(self, template: jinja2.Template,
                  render: Callable[[jinja2.runtime.Context], Iterator[str]],
                  context: jinja2.runtime.Context) -> str:
        """``render(context)`` joined, every failure a TemplateError naming the template."""
        return self._errors.run(template.name or "?", self._joined, render, context)

    def _joined(self, render: Callable[[jinja2.runtime.Context], Iterator[str]],
                context: jinja2.runtime.Context) -> str:
        try:
            return "".join(render(context))
        except Exception:
            self.env.handle_exception()  # rewrites the traceback to template lines, re-raises

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
        context = Context.__new__(Context)
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

    def _locale_candidates(self, locale: str | None) -> list[str]:
        candidates: list[str] = []
        parsed = babel_locale(locale) if locale else None
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

    def _strings_for(self, template_locale: str) -> Strings:
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
            module = self._errors.run(name, lambda: self.env.get_template(name).module)
            self._strings[template_locale] = Strings(module, name)
        return self._strings[template_locale]


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
            value = get_field(customer, "customer_id")
            if value:
                return str(value)
    return "sample-customer"


def _escape(value: str) -> str:
    return str(markupsafe.escape(value))
