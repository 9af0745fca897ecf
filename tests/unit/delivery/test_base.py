"""Safe headers: whatever a customer's name (or the shop's From name) holds, every ``To:`` and
``From:`` Tend writes parses to exactly one address, the right one, with every parser a relay,
a mail client or a script may use: the strict header registry, ``getaddresses`` on the header
as written, and ``getaddresses`` after decoding its RFC 2047 encoded words."""

from __future__ import annotations

import base64
from email import policy
from email.parser import BytesParser
from email.utils import formataddr

from _support import make_message, one_mailbox
from hypothesis import example, given, settings
from hypothesis import strategies as st

from tend.delivery import safe_display_name
from tend.delivery.base import DISPLAY_NAME_MAX
from tend.delivery.outbox import build_email
from tend.delivery.sendgrid import mail_send_payload

TO = "marie.tremblay@example.com"
FROM = "bonjour@velo.example"
NAME_EXAMPLES = 500  # the figure in docs/delivery.md

CRAFTED = [
    "=?utf-8?q?a@evil.example=2C?=",
    f"=?utf-8?b?{base64.b64encode(b'a@evil.example, ').decode()}?=",
    "=?iso-8859-1?q?a=40evil.example=2C?= Marie",
    "=?utf-8?q?=0D=0ABcc:_v@evil.example?=",
    '"a@evil.example" <a@evil.example>',
    "a@evil.example, b@evil.example",
    "Marie\r\nBcc: v@evil.example",
    "Ｍａｒｉｅ＠ｅｖｉｌ．ｅｘａｍｐｌｅ，",
    "(comment) <a@evil.example>",
    "undisclosed:; <a@evil.example>",
    '\\" <a@evil.example>',
    "Nul\x00Name",
    "\u202eevil\u2066",
    "a" * 5000,
    "é" * 1000,
]
NAMES = st.one_of(
    st.sampled_from(CRAFTED),
    st.text(max_size=120),
    st.tuples(st.sampled_from(CRAFTED), st.text(max_size=30), st.sampled_from(CRAFTED)).map(
        "".join),
    st.text(st.sampled_from('=?@,;:<>"()[]\\ qQbB_\r\n\x00aé.'), max_size=60),
)


@settings(max_examples=NAME_EXAMPLES, deadline=None)
@given(to_name=NAMES, from_name=NAMES)
@example(to_name="=?utf-8?q?a@evil.example=2C?=", from_name="Vélo & Café Lemieux")
def test_every_to_and_from_parses_to_one_address_the_right_one(to_name: str,
                                                              from_name: str) -> None:
    message = make_message(to_email=TO, to_name=to_name, from_email=FROM, from_name=from_name)
    raw = build_email(message).as_bytes(policy=policy.SMTP)
    assert all(len(line) <= 998 for line in raw.split(b"\r\n"))  # SMTP's line limit
    strict = BytesParser(policy=policy.default).parsebytes(raw)
    for field, address in (("To", TO), ("From", FROM)):
        [mailbox] = strict[field].addresses
        assert mailbox.addr_spec == address
        assert not strict[field].defects
        [header] = BytesParser(policy=policy.compat32).parsebytes(raw).get_all(field)
        assert one_mailbox(str(header)) == address
    # SendGrid writes the headers itself from these fields: the same names
    payload = mail_send_payload(message)
    for part, address in ((payload["personalizations"][0]["to"][0], TO),
                          (payload["from"], FROM)):
        assert part.get("name") == safe_display_name(part.get("name"))
        assert one_mailbox(formataddr((part.get("name") or "", address))) == address


@given(NAMES)
@settings(max_examples=NAME_EXAMPLES)
def test_a_safe_name_is_bounded_single_line_and_stable(name: str) -> None:
    safe = safe_display_name(name)
    if safe is None:
        return
    assert 0 < len(safe) <= DISPLAY_NAME_MAX
    assert safe == safe.strip() and "  " not in safe
    assert not set(safe) & set('=?@,;:<>"()[]\\\r\n\x00')
    assert safe_display_name(safe) == safe


def test_real_names_are_kept() -> None:
    for name in ("Zoë O'Brien", "Jean-François Côté", "Vélo & Café Lemieux", "J. R. R. Tolkien",
                 "山田 太郎", "Ærøskøbing"):
        assert safe_display_name(name) == name
    assert safe_display_name("  Marie \t Tremblay ") == "Marie Tremblay"
    assert safe_display_name("=?utf-8?q?a@evil.example=2C?=") == "utf-8 q a evil.example 2C"
    assert safe_display_name("\r\n\x00") is None
