"""The Jinja environment the renderer compiles and runs email templates in.

It differs from a stock environment in what a template author and a night of sending notice:

* **StrictUndefined that knows the name.** A missing variable fails the render, and the
  error carries the variable and the object it was looked up on, so the message can say more
  than Jinja's "'dict object' has no attribute 'code'".
* **``t``, the shared words of a locale** (``{locale}/strings.j2``), is a :class:`Strings`
  whose macros return plain ``str``, so the calling template escapes them like any value.
* **Short paths** for what every email does many times: dict lookups, ``t.*`` calls, partial
  macros called with their positional arguments, HTML escaping. Each gives exactly what stock
  Jinja gives (tests compare the two).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jinja2
import markupsafe
from jinja2.runtime import Macro
from jinja2.utils import missing

from tend.messages.formatting import (
    finalize,
    format_discount,
    format_long_date,
    format_money,
    format_number,
    format_ordinal,
    format_plural,
    lcfirst,
    paragraphs,
    with_query,
)
from tend.messages.loader import check_link

__all__ = ["Context", "MissingVariable", "Strings", "email_environment"]


class MissingVariable(jinja2.UndefinedError):
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
        del exc  # always ours: a factory that builds MissingVariable with name and owner
        factory: Any = functools.partial(MissingVariable, variable=name, owner=obj)
        super().__init__(hint, obj, name, factory)


class Strings:
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


class Context(jinja2.runtime.Context):
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
    Python-level checks: same result (tests compare with stock Jinja) for less work, and HTML
    templates call it for every ``{{ }}``."""
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


def email_environment(loader: jinja2.BaseLoader) -> jinja2.Environment:
    """The environment for the templates ``loader`` reads: autoescape for ``.html.j2`` only
    (a first name is escaped in HTML, not mangled into ``&amp;`` in the text part or the
    subject), strict undefined, ``None`` printed as nothing, the formatting filters, and
    templates compiled once for the run."""
    env = _Environment(
        loader=loader,
        autoescape=jinja2.select_autoescape(
            enabled_extensions=("html.j2",), default_for_string=False, default=False
        ),
        undefined=_StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        finalize=finalize,
        auto_reload=False,
        cache_size=-1,
    )
    env.filters.update(
        money=format_money,
        date=format_long_date,
        discount=format_discount,
        number=format_number,
        plural=format_plural,
        ordinal=format_ordinal,
        with_query=with_query,
        paragraphs=paragraphs,
        lcfirst=lcfirst,
        _link=check_link,
    )
    env.context_class = Context
    env.template_class = _Template
    return env
