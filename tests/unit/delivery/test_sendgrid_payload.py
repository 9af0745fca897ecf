"""The Mail Send document Tend builds: what SendGrid documents, and what its own helpers build."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from _support import UNSUBSCRIBE, make_message
from sendgrid.helpers.mail import (
    Asm,
    Category,
    Content,
    CustomArg,
    From,
    Header,
    Mail,
    MailSettings,
    ReplyTo,
    SandBoxMode,
    SendAt,
    To,
)

from tend.delivery import OutgoingMessage
from tend.delivery.sendgrid import _Refused, error_text, mail_send_payload
from tend.dev.fake_sendgrid import validate_mail_send


def message(**changes: object) -> OutgoingMessage:
    """The shared message with a named Reply-To, as the Mail Send document carries it."""
    return make_message("m-0001", **{"from_name": "Vélo & Café",
                                      "reply_to": "Service <service@velo.example>", **changes})


def test_the_document_has_every_documented_part() -> None:
    send_at = datetime(2026, 11, 21, 14, 0, tzinfo=UTC)
    doc = mail_send_payload(message(send_at=send_at), sandbox=True, asm_group_id=4242)
    assert doc["personalizations"] == [
        {"to": [{"email": "marie.tremblay@example.com", "name": "Marie Tremblay"}]}]
    assert doc["from"] == {"email": "bonjour@velo.example", "name": "Vélo & Café"}
    assert doc["reply_to"] == {"email": "service@velo.example", "name": "Service"}
    assert [c["type"] for c in doc["content"]] == ["text/plain", "text/html"]
    assert doc["headers"]["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert doc["headers"]["List-Unsubscribe"] == UNSUBSCRIBE
    assert doc["categories"] == ["winback", "marketing"]
    assert doc["custom_args"] == {"tend_message_id": "m-0001", "program": "winback",
                                  "kind": "marketing", "run_id": "scheduled__2026-11-20"}
    assert doc["send_at"] == int(send_at.timestamp())
    assert doc["asm"] == {"group_id": 4242}
    assert doc["mail_settings"] == {"sandbox_mode": {"enable": True}}
    assert validate_mail_send(doc, now=send_at.timestamp() - 3600) == []


def test_same_document_as_the_official_sendgrid_helpers() -> None:
    """Tend builds dicts for speed; the sendgrid package's Mail helper is the reference."""
    send_at = datetime(2026, 11, 21, 14, 0, tzinfo=UTC)
    m = message(send_at=send_at)
    mail = Mail(from_email=From(m.from_email, m.from_name), to_emails=To(m.to_email, m.to_name),
                subject=m.subject)
    mail.content = [Content("text/plain", m.text), Content("text/html", m.html)]
    mail.reply_to = ReplyTo("service@velo.example", "Service")
    for name, value in m.headers.items():
        mail.header = Header(name, value)
    for c in m.categories:
        mail.category = Category(c)
    for k, v in m.custom_args.items():
        mail.custom_arg = CustomArg(k, v)
    mail.send_at = SendAt(int(send_at.timestamp()))
    mail.asm = Asm(4242)
    mail.mail_settings = MailSettings(sandbox_mode=SandBoxMode(True))
    reference = mail.get()
    ours = mail_send_payload(m, sandbox=True, asm_group_id=4242)
    # The helper puts send_at in the personalization and the message; one place is enough.
    reference["personalizations"][0].pop("send_at", None)
    # ...and it prepends each category, so only the order differs.
    assert sorted(ours.pop("categories")) == sorted(reference.pop("categories"))
    assert ours == reference


def test_categories_are_unique_ascii_and_at_most_ten() -> None:
    cats = ("Noël", "winback", "winback", *(f"c{i}" for i in range(12)), "x" * 300)
    doc = mail_send_payload(message(categories=cats))
    assert doc["categories"][:2] == ["Noel", "winback"]
    assert len(doc["categories"]) == 10
    assert validate_mail_send(doc) == []


def test_optional_parts_are_left_out() -> None:
    doc = mail_send_payload(message(reply_to=None, to_name=None, categories=(), custom_args={},
                                    headers={}))
    assert set(doc) == {"personalizations", "from", "subject", "content"}
    assert doc["personalizations"][0]["to"] == [{"email": "marie.tremblay@example.com"}]
    assert validate_mail_send(doc) == []


def test_no_unsubscribe_group_on_transactional_mail() -> None:
    args = {**message().custom_args, "kind": "transactional"}
    assert "asm" not in mail_send_payload(message(custom_args=args), asm_group_id=7)


def test_custom_args_values_become_strings() -> None:
    doc = mail_send_payload(message(custom_args={"tend_message_id": "m", "attempt": 3}))
    assert doc["custom_args"] == {"tend_message_id": "m", "attempt": "3"}


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"headers": {"Subject": "x"}}, "reserved"),
        ({"headers": {"X-Evil": "a\r\nBcc: victim@example.com"}}, "line break"),
        ({"headers": {"Bad Name": "x"}}, "non-ASCII name"),
        ({"subject": "hello\nBcc: x@example.com"}, "line break"),
        ({"subject": ""}, "empty"),
        ({"text": "", "html": ""}, "neither"),
        ({"send_at": datetime(2026, 11, 21, 14, 0)}, "timezone"),
        ({"reply_to": "not an address"}, "not an email"),
        ({"custom_args": {"k": "v" * 10_001}}, "10,000"),
    ],
)
def test_what_sendgrid_would_refuse_is_refused_before_any_request(
        changes: dict[str, object], reason: str) -> None:
    with pytest.raises(_Refused, match=reason):
        mail_send_payload(message(**changes))


def test_send_at_more_than_72_hours_ahead_is_refused_by_the_stand_in() -> None:
    now = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
    doc = mail_send_payload(message(send_at=now + timedelta(hours=73)))
    [error] = validate_mail_send(doc, now=now.timestamp())
    assert error["field"] == "send_at" and "72 hours" in error["message"]


def test_error_text_reads_sendgrids_error_list() -> None:
    body = ('{"errors": [{"field": "content.0.value", "message": "The content value must be a '
            'string at least one character in length.", "help": "http://..."}, '
            '{"field": null, "message": "also this"}]}')
    assert error_text(400, body) == (
        "SendGrid 400: content.0.value: The content value must be a string at least one "
        "character in length.; also this")
    assert error_text(413, "payload too large") == "SendGrid 413: payload too large"
    assert error_text(400, "") == "SendGrid 400: no error text"


def test_event_webhook_signatures_are_verified_with_the_sendgrid_package() -> None:
    from _support import WebhookSigner

    from tend.delivery.sendgrid import verify_event_webhook

    signer = WebhookSigner.new()
    public = signer.public_key  # as SendGrid shows it: base64 only
    body = b'[{"event": "delivered", "tend_message_id": "m-0001"}]'
    stamp = "1763900000"
    sig = signer.signature(body, stamp)
    assert verify_event_webhook(public, body, sig, stamp)
    assert not verify_event_webhook(public, body.replace(b"delivered", b"bounce"), sig, stamp)
    assert not verify_event_webhook(public, body, sig, "1763900001")
    assert not verify_event_webhook(public, body, "not base64!", stamp)
    assert not verify_event_webhook("not a key", body, sig, stamp)
    assert not verify_event_webhook(public, b"\xff" + body, sig, stamp)
