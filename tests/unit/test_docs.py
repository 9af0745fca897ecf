"""The documentation stays true to the code: every setting documented, every link alive.

The README is the front page and must stay short; the reference lives in docs/. These tests
fail when a setting is added to the code without a line in docs/configuration.md (or a line
outlives its setting), when a link points at a file or heading that is gone, or when the
README grows back into a manual.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from _support import PROJECT, settings_in_code

ROOT = PROJECT
README = ROOT / "README.md"
DOCS = ROOT / "docs"
CONFIGURATION = DOCS / "configuration.md"
README_MAX_LINES = 200

#: The pages the README promises: each must exist and be linked from the README.
PAGES = ("configuration", "shop-data", "programs", "templates", "signals", "delivery",
         "operations", "architecture")

#: A setting's name as the docs spell it: in backticks.
_DOCUMENTED = re.compile(r"`(TEND_[A-Z0-9_]+)`")
_FENCE = re.compile(r"^\s*(```|~~~)")
_INLINE_CODE = re.compile(r"`[^`]*`")
_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")


def _prose_lines(path: Path) -> Iterator[tuple[int, str]]:
    """The lines of a Markdown file outside fenced code blocks, numbered from 1."""
    fenced = False
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if _FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            yield number, line


def settings_documented() -> set[str]:
    """Names in backticks in the first cell of a table row of docs/configuration.md."""
    names: set[str] = set()
    for _, line in _prose_lines(CONFIGURATION):
        cells = line.strip().split("|")
        if line.lstrip().startswith("|") and len(cells) > 2:
            names.update(_DOCUMENTED.findall(cells[1]))
    return names


def _slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces to '-'."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link keeps its text
    text = re.sub(r"[^\w\- ]", "", text.replace("`", "").lower())
    return text.replace(" ", "-")


@functools.cache
def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    out: set[str] = set()
    for _, line in _prose_lines(path):
        match = _HEADING.match(line)
        if not match:
            continue
        slug = _slug(match.group(2))
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        out.add(slug if count == 0 else f"{slug}-{count}")
    return out


def _markdown_files() -> list[Path]:
    return [README, *sorted(DOCS.glob("*.md")), ROOT / "bench" / "RESULTS.md"]


def broken_links(path: Path, root: Path = ROOT) -> list[str]:
    problems = []
    for number, line in _prose_lines(path):
        for target in _LINK.findall(_INLINE_CODE.sub("", line)):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto:, ...
                continue
            file_part, _, anchor = target.partition("#")
            dest = (path.parent / file_part).resolve() if file_part else path
            where = f"{path.relative_to(root)}:{number}: {target}"
            if not dest.exists():
                problems.append(f"{where} (no such file)")
            elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
                problems.append(f"{where} (no heading with that anchor in {dest.name})")
    return problems


def test_every_setting_the_code_reads_is_documented_and_only_those() -> None:
    code, documented = settings_in_code(), settings_documented()
    missing, extra = sorted(code - documented), sorted(documented - code)
    assert not missing and not extra, (
        f"docs/configuration.md is out of step with the code: "
        f"read by the code but not documented: {missing}; "
        f"documented but read nowhere: {extra}")


def test_the_scan_finds_the_settings_it_must() -> None:
    code = settings_in_code()
    # a plain literal, one from the ShopSettings family and the generated SendGrid options
    assert {"TEND_SHOP_URL", "TEND_BASE_URL", "TEND_SENDGRID_URL",
            "TEND_SENDGRID_CHUNKS_IN_FLIGHT", "TEND_SENDGRID_READ_TIMEOUT"} <= code
    assert not any(name.endswith("_") for name in code)


def test_readme_is_short() -> None:
    lines = len(README.read_text(encoding="utf-8").splitlines())
    assert lines <= README_MAX_LINES, (
        f"README.md has {lines} lines (at most {README_MAX_LINES}): move detail into docs/")


@pytest.mark.parametrize("path", _markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(path: Path) -> None:
    assert path.exists(), f"{path.relative_to(ROOT)} is missing"
    assert broken_links(path) == []


@pytest.mark.parametrize("page", PAGES)
def test_each_page_exists_and_the_readme_links_it(page: str) -> None:
    assert (DOCS / f"{page}.md").is_file(), f"docs/{page}.md is missing"
    assert f"](docs/{page}.md" in README.read_text(encoding="utf-8"), (
        f"README.md does not link docs/{page}.md")


def test_link_checker_catches_a_broken_link(tmp_path: Path) -> None:
    (tmp_path / "a.md").write_text("# Top heading\n\n```\n# not a heading\n```\n"
                                   "[ok](a.md#top-heading) [gone](b.md) [bad](#not-a-heading)"
                                   " `[in code](c.md)` [web](https://example.com)\n",
                                   encoding="utf-8")
    found = broken_links(tmp_path / "a.md", root=tmp_path)
    assert [p.split(": ", 1)[1] for p in found] == [
        "b.md (no such file)", "#not-a-heading (no heading with that anchor in a.md)"]
