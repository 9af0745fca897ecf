"""Text a marketing user types in the campaign form (subject, intro, ...), rendered in a sandbox.

Such text never goes through the email environment: :func:`render_user_text` renders it in
Jinja's immutable sandbox with no globals, a short list of text filters and operators that
cannot allocate unbounded memory, and returns plain text that the email's templates then
escape like any other value.

A field the context has but a customer lacks (no first name, no first order yet: ``None`` or
empty text) is *missing*, not an error: it prints as nothing, is false, ``default(...)``
replaces it, and indexing it, a filter or a method call on it gives it back unchanged. The same
text then renders for every customer, named or not. A name the context does not have at all
(a typo) is still an error.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError

from tend.errors import TemplateError
from tend.messages.formatting import (
    finalize,
    format_long_date,
    format_money,
    format_number,
    one_line,
)

__all__ = ["USER_TEXT_MAX_CHARS", "render_user_text"]

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


class _Missing(jinja2.ChainableUndefined):
    """A field this customer has no value for: empty when printed, false, replaced by
    ``default(...)``; an attribute, item or call of it is itself, so ``first_name[0]`` or
    ``first_name.upper()`` print nothing instead of failing one customer's message.
    Arithmetic and comparisons still fail (the form's check shows where)."""

    __slots__ = ()

    def __call__(self, *args: Any, **kwargs: Any) -> _Missing:
        return self


#: Filters that see a missing value as it is: ``default`` replaces it, the counts give 0.
_SEE_MISSING = frozenset({"d", "default", "length", "count", "wordcount"})


def _keeps_missing(f: Callable[..., Any]) -> Callable[..., Any]:
    """``f`` giving back a missing value unchanged (``{{ customer.first_name|upper }}`` of a
    nameless customer is nothing, not "NONE" or an error)."""
    # A filter marked pass_context/pass_eval_context/pass_environment gets that first.
    at = 1 if getattr(f, "jinja_pass_arg", None) is not None else 0

    @functools.wraps(f)  # keeps jinja_pass_arg
    def keep(*args: Any, **kwargs: Any) -> Any:
        if len(args) > at and isinstance(args[at], _Missing):
            return args[at]
        return f(*args, **kwargs)

    return keep


def _make_user_env() -> _UserTextSandbox:
    env = _UserTextSandbox(undefined=jinja2.StrictUndefined, autoescape=False,
                           finalize=finalize, auto_reload=False)
    env.globals.clear()
    env.filters = {k: v for k, v in env.filters.items() if k in _USER_TEXT_FILTERS}
    env.filters.update(money=format_money, date=format_long_date, number=format_number)
    env.filters = {k: v if k in _SEE_MISSING else _keeps_missing(v)
                   for k, v in env.filters.items()}
    return env


def _with_missing(value: Any, path: str) -> Any:
    """``value`` (a context, or part of one) with every None or empty text as ``_Missing``;
    a copy, so the caller's context is never changed."""
    if value is None or (isinstance(value, str) and not value):
        return _Missing(hint=f"{path} has no value for this customer")
    if isinstance(value, Mapping):
        return {k: _with_missing(v, f"{path}.{k}" if path else str(k))
                for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_with_missing(v, f"{path}[{i}]") for i, v in enumerate(value)]
    return value


_USER_ENV = _make_user_env()


@functools.lru_cache(maxsize=256)
def _user_template(source: str) -> jinja2.Template:
    return _USER_ENV.from_string(source)


def render_user_text(source: str, context: Mapping[str, Any], *,
                     single_line: bool = False) -> str:
    """Render text a marketing user typed (campaign subject, intro, ...) in a sandbox.

    ``Hi {{ customer.first_name|default("there") }}!`` gives "Hi there!" for a customer
    without a first name (None or empty: see the module's docstring); ``{{ customer.__class__ }}``,
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
        text = _user_template(source).render(_with_missing(context, ""))
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
    return one_line(text) if single_line else text
