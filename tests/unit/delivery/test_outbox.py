"""The file outbox: real, parseable .eml files, written atomically and idempotently."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path

import pytest
from _support import UNSUBSCRIBE, make_message

from tend.delivery import (
    DeliveryBackend,
    DeliveryResult,
    DeliveryStatus,
    OutboxBackend,
    make_backend,
)
from tend.errors import ConfigError


def _parse(path: Path) -> EmailMessage:
    with path.open("rb") as handle:
        parsed = BytesParser(policy=policy.default).parse(handle)
    assert isinstance(parsed, EmailMessage)
    return parsed


def test_writes_a_parseable_multipart_alternative(tmp_path: Path) -> None:
    outbox = OutboxBackend(tmp_path)
    [result] = outbox.send([make_message()])
    assert result == DeliveryResult("msg-0001", DeliveryStatus.SENT, "outbox:msg-0001.eml")

    parsed = _parse(tmp_path / "msg-0001.eml")
    assert parsed.get_content_type() == "multipart/alternative"
    parts = list(parsed.iter_parts())
    assert [p.get_content_type() for p in parts] == ["text/plain", "text/html"]
    assert all(p.get_content_charset() == "utf-8" for p in parts)
    assert parts[0].get_content() == "Bonjour Marie,\n\nVotre code : REVIENS-7Q2F\n"
    assert "<b>REVIENS-7Q2F</b>" in parts[1].get_content()
    assert parsed.get_body(("plain",)).get_content().startswith("Bonjour")  # type: ignore[union-attr]


def test_headers(tmp_path: Path) -> None:
    OutboxBackend(tmp_path).send([make_message()])
    parsed = _parse(tmp_path / "msg-0001.eml")
    assert parsed["Subject"] == "Marie, un rabais de 10,00\xa0$ vous attend"
    assert parsed["From"].addresses[0].display_name == "Vélo & Café Lemieux"
    assert parsed["From"].addresses[0].addr_spec == "bonjour@velo.example"
    assert str(parsed["To"]) == "Marie Tremblay <marie.tremblay@example.com>"
    assert str(parsed["Reply-To"]) == "service@velo.example"
    assert parsed["Message-ID"] == "<msg-0001@tend.local>"
    assert parsed["Date"].datetime.tzinfo is not None
    assert parsed["List-Unsubscribe"] == UNSUBSCRIBE
    assert parsed["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert parsed["X-Tend-Message-Id"] == "msg-0001"
    assert parsed["X-Tend-Categories"] == "winback, marketing"
    assert '"program":"winback"' in parsed["X-Tend-Custom-Args"]
    assert parsed["X-Tend-Send-At"] is None
    # Non-ASCII header text is RFC 2047-encoded on disk: the file is 7-bit clean.
    assert (tmp_path / "msg-0001.eml").read_bytes().isascii()


def test_optional_fields(tmp_path: Path) -> None:
    send_at = datetime(2027, 3, 1, 9, 0, tzinfo=timezone(timedelta(hours=-5)))
    OutboxBackend(tmp_path).send(
        [make_message(to_name=None, reply_to=None, categories=(), custom_args={}, send_at=send_at)]
    )
    parsed = _parse(tmp_path / "msg-0001.eml")
    assert str(parsed["To"]) == "marie.tremblay@example.com"
    assert parsed["Reply-To"] is None
    assert parsed["X-Tend-Categories"] is None
    assert parsed["X-Tend-Send-At"] == "2027-03-01T09:00:00-05:00"


def test_naive_send_at_is_refused(tmp_path: Path) -> None:
    [result] = OutboxBackend(tmp_path).send([make_message(send_at=datetime(2027, 3, 1, 9))])
    assert result.status is DeliveryStatus.FAILED
    assert "timezone" in (result.error or "")


def test_second_send_is_idempotent(tmp_path: Path) -> None:
    outbox = OutboxBackend(tmp_path)
    [first] = outbox.send([make_message()])
    path = tmp_path / "msg-0001.eml"
    before = path.read_bytes()
    mtime = path.stat().st_mtime_ns
    [second] = outbox.send([make_message(subject="changed")])
    assert second == first
    assert path.read_bytes() == before
    assert path.stat().st_mtime_ns == mtime
    assert [p.name for p in tmp_path.iterdir()] == ["msg-0001.eml"]


@pytest.mark.parametrize(
    ("field", "value", "header"),
    [
        ("subject", "Hello\r\nBcc: victim@example.com", "Subject"),
        ("subject", "Hello\nBcc: victim@example.com", "Subject"),
        ("subject", "Hello\rBcc: victim@example.com", "Subject"),
        ("reply_to", "a@b.example\nBcc: victim@example.com", "Reply-To"),
        (
            "headers",
            {"List-Unsubscribe": "<http://x>\r\nBcc: victim@example.com"},
            "List-Unsubscribe",
        ),
        ("categories", ("winback\nBcc: victim@example.com",), "X-Tend-Categories"),
    ],
)
def test_line_break_in_a_header_fails_that_message_only(
    tmp_path: Path, field: str, value: object, header: str
) -> None:
    outbox = OutboxBackend(tmp_path)
    results = outbox.send([make_message("bad", **{field: value}), make_message("good")])
    assert [r.message_id for r in results] == ["bad", "good"]
    bad, good = results
    assert bad.status is DeliveryStatus.FAILED
    assert bad.provider_id is None
    assert header in (bad.error or "")
    assert "line break" in (bad.error or "")
    assert good.status is DeliveryStatus.SENT
    assert sorted(p.name for p in tmp_path.iterdir()) == ["good.eml"]


@pytest.mark.parametrize("field", ["to_name", "from_name"])
def test_a_line_break_in_a_name_is_cleaned_not_fatal(tmp_path: Path, field: str) -> None:
    """Names are the customer's data, not Tend's: reduced to safe text, the message is sent."""
    [result] = OutboxBackend(tmp_path).send(
        [make_message(**{field: "Marie\r\nBcc: victim@example.com"})])
    assert result.status is DeliveryStatus.SENT
    raw = (tmp_path / "msg-0001.eml").read_bytes()
    assert b"\nBcc:" not in raw and b"victim@" not in raw


@pytest.mark.parametrize("header", ["From", "subject", "Bcc", "X-Tend-Message-Id"])
def test_extra_headers_cannot_replace_the_outbox_own(tmp_path: Path, header: str) -> None:
    [result] = OutboxBackend(tmp_path).send([make_message(headers={header: "x@y.example"})])
    assert result.status is DeliveryStatus.FAILED
    assert header in (result.error or "")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "message_id", ["../escape", "a/b", "", ".hidden", "a..b", "has space", "x" * 300]
)
def test_unsafe_message_ids_are_refused(tmp_path: Path, message_id: str) -> None:
    outbox_dir = tmp_path / "outbox"
    [result] = OutboxBackend(outbox_dir).send([make_message(message_id)])
    assert result.status is DeliveryStatus.FAILED
    assert "file name" in (result.error or "")
    assert list(outbox_dir.iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["outbox"]


def test_bad_address_is_a_failed_result(tmp_path: Path) -> None:
    results = OutboxBackend(tmp_path).send(
        [make_message("bad", to_email="not an address"), make_message("good")]
    )
    assert [r.status for r in results] == [DeliveryStatus.FAILED, DeliveryStatus.SENT]


def test_results_one_per_message_in_order(tmp_path: Path) -> None:
    ids = [f"msg-{i:04d}" for i in range(25)]
    results = OutboxBackend(tmp_path).send([make_message(i) for i in ids])
    assert [r.message_id for r in results] == ids
    assert all(r.status is DeliveryStatus.SENT for r in results)
    assert OutboxBackend(tmp_path).send([]) == []


def test_atomic_write_leaves_no_temp_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    outbox = OutboxBackend(tmp_path)
    outbox.send([make_message("one"), make_message("two")])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one.eml", "two.eml"]

    # A crash at the moment of the rename: no half file, no leftover temp file, FAILED result.
    def crash(src: str, dst: str) -> None:
        raise OSError("disk on fire")

    monkeypatch.setattr("tend.delivery.outbox.os.replace", crash)
    [result] = outbox.send([make_message("three")])
    assert result.status is DeliveryStatus.FAILED
    assert "disk on fire" in (result.error or "")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one.eml", "two.eml"]


def test_creates_directory_and_satisfies_protocol(tmp_path: Path) -> None:
    outbox = OutboxBackend(tmp_path / "a" / "b")
    assert (tmp_path / "a" / "b").is_dir()
    assert isinstance(outbox, DeliveryBackend)
    assert outbox.name == "outbox"
    outbox.close()


# --- make_backend --------------------------------------------------------------------------------


def test_make_backend_outbox(tmp_path: Path) -> None:
    backend = make_backend(" Outbox ", outbox_dir=tmp_path)
    assert isinstance(backend, OutboxBackend)
    assert backend.directory == tmp_path


def test_make_backend_outbox_needs_a_directory() -> None:
    with pytest.raises(ConfigError, match="directory"):
        make_backend("outbox")


@pytest.mark.parametrize(("name", "needs"), [("smtp", "TEND_SMTP_URL"),
                                             ("SendGrid", "TEND_SENDGRID_API_KEY")])
def test_smtp_and_sendgrid_need_their_settings(name: str, needs: str) -> None:
    with pytest.raises(ConfigError, match=needs):
        make_backend(name, env={})


def test_unknown_backend_lists_known_ones() -> None:
    with pytest.raises(ConfigError,
                       match=r"unknown delivery backend 'mailchimp'.*outbox, smtp, sendgrid"):
        make_backend("mailchimp")


def test_date_header_is_recent(tmp_path: Path) -> None:
    OutboxBackend(tmp_path).send([make_message()])
    sent = _parse(tmp_path / "msg-0001.eml")["Date"].datetime
    assert abs(datetime.now(UTC) - sent) < timedelta(minutes=5)
