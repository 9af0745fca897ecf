"""The SMTP backend against a real local SMTP server (aiosmtpd), plain and with STARTTLS + AUTH."""

from __future__ import annotations

import datetime as dt
import ipaddress
import ssl
from collections.abc import Iterator
from dataclasses import replace
from email import message_from_bytes, policy
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from _support import exited_pid, free_port, numbered_message, smtp_server
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tend.delivery import (
    AuthRejected,
    DeliveryStatus,
    DeliveryStopped,
    Resolution,
    make_backend,
)
from tend.delivery.smtp import SmtpBackend, SmtpSettings
from tend.errors import ConfigError

SENT, FAILED, UNKNOWN = DeliveryStatus.SENT, DeliveryStatus.FAILED, DeliveryStatus.UNKNOWN


class Sink:
    """An SMTP server's handler: records messages, answers per-recipient scripted replies."""

    def __init__(self) -> None:
        self.messages: list[tuple[list[str], bytes]] = []
        self.sessions: set[int] = set()
        self.rcpt: dict[str, list[str]] = {}
        self.data: list[str] = []  # replies to the next DATA commands; "drop" closes instead

    async def handle_MAIL(self, server: Any, session: Any, envelope: Any, address: str,
                          options: list[str]) -> str:
        self.sessions.add(id(session))
        envelope.mail_from = address
        return "250 OK"

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str,
                          options: list[str]) -> str:
        if self.rcpt.get(address):
            return self.rcpt[address].pop(0)
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        reply = self.data.pop(0) if self.data else None
        if reply == "drop":  # queued, then the connection dies before the reply
            self.messages.append((list(envelope.rcpt_tos), envelope.content))
            server.transport.close()
            return "250 OK"
        if reply:
            return reply
        self.messages.append((list(envelope.rcpt_tos), envelope.content))
        return f"250 2.0.0 Ok: queued as Q{len(self.messages)}"


@pytest.fixture
def sink() -> Iterator[tuple[Sink, int]]:
    handler = Sink()
    with smtp_server(handler) as port:
        yield handler, port


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    folder = tmp_path_factory.mktemp("tls")
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


@pytest.fixture
def tls_sink(certificate: tuple[Path, Path]) -> Iterator[tuple[Sink, int, ssl.SSLContext]]:
    cert_path, key_path = certificate
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert_path, key_path)

    def authenticate(server: Any, session: Any, envelope: Any, mechanism: str,
                     data: Any) -> AuthResult:
        ok = isinstance(data, LoginPassword) and (data.login, data.password) == (b"tend", b"pw")
        return AuthResult(success=ok, handled=False)

    handler = Sink()
    controller = Controller(handler, hostname="127.0.0.1", port=free_port(),
                            tls_context=server_ctx, require_starttls=True,
                            authenticator=authenticate, auth_required=True)
    controller.start()
    try:
        yield handler, controller.port, ssl.create_default_context(cafile=str(cert_path))
    finally:
        controller.stop()


def backend(port: int, **changes: object) -> SmtpBackend:
    settings = replace(SmtpSettings(host="127.0.0.1", port=port, timeout=5),
                       **changes)  # type: ignore[arg-type]
    return SmtpBackend(settings, sleep=lambda s: None)


