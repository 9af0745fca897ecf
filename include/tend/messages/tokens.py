"""Signed tokens for the links in every marketing email (unsubscribe, preferences, survey),
and the voucher codes its offers carry.

A token proves that *we* issued a link for one customer and one purpose, so the unsubscribe
endpoint can act on a click without a login, and nobody can unsubscribe someone else by
guessing or incrementing an id.

Format: ``base64url(customer_id) + "." + base64url(mac)`` without padding, where ``mac`` is the
first 16 bytes (128 bits) of HMAC-SHA256 over a versioned, purpose-bound message. Binding the
purpose means an unsubscribe token cannot be replayed as a preferences token (or the reverse),
and the version prefix lets us change the scheme later without ambiguity.

The customer id is readable in the token: it is not a secret, only unforgeable. Tokens do not
expire on purpose: RFC 8058 one-click and CASL both expect an unsubscribe link to keep working.
Rotating the secret invalidates every link ever sent, so do that only after a leak.

A voucher code is an HMAC of the message id under the same secret: unique per message,
unguessable, and the same on every retry of that message.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Callable

__all__ = ["make_message_token", "make_token", "token_maker", "verify_message_token",
           "verify_token", "voucher_code"]

_VERSION = b"tend-token-v1"
_MAC_BYTES = 16
# A customer id is at most 64 characters in the shop schema; anything much longer than its
# encoding plus a MAC is garbage, and refusing it early keeps the endpoint cheap to hit.
_MAX_TOKEN_CHARS = 512


def _key(secret: bytes | str) -> bytes:
    key = secret.encode("utf-8") if isinstance(secret, str) else bytes(secret)
    if not key:
        raise ValueError(
            "the token secret is empty; set a long random unsubscribe secret in Tend's "
            "configuration (for example: python -c 'import secrets; print(secrets.token_hex(32))')"
        )
    return key


def _mac(key: bytes, customer_id: str, purpose: str) -> bytes:
    message = b"\x00".join((_VERSION, purpose.encode("utf-8"), customer_id.encode("utf-8")))
    # hmac.digest is the one-shot C implementation: same MAC as hmac.new(...).digest(), a
    # fraction of the cost (the renderer makes two tokens per marketing message).
    return hmac.digest(key, message, hashlib.sha256)[:_MAC_BYTES]


def _b64encode(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _b64decode(text: str) -> bytes | None:
    """Strict base64url: ``urlsafe_b64decode`` silently skips foreign characters, which would
    let many spellings of one token verify; we accept only the single canonical spelling."""
    try:
        raw = base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True)
    except (binascii.Error, ValueError):
        return None
    if _b64encode(raw) != text:
        return None
    return raw


def _check_purpose(purpose: str) -> None:
    if not purpose or "\x00" in purpose:
        raise ValueError(f"token purpose must be a non-empty string without NUL, got {purpose!r}")


def make_token(secret: bytes | str, customer_id: str, purpose: str = "unsubscribe") -> str:
    """Return a URL-safe token that :func:`verify_token` maps back to ``customer_id``."""
    if not customer_id:
        raise ValueError("cannot make a token for an empty customer_id")
    _check_purpose(purpose)
    mac = _mac(_key(secret), customer_id, purpose)
    return f"{_b64encode(customer_id.encode('utf-8'))}.{_b64encode(mac)}"


def token_maker(secret: bytes | str, purpose: str = "unsubscribe") -> Callable[[str], str]:
    """``make_token(secret, customer_id, purpose)`` as a function of the customer id alone,
    with the key and the message prefix prepared once (the renderer makes two per message)."""
    _check_purpose(purpose)
    key = _key(secret)
    prefix = b"\x00".join((_VERSION, purpose.encode("utf-8"), b""))

    def make(customer_id: str) -> str:
        if not customer_id:
            raise ValueError("cannot make a token for an empty customer_id")
        raw_id = customer_id.encode("utf-8")
        mac = hmac.digest(key, prefix + raw_id, hashlib.sha256)[:_MAC_BYTES]
        return f"{_b64encode(raw_id)}.{_b64encode(mac)}"

    return make


def verify_token(secret: bytes | str, token: str, purpose: str = "unsubscribe") -> str | None:
    """Return the customer id a genuine token was made for, or None for anything else.

    Never raises on bad input (it comes straight from a URL): forged, tampered, truncated,
    wrong-purpose and wrong-secret tokens all give None. The MAC comparison is constant-time.
    """
    if not isinstance(token, str) or not token or len(token) > _MAX_TOKEN_CHARS:
        return None
    if not token.isascii() or token.count(".") != 1:
        return None
    encoded_id, encoded_mac = token.split(".")
    raw_id = _b64decode(encoded_id)
    mac = _b64decode(encoded_mac)
    if not raw_id or mac is None or len(mac) != _MAC_BYTES:
        return None
    try:
        customer_id = raw_id.decode("utf-8")
    except UnicodeDecodeError:
        return None
    _check_purpose(purpose)
    expected = _mac(_key(secret), customer_id, purpose)
    if not hmac.compare_digest(expected, mac):
        return None
    return customer_id


#: Between the customer id and the message id in a message-bound token: a message id is 32 hex
#: digits, so the last separator splits the two whatever the customer id contains.
_MESSAGE_SEP = "\x1f"


def make_message_token(secret: bytes | str, customer_id: str, message_id: str,
                       purpose: str) -> str:
    """A token for one message to one customer (the survey's rating links: one answer per
    message), verified by :func:`verify_message_token`."""
    if not message_id or _MESSAGE_SEP in message_id:
        raise ValueError(f"cannot make a token for message id {message_id!r}")
    return make_token(secret, f"{customer_id}{_MESSAGE_SEP}{message_id}", purpose)


def verify_message_token(secret: bytes | str, token: str, purpose: str
                         ) -> tuple[str, str] | None:
    """``(customer_id, message_id)`` of a genuine :func:`make_message_token` token, else None."""
    bound = verify_token(secret, token, purpose)
    if bound is None or _MESSAGE_SEP not in bound:
        return None
    customer_id, _, message_id = bound.rpartition(_MESSAGE_SEP)
    if not customer_id or not message_id:
        return None
    return customer_id, message_id


def voucher_code(secret: str, message_id: str, prefix: str) -> str:
    """``PREFIX-XXXX-XXXX`` for one message: unique, unguessable, stable across retries
    (derived from the message id, not stored twice)."""
    mac = hmac.new(secret.encode(), f"voucher:{message_id}".encode(), hashlib.sha256).digest()
    code = base64.b32encode(mac).decode()[:8]
    return f"{prefix}-{code[:4]}-{code[4:]}"
