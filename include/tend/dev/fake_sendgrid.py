"""A local stand-in for SendGrid's v3 Mail Send API: ``tend fake-sendgrid --port P``.

For tests, benchmarks and anyone who wants to rehearse a night without a SendGrid account. It
speaks the same HTTP as ``https://api.sendgrid.com``, so the real :mod:`tend.delivery.sendgrid`
backend is pointed at it by URL alone (``TEND_SENDGRID_URL`` or the host of the Airflow
connection ``sendgrid_default``): nothing is mocked.

What it does
------------
``POST /v3/mail/send``
    Checks ``Authorization: Bearer <key>`` (any key, or exactly ``--api-key``), then validates
    the JSON body the way SendGrid's "Mail Send errors" reference documents it (required
    fields, at most 1,000 personalizations and recipients, valid addresses of at most 320
    characters, ``text/plain`` before ``text/html``, at most 10 unique ASCII categories of at
    most 255 characters, string values in ``custom_args`` and ``headers``, no reserved header
    names, ``send_at`` an integer at most 72 hours ahead, ``asm.group_id`` an integer, booleans
    in ``mail_settings``). A bad payload gets SendGrid's ``400 {"errors": [{"field",
    "message", "help"}]}``; a body over 30 MB gets 413. A good one gets ``202 Accepted`` with an
    ``X-Message-Id`` header and is recorded; in sandbox mode (``mail_settings.sandbox_mode``)
    SendGrid answers ``200`` and sends nothing, and so does the stand-in (recorded with
    ``sandbox: true``).

``GET /_stats``, ``GET /_messages[?tend_message_id=ID]``, ``GET /_counts``, ``GET /_requests``
    What was accepted (one summary per message, the whole payload with ``--keep-payloads``),
    how many times each ``tend_message_id`` was accepted (a count above 1 is a duplicate the
    customer would have received), and every request with the outcome it got, when it arrived
    and when it was answered (epoch seconds: ``received_at``, ``answered_at``).

``GET /v3/suppression/{bounces,blocks,spam_reports,invalid_emails,unsubscribes}``
    SendGrid's suppression lists, as its API serves them (``Authorization`` checked as above;
    ``limit`` at most 500, ``offset``, ``start_time``/``end_time`` in epoch seconds; each entry
    ``{"created", "email", ...}``), holding what ``POST /_suppressions`` (or
    :meth:`FakeSendGrid.set_suppressions`) told it: ``{"bounces": [{"email": ...,
    "created": ...}], ...}``. The ``429``, ``500`` and ``503`` faults apply to them too.

``GET /_faults``, ``POST /_faults``, ``POST /_reset``
    Read or change fault injection at run time; forget everything recorded.

Faults
------
Each request draws a fault with probability ``rate`` among ``kinds`` (with a ``seed``, the draw
depends only on the message and its attempt number, not on arrival order), unless a
``script`` (the next requests, in order) or ``by_message`` (the next requests for one
``tend_message_id``) says otherwise; ``"ok"`` in a script means no fault. What each fault means
for the sender, and whether the message counts as accepted here:

=========  =========  ===================================================================
kind       accepted   answer
=========  =========  ===================================================================
``429``    no         429 with ``X-RateLimit-Limit/Remaining/Reset`` (and ``Retry-After``
                      when ``reset_ms`` is whole seconds; the stand-in allows a fractional
                      ``X-RateLimit-Reset`` so tests need not wait a whole second): a fault
                      of that one request, like the others. With ``hold_429`` it models an
                      account limit instead: until that reset every request gets the same
                      429 (``while_limited`` in ``/_stats`` counts them)
``503``    no         503: the API is not available, nothing was processed
``500``    yes        500 after the message was queued: the sender cannot know
``slow``   yes        202, but only after ``slow_ms`` (past the sender's read timeout)
``drop``   yes        the connection is closed without an answer
``reset``  no         the connection is closed before the request is read
``400``    no         400 with an error for ``content``
``413``    no         413 payload too large
``401``    no         401 (``403`` likewise): the key is refused
=========  =========  ===================================================================

``latency_ms`` delays every answer (SendGrid answers in roughly 20-200 ms).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import random
import re
import secrets
import signal
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, TextIO

from aiohttp import web

__all__ = [
    "FAULT_KINDS",
    "FakeSendGrid",
    "FaultPlan",
    "run_in_thread",
    "serve",
    "validate_mail_send",
]

log = logging.getLogger("tend.fake_sendgrid")

MAIL_SEND_PATH = "/v3/mail/send"
MAX_PAYLOAD_BYTES = 30 * 1024 * 1024
#: The suppression lists the stand-in serves under ``/v3/suppression/``.
SUPPRESSION_LISTS = ("bounces", "blocks", "spam_reports", "invalid_emails", "unsubscribes")
"""SendGrid: "the total size of your email, including attachments, must be less than 30MB"."""
MAX_SEND_AT_AHEAD = 72 * 3600
RESERVED_HEADERS = frozenset(
    name.lower()
    for name in ("x-sg-id", "x-sg-eid", "received", "dkim-signature", "Content-Type",
                 "Content-Transfer-Encoding", "To", "From", "Subject", "Reply-To", "CC", "BCC")
)
FAULT_KINDS = ("429", "503", "500", "slow", "drop", "reset", "400", "413", "401", "403")
_ACCEPTING_FAULTS = frozenset({"500", "slow", "drop"})
_EMAIL = re.compile(
    r"[^@\s\"<>(),;:\[\]\\]+@[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?\.[A-Za-z0-9-]{2,}")
_RECEIVED_AT = web.RequestKey("received_at", float)
_HELP = "http://sendgrid.com/docs/API_Reference/Web_API_v3/Mail/errors.html#message."


try:  # msgspec (an Airflow dependency) parses a body in a third of json.loads' time
    import msgspec

    _decoder = msgspec.json.Decoder()

    def _decode(raw: bytes) -> Any:
        try:
            return _decoder.decode(raw)
        except msgspec.DecodeError as exc:
            raw.decode("utf-8")  # invalid UTF-8 is a 415, not a 400
            raise ValueError(str(exc)) from exc
except ImportError:  # pragma: no cover
    def _decode(raw: bytes) -> Any:
        return json.loads(raw.decode("utf-8"))


# -- validation -------------------------------------------------------------------------------

def _err(fld: str | None, message: str) -> dict[str, Any]:
    return {"field": fld, "message": message, "help": _HELP + (fld or "")}


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _check_address(obj: Any, fld: str, what: str, errors: list[dict[str, Any]]) -> str | None:
    example = '{"email": "example@example.com", "name": "Example Recipient"}'
    if not isinstance(obj, dict) or not isinstance(obj.get("email"), str):
        errors.append(_err(fld, f"The {what} object must at least have an email parameter with a "
                                f"valid email address and may also contain a name. e.g. {example}"))
        return None
    email = obj["email"]
    if len(email) > 320:
        errors.append(_err(fld, f"The {what} email exceeds the maximum total length of 320 "
                                "characters"))
        return None
    if not _EMAIL.fullmatch(email):
        errors.append(_err(fld, f"Does not contain a valid address. ({what}: {email!r})"))
        return None
    if "name" in obj and not isinstance(obj["name"], str):
        errors.append(_err(fld, f"The {what} name must be a string."))
    return email.lower()


def _check_custom_args(v: Any, fld: str, errors: list[dict[str, Any]]) -> dict[str, Any]:
    if not isinstance(v, dict):
        errors.append(_err(fld, "Invalid type. Expected: object, given: " + type(v).__name__))
        return {}
    if not v:
        errors.append(_err(fld, "custom_args cannot be empty."))
    if not all(isinstance(x, str) for x in v.values()):
        errors.append(_err(fld, "All values of custom arguments object must be strings"))
    return v


def _check_headers(v: Any, fld: str, errors: list[dict[str, Any]]) -> None:
    if not isinstance(v, dict):
        errors.append(_err(fld, "The headers must be an object of key/value pairs."))
        return
    seen: set[str] = set()
    for key, value in v.items():
        if not isinstance(value, str):
            errors.append(_err(fld, "The header values must be strings."))
        if not key or not key.isascii() or any(c.isspace() for c in key) or ":" in key:
            errors.append(_err(fld, "Header keys cannot contain non-ASCII characters and empty "
                                    f"spaces. ({key!r})"))
        if key.lower() in RESERVED_HEADERS:
            errors.append(_err(fld, f"Header can not be one of the reserved keys. ({key})"))
        if key.lower() in seen:
            errors.append(_err(fld, "The headers cannot contain duplicate keys."))
        seen.add(key.lower())
        if isinstance(value, str) and ("\r" in value or "\n" in value):
            errors.append(_err(fld, f"Header values cannot contain CRLF characters. ({key})"))


def _check_send_at(v: Any, fld: str, now: float, errors: list[dict[str, Any]]) -> None:
    if not _is_int(v):
        errors.append(_err(fld, "The send_at parameter is expecting a Unix timestamp as an "
                                "integer. We will send immediately if you include a send_at "
                                "timestamp that is in the past."))
    elif v > now + MAX_SEND_AT_AHEAD:
        errors.append(_err(fld, "Scheduling more than 72 hours in advance is forbidden."))


def validate_mail_send(payload: Any, *, now: float | None = None) -> list[dict[str, Any]]:
    """SendGrid's documented 400 errors for a Mail Send body (an empty list when it is valid)."""
    now = time.time() if now is None else now
    errors: list[dict[str, Any]] = []
    if not isinstance(payload, dict):
        return [_err(None, "The request body must be a JSON object.")]

    template = payload.get("template_id")
    if template is not None and not isinstance(template, str):
        errors.append(_err("template_id", "The template ID must be a string."))

    pers = payload.get("personalizations")
    every_has_subject = False
    global_args = payload.get("custom_args")
    if not isinstance(pers, list) or not pers:
        errors.append(_err("personalizations", "You must have at least one personalization."))
        pers = []
    elif len(pers) > 1000:
        errors.append(_err("personalizations", "The personalization block is limited to 1000 "
                           f"personalizations per API request. You have provided {len(pers)} "
                           "personalizations. Please consider splitting this into multiple "
                           "requests and resending your request."))
    recipients = 0
    seen: set[str] = set()
    subjects = []
    for i, p in enumerate(pers):
        base = f"personalizations.{i}"
        if not isinstance(p, dict):
            errors.append(_err(base, "Each personalization must be an object."))
            continue
        to = p.get("to")
        if not isinstance(to, list) or not to:
            errors.append(_err(f"{base}.to", "The to parameter is required for all "
                                             "personalization objects."))
            to = []
        for kind, lst in (("to", to), ("cc", p.get("cc") or []), ("bcc", p.get("bcc") or [])):
            if not isinstance(lst, list):
                errors.append(_err(f"{base}.{kind}", f"The {kind} parameter must be an array."))
                continue
            for j, rcpt in enumerate(lst):
                recipients += 1
                email = _check_address(rcpt, f"{base}.{kind}.{j}.email", kind.capitalize(),
                                       errors)
                if email is not None:
                    if email in seen:
                        errors.append(_err(f"{base}.{kind}", "Each unique email address in the "
                                           "personalizations array should only be included "
                                           f"once. You have included {email} more than once."))
                    seen.add(email)
        if "subject" in p:
            subjects.append(p["subject"])
            if not isinstance(p["subject"], str) or not p["subject"]:
                errors.append(_err(f"{base}.subject", "The subject of your email must be a "
                                   "string at least one character in length."))
        if "custom_args" in p:
            merged = {**(global_args if isinstance(global_args, dict) else {}),
                      **_check_custom_args(p["custom_args"], f"{base}.custom_args", errors)}
            if len(json.dumps(merged).encode()) > 10_000:
                errors.append(_err(f"{base}.custom_args", "The combined size of both global "
                                   "and personalization custom arguments may not exceed 10,000 "
                                   "bytes per personalization."))
        if "headers" in p:
            _check_headers(p["headers"], f"{base}.headers", errors)
        if "send_at" in p:
            _check_send_at(p["send_at"], f"{base}.send_at", now, errors)
    every_has_subject = bool(pers) and len(subjects) == len(pers)
    if recipients > 1000:
        errors.append(_err("personalizations", "There is a limit of 1000 total recipients "
                                               "(to + cc + bcc) per request."))

    if "from" not in payload:
        errors.append(_err("from", "The from object must be provided for every email send. It "
                                   "is an object that requires the email parameter, but may "
                                   "also contain a name parameter."))
    else:
        _check_address(payload["from"], "from.email", "From", errors)
    if "reply_to" in payload:
        _check_address(payload["reply_to"], "reply_to.email", "Reply-To", errors)

    subject = payload.get("subject")
    if subject is None:
        if not every_has_subject and template is None:
            errors.append(_err("subject", "The subject is required. You can get around this "
                                          "requirement if you use a template with a subject "
                                          "defined or if every personalization has a subject "
                                          "defined."))
    elif not isinstance(subject, str) or not subject:
        errors.append(_err("subject", "The subject of your email must be a string at least one "
                                      "character in length."))
    elif "\r" in subject or "\n" in subject:
        errors.append(_err("subject", "The subject cannot contain CRLF characters."))

    content = payload.get("content")
    if content is None:
        if template is None:
            errors.append(_err("content", "The content param is required unless you are using "
                                          "a transactional template and have defined a "
                                          "template_ID."))
    elif not isinstance(content, list) or not content:
        errors.append(_err("content", "There must be at least one defined content block. We "
                                      "typically suggest both text/plain and text/html blocks "
                                      "are included, but only one block is required."))
    else:
        types = []
        for i, block in enumerate(content):
            if not isinstance(block, dict):
                errors.append(_err(f"content.{i}", "Each content block must be an object."))
                continue
            ctype, value = block.get("type"), block.get("value")
            if not isinstance(ctype, str) or not ctype:
                errors.append(_err(f"content.{i}.type", "A content type is required, this "
                                   "tells email clients how to display the email."))
            elif any(c in ctype for c in ";\r\n"):
                errors.append(_err(f"content.{i}.type", "Cannot contain ';', or CRLF "
                                                        "characters."))
            if not isinstance(value, str) or not value:
                errors.append(_err(f"content.{i}.value", "The content value must be a string "
                                                         "at least one character in length."))
            types.append(ctype.lower() if isinstance(ctype, str) else "")
        ranks = [0 if t == "text/plain" else 1 if t == "text/html" else 2 for t in types]
        if ranks != sorted(ranks) or types.count("text/plain") > 1 or types.count("text/html") > 1:
            errors.append(_err("content", "Following RFC 1341, section 7.2, if either text/html "
                                          "or text/plain are to be sent in your email: "
                                          "text/plain needs to be first, followed by text/html, "
                                          "followed by any other content."))

    if "categories" in payload:
        cats = payload["categories"]
        if not isinstance(cats, list) or not all(isinstance(c, str) for c in cats):
            errors.append(_err("categories", "Categories must be an array of strings."))
        else:
            if len(cats) > 10:
                errors.append(_err("categories", "There is a limit of 10 categories for each "
                                                 f"email that is sent. You provided {len(cats)} "
                                                 "categories."))
            for c in cats:
                if len(c) > 255:
                    errors.append(_err("categories", "Each category must not be longer than "
                                                     f"255 characters. {c[:40]}... exceeds "
                                                     "this limit"))
                if not c.isascii():
                    errors.append(_err("categories", "Categories can not contain non-ASCII "
                                                     "characters."))
            for c, n in Counter(cats).items():
                if n > 1:
                    errors.append(_err("categories", "The categories must be a unique list, and "
                                                     f"you have included {c} more than once."))
    if "custom_args" in payload:
        args = _check_custom_args(payload["custom_args"], "custom_args", errors)
        if len(json.dumps(args).encode()) > 10_000:
            errors.append(_err("custom_args", "The combined size of both global and "
                                              "personalization custom arguments may not exceed "
                                              "10,000 bytes per personalization."))
    if "headers" in payload:
        _check_headers(payload["headers"], "headers", errors)
    if "send_at" in payload:
        _check_send_at(payload["send_at"], "send_at", now, errors)
    if "batch_id" in payload and not isinstance(payload["batch_id"], str):
        errors.append(_err("batch_id", "The batch_id must be a string."))
    if "asm" in payload:
        asm = payload["asm"]
        if not isinstance(asm, dict) or not _is_int(asm.get("group_id")):
            errors.append(_err("asm.group_id", "The ASM group ID must be an integer."))
        elif "groups_to_display" in asm:
            shown = asm["groups_to_display"]
            if not isinstance(shown, list) or not all(_is_int(g) for g in shown):
                errors.append(_err("asm.groups_to_display", "The ASM Group IDs to display must "
                                                            "be an array of integers."))
            elif len(shown) > 25:
                errors.append(_err("asm.groups_to_display", "There is a limit of 25 unsubscribe "
                                   "groups that can be displayed to a user at a time."))
    settings = payload.get("mail_settings")
    if settings is not None:
        if not isinstance(settings, dict):
            errors.append(_err("mail_settings", "mail_settings must be an object."))
        else:
            for name, value in settings.items():
                if isinstance(value, dict) and "enable" in value and \
                        not isinstance(value["enable"], bool):
                    errors.append(_err(f"mail_settings.{name}.enable",
                                       f"The {name.replace('_', ' ')} enable param should be a "
                                       "boolean value."))
    return errors


