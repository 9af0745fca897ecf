"""Signed unsubscribe/preferences tokens: only genuine, untampered tokens map to a customer;
voucher codes are derived from the message id."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tend.messages.tokens import make_token, token_maker, verify_token, voucher_code

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


# --- forgery ------------------------------------------------------------------------------------



def _forge(customer_id: str, key: bytes, purpose: str = "unsubscribe") -> str:
    """A token made the way Tend makes them, with a key the attacker chose."""
    import hashlib
    import hmac

    message = b"\x00".join((b"tend-token-v1", purpose.encode(), customer_id.encode()))
    mac = hmac.new(key, message, hashlib.sha256).digest()[:16]
    return f"{_b64(customer_id.encode())}.{_b64(mac)}"


def test_the_real_key_makes_what_verify_accepts() -> None:
    # The forging helper is right: with the real secret it produces the genuine token ...
    assert _forge("cus_1", SECRET.encode()) == make_token(SECRET, "cus_1")
    # ... and with any other key, nothing that verifies.
    for key in (b"", b"guess", b"tend-demo-secret", SECRET.encode()[:-1], SECRET.upper().encode()):
        assert verify_token(SECRET, _forge("cus_1", key)) is None


def test_unhashed_or_unkeyed_macs_are_rejected() -> None:
    import hashlib

    body = b"\x00".join((b"tend-token-v1", b"unsubscribe", b"cus_1"))
    for mac in (hashlib.sha256(body).digest()[:16], hashlib.md5(body).digest(),
                (SECRET.encode() + body)[:16], bytes(range(16))):
        assert verify_token(SECRET, f"{_b64(b'cus_1')}.{_b64(mac)}") is None


def test_guessing_the_next_customer_does_not_work() -> None:
    mine = make_token(SECRET, "C000041")
    mac = mine.split(".")[1]
    assert verify_token(SECRET, f"{_b64(b'C000042')}.{mac}") is None
    assert verify_token(SECRET, make_token(SECRET, "C000042")) == "C000042"


@settings(max_examples=300, deadline=None)
@given(customer_id=st.text(min_size=1, max_size=64).filter(lambda s: "\x00" not in s),
       position=st.integers(min_value=0), bit=st.integers(min_value=0, max_value=7))
def test_any_single_bit_flip_is_rejected(customer_id: str, position: int, bit: int) -> None:
    token = make_token(SECRET, customer_id)
    encoded_id, encoded_mac = token.split(".")
    raw = bytearray(base64.urlsafe_b64decode(encoded_mac + "=="))
    raw[position % len(raw)] ^= 1 << bit
    assert verify_token(SECRET, f"{encoded_id}.{_b64(bytes(raw))}") is None
    assert verify_token(SECRET, token) == customer_id


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_random_strings_never_verify(token: str) -> None:
    assert verify_token(SECRET, token) is None


@pytest.mark.parametrize("purpose", ["unsubscribe", "preferences"])
@pytest.mark.parametrize("customer_id", ["cus_1", "été-ü/ß", "x" * 64])
def test_token_maker_makes_the_same_tokens(purpose: str, customer_id: str) -> None:
    made = token_maker(SECRET, purpose)(customer_id)
    assert made == make_token(SECRET, customer_id, purpose)
    assert verify_token(SECRET, made, purpose) == customer_id
    with pytest.raises(ValueError):
        token_maker(SECRET, purpose)("")


def test_voucher_code_is_stable_per_message_and_secret() -> None:
    code = voucher_code("sec", "m1", "PFX")
    assert code == "PFX-LIT4-YHAG"
    assert voucher_code("sec", "m1", "PFX") == code
    assert voucher_code("sec", "m2", "PFX") != code
    assert voucher_code("other", "m1", "PFX") != code
