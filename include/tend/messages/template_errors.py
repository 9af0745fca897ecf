"""Jinja's failures, said as TemplateErrors that name the file, the line and the fix.

A template author sees "template fr/winback.preheader.j2 line 3 uses {{ offer.expires_on }}
but the context has no 'expires_on'; ..." rather than a Jinja traceback. Lines are the ones in
the file the author edits, also in HTML templates whose CSS was inlined at load.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import jinja2
from jinja2.utils import missing

from tend.errors import TemplateError
from tend.messages.environment import MissingVariable, Strings
from tend.messages.loader import BrokenLink, LineMap, url_variable

__all__ = ["TemplateErrors"]

_T = TypeVar("_T")


class TemplateErrors:
    """Explains the failures of the templates under ``templates_dir``; ``line_maps`` (the
    loader's, filled as it loads) map a processed template's lines back to its file's."""

    def __init__(self, templates_dir: Path, line_maps: Mapping[str, LineMap]) -> None:
        self.templates_dir = templates_dir
        self._line_maps = line_maps

    def run(self, name: str, action: Callable[..., _T], *args: Any) -> _T:
        """``action(*args)``, every Jinja failure turned into a TemplateError that says
        which file, which line and what to do."""
        try:
            return action(*args)
        except TemplateError:
            raise
        except Exception as exc:
            error = self.explain(name, exc)
            if error is exc:
                raise
            raise error from exc

    def explain(self, name: str, exc: BaseException) -> BaseException:
        """The TemplateError that says what ``exc`` means for template ``name``; ``exc``
        itself when it is not a template's failure."""
        if isinstance(exc, MissingVariable):
            return TemplateError(self._missing_message(name, exc), template=name)
        if isinstance(exc, BrokenLink):
            where = self._where(name, exc.__traceback__)
            shown = "empty" if exc.value is None or not str(exc.value).strip() \
                else f"{str(exc.value)[:60]!r}"
            return TemplateError(
                f"template {where} links to {{{{ {exc.expression} }}}}, which is {shown}: a "
                f"broken link; pass a full URL in {url_variable(exc.expression)!r} or guard the "
                f"link with {{% if {url_variable(exc.expression)} %}}",
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
                "(see sample_context() in tend/messages/contracts.py for their expected types)",
                template=name,
            )
        return exc

    def _missing_message(self, name: str, exc: MissingVariable) -> str:
        where = self._where(name, exc.__traceback__)
        variable = exc.variable or "?"
        owner = exc.owner
        if owner is missing:
            return (
                f"template {where} uses {{{{ {variable} }}}} but the context has no "
                f"{variable!r}; pass {variable!r} when rendering (for a program, give it one in "
                f"programs.yaml) or guard it with {{% if {variable} is defined %}}"
            )
        if isinstance(owner, Strings):
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
        line_map = self._line_maps.get(filename)
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