def _sandbox(payload: Mapping[str, Any]) -> bool:
    settings = payload.get("mail_settings") or {}
    return bool((settings.get("sandbox_mode") or {}).get("enable"))


def _tend_message_id(payload: Any) -> str | None:
    if not isinstance(payload, dict):
        return None
    args: dict[str, Any] = {}
    if isinstance(payload.get("custom_args"), dict):
        args.update(payload["custom_args"])
    for p in payload.get("personalizations") or []:
        if isinstance(p, dict) and isinstance(p.get("custom_args"), dict):
            args.update(p["custom_args"])
    value = args.get("tend_message_id")
    return value if isinstance(value, str) else None


# -- faults -----------------------------------------------------------------------------------

@dataclass
class FaultPlan:
    """Which requests get which fault; see the module docstring. Change it with POST /_faults."""

    rate: float = 0.0
    kinds: tuple[str, ...] = ("429", "503", "500", "slow", "drop")
    seed: int | None = None
    script: list[str] = field(default_factory=list)
    by_message: dict[str, list[str]] = field(default_factory=dict)
    reset_ms: int = 1000
    """429: the rate limit resets this long after the refusal."""
    slow_ms: int = 5000
    """slow: how long the accepted request waits for its 202."""
    latency_ms: float = 0.0
    """Every answer waits this long (a real API is not instantaneous)."""
    hold_429: bool = False
    """Off (the default), a drawn 429 is a fault of that one request, independent of the
    others, as every other fault is. On, it models an account's rate limit: after a 429, every
    request until its reset is refused with a 429 too; those are counted ``while_limited`` (a
    client that honours an account limit sends few of them)."""

    def __post_init__(self) -> None:
        self.kinds = tuple(str(k) for k in self.kinds)
        unknown = [k for k in (*self.kinds, *self.script,
                               *(k for ks in self.by_message.values() for k in ks))
                   if k not in FAULT_KINDS and k != "ok"]
        if unknown:
            raise ValueError(f"unknown fault(s) {unknown}; choose among {', '.join(FAULT_KINDS)}"
                             " (or 'ok' in a script)")
        if not 0.0 <= float(self.rate) <= 1.0:
            raise ValueError(f"fault rate {self.rate} must be between 0 and 1")
        if self.rate and not self.kinds:
            raise ValueError("a fault rate needs at least one fault kind")

    @classmethod
    def from_json(cls, data: Mapping[str, Any], base: FaultPlan | None = None) -> FaultPlan:
        known = {f.name for f in fields(cls)}
        extra = set(data) - known
        if extra:
            raise ValueError(f"unknown fault setting(s) {sorted(extra)}; known: {sorted(known)}")
        merged = {**asdict(base or cls()), **data}
        merged["script"] = [str(k) for k in merged.get("script") or []]
        merged["by_message"] = {str(m): [str(k) for k in ks]
                                for m, ks in (merged.get("by_message") or {}).items()}
        merged["kinds"] = tuple(merged.get("kinds") or ())
        return cls(**merged)

    def as_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["kinds"] = list(self.kinds)
        return out


