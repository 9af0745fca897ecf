"""The customer's pages: unsubscribe, preferences and the survey answer.

Every link in an email carries a signed token (:mod:`tend.messages.tokens`) that names the
customer (and, for the survey, the message) and the link's purpose. A token that does not
verify gets the same plain 404 as an unknown path, whether or not the customer exists.

- ``/unsubscribe/<token>``: ``GET`` shows what will happen and a button; it never changes
  anything (mail scanners open every link). ``POST`` with ``List-Unsubscribe=One-Click``
  (RFC 8058: what Gmail and Yahoo send, and what the button sends) unsubscribes at once: 200,
  no cookie, no redirect. The answer page offers "undo" and "fewer emails instead".
- ``/preferences/<token>``: pause marketing 1 or 3 months, fewer emails, no offers (reminders
  still come), language.
- ``/survey/<token>?rating=N``: records the rating of that message (a later click changes
  it), then thanks the customer and offers a comment box. A low rating opens a complaint,
  unless it changes a rating given moments before: that is a mail scanner fetching every
  rating link (:data:`SWEEP`).

The emails' links carry their language (``?lang=fr``); a page speaks the customer's chosen
language, else that one, else the browser's, and its own links and forms keep it.

Forms other than the one-click unsubscribe carry a signed, short-lived token bound to the
customer and the form (no cookie needed), and a request whose ``Origin`` or ``Referer`` names
another site is refused. Our pages send ``Referrer-Policy: no-referrer``, so browsers post
their forms with ``Origin: null``; that and an absent header are left to the form token.

Writes go through :meth:`Service.record`, so they are spooled while the store is down; the
handlers are idempotent and take ``now`` from the request, so a replay decides as the request
would have.
"""

from __future__ import annotations

import asyncio
import codecs
import datetime as dt
import json
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import jinja2
from python_multipart.multipart import parse_options_header
from sqlalchemy import Connection
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import BaseRoute, Route

from tend import config
from tend.listen import UNSTORABLE
from tend.logs import HIDDEN
from tend.messages.contexts import SURVEY_PURPOSE
from tend.messages.tokens import make_token, verify_message_token, verify_token
from tend.store import complaints, ledger, survey
from tend.store import preferences as chosen
from tend.store import suppressions as suppressed
from tend.store.preferences import Preferences

if TYPE_CHECKING:
    from tend.listen.app import Handler, Service

__all__ = ["HANDLERS", "LOCALES", "routes"]

#: The languages the pages speak (templates/pages/<locale>/).
LOCALES = ("en", "fr")
#: A form is a few hundred bytes; anything much larger is not one of ours.
MAX_FORM_BYTES = 8 * 1024
MAX_FORM_FIELDS = 12
#: The longest query string a page accepts (a rating link has one short parameter).
MAX_QUERY_CHARS = 256
MAX_COMMENT_CHARS = 2000
#: How long a page's form stays valid: long enough to read and choose, short enough that a
#: copied form is soon useless.
FORM_SECONDS = 2 * 3600
#: A rating this low opens a complaint; a comment opens one up to :data:`COMMENT_COMPLAINT`.
COMPLAINT_RATING = 2
COMMENT_COMPLAINT = 3
#: Rating changes this close to the message's previous answer are a mail scanner fetching
#: every rating link, not the customer (see :func:`_survey_answer`). Scanners fetch within
#: seconds; the price is that a customer who lowers their rating this soon opens no complaint
#: unless they add a comment (the thank-you page asks for one).
SWEEP = dt.timedelta(minutes=2)
#: How long the preferences page's pauses last, in months.
PAUSE_MONTHS = (1, 3)

_CSRF = "form"
_SEP = "\x1f"
#: Codecs a multipart form may not declare: they turn escapes in the bytes into any code point
#: at all. Any other label is taken (Starlette reads an unknown one as Latin-1); what a decoding
#: can still yield that no store keeps (NUL, lone surrogates) is refused with the field.
_ESCAPE_CODECS = frozenset({"unicode-escape", "raw-unicode-escape", "utf-7"})


