"""Text a marketing user types in the campaign form (subject, intro, ...), rendered in a sandbox.

Such text never goes through the email environment: :func:`render_user_text` renders it in
Jinja's immutable sandbox with no globals, a short list of text filters and operators that
cannot allocate unbounded memory, and returns plain text that the email's templates then
escape like any other value.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
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


def _make_user_env() -> _UserTextSandbox:
    env = _UserTextSandbox(undefined=jinja2.StrictUndefined, autoescape=False,
                           finalize=finalize, auto_reload=False)
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
    return one_line(text) if single_line else text