# -- the server -------------------------------------------------------------------------------

class FakeSendGrid:
    """The stand-in's state and its aiohttp application (one per server)."""

    def __init__(
        self,
        *,
        api_key: str | None = None,
        faults: FaultPlan | None = None,
        record_file: Path | None = None,
        keep_payloads: bool = False,
    ) -> None:
        self.api_key = api_key
        self.faults = faults or FaultPlan()
        self.keep_payloads = keep_payloads
        self._rng = random.Random(self.faults.seed)
        self._lock = threading.Lock()
        self._record: TextIO | None = (record_file.open("a", encoding="utf-8")
                                       if record_file else None)
        self.accepted: list[dict[str, Any]] = []
        self.requests: list[dict[str, Any]] = []
        self.counts: Counter[str] = Counter()
        self._attempts: dict[str, int] = {}
        self._limited_until = 0.0  # epoch seconds: the current 429's reset (hold_429)
        self.suppression_lists: dict[str, list[dict[str, Any]]] = {
            name: [] for name in SUPPRESSION_LISTS}

    # state, safe to read from another thread
    def set_suppressions(self, lists: Mapping[str, Sequence[Mapping[str, Any]]]) -> None:
        """Replace the named suppression lists (others stay as they are)."""
        unknown = set(lists) - set(SUPPRESSION_LISTS)
        if unknown:
            raise ValueError(f"unknown suppression list(s) {sorted(unknown)}; "
                             f"use {', '.join(SUPPRESSION_LISTS)}")
        with self._lock:
            for name, entries in lists.items():
                self.suppression_lists[name] = [dict(e) for e in entries]

    def set_faults(self, plan: FaultPlan) -> None:
        with self._lock:
            self.faults = plan
            self._rng = random.Random(plan.seed)
            self._attempts = {}
            self._limited_until = 0.0

    def reset(self) -> None:
        with self._lock:
            self.accepted.clear()
            self.requests.clear()
            self.counts.clear()
            self.faults = FaultPlan(latency_ms=self.faults.latency_ms)
            self._limited_until = 0.0
            self.suppression_lists = {name: [] for name in SUPPRESSION_LISTS}

    def stats(self) -> dict[str, Any]:
        with self._lock:
            outcomes = Counter(r["outcome"] for r in self.requests)
            return {
                "requests": len(self.requests),
                "accepted": len(self.accepted),
                "distinct_messages": len(self.counts),
                "duplicates": sum(n - 1 for n in self.counts.values() if n > 1),
                "while_limited": sum(1 for r in self.requests if r.get("while_limited")),
                "outcomes": dict(outcomes),
            }

    def accepted_counts(self) -> dict[str, int]:
        with self._lock:
            return dict(self.counts)

    def messages(self, tend_message_id: str | None = None) -> list[dict[str, Any]]:
        with self._lock:
            return [m for m in self.accepted
                    if tend_message_id is None or m["tend_message_id"] == tend_message_id]

    def request_log(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self.requests)

    def close(self) -> None:
        if self._record is not None:
            self._record.close()
            self._record = None

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_PAYLOAD_BYTES + 1024 * 1024)
        app.router.add_post(MAIL_SEND_PATH, self._mail_send)
        app.router.add_get("/_stats", self._get_stats)
        app.router.add_get("/_messages", self._get_messages)
        app.router.add_get("/_counts", self._get_counts)
        app.router.add_get("/_requests", self._get_requests)
        app.router.add_get("/_faults", self._get_faults)
        app.router.add_post("/_faults", self._post_faults)
        app.router.add_post("/_reset", self._post_reset)
        app.router.add_post("/_suppressions", self._post_suppressions)
        for name in SUPPRESSION_LISTS:
            app.router.add_get(f"/v3/suppression/{name}", self._get_suppressions)
        return app

    # -- request handling -----------------------------------------------------------------

    def _draw_fault(self, tend_id: str | None) -> str:
        with self._lock:
            plan = self.faults
            if tend_id is not None and plan.by_message.get(tend_id):
                return plan.by_message[tend_id].pop(0)
            if plan.script:
                return plan.script.pop(0)
            if plan.rate:
                rng = self._rng
                if plan.seed is not None and tend_id is not None:
                    # Seeded: the same message meets the same faults whatever the arrival order.
                    attempt = self._attempts[tend_id] = self._attempts.get(tend_id, 0) + 1
                    rng = random.Random(f"{plan.seed}:{tend_id}:{attempt}")
                if rng.random() < plan.rate:
                    return rng.choice(plan.kinds)
        return "ok"

    def _log(self, request: web.Request, tend_id: str | None, outcome: str, *, accepted: bool,
             x_message_id: str | None = None, payload: Mapping[str, Any] | None = None,
             sandbox: bool = False, while_limited: bool = False) -> dict[str, Any]:
        peer = request.transport.get_extra_info("peername") if request.transport else None
        now = time.time()
        entry = {"seq": 0, "tend_message_id": tend_id, "outcome": outcome, "accepted": accepted,
                 "x_message_id": x_message_id, "peer": f"{peer[0]}:{peer[1]}" if peer else None,
                 "received_at": request.get(_RECEIVED_AT, now), "answered_at": now,
                 "while_limited": while_limited}
        with self._lock:
            seq = entry["seq"] = len(self.requests) + 1
            self.requests.append(entry)
            if not accepted or payload is None:
                return entry
            pers = payload.get("personalizations") or [{}]
            record: dict[str, Any] = {
                "seq": seq,
                "tend_message_id": tend_id,
                "x_message_id": x_message_id,
                "sandbox": sandbox,
                "to": [r.get("email") for p in pers for r in p.get("to", [])],
                "subject": payload.get("subject"),
                "categories": payload.get("categories", []),
                "custom_args": payload.get("custom_args", {}),
                "send_at": payload.get("send_at"),
                "received_at": time.time(),
            }
            if self.keep_payloads:
                record["payload"] = payload
            self.accepted.append(record)
            if tend_id is not None and not sandbox:
                self.counts[tend_id] += 1
            if self._record is not None:
                self._record.write(json.dumps(record, ensure_ascii=False) + "\n")
                self._record.flush()
        return entry

    async def _mail_send(self, request: web.Request) -> web.StreamResponse:
        request[_RECEIVED_AT] = time.time()
        plan = self.faults
        latency = plan.latency_ms / 1000.0
        auth = request.headers.get("Authorization", "")
        scheme, _, key = auth.partition(" ")
        if scheme != "Bearer" or not key.strip():
            await asyncio.sleep(latency)
            self._log(request, None, "401", accepted=False)
            return _errors(401, [_err(None, "authorization required")])
        if self.api_key is not None and key.strip() != self.api_key:
            await asyncio.sleep(latency)
            self._log(request, None, "401", accepted=False)
            return _errors(401, [_err(None, "The provided authorization grant is invalid, "
                                            "expired, or revoked")])
        if request.headers.get("Content-Type", "").split(";")[0].strip() != "application/json":
            self._log(request, None, "415", accepted=False)
            return _errors(415, [_err(None, "Content-Type should be application/json.")])

        peek = self._peek_fault(request)
        if peek == "reset":
            self._log(request, None, "reset", accepted=False)
            _drop(request)
            return web.Response(status=204)
        if request.content_length is not None and request.content_length > MAX_PAYLOAD_BYTES:
            self._log(request, None, "413", accepted=False)
            return _errors(413, [_err(None, "The JSON payload you have included in your request "
                                            "is too large.")])
        raw = await request.read()
        try:
            payload = _decode(raw)
        except UnicodeDecodeError:
            self._log(request, None, "415", accepted=False)
            return _errors(415, [_err(None, "Invalid UTF8 in request")])
        except ValueError:
            await asyncio.sleep(latency)
            self._log(request, None, "400", accepted=False)
            return _errors(400, [_err(None, "Bad Request")])
        tend_id = _tend_message_id(payload)
        held = self._limited_until
        if plan.hold_429 and time.time() < held:  # the account is over its limit until then
            await asyncio.sleep(latency)
            self._log(request, tend_id, "429", accepted=False, while_limited=True)
            return _rate_limited(held, whole_seconds=plan.reset_ms % 1000 == 0)
        fault = self._draw_fault(tend_id)
        await asyncio.sleep(latency)

        if fault in ("401", "403"):
            self._log(request, tend_id, fault, accepted=False)
            return _errors(int(fault), [_err(None, "access forbidden" if fault == "403" else
                                             "The provided authorization grant is invalid, "
                                             "expired, or revoked")])
        if fault == "429":
            reset = time.time() + plan.reset_ms / 1000.0
            if plan.hold_429:
                with self._lock:
                    self._limited_until = max(self._limited_until, reset)
            self._log(request, tend_id, "429", accepted=False)
            return _rate_limited(reset, whole_seconds=plan.reset_ms % 1000 == 0)
        if fault == "503":
            self._log(request, tend_id, "503", accepted=False)
            return _errors(503, [_err(None, "The SendGrid v3 Web API is not available.")])
        if fault == "reset":
            self._log(request, tend_id, "reset", accepted=False)
            _drop(request)
            return web.Response(status=204)
        if fault == "413":
            self._log(request, tend_id, "413", accepted=False)
            return _errors(413, [_err(None, "The JSON payload you have included in your request "
                                            "is too large.")])
        errors = validate_mail_send(payload)
        if fault == "400" and not errors:
            errors = [_err("content", "The content value must be a string at least one character "
                                      "in length. (injected fault)")]
        if errors:
            self._log(request, tend_id, "400", accepted=False)
            return _errors(400, errors)

        sandbox = _sandbox(payload)
        x_id = None if sandbox else _x_message_id()
        outcome = "200" if sandbox else "202"
        if fault in _ACCEPTING_FAULTS:
            outcome = fault
        logged = self._log(request, tend_id, outcome, accepted=True, x_message_id=x_id,
                           payload=payload, sandbox=sandbox)
        if fault == "500":
            return _errors(500, [_err(None, "An error occurred on a SendGrid server.")])
        if fault == "drop":
            _drop(request)
            return web.Response(status=204)
        if fault == "slow":
            await asyncio.sleep(plan.slow_ms / 1000.0)
            with self._lock:
                logged["answered_at"] = time.time()
        if sandbox:
            return web.Response(status=200)
        return web.Response(status=202, headers={"X-Message-Id": x_id or ""})

    def _peek_fault(self, request: web.Request) -> str | None:
        """A scripted 'reset' must happen before the body is read (the id is not known yet)."""
        with self._lock:
            if self.faults.script and self.faults.script[0] == "reset":
                return self.faults.script.pop(0)
        return None

    async def _get_stats(self, request: web.Request) -> web.Response:
        return web.json_response(self.stats())

    async def _get_messages(self, request: web.Request) -> web.Response:
        return web.json_response({"messages": self.messages(
            request.query.get("tend_message_id"))})

    async def _get_counts(self, request: web.Request) -> web.Response:
        return web.json_response(self.accepted_counts())

    async def _get_requests(self, request: web.Request) -> web.Response:
        return web.json_response({"requests": self.request_log()})

    async def _get_faults(self, request: web.Request) -> web.Response:
        return web.json_response(self.faults.as_json())

    async def _post_faults(self, request: web.Request) -> web.Response:
        try:
            data = await request.json()
            if not isinstance(data, dict):
                raise ValueError("send a JSON object of fault settings")
            plan = FaultPlan.from_json(data, base=self.faults)
        except (ValueError, TypeError) as exc:
            return web.json_response({"error": str(exc)}, status=400)
        self.set_faults(plan)
        return web.json_response(plan.as_json())

    async def _get_suppressions(self, request: web.Request) -> web.Response:
        auth = request.headers.get("Authorization", "")
        scheme, _, key = auth.partition(" ")
        if scheme != "Bearer" or not key.strip() or (
                self.api_key is not None and key.strip() != self.api_key):
            return _errors(401, [_err(None, "authorization required")])
        fault = self._draw_fault(None)
        if fault == "429":
            reset_ms = self.faults.reset_ms
            return _rate_limited(time.time() + reset_ms / 1000.0,
                                 whole_seconds=reset_ms % 1000 == 0)
        if fault in ("500", "503"):
            return _errors(int(fault), [_err(None, "the service is not available")])
        q = request.rel_url.query
        try:
            limit = int(q.get("limit", "500"))
            offset = int(q.get("offset", "0"))
            start = int(q["start_time"]) if "start_time" in q else None
            end = int(q["end_time"]) if "end_time" in q else None
        except ValueError:
            return _errors(400, [_err("limit", "limit, offset, start_time and end_time are "
                                               "integers")])
        if not 1 <= limit <= 500 or offset < 0:
            return _errors(400, [_err("limit", "limit must be 1-500 and offset >= 0")])
        name = request.path.rsplit("/", 1)[-1]
        with self._lock:
            entries = [e for e in self.suppression_lists[name]
                       if (start is None or int(e.get("created", 0)) >= start)
                       and (end is None or int(e.get("created", 0)) <= end)]
        return web.json_response(entries[offset : offset + limit])

    async def _post_suppressions(self, request: web.Request) -> web.Response:
        try:
            doc = await request.json()
            if not isinstance(doc, dict) or not all(isinstance(v, list) for v in doc.values()):
                raise ValueError("expected {list name: [entries]}")
            self.set_suppressions(doc)
        except ValueError as exc:
            return _errors(400, [_err(None, str(exc))])
        return web.json_response({name: len(v) for name, v in self.suppression_lists.items()})

    async def _post_reset(self, request: web.Request) -> web.Response:
        self.reset()
        return web.json_response(self.stats())


