"""Signed unsubscribe/preferences tokens: only genuine, untampered tokens map to a customer."""

from __future__ import annotations

import base64

import pytest

from tend.tokens import make_token, verify_token

SECRET = "test-secret-0123456789abcdef"


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


@pytest.mark.parametrize("customer_id", ["cus_1", "42", "marie@example.com", "été-ü/ß", "x" * 64])
@pytest.mark.parametrize("purpose", ["unsubscribe", "preferences"])
def test_roundtrip(customer_id: str, purpose: str) -> None:
    token = make_token(SECRET, customer_id, purpose)
    assert verify_token(SECRET, token, purpose) == customer_id


def test_token_is_url_safe_and_deterministic() -> None:
    token = make_token(SECRET, "été/ü?&=+", "unsubscribe")
    assert set(token) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.")
    assert token == make_token(SECRET, "été/ü?&=+", "unsubscribe")


def test_bytes_and_str_secrets_are_equivalent() -> None:
    assert verify_token(SECRET.encode(), make_token(SECRET, "cus_1")) == "cus_1"


def test_mac_is_at_least_16_bytes() -> None:
    mac = make_token(SECRET, "cus_1").split(".")[1]
    assert len(base64.urlsafe_b64decode(mac + "==")) >= 16


def test_wrong_secret() -> None:
    assert verify_token("another-secret", make_token(SECRET, "cus_1")) is None


@pytest.mark.parametrize(
    ("made_for", "checked_as"), [("unsubscribe", "preferences"), ("preferences", "unsubscribe")]
)
def test_wrong_purpose(made_for: str, checked_as: str) -> None:
    assert verify_token(SECRET, make_token(SECRET, "cus_1", made_for), checked_as) is None


def _tampered_tokens() -> list[tuple[str, str]]:
    token = make_token(SECRET, "cus_1")
    encoded_id, mac = token.split(".")
    flipped = "A" if mac[0] != "A" else "B"
    return [
        ("other id, same mac", f"{_b64(b'cus_2')}.{mac}"),
        ("flipped mac char", f"{encoded_id}.{flipped}{mac[1:]}"),
        ("truncated mac", f"{encoded_id}.{mac[:-2]}"),
        ("extended mac", f"{encoded_id}.{mac}AA"),
        ("mac from another customer", f"{encoded_id}.{make_token(SECRET, 'cus_2').split('.')[1]}"),
        ("id only", encoded_id),
        ("mac only", f".{mac}"),
        ("padding added", f"{encoded_id}=.{mac}"),
        ("foreign char inserted", f"{encoded_id}.{mac[:5]}!{mac[5:]}"),
        ("extra part", f"{token}.{mac}"),
        ("whitespace", f" {token}"),
    ]


@pytest.mark.parametrize(("label", "token"), _tampered_tokens())
def test_tampered_tokens_are_rejected(label: str, token: str) -> None:
    assert verify_token(SECRET, token) is None, label


@pytest.mark.parametrize(
    "garbage",
    ["", ".", "..", "not-a-token", "a.b", "%%%.%%%", "é.é", "x" * 5000, None, 123, b"abc.def"],
)
def test_garbage_is_rejected(garbage: object) -> None:
    assert verify_token(SECRET, garbage) is None  # type: ignore[arg-type]


def test_forged_token_without_secret_is_rejected() -> None:
    forged = f"{_b64(b'cus_1')}.{_b64(bytes(16))}"
    assert verify_token(SECRET, forged) is None


def test_empty_inputs_are_refused_when_making() -> None:
    with pytest.raises(ValueError):
        make_token("", "cus_1")
    with pytest.raises(ValueError):
        make_token(SECRET, "")
    with pytest.raises(ValueError):
        make_token(SECRET, "cus_1", "")
