"""Reading the email templates: the stylesheet inlined once, at load, and the links checked.

When Jinja loads a ``.html.j2`` file, :class:`EmailLoader` hides the Jinja tags behind
placeholders, lets css-inline write ``layouts/email.css`` into every element's ``style``
attribute, and puts the tags back, so the compiled template already holds the inline styles.
Every expression inside an ``href``/``src`` attribute, and every variable whose name ends in
``url`` (in ``.html.j2`` and ``.txt.j2`` files), is wrapped in the ``_link`` filter
(:func:`check_link`), which refuses an empty value, ``None`` or an unrendered ``{{``.
"""

from __future__ import annotations

import re
from bisect import bisect_right
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import css_inline
import jinja2
from jinja2.loaders import split_template_path

from tend.errors import TemplateError

__all__ = [
    "BROKEN_LINK",
    "CSS_FILE",
    "LINK_ATTRIBUTE",
    "BrokenLink",
    "EmailLoader",
    "LineMap",
    "check_link",
    "url_variable",
]

CSS_FILE = "layouts/email.css"

BROKEN_LINK = re.compile(r"^\s*(?:None|none|null|undefined)\b|\{\{|\}\}|\{%|%\}")
"""What a link must never contain: an unrendered tag, or a leading None/null/undefined."""
LINK_ATTRIBUTE = re.compile(r"""\s(?:href|src)\s*=\s*(?:"([^"]*)"|'([^']*)')""", re.IGNORECASE)
"""An ``href``/``src`` attribute; its value is group 1 (double quotes) or 2 (single quotes)."""


class BrokenLink(jinja2.TemplateRuntimeError):
    def __init__(self, expression: str, value: Any) -> None:
        super().__init__(f"broken link {expression}")
        self.expression = expression
        self.value = value


def check_link(value: Any, expression: str) -> Any:
    """Inserted by the loader around every link expression: refuses what would be a broken
    link, so the error names the variable instead of a customer finding the dead link."""
    if value is None or isinstance(value, jinja2.Undefined):
        raise BrokenLink(expression, value)
    text = str(value)
    if not text.strip() or BROKEN_LINK.search(text):
        raise BrokenLink(expression, value)
    return value


_JINJA_TAG = re.compile(r"\{\{.*?\}\}|\{%.*?%\}|\{#.*?#\}", re.DOTALL)
_PLACEHOLDER = re.compile("\ue000(\\d+)\ue001|<!--\ue002(\\d+)\ue003-->")
_EXPRESSION = re.compile(r"^\{\{(-?)(.*?)(-?)\}\}$", re.DOTALL)
_URL_NAME = re.compile(r"^\s*\(?\s*([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*)")
_EVENT = re.compile("<([a-zA-Z][a-zA-Z0-9]*)\\b|\ue000\\d+\ue001|<!--\ue002\\d+\ue003-->")
_INSERTED_BY_PARSER = {"tbody", "html", "head", "body"}


def _is_url_name(expression: str) -> bool:
    """``product.url``, ``shop.website_url``, ``survey.url|with_query(...)``: links by name."""
    m = _URL_NAME.match(expression)
    return bool(m) and m.group(1).lower().endswith("url")


def url_variable(expression: str) -> str:
    """The variable a link expression starts from: ``survey.url|with_query(rating=5)`` ->
    ``survey.url``."""
    m = _URL_NAME.match(expression)
    return m.group(1) if m else expression


def _wrap_link(tag: str) -> str:
    m = _EXPRESSION.match(tag)
    if m is None:  # pragma: no cover - the scanner only hands us {{ ... }}
        return tag
    left, inner, right = m.groups()
    expression = " ".join(inner.split())
    label = expression.replace("\\", "\\\\").replace("'", "\\'")
    return f"{{{{{left} ({inner})|_link('{label}') {right}}}}}"


@dataclass
class LineMap:
    """Maps a line of the processed (inlined) source back to the file the author edits."""

    processed: list[int] = field(default_factory=list)
    original: list[int] = field(default_factory=list)

    def __call__(self, line: int) -> int:
        i = bisect_right(self.processed, line) - 1
        if i < 0:
            return line
        return self.original[i] + (line - self.processed[i])


class EmailLoader(jinja2.BaseLoader):
    """Reads templates from the templates directory; ``.html.j2`` files get the stylesheet
    inlined and their links checked, ``.txt.j2`` files their links checked. Templates never
    change during a run (``uptodate`` is always true): no file system calls per message."""

    def __init__(self, root: Path, css: str | None) -> None:
        self.root = root
        self.css = css
        self.line_maps: dict[str, LineMap] = {}
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

    def _prepare_html(self, source: str, name: str) -> tuple[str, LineMap]:
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
            return source, LineMap()
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
        for m in LINK_ATTRIBUTE.finditer(inlined):
            value = m.group(1) if m.group(1) is not None else m.group(2)
            links.update(int(k) for k in re.findall("\ue000(\\d+)\ue001", value))
        out: list[str] = []
        line_map = LineMap()
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