def _errors(status: int, errors: Sequence[Mapping[str, Any]]) -> web.Response:
    return web.json_response({"errors": list(errors)}, status=status)


def _rate_limited(reset: float, *, whole_seconds: bool) -> web.Response:
    """A 429 saying the limit resets at ``reset`` (epoch seconds): ``X-RateLimit-Reset`` and,
    in whole seconds, ``Retry-After`` (rounded up, so a client that obeys it is never early)."""
    left = reset - time.time()
    headers = {
        "X-RateLimit-Limit": "600",
        "X-RateLimit-Remaining": "0",
        "X-RateLimit-Reset": str(math.ceil(reset)) if whole_seconds else f"{reset:.3f}",
    }
    if whole_seconds and left > 0:
        headers["Retry-After"] = str(math.ceil(left))
    return web.json_response({"errors": [{"field": None, "message": "too many requests"}]},
                             status=429, headers=headers)


def _drop(request: web.Request) -> None:
    """Close the connection without an answer (what a crashed load balancer looks like)."""
    transport = request.transport
    if transport is not None:
        transport.abort()


def _x_message_id() -> str:
    return secrets.token_urlsafe(16)[:22]


# -- running it -------------------------------------------------------------------------------

#: How long stopping waits for requests still in flight (aiohttp's default is a minute): a
#: stand-in has nothing worth a minute of waiting.
_SHUTDOWN_S = 2.0


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop ships with Airflow's requirements
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


