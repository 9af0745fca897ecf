"""What every email must carry by law and by RFC 8058, made for each message and checked.

Marketing and service messages get signed unsubscribe and preferences links (see
:mod:`tend.messages.tokens`) and the one-click ``List-Unsubscribe`` headers, and a message
whose HTML or text lacks the unsubscribe link is refused. Transactional messages (a
first-order thank-you) need none. :func:`inspect_email` is what ``tend templates check`` asks
of a rendered sample on top: working links, no leftover placeholders, a preview line, a text
part, and the shop's name and postal address in the footer (CASL, CAN-SPAM).
"""

from __future__ import annotations

import html as html_lib
import re
from typing import TYPE_CHECKING
from urllib.parse import urlencode

from tend.errors import ConfigError, TemplateError
from tend.messages.loader import BROKEN_LINK, LINK_ATTRIBUTE
from tend.messages.tokens import token_maker
from tend.store.tables import MESSAGE_KINDS

if TYPE_CHECKING:
    from tend.config import ShopSettings
    from tend.messages.render import RenderedEmail

__all__ = [
    "KINDS",
    "UNSUBSCRIBE_KINDS",
    "ComplianceLinks",
    "inspect_email",
    "require_known_kind",
    "require_unsubscribe_link",
]

#: Message kinds (as in programs.yaml and the ledger's ``kind`` column, defined once beside the
#: store's tables). Unknown kinds are refused: a typo must not skip the unsubscribe link.
KINDS: tuple[str, ...] = MESSAGE_KINDS

UNSUBSCRIBE_KINDS: frozenset[str] = frozenset({"marketing", "service"})
"""Kinds that must carry the signed unsubscribe link and the RFC 8058 headers. Service mail
(reminders, surveys) honours unsubscribes, so it carries the link too."""


def require_known_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ConfigError(
            f"message kind {kind!r} is unknown; use one of {', '.join(KINDS)} "
            "(check the program's kind in programs.yaml)"
        )


class ComplianceLinks:
    """The unsubscribe and preferences links of one shop, signed with its secret."""

    def __init__(self, base_url: str, secret: bytes) -> None:
        self._base_url = base_url.rstrip("/")
        self._unsubscribe_token = token_maker(secret, "unsubscribe")
        self._preferences_token = token_maker(secret, "preferences")

    def for_customer(self, customer_id: str, kind: str, locale: str | None = None
                     ) -> tuple[str | None, str | None, dict[str, str]]:
        """The unsubscribe URL, the preferences URL and the headers of one message to
        ``customer_id``: the two URLs are None and there are no headers for a kind that does
        not carry them.

        ``locale``, the message's language, goes into both URLs as ``?lang=``: the pages then
        speak the language of the email, not that of the device the link is opened on. The
        ``List-Unsubscribe`` header carries the very URL the footer shows (RFC 8058: mailbox
        providers post to it as it is, query included)."""
        if kind not in UNSUBSCRIBE_KINDS:
            return None, None, {}
        query = f"?{urlencode({'lang': locale})}" if locale else ""
        unsubscribe_url = (f"{self._base_url}/unsubscribe/"
                           f"{self._unsubscribe_token(customer_id)}{query}")
        preferences_url = (f"{self._base_url}/preferences/"
                           f"{self._preferences_token(customer_id)}{query}")
        return unsubscribe_url, preferences_url, {
            "List-Unsubscribe": f"<{unsubscribe_url}>",
            "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
        }


def require_unsubscribe_link(unsubscribe_url: str, html: str, text: str, base: str,
                             kind: str) -> None:
    """Refuse a message of template ``base`` (``fr/winback``) whose HTML or text part does not
    show its unsubscribe link."""
    missing_in = [part for part, body in (("html", html), ("txt", text))
                  if unsubscribe_url not in body]
    if missing_in:
        files = " and ".join(f"{base}.{part}.j2" for part in missing_in)
        raise TemplateError(
            f"template {files} is a {kind} email but never shows "
            "{{ unsubscribe_url }}; extend layouts/base.html.j2 / base.txt.j2 (their "
            "footer has the link) or add the link yourself: CASL and RFC 8058 require it",
            template=f"{base}.{missing_in[0]}.j2",
        )


def inspect_email(rendered: RenderedEmail, kind: str, shop: ShopSettings) -> list[str]:
    """What a clean render can still get wrong (see :meth:`Renderer.check`)."""
    base = rendered.template
    problems: list[str] = []
    if not rendered.preheader:
        problems.append(
            f"{base}.preheader.j2 renders empty; inboxes will show the first words of "
            "the body instead, so write a preview line"
        )
    for m in LINK_ATTRIBUTE.finditer(rendered.html):
        raw = m.group(1) if m.group(1) is not None else m.group(2)
        value = html_lib.unescape(raw)
        if (not value.strip() or BROKEN_LINK.search(value)
                or not re.match(r"(?:https?://|mailto:|tel:|#)", value)):
            problems.append(
                f"{base}.html.j2 has a broken link{m.group(0).rstrip()}: links must be "
                "full http(s)/mailto URLs; fix the value or the template"
            )
    body = visible_text(rendered.html)
    if not visible_text(rendered.text).strip():
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
            plain = visible_text(content) if part == "html" else content
            address = next((ln.strip() for ln in shop.postal_address.splitlines()
                            if ln.strip()), "")
            for label, needed in (("the shop's name", shop.name),
                                  ("the shop's postal address", address)):
                if needed and needed not in plain:
                    problems.append(
                        f"{base}.{part}.j2 does not show {label} ({needed!r}); CASL and "
                        "CAN-SPAM require it in every marketing message (the layout "
                        "footer has it)"
                    )
    return problems


def visible_text(markup: str) -> str:
    """Rough visible text of an HTML document: no tags, comments, head or style."""
    markup = re.sub(r"(?is)<head\b.*?</head>|<!--.*?-->|<style\b.*?</style>", " ", markup)
    return html_lib.unescape(re.sub(r"<[^>]+>", " ", markup))