def test_messages_go_over_one_reused_connection(sink: tuple[Sink, int]) -> None:
    handler, port = sink
    b = backend(port)
    results = b.send([numbered_message(i) for i in range(3)]) + b.send([numbered_message(3)])
    b.close()
    assert [r.status for r in results] == [SENT] * 4
    assert results[0].provider_id == "smtp:2.0.0 Ok: queued as Q1"
    assert b.connections_opened == 1 and len(handler.sessions) == 1
    rcpts, raw = handler.messages[0]
    assert rcpts == ["customer0@example.com"]
    parsed = message_from_bytes(raw, policy=policy.default)
    assert parsed["Message-ID"] == "<m0000@shop.example>"
    assert parsed["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert [p.get_content_type() for p in parsed.iter_parts()] == ["text/plain", "text/html"]


def test_starttls_and_login(tls_sink: tuple[Sink, int, ssl.SSLContext]) -> None:
    handler, port, client_ctx = tls_sink
    b = backend(port, starttls=True, username="tend", password="pw", ssl_context=client_ctx)
    assert [r.status for r in b.send([numbered_message(0), numbered_message(1)])] == [SENT, SENT]
    b.close()
    assert len(handler.messages) == 2 and len(handler.sessions) == 1


def test_a_refused_login_stops_the_run(tls_sink: tuple[Sink, int, ssl.SSLContext]) -> None:
    handler, port, client_ctx = tls_sink
    b = backend(port, starttls=True, username="tend", password="wrong", ssl_context=client_ctx)
    with pytest.raises(AuthRejected, match="check the smtp_default connection") as stop:
        b.send([numbered_message(0), numbered_message(1)])
    assert stop.value.results == [] and handler.messages == []
    assert "wrong" not in str(stop.value)


def test_an_untrusted_certificate_stops_the_run(
        tls_sink: tuple[Sink, int, ssl.SSLContext]) -> None:
    _, port, _ = tls_sink
    with pytest.raises(DeliveryStopped, match="TLS"):
        backend(port, starttls=True, username="tend", password="pw").send([numbered_message(0)])


def test_recipient_refusals_and_data_replies(sink: tuple[Sink, int]) -> None:
    handler, port = sink
    handler.rcpt["customer1@example.com"] = ["550 5.1.1 No such user"]
    handler.rcpt["customer2@example.com"] = ["451 4.7.1 Greylisted"] * 3
    b = backend(port)
    results = b.send([numbered_message(0), numbered_message(1), numbered_message(2)])
    handler.data = ["554 5.7.1 Spam detected", "451 4.3.0 Try again"]
    results += b.send([numbered_message(3), numbered_message(4)])
    b.close()
    by_id = {r.message_id: r for r in results}
    assert by_id["m0000"].status == SENT
    assert (by_id["m0001"].status, by_id["m0001"].error) == (
        FAILED, "SMTP 550: 5.1.1 No such user (recipient refused)")
    assert by_id["m0002"].status == FAILED and "Greylisted" in by_id["m0002"].error
    assert by_id["m0003"].status == FAILED and "Spam detected" in by_id["m0003"].error
    assert by_id["m0004"].status == SENT  # 451 after DATA was not accepted: tried again
    assert [r[0] for r in handler.messages] == [["customer0@example.com"],
                                                ["customer4@example.com"]]


def test_a_connection_lost_during_data_is_unknown_and_not_resent(sink: tuple[Sink, int]) -> None:
    handler, port = sink
    handler.data = ["drop"]
    b = backend(port)
    results = b.send([numbered_message(0), numbered_message(1)])
    b.close()
    assert [r.status for r in results] == [UNKNOWN, SENT]
    assert "not resent" in results[0].error
    assert [r[0] for r in handler.messages] == [["customer0@example.com"],
                                                ["customer1@example.com"]]
    assert b.connections_opened == 2  # a fresh connection after the drop


def test_an_unreachable_server_stops_the_run_with_what_completed(sink: tuple[Sink, int]) -> None:
    _, port = sink
    dead = free_port()
    b = backend(port)
    assert b.send([numbered_message(0)])[0].status == SENT
    b.close()
    b = backend(dead, max_attempts=2)
    with pytest.raises(DeliveryStopped, match="cannot be used") as stop:
        b.send([numbered_message(1)])
    assert stop.value.results == []


def test_a_message_that_cannot_be_built_fails_alone(sink: tuple[Sink, int]) -> None:
    handler, port = sink
    b = backend(port)
    results = b.send([numbered_message(0, subject="a\r\nBcc: x@example.com"), numbered_message(1)])
    b.close()
    assert [r.status for r in results] == [FAILED, SENT]
    assert len(handler.messages) == 1
    assert "line break" in results[0].error


@pytest.mark.parametrize(
    ("url", "expected"),
    [("smtp://localhost:1025", ("localhost", 1025, None, False, False)),
     ("smtp://u%40x:p%3Ass@relay.example:587", ("relay.example", 587, "u@x", True, False)),
     ("smtps://u:p@relay.example", ("relay.example", 465, "u", False, True)),
     ("smtp://relay.example?starttls=true&timeout=5", ("relay.example", 25, None, True, False))],
)
def test_settings_from_a_url(url: str, expected: tuple[object, ...]) -> None:
    s = SmtpSettings.from_url(url)
    assert (s.host, s.port, s.username, s.starttls, s.ssl) == expected
    assert "p%3Ass" not in repr(s) and "p:ss" not in repr(s)


def test_settings_from_an_airflow_connection() -> None:
    conn = SimpleNamespace(host="smtp.example", port=587, login="tend", password="pw",
                           extra_dejson={"disable_ssl": True, "timeout": 12})
    s = SmtpSettings.from_connection(conn)
    assert (s.host, s.port, s.username, s.password, s.starttls, s.ssl, s.timeout) == (
        "smtp.example", 587, "tend", "pw", True, False, 12.0)


@pytest.mark.parametrize(
    ("make", "message"),
    [(lambda: SmtpSettings.from_env({}), "TEND_SMTP_URL"),
     (lambda: SmtpSettings.from_url("http://x"), "smtp://"),
     (lambda: SmtpSettings(starttls=True, ssl=True), "not both"),
     (lambda: make_backend("smtp", env={}), "smtp_default")],
)
def test_configuration_errors(make: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        make()  # type: ignore[operator]


def test_make_backend_builds_smtp_from_the_environment() -> None:
    b = make_backend("smtp", env={"TEND_SMTP_URL": "smtp://localhost:1025"})
    assert isinstance(b, SmtpBackend) and b.chunk_size == 50


def test_the_journal_settles_what_a_gone_worker_never_started(
        sink: tuple[Sink, int], tmp_path: Path) -> None:
    import os
    import socket

    _, port = sink
    backend = SmtpBackend(SmtpSettings(host="127.0.0.1", port=port), journal_dir=tmp_path)
    backend.expect(["m0000", "m0001"])
    assert [r.status for r in backend.send([numbered_message(0), numbered_message(1)])] == [
        SENT, SENT]
    backend.close()
    mine = (tmp_path / f"{socket.gethostname()}-{os.getpid()}.journal").read_text()
    assert mine.splitlines()[:3] == ["C m0000 m0001", "S m0000", mine.splitlines()[2]]
    assert mine.splitlines()[2].startswith("D m0000 smtp:2.0.0_Ok")
    # This process is alive: its journal is not trusted (it could still send).
    assert backend.resolve(["m0000"]) == Resolution()
    (tmp_path / f"{socket.gethostname()}-{exited_pid()}.journal").write_text(
        "C a b c\nS a\nD a smtp:250_ok\nS b\n")
    found = SmtpBackend(SmtpSettings(host="127.0.0.1", port=port),
                        journal_dir=tmp_path).resolve(["a", "b", "c", "d"])
    assert found.sent == {"a": "smtp:250_ok"}  # confirmed by the server
    assert found.not_sent == ["c"]  # in the chunk, never started: safe to send
    # b (inside DATA at the kill) and d (no record here) stay unknown.
    assert SmtpBackend(SmtpSettings(host="127.0.0.1", port=port)).resolve(["c"]) == Resolution()