@dataclass
class RunningFake:
    """A stand-in serving on a background thread (tests, benchmarks)."""

    fake: FakeSendGrid
    url: str
    port: int


@contextlib.contextmanager
def run_in_thread(
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    api_key: str | None = None,
    faults: FaultPlan | None = None,
    record_file: Path | None = None,
    keep_payloads: bool = False,
) -> Iterator[RunningFake]:
    """Serve a stand-in on ``host:port`` (0: a free port) until the block exits."""
    fake = FakeSendGrid(api_key=api_key, faults=faults, record_file=record_file,
                        keep_payloads=keep_payloads)
    loop = _new_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    actual_port = sock.getsockname()[1]
    runner = web.AppRunner(fake.app(), access_log=None, shutdown_timeout=_SHUTDOWN_S)
    started = threading.Event()
    failure: list[BaseException] = []

    def run() -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(runner.setup())
            loop.run_until_complete(web.SockSite(runner, sock).start())
        except BaseException as exc:  # reported to the caller below
            failure.append(exc)
            started.set()
            return
        started.set()
        loop.run_forever()
        loop.run_until_complete(runner.cleanup())
        loop.close()

    thread = threading.Thread(target=run, name="fake-sendgrid", daemon=True)
    thread.start()
    started.wait()
    if failure:
        raise failure[0]
    try:
        yield RunningFake(fake, f"http://{host}:{actual_port}", actual_port)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        fake.close()