class _Refused(Exception):
    """A request answered with a plain 4xx page (see ``tend.listen.app``)."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status_code = status


# -- handlers: one store transaction each, idempotent (replayed from the spool) ---------------


def _unsubscribe(conn: Connection, payload: Mapping[str, Any], now: dt.datetime) -> None:
    suppressed.unsubscribe(conn, str(payload["customer_id"]), source=str(payload["source"]),
                           now=now)


def _resubscribe(conn: Connection, payload: Mapping[str, Any], now: dt.datetime) -> None:
    customer_id = str(payload["customer_id"])
    suppressed.resubscribe(conn, customer_id, now=now)
    if payload.get("fewer"):
        prefs = chosen.load(conn, customer_id)
        chosen.save(conn, customer_id, replace(prefs, fewer_emails=True), now=now)


def _preferences(conn: Connection, payload: Mapping[str, Any], now: dt.datetime) -> None:
    customer_id = str(payload["customer_id"])
    before = chosen.load(conn, customer_id)
    pause = str(payload["pause"])
    if pause == "keep":
        until = before.paused_until
    elif pause == "none":
        until = None
    else:
        until = add_months(now.date(), int(pause))
    chosen.save(conn, customer_id, Preferences(
        paused_until=until, fewer_emails=bool(payload["fewer"]),
        offers_opt_out=bool(payload["no_offers"]), locale=payload.get("locale") or None,
    ), now=now)


def _survey_answer(conn: Connection, payload: Mapping[str, Any], now: dt.datetime) -> None:
    """Store the answer; open, update or withdraw the complaint it implies.

    A message the ledger does not know (or knows for another customer) writes nothing: the
    token is ours, but the answer must be about a message we sent.

    Mail scanners fetch all five rating links, in any order and often in parallel. So a rating
    without a comment that arrives within :data:`SWEEP` of the message's previous answer is
    not the customer's: when it changes the rating it opens no complaint and closes one not
    yet told to staff and without a comment (the sweep's first fetch may have opened it); when
    it repeats the rating (a second fetch, a reload) it changes no complaint. Whatever the
    order, a sweep ends with no complaint. :func:`survey.answer` locks the answer until this
    transaction ends, so requests that race are decided one after the other.
    """
    customer_id, message_id = str(payload["customer_id"]), str(payload["message_id"])
    rating, comment = int(payload["rating"]), payload.get("comment") or None
    sent = ledger.customer_and_program(conn, message_id)
    if sent is None or sent[0] != customer_id:
        return
    previous = survey.answer(conn, message_id=message_id, customer_id=customer_id,
                             program=sent[1], sku=_asked_about(conn, message_id),
                             rating=rating, comment=comment, now=now)
    # abs(): a request may take its time before the one it raced with and commit after it.
    if previous is not None and comment is None and abs(now - previous.at) <= SWEEP:
        if previous.rating != rating:
            complaints.withdraw_unheard(
                conn, message_id=message_id, source="survey", now=now,
                note="every rating link opened within moments: a mail scanner's sweep")
        return
    if rating <= COMPLAINT_RATING or (comment and rating <= COMMENT_COMPLAINT):
        complaints.open_complaint(conn, customer_id=customer_id, source="survey", now=now,
                                  message_id=message_id, rating=rating, comment=comment)
    else:
        complaints.withdraw_unheard(conn, message_id=message_id, source="survey", now=now,
                                    note=f"the customer changed their rating to {rating}")


def _asked_about(conn: Connection, message_id: str) -> str | None:
    """The product the survey message asked about: its first product, else its signal's."""
    raw = ledger.contexts_of(conn, [message_id]).get(message_id)
    if raw is None:
        return None
    ctx = json.loads(raw)
    products = ctx.get("products") or []
    sku = (products[0] or {}).get("sku") if products else None
    return sku or (ctx.get("signal") or {}).get("sku")


HANDLERS: dict[str, Handler] = {
    "unsubscribe": _unsubscribe,
    "resubscribe": _resubscribe,
    "preferences": _preferences,
    "survey_answer": _survey_answer,
}


def add_months(day: dt.date, months: int) -> dt.date:
    """The same day ``months`` later (the month's last day when it has no such day)."""
    month = day.month - 1 + months
    year, month = day.year + month // 12, month % 12 + 1
    for last in (31, 30, 29, 28):
        try:
            return dt.date(year, month, min(day.day, last))
        except ValueError:
            continue
    raise AssertionError("unreachable")


# -- the pages ---------------------------------------------------------------------------------


class Pages:
    """The routes' shared parts: the templates, the shop, the tokens."""

    def __init__(self, service: Service, templates: Path) -> None:
        self.service = service
        self.secret = service.secret
        self.env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(str(templates)), autoescape=True,
            undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
        # The emails' stylesheet first: the pages use its classes, so they look like the mail.
        self.css = ((config.templates_dir() / "layouts" / "email.css").read_bytes() + b"\n"
                    + (templates / "pages.css").read_bytes())

    # -- what the request says ------------------------------------------------------------

    def customer(self, request: Request, purpose: str) -> str:
        _bounded_query(request)
        customer_id = verify_token(self.secret, request.path_params["token"], purpose)
        if customer_id is None:
            raise _Refused(404)
        return customer_id

    def locale(self, request: Request, chosen_locale: str | None) -> str:
        """The customer's stored choice, else ``?lang=`` (the email's language, which its links
        carry), else the browser's, else the shop's. A ``lang`` the pages do not speak is
        passed over, as an unknown browser language is: the page still shows."""
        if chosen_locale in LOCALES:
            return str(chosen_locale)
        asked = request.query_params.get("lang", "").replace("_", "-").split("-")[0].lower()
        if asked in LOCALES:
            return asked
        for part in request.headers.get("accept-language", "").split(",")[:10]:
            tag = part.split(";")[0].strip().lower()[:2]
            if tag in LOCALES:
                return tag
        default = self.service.settings.default_locale[:2]
        return default if default in LOCALES else LOCALES[0]

    def form_token(self, customer_id: str, form: str) -> str:
        expires = int(time.time()) + FORM_SECONDS
        return make_token(self.secret, f"{customer_id}{_SEP}{form}{_SEP}{expires}", _CSRF)

    def check_form(self, request: Request, fields: Mapping[str, str], customer_id: str,
                   form: str) -> None:
        """Refuse (403) a form posted from another site, or without a genuine, fresh token of
        this customer and this form."""
        _same_site(request, self.service.settings.base_url)
        bound = verify_token(self.secret, fields.get(_CSRF, ""), _CSRF)
        parts = bound.split(_SEP) if bound else []
        if (len(parts) < 3 or _SEP.join(parts[:-2]) != customer_id or parts[-2] != form
                or not parts[-1].isdigit() or int(parts[-1]) < time.time()):
            raise _Refused(403)

    def _read(self, fn: Callable[[Connection], Any], default: Any) -> Any:
        try:
            with self.service.engine.connect() as conn:
                return fn(conn)
        except Exception as exc:
            if not self.service.can_wait(exc):
                raise  # a bug in a statement, not an outage
            return default

    async def read(self, fn: Callable[[Connection], Any], default: Any) -> Any:
        """Read the store for a page; ``default`` while the store is down (the page still
        shows, and what the customer does next is spooled)."""
        return await asyncio.to_thread(self._read, fn, default)

    async def record(self, action: str, payload: Mapping[str, Any],
                     then: Callable[[Connection], Any] | None = None,
                     default: Any = None) -> Any:
        """Record ``action``, then (when given) read what the answer page shows, in one trip
        to a worker thread: a one-click unsubscribe is the endpoint mail providers call in
        bursts, and each trip is a wait in the thread pool's queue."""
        def run() -> Any:
            self.service.record(action, payload)
            return None if then is None else self._read(then, default)

        return await asyncio.to_thread(run)

    # -- what the response is -------------------------------------------------------------

    def page(self, request: Request, name: str, locale: str, **context: Any) -> Response:
        """``<locale>/<name>.html.j2``; links are relative to the request (``root``), so the
        pages work behind a proxy that serves them under a path prefix."""
        settings = self.service.settings
        depth = request.url.path.strip("/").count("/")
        html = self.env.get_template(f"{locale}/{name}.html.j2").render(
            shop={"name": settings.name, "postal_address": settings.postal_address,
                  "website_url": settings.website_url},
            locale=locale, root="../" * depth, **context)
        return HTMLResponse(html)

    def links(self, request: Request, customer_id: str, locale: str) -> dict[str, str]:
        """The customer's unsubscribe and preferences pages, relative to this one, in this
        page's language (a customer who chose none keeps the email's)."""
        root = "../" * request.url.path.strip("/").count("/")
        unsubscribe = f"{root}unsubscribe/{make_token(self.secret, customer_id, 'unsubscribe')}"
        lang = _lang(locale)
        return {"unsubscribe_url": unsubscribe + lang, "change_url": f"{unsubscribe}/change{lang}",
                "preferences_url": f"{root}preferences/"
                                   f"{make_token(self.secret, customer_id, 'preferences')}{lang}"}

    async def stylesheet(self, request: Request) -> Response:
        return Response(self.css, media_type="text/css")


def _lang(locale: str) -> str:
    """The query that keeps a page's language on the next page (a form's answer)."""
    return f"?{urlencode({'lang': locale})}"


def _bounded_query(request: Request) -> None:
    """400 for a query string too long, or naming a parameter twice (as for a form's
    fields: a choice is made once, not picked from several)."""
    if len(request.scope.get("query_string", b"")) > MAX_QUERY_CHARS:
        raise _Refused(400)
    keys = [k for k, _ in request.query_params.multi_items()]
    if len(keys) != len(set(keys)):
        raise _Refused(400)


def _same_site(request: Request, base_url: str) -> None:
    """403 when the browser says the form came from a site that is not ours."""
    mine = {_origin(base_url), _origin(str(request.base_url))}
    origin = request.headers.get("origin")
    if origin is not None and origin != "null":
        if _origin(origin) not in mine:
            raise _Refused(403)
        return
    referer = request.headers.get("referer")
    if referer and _origin(referer) not in mine:
        raise _Refused(403)


def _origin(url: str) -> str:
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return "invalid:"
    default = {"http": 80, "https": 443}.get(parts.scheme)
    host = (parts.hostname or "").lower()
    return f"{parts.scheme}://{host}" + (f":{port}" if port and port != default else "")


def _comment(text: str) -> str:
    """A survey comment as staff will read it: without hidden characters (``tend.logs.HIDDEN``;
    a textarea's CR LF becomes LF)."""
    return HIDDEN.sub("", text).strip()


def _known_charset(content_type: str) -> bool:
    """Whether the form's declared charset (none: UTF-8) is not one of :data:`_ESCAPE_CODECS`.
    Starlette decodes multipart fields with the charset the client names (read with the same
    parser as here); a label is compared by the codec it names, as Starlette looks it up."""
    _, params = parse_options_header(content_type)
    charset = params.get(b"charset", b"utf-8").decode("latin-1").strip()
    try:
        return codecs.lookup(charset).name not in _ESCAPE_CODECS
    except LookupError:
        return True


async def form_fields(request: Request) -> dict[str, str]:
    """The posted form, parsed strictly: urlencoded (or, for mail providers' one-click posts,
    multipart) UTF-8, small, each field once, nothing a store cannot keep. Anything else is a
    4xx."""
    _bounded_query(request)
    content_type = request.headers.get("content-type", "")
    kind = content_type.split(";")[0].strip().lower()
    declared = request.headers.get("content-length")
    if declared is not None and declared.isascii() and declared.isdigit() \
            and int(declared) > MAX_FORM_BYTES:
        raise _Refused(413)
    if kind == "multipart/form-data":
        # (A urlencoded body is decoded as strict UTF-8 below, whatever it declares: refusing
        # a one-click unsubscribe over a label would keep mailing someone who said stop.)
        if not _known_charset(content_type):
            raise _Refused(400)
        try:
            form = await request.form(max_files=0, max_fields=MAX_FORM_FIELDS,
                                      max_part_size=MAX_FORM_BYTES)
        except Exception as exc:  # python-multipart's errors have no common base class
            raise _Refused(400) from exc
        items = [(k, v) for k, v in form.multi_items() if isinstance(v, str)]
    elif kind == "application/x-www-form-urlencoded":
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_FORM_BYTES:
                raise _Refused(413)
        try:
            items = parse_qsl(body.decode("utf-8"), keep_blank_values=True, strict_parsing=True,
                              encoding="utf-8", errors="strict",
                              max_num_fields=MAX_FORM_FIELDS) if body else []
        except (UnicodeDecodeError, ValueError) as exc:
            raise _Refused(400) from exc
    else:
        raise _Refused(415)
    fields: dict[str, str] = {}
    for key, value in items:
        if key in fields or UNSTORABLE.search(key) or UNSTORABLE.search(value):
            raise _Refused(400)
        fields[key] = value
    return fields


def _choice(fields: Mapping[str, str], name: str, allowed: tuple[str, ...]) -> str:
    value = fields.get(name, "")
    if value not in allowed:
        raise _Refused(400)
    return value


def _rating(value: str | None) -> int:
    if value is None or value not in ("1", "2", "3", "4", "5"):
        raise _Refused(400)
    return int(value)


def routes(service: Service) -> list[BaseRoute]:
    pages = Pages(service, config.pages_templates_dir())
    one_click = {"List-Unsubscribe": "One-Click"}

    async def unsubscribe(request: Request) -> Response:
        customer_id = pages.customer(request, "unsubscribe")
        if request.method == "POST":
            fields = await form_fields(request)
            if fields.get("List-Unsubscribe") != one_click["List-Unsubscribe"]:
                raise _Refused(400)
            prefs = await pages.record(
                "unsubscribe", {"customer_id": customer_id, "source": "one_click"},
                then=lambda c: chosen.load(c, customer_id), default=Preferences())
            state = "done"
        else:
            since, prefs = await pages.read(
                lambda c: (suppressed.unsubscribed_since(c, customer_id),
                           chosen.load(c, customer_id)), (None, Preferences()))
            state = "done" if since else "confirm"
        locale = pages.locale(request, prefs.locale)
        return pages.page(request, "unsubscribe", locale, state=state, one_click=one_click,
                          form=pages.form_token(customer_id, "unsubscribe"),
                          **pages.links(request, customer_id, locale))

    async def change_unsubscribe(request: Request) -> Response:
        customer_id = pages.customer(request, "unsubscribe")
        fields = await form_fields(request)
        pages.check_form(request, fields, customer_id, "unsubscribe")
        choice = _choice(fields, "choice", ("undo", "fewer"))
        prefs = await pages.record("resubscribe", {"customer_id": customer_id,
                                                   "fewer": choice == "fewer"},
                                   then=lambda c: chosen.load(c, customer_id),
                                   default=Preferences())
        locale = pages.locale(request, prefs.locale)
        return pages.page(request, "unsubscribe", locale, state=choice, one_click=one_click,
                          form=pages.form_token(customer_id, "unsubscribe"),
                          **pages.links(request, customer_id, locale))

    async def preferences(request: Request) -> Response:
        customer_id = pages.customer(request, "preferences")
        saved = False
        if request.method == "POST":
            fields = await form_fields(request)
            pages.check_form(request, fields, customer_id, "preferences")
            pause = _choice(fields, "pause", ("keep", "none", *map(str, PAUSE_MONTHS)))
            locale_choice = _choice(fields, "lang", ("", *LOCALES))
            flags = {name: _choice(fields, name, ("", "on")) == "on"
                     for name in ("fewer", "no_offers")}
            await pages.record("preferences", {"customer_id": customer_id, "pause": pause,
                                               "locale": locale_choice or None, **flags})
            saved = True
        prefs = await pages.read(lambda c: chosen.load(c, customer_id), Preferences())
        today = dt.datetime.now(dt.UTC).date()
        paused = prefs.paused_until if prefs.paused_until and prefs.paused_until > today \
            else None
        locale = pages.locale(request, prefs.locale)
        links = pages.links(request, customer_id, locale)
        return pages.page(request, "preferences", locale,
                          saved=saved, prefs=prefs, paused_until=paused, locales=LOCALES,
                          pause_months=PAUSE_MONTHS, action=links["preferences_url"],
                          unsubscribe_url=links["unsubscribe_url"],
                          form=pages.form_token(customer_id, "preferences"))

    async def survey_page(request: Request) -> Response:
        _bounded_query(request)
        bound = verify_message_token(service.secret, request.path_params["token"],
                                     SURVEY_PURPOSE)
        if bound is None:
            raise _Refused(404)
        customer_id, message_id = bound
        form_name = f"survey:{message_id}"
        comment: str | None = None
        if request.method == "POST":
            fields = await form_fields(request)
            pages.check_form(request, fields, customer_id, form_name)
            rating = _rating(fields.get("rating"))
            comment = _comment(fields.get("comment", ""))
            if len(comment) > MAX_COMMENT_CHARS:
                raise _Refused(413)
        else:
            rating = _rating(request.query_params.get("rating"))
        if request.method != "HEAD":  # link checkers probe with HEAD: not an answer
            await pages.record("survey_answer", {
                "customer_id": customer_id, "message_id": message_id, "rating": rating,
                "comment": comment or None})
        prefs = await pages.read(lambda c: chosen.load(c, customer_id), Preferences())
        locale = pages.locale(request, prefs.locale)
        return pages.page(request, "survey", locale,
                          rating=rating, commented=bool(comment),
                          low=rating <= COMMENT_COMPLAINT,
                          action=request.path_params["token"] + _lang(locale),
                          form=pages.form_token(customer_id, form_name))

    def guarded(endpoint: Callable[[Request], Awaitable[Response]]
                ) -> Callable[[Request], Awaitable[Response]]:
        async def run(request: Request) -> Response:
            try:
                return await endpoint(request)
            except _Refused as refused:
                from tend.listen.app import plain_response

                return plain_response(refused.status_code)

        return run

    return [
        Route("/pages.css", pages.stylesheet, methods=["GET"]),
        Route("/unsubscribe/{token}", guarded(unsubscribe), methods=["GET", "POST"]),
        Route("/unsubscribe/{token}/change", guarded(change_unsubscribe), methods=["POST"]),
        Route("/preferences/{token}", guarded(preferences), methods=["GET", "POST"]),
        Route("/survey/{token}", guarded(survey_page), methods=["GET", "POST"]),
    ]