def serve(
    *,
    host: str = "127.0.0.1",
    port: int = 8089,
    api_key: str | None = None,
    faults: FaultPlan | None = None,
    record_file: Path | None = None,
    keep_payloads: bool = False,
    ready: TextIO | None = None,
) -> None:
    """Serve until interrupted (``tend fake-sendgrid``)."""
    fake = FakeSendGrid(api_key=api_key, faults=faults, record_file=record_file,
                        keep_payloads=keep_payloads)
    loop = _new_loop()
    asyncio.set_event_loop(loop)
    runner = web.AppRunner(fake.app(), access_log=None, shutdown_timeout=_SHUTDOWN_S)
    loop.run_until_complete(runner.setup())
    site = web.TCPSite(runner, host, port, reuse_address=True)
    loop.run_until_complete(site.start())
    server = getattr(site, "_server", None)
    if port == 0 and server is not None and server.sockets:  # --port 0: the OS picked one
        port = server.sockets[0].getsockname()[1]
    if ready is not None:
        plan = fake.faults
        print(f"fake SendGrid listening on http://{host}:{port}  (POST {MAIL_SEND_PATH}; "
              "GET /_stats /_messages /_counts /_requests; POST /_faults /_reset)\n"
              f"  latency {plan.latency_ms:g} ms, faults: rate {plan.rate:g} of "
              f"{','.join(plan.kinds)}; api key: {'required' if api_key else 'any'}",
              file=ready, flush=True)
    # Both signals stop the loop through its own handler: under uvloop a SIGINT left to
    # Python's default handler is only seen when the loop next runs Python code, so a quiet
    # server could miss a Ctrl-C for a long time.
    with contextlib.suppress(NotImplementedError, RuntimeError):  # not on Windows
        loop.add_signal_handler(signal.SIGTERM, loop.stop)
        loop.add_signal_handler(signal.SIGINT, loop.stop)
    try:
        loop.run_forever()
    except KeyboardInterrupt:
        pass
    finally:
        loop.run_until_complete(runner.cleanup())
        loop.close()
        fake.close()


def run_from_args(args: Any, out: TextIO) -> None:
    """``tend fake-sendgrid``: the flags are declared in tend.cli.dev (kept import-light)."""
    try:
        plan = FaultPlan(rate=args.fault_rate, kinds=tuple(
            k.strip() for k in args.faults.split(",") if k.strip()), seed=args.seed,
            reset_ms=args.reset_ms, slow_ms=args.slow_ms, latency_ms=args.latency_ms,
            hold_429=args.hold_429)
    except ValueError as exc:
        from tend.errors import ConfigError

        raise ConfigError(f"fake-sendgrid: {exc}") from exc
    serve(host=args.host, port=args.port, api_key=args.api_key, faults=plan,
          record_file=args.record, keep_payloads=args.keep_payloads, ready=out)
