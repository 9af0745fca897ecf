"""The send engine: one batch of claimed messages through a delivery backend, over the ledger.

Takes a batch id that the programs stage claimed, renders each message (``tend.messages``),
hands chunks to a backend (``tend.delivery``) and records every outcome in the contact ledger
(``tend.store.ledger``) following the protocol ``claimed -> sending -> sent | failed | unknown``.
Called by tend_programs' mapped ``send`` task and by ``tend night``.

Recovery: a send holds its batch's lease (a fencing token renewed by a heartbeat thread), so a
retry started while this worker is alive is refused, and a worker that stalled past its lease
can neither mark more rows nor touch the new holder's. The new holder turns the rows a dead
worker left 'sending' into 'unknown', then resolves what it can (provider events, a backend
that can tell: the outbox) and reports the rest loudly with the ``tend reconcile`` command.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import datetime as dt
import json
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
from sqlalchemy import Engine, func, select
from sqlalchemy.exc import SQLAlchemyError

from tend import config
from tend.config import ShopSettings
from tend.delivery.base import (
    DeliveryBackend,
    DeliveryResult,
    DeliveryStatus,
    NotSent,
    Outcome,
    OutgoingMessage,
    chunk_size_of,
    chunks_in_flight_of,
    delivers_at_once,
    is_rehearsal,
    resolver_of,
    safe_display_name,
    submitter_of,
)
from tend.errors import DeliveryAuthError, DeliveryError, TemplateError
from tend.logs import log, mask_email, table
from tend.messages.contexts import context_for_render
from tend.messages.render import Renderer
from tend.programs.caps import SendWindow
from tend.programs.consent import preference_fates
from tend.store import ledger, preferences, suppressions
from tend.store.db import connect
from tend.store.tables import contact_ledger


@dataclass
class SendResult:
    """What one send task did: outcomes, throughput, and where the time went."""

    batch_id: int
    counts: Counter[str] = field(default_factory=Counter)
    """Outcomes of the messages this attempt handed to the backend; ``unknown`` counts every
    message of the batch still unknown at the end (an earlier attempt's too)."""
    recovered_unknown: int = 0
    """Rows an earlier attempt left 'sending', found by this one and turned 'unknown'."""
    resolved_sent: int = 0
    """'unknown' rows this attempt resolved as sent (provider events, the backend's word)."""
    resolved_released: int = 0
    """'unknown' rows the backend knew never went out: sent again by this attempt."""
    unknown_left: int = 0
    """The batch's messages still 'unknown' when the attempt ended: an operator must decide."""
    as_of: dt.date | None = None
    rehearsal: Counter[str] = field(default_factory=Counter)
    """A rehearsal's outcomes (SendGrid sandbox): none recorded, all back to 'claimed'."""
    held: int = 0
    """Messages kept claimed for quiet hours (a backend that delivers at once): a later
    attempt, after ``held_until``, sends them."""
    held_until: dt.datetime | None = None
    """The earliest opening among the held messages (UTC)."""
    seconds: float = 0.0
    total: int = 0
    """Messages the batch still had to send when the task started."""
    backend: str = ""
    timings: dict[str, float] = field(default_factory=dict)
    """Seconds spent rendering (on the renderer thread, ahead of the window), on the ledger,
    waiting for the backend (the task's thread), and the backend's busy time (something of
    the batch out at the backend); they overlap, so they add up to more than the wall time."""

    def rate(self) -> float:
        return sum(self.counts.values()) / self.seconds if self.seconds else 0.0

    def warning_lines(self) -> list[str]:
        """What an operator must act on, printed first: messages left 'unknown'."""
        if not self.unknown_left or self.as_of is None:
            return []
        return ledger.unknown_warning_lines(self.as_of, self.unknown_left, self.batch_id)

    def lines(self) -> list[str]:
        done = ", ".join(f"{k} {v:,}" for k, v in sorted(self.counts.items()) if v)
        idle = "none sent yet" if self.held else "nothing to send"
        head = f"batch {self.batch_id}: {done or idle}"
        out = [*self.warning_lines(), f"{head} in {self.seconds:.1f}s ({self.rate():,.0f} msg/s)"]
        if self.recovered_unknown:
            out.append(f"{self.recovered_unknown:,} message(s) were mid-send when a previous "
                       "attempt stopped: marked unknown, not resent blindly")
        if self.resolved_sent or self.resolved_released:
            out.append(f"{self.resolved_sent + self.resolved_released:,} unknown message(s) "
                       f"resolved: {self.resolved_sent:,} had gone out (now sent), "
                       f"{self.resolved_released:,} never left (sent by this attempt)")
        if self.held and self.held_until is not None:
            out.append(f"{self.held:,} message(s) wait for quiet hours to end (the first "
                       f"opening at {self.held_until:%Y-%m-%d %H:%M} UTC): {self.backend} "
                       "delivers at once, so they stay claimed for an attempt after then")
        if self.rehearsal:
            seen = ", ".join(f"{k} {v:,}" for k, v in sorted(self.rehearsal.items()))
            out.append(f"rehearsal ({self.backend} sandbox): {seen}; nothing was delivered or "
                       "recorded as sent: every message is back to 'claimed', for the night's "
                       "real run")
        return [*out, *self.table_lines()]

    def table_lines(self) -> list[str]:
        """The summary table that ends a send task's log."""
        rows = [(status, self.counts.get(status, 0)) for status in ("sent", "failed", "unknown")]
        rows += [(s, n) for s, n in sorted(self.counts.items()) if s not in dict(rows)]
        out = table([f"batch {self.batch_id} ({self.backend})", "messages"], rows)
        t = self.timings
        if t:
            out.append(
                f"{self.seconds:.1f}s, {self.rate():,.0f} msg/s; render (own thread) "
                f"{t.get('render', 0):.1f}s, ledger {t.get('ledger', 0):.1f}s, waiting for "
                f"{self.backend} {t.get('wait', 0):.1f}s; {self.backend} busy "
                f"{t.get('backend', 0):.1f}s")
        return out


class _Progress:
    """Progress lines at least every ``every`` seconds: done/total, outcomes, msg/s, ETA."""

    def __init__(self, result: SendResult, clock: Callable[[], float], every: float) -> None:
        self.result, self.clock, self.every = result, clock, every
        self.start = self.last = clock()

    def timeout(self) -> float:
        return max(0.05, self.last + self.every - self.clock())

    def maybe_log(self, in_flight: int = 0) -> None:
        now = self.clock()
        if now - self.last < self.every:
            return
        self.last = now
        r = self.result
        done = sum(r.counts.values())
        rate = done / max(now - self.start, 1e-9)
        left = max(r.total - done, 0)
        eta = f"ETA {left / rate:,.0f}s" if rate > 0 else "ETA unknown"
        log.info("batch %s: %s/%s done (sent %s, failed %s, unknown %s; %s in flight), "
                 "%.0f msg/s, %s", r.batch_id, f"{done:,}", f"{r.total:,}",
                 f"{r.counts['sent']:,}", f"{r.counts['failed']:,}", f"{r.counts['unknown']:,}",
                 f"{in_flight:,}", rate, eta)


@dataclass
class _Chunk:
    ids: list[str]
    outgoing: list[OutgoingMessage]
    failed: list[dict[str, Any]]
    who: list[tuple[str, str, str]] = field(default_factory=list)
    """(message_id, customer_id, kind): what the last suppression check needs."""
    contexts: dict[str, str] = field(default_factory=dict)
    """The stored render context of each message (the batch cache's own strings): the last
    look reads a message's signal from it for the few customers with preferences."""


_WARN_LIMIT = 20  # per-message warnings per batch; the rest are counted


class _Heartbeat:
    """Renews the send lease every quarter of its life on its own thread, so a slow chunk
    (a provider pausing us for minutes) never lets the lease lapse while this worker lives."""

    def __init__(self, engine: Engine, lease: ledger.Lease, ttl: float) -> None:
        self.engine, self.lease, self.ttl = engine, lease, ttl
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tend-send-lease", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.ttl / 4):
            try:
                with self.engine.begin() as conn:
                    kept = ledger.renew_lease(conn, self.lease, ttl=self.ttl)
            except SQLAlchemyError as exc:  # the store blipped: the next beat tries again
                log.warning("batch %s: could not renew the send lease: %s", self.lease.batch_id,
                            exc)
                continue
            if not kept:
                log.error("batch %s: the send lease was taken over by a newer worker; this one "
                          "stops after recording what is in flight", self.lease.batch_id)
                self.lost.set()
                return

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def send_batch(
    store_url: str,
    as_of: dt.date,
    batch_id: int,
    *,
    backend: DeliveryBackend,
    renderer: Renderer,
    settings: ShopSettings,
    chunk_size: int | None = None,
    progress_every: float = 10.0,
    clock: Callable[[], float] = time.monotonic,
    send_window: SendWindow | None = None,
    wall_clock: Callable[[], dt.datetime] | None = None,
) -> SendResult:
    """Send every claimed message of one batch, following the ledger protocol.

    A sliding window (see :class:`_Pipeline`): a thread renders chunks (``chunk_size``, else
    the backend's: outbox/SMTP 50, SendGrid 128) ahead of the network; each chunk is marked
    'sending' in one committed statement just before it is handed to the backend, and only
    while the messages handed over and not yet recorded stay within the backend's window
    (``chunk_size`` x ``chunks_in_flight``: 50 for the outbox, SendGrid 512). Outcomes are
    recorded in small groups as they come, and each one frees room for the next chunk: with
    SendGrid a new request leaves as soon as any finishes. So a crash leaves at most a window of
    rows 'sending', which the next attempt turns into 'unknown' (never a second copy);
    'claimed' rows are simply sent by the retry.

    When the backend stops the run (credentials refused, provider unavailable), the results
    that completed are recorded and only the messages that never left go back to 'claimed'.

    Quiet hours: a marketing or service message rendered outside ``send_window`` (default: the
    registry's ``send_window``) in the customer's timezone gets ``send_at`` = the next opening,
    which SendGrid honours (``send_at``) and the outbox records (``X-Tend-Send-At``). A backend
    that delivers at once (SMTP) is not handed such a message: it stays claimed and the result
    says how many wait, and until when (``held``, ``held_until``).
    """

    if send_window is None:
        from tend.programs.registry import load_registry

        send_window = load_registry().send_window
    window = send_window
    # Quiet hours for a customer without a known timezone: the business timezone.
    business_tz = config.business_timezone()
    now_utc = wall_clock or (lambda: dt.datetime.now(dt.UTC))
    engine = connect(store_url)
    size = chunk_size or chunk_size_of(backend)
    result = SendResult(batch_id, backend=str(getattr(backend, "name", type(backend).__name__)))
    timings = result.timings
    for key in ("render", "ledger", "wait", "backend"):
        timings[key] = 0.0
    start = clock()
    result.as_of = as_of
    ttl = config.send_lease_seconds()
    with engine.begin() as conn:
        lease = ledger.acquire_lease(conn, as_of, batch_id, ttl=ttl)
    heartbeat = _Heartbeat(engine, lease, ttl)
    try:
        return _send_leased(engine, as_of, batch_id, lease, heartbeat, result, backend=backend,
                            renderer=renderer, settings=settings, size=size, window=window,
                            business_tz=business_tz, now_utc=now_utc, clock=clock,
                            progress_every=progress_every, start=start)
    finally:
        heartbeat.stop()
        with contextlib.suppress(SQLAlchemyError), engine.begin() as conn:
            ledger.release_lease(conn, lease)


def _resolve_unknown(engine: Engine, backend: DeliveryBackend, as_of: dt.date, batch_id: int,
                     result: SendResult) -> None:
    """Settle the batch's 'unknown' rows that can be settled without a person: the provider
    reported events for them, or the backend can tell (the outbox: the file exists)."""
    with engine.begin() as conn:
        result.resolved_sent = ledger.settle_from_events(conn, as_of, batch_id)
        ids = ledger.unknown_ids(conn, as_of, batch_id)
    resolve = resolver_of(backend)
    if ids and resolve is not None:
        found = resolve(ids)
        with engine.begin() as conn:
            sent, back = ledger.settle_unknown(conn, sent=found.sent, not_sent=found.not_sent,
                                               how=f"the {result.backend} backend found it")
        result.resolved_sent += sent
        result.resolved_released += back
    if result.resolved_sent or result.resolved_released:
        log.info("batch %s: %s unknown message(s) had gone out (now sent), %s never left "
                 "(sent now)", batch_id, f"{result.resolved_sent:,}",
                 f"{result.resolved_released:,}")


def _send_leased(engine: Engine, as_of: dt.date, batch_id: int, lease: ledger.Lease,
                 heartbeat: _Heartbeat, result: SendResult, *, backend: DeliveryBackend,
                 renderer: Renderer, settings: ShopSettings, size: int,
                 window: SendWindow | None, business_tz: str,
                 now_utc: Callable[[], dt.datetime], clock: Callable[[], float],
                 progress_every: float, start: float) -> SendResult:
    """``send_batch`` under the batch's lease: every ledger write carries ``lease``."""
    rehearsal = is_rehearsal(backend)
    with engine.begin() as conn:
        result.recovered_unknown = ledger.recover_interrupted(conn, as_of, batch_id, lease)
    if result.recovered_unknown:
        log.warning("batch %s: %s message(s) were mid-send when a previous attempt stopped: "
                    "marked unknown, not resent blindly", batch_id,
                    f"{result.recovered_unknown:,}")
    _resolve_unknown(engine, backend, as_of, batch_id, result)
    with engine.connect() as conn:
        result.total = conn.execute(
            select(func.count()).select_from(contact_ledger).where(
                contact_ledger.c.as_of == as_of, contact_ledger.c.batch_id == batch_id,
                contact_ledger.c.status == "claimed")).scalar_one()
    if rehearsal:
        log.warning("batch %s: rehearsal through %s's sandbox: messages are validated, none is "
                    "delivered, and every one goes back to 'claimed' (none is recorded as "
                    "sent)", batch_id, result.backend)
    window_size = size * chunks_in_flight_of(backend)  # the backend's window, at this size
    log.info("batch %s: %s message(s) to send through %s, %s at a time (at most %s handed "
             "over and not yet recorded)", batch_id, f"{result.total:,}", result.backend, size,
             f"{window_size:,}")
    pipe = _Pipeline(engine, as_of, batch_id, lease, heartbeat, result, backend=backend,
                     renderer=renderer, settings=settings, size=size, window=window_size,
                     send_window=window, business_tz=business_tz, now_utc=now_utc, clock=clock,
                     progress=_Progress(result, clock, progress_every))
    try:
        pipe.run()
    finally:
        result.seconds = clock() - start
    with engine.connect() as conn:
        result.unknown_left = sum(n for *_, n in ledger.unknown_counts(conn, as_of, batch_id))
    # The batch's unknown messages are this attempt's to report, whichever attempt left them.
    carried = result.unknown_left - result.counts["unknown"]
    if carried > 0:
        result.counts["unknown"] += carried
    for line in result.warning_lines():
        log.warning(line)
    for line in result.lines()[len(result.warning_lines()):]:
        log.info(line)
    return result


_AHEAD = 4
"""Rendered chunks waiting for room in the window: enough that the window never waits for the
renderer, few enough that a stop wastes little rendering."""
_RECORD_AFTER = 0.1
"""Seconds a finished message may wait to be recorded with others (one transaction per group
rather than per message); a group is also written once it reaches a chunk's size, and at once
when nothing else is out at the backend."""
_DRAIN_S = 30.0
"""How long an interrupted send waits for the messages already handed over, to record them."""
_WAKE = object()  # the renderer has put something on its queue


@dataclass
class _Crash:
    """A ``send()`` that raised something other than a delivery error (a bug): its chunk
    stays 'sending' (the retry marks it unknown) and the send stops with the error."""

    error: BaseException
    count: int


class _ThreadedSend:
    """``submit`` for a backend driven through ``send()``: each chunk on one of
    ``chunks_in_flight`` threads, its outcomes reported when the call returns."""

    def __init__(self, backend: DeliveryBackend, threads: int, busy: Callable[[float], None]
                 ) -> None:
        self.backend, self.busy = backend, busy
        self.pool = concurrent.futures.ThreadPoolExecutor(max_workers=threads,
                                                          thread_name_prefix="tend-send")

    def submit(self, messages: Sequence[OutgoingMessage],
               done: Callable[[Sequence[Outcome] | _Crash], None]) -> None:
        self.pool.submit(self._run, list(messages), done)

    def _run(self, messages: list[OutgoingMessage],
             done: Callable[[Sequence[Outcome] | _Crash], None]) -> None:
        t0 = time.perf_counter()
        try:
            results: Sequence[Outcome] = self.backend.send(messages)
        except DeliveryError as exc:
            results = _stopped_outcomes(messages, exc)
        except BaseException as exc:  # reported to the engine's thread, which raises it
            done(_Crash(exc, len(messages)))
            return
        finally:
            self.busy(time.perf_counter() - t0)
        done(results)

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


def _stopped_outcomes(messages: Sequence[OutgoingMessage], exc: DeliveryError
                      ) -> list[Outcome]:
    """A ``send()`` that stopped mid-chunk: what completed, and the rest as never sent."""
    done: list[Outcome] | None = getattr(exc, "results", None)
    if done is None:
        if isinstance(exc, DeliveryAuthError):
            done = []  # the contract: a bare auth error means nothing of the chunk was accepted
        else:  # the backend cannot say which left: at-most-once
            done = [DeliveryResult(m.message_id, DeliveryStatus.UNKNOWN,
                                   error=f"the backend stopped mid-chunk ({exc}); not resent")
                    for m in messages]
            return [*done, NotSent("", exc)]  # no message: only says the backend stopped
    finished = {r.message_id for r in done}
    return [*done, *(NotSent(m.message_id, exc) for m in messages
                     if m.message_id not in finished)]


class _Pipeline:
    """One batch through a sliding window: render ahead, mark, hand over, record.

    A renderer thread reads claimed rows and renders them into chunks, up to ``_AHEAD`` ahead
    of the window (rendering is CPU, the window is mostly waiting on the wire, so they overlap).
    The task's thread marks a chunk 'sending' (after the last suppression check) and hands it
    to the backend whenever the messages handed over and not yet recorded leave room for it
    within ``window``, then records outcomes in small groups as the backend reports them. A
    backend with ``submit`` reports message by message, so the window refills as soon as any
    request finishes; others are driven through ``send()`` on threads.
    """

    def __init__(self, engine: Engine, as_of: dt.date, batch_id: int, lease: ledger.Lease,
                 heartbeat: _Heartbeat, result: SendResult, *, backend: DeliveryBackend,
                 renderer: Renderer, settings: ShopSettings, size: int, window: int,
                 send_window: SendWindow | None, business_tz: str,
                 now_utc: Callable[[], dt.datetime], clock: Callable[[], float],
                 progress: _Progress) -> None:
        self.engine, self.as_of, self.batch_id, self.lease = engine, as_of, batch_id, lease
        self.heartbeat, self.result, self.backend = heartbeat, result, backend
        self.renderer, self.settings, self.size, self.window = renderer, settings, size, window
        self.send_window, self.business_tz, self.now_utc = send_window, business_tz, now_utc
        self.clock, self.progress = clock, progress
        self.rehearsal = is_rehearsal(backend)
        self.hold = delivers_at_once(backend)  # quiet hours kept here, not by the provider
        self.expect = getattr(backend, "expect", None)  # a backend's own record (see base)
        self.rendered: queue.Queue[_Chunk | BaseException | None] = queue.Queue(_AHEAD)
        self.events: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.halt = threading.Event()  # the renderer stops
        self.outstanding = 0  # marked 'sending', not yet recorded
        self.at_backend = 0  # handed over, no outcome yet
        self.unrecorded: list[dict[str, Any]] = []
        self.back: list[str] = []  # never left: back to 'claimed'
        self.first_unrecorded = 0.0
        self.to: dict[str, str] = {}  # message_id -> address, for the warnings
        self.warned = 0
        self.stop: DeliveryError | None = None
        self.render_ledger = 0.0  # the renderer thread's reads, added to timings at the end
        self.busy_since: float | None = None
        submit = submitter_of(backend)
        self.threaded: _ThreadedSend | None = None
        if submit is None:
            self.threaded = _ThreadedSend(backend, chunks_in_flight_of(backend), self._busy)
            submit = self.threaded.submit
        self.submit = submit

    def _busy(self, seconds: float) -> None:
        self.result.timings["backend"] += seconds  # one send() thread at a time writes this

    # -- the renderer thread ----------------------------------------------------------------

    def _render_all(self) -> None:
        contexts: dict[tuple[dt.date, int], dict[str, str]] = {}  # the batch's, once per send
        after: str | None = None  # the batch is walked once, in message-id order
        timings = self.result.timings
        try:
            while not self.halt.is_set():
                t0 = self.clock()
                with self.engine.connect() as conn:
                    rows = ledger.next_claimed(conn, self.as_of, self.batch_id, self.size,
                                               cache=contexts, after=after)
                t1 = self.clock()
                self.render_ledger += t1 - t0
                if not rows:
                    self._put(None)
                    return
                after = rows[-1].message_id
                chunk = _Chunk([r.message_id for r in rows], [], [],
                               [(r.message_id, r.customer_id, r.kind) for r in rows],
                               {r.message_id: r.context for r in rows})
                now = self.now_utc()
                for r in rows:
                    try:
                        chunk.outgoing.append(_message(r, self.renderer, self.settings,
                                                       self.send_window, now, self.business_tz))
                    except TemplateError as exc:
                        chunk.failed.append({"message_id": r.message_id, "status": "failed",
                                             "error": f"render: {exc}"})
                if self.hold:
                    self._hold_for_quiet_hours(chunk, now)
                timings["render"] += self.clock() - t1
                self._put(chunk)
        except BaseException as exc:  # raised again on the task's thread
            self._put(exc)

    def _hold_for_quiet_hours(self, chunk: _Chunk, now: dt.datetime) -> None:
        """Take the messages whose opening is still ahead out of ``chunk``: they stay claimed,
        and the attempt after ``result.held_until`` sends them (the renderer thread's own
        counters, read once it has ended)."""
        later = [m for m in chunk.outgoing if m.send_at is not None and m.send_at > now]
        if not later:
            return
        held = {m.message_id for m in later}
        chunk.ids = [m for m in chunk.ids if m not in held]
        chunk.who = [w for w in chunk.who if w[0] not in held]
        chunk.outgoing = [m for m in chunk.outgoing if m.message_id not in held]
        first = min(m.send_at for m in later if m.send_at is not None)
        r = self.result
        r.held += len(held)
        r.held_until = first if r.held_until is None else min(r.held_until, first)

    def _put(self, item: _Chunk | BaseException | None) -> None:
        while not self.halt.is_set():
            try:
                self.rendered.put(item, timeout=0.1)
            except queue.Full:
                continue
            self.events.put(_WAKE)
            return

    # -- the task's thread ------------------------------------------------------------------

    def run(self) -> None:
        thread = threading.Thread(target=self._render_all, name="tend-render", daemon=True)
        thread.start()
        pending: _Chunk | None = None
        rendered_all = False
        try:
            while True:
                while self.stop is None:  # hand over what the window has room for
                    if pending is None:
                        if rendered_all:
                            break
                        try:
                            item = self.rendered.get_nowait()
                        except queue.Empty:
                            break
                        if item is None:
                            rendered_all = True
                            break
                        if isinstance(item, BaseException):
                            raise item
                        pending = item
                    if self.outstanding and self.outstanding + len(pending.ids) > self.window:
                        break
                    self._hand_over(pending)
                    pending = None
                if self.outstanding == 0 and (rendered_all or self.stop is not None):
                    break
                self._collect()
        except BaseException:
            # Interrupted (SIGTERM from Airflow, a bug in rendering, the lease lost) with
            # messages handed over: record what the backend finishes, so fewer rows are left
            # ambiguous. What the backend never answers stays 'sending'; the retry marks it
            # unknown.
            self.halt.set()
            with contextlib.suppress(BaseException):  # the original exception is what matters
                self._drain()
            raise
        finally:
            self.halt.set()
            thread.join(timeout=_DRAIN_S)
            if self.threaded is not None:
                self.threaded.close()
            self.result.timings["ledger"] += self.render_ledger
            self._idle()
        if self.stop is not None:
            raise self.stop

    def _hand_over(self, chunk: _Chunk) -> None:
        if self.heartbeat.lost.is_set():
            raise ledger.LeaseLost(f"batch {self.batch_id} of {self.as_of}: this worker's send "
                                   "lease was taken over; it stops here")
        t0 = self.clock()
        with self.engine.begin() as conn:
            if stopped := _drop_suppressed(conn, chunk, self.now_utc().date()):
                self.result.counts["suppressed"] += stopped
            if callable(self.expect):
                self.expect(chunk.ids)
            if chunk.ids:
                ledger.mark_sending(conn, chunk.ids, self.lease)
        self.result.timings["ledger"] += self.clock() - t0
        self.outstanding += len(chunk.ids)
        if chunk.failed:  # not rendered: recorded 'failed' with the next group
            self._add([], chunk.failed)
        if chunk.outgoing:
            for m in chunk.outgoing:
                self.to[m.message_id] = m.to_email
            if self.at_backend == 0:
                self.busy_since = time.perf_counter()
            self.at_backend += len(chunk.outgoing)
            self.submit(chunk.outgoing, self.events.put)

    def _collect(self) -> None:
        """Wait for outcomes (or the renderer), then record them when a group is due."""
        if self._due():
            self._flush()
            return
        timeout = self.progress.timeout()
        if self.unrecorded or self.back:
            timeout = min(timeout, max(0.0, self.first_unrecorded + _RECORD_AFTER
                                       - time.monotonic()))
        t0 = self.clock()
        try:
            items = [self.events.get(timeout=timeout)]
        except queue.Empty:
            items = []
        while True:
            try:
                items.append(self.events.get_nowait())
            except queue.Empty:
                break
        self.result.timings["wait"] += self.clock() - t0
        for item in items:
            self._absorb(item)
        if self._due():
            self._flush()
        self.progress.maybe_log(in_flight=self.at_backend)

    def _absorb(self, item: Any) -> None:
        if item is _WAKE:
            return
        if isinstance(item, _Crash):
            self.at_backend -= item.count
            raise item.error
        done: list[dict[str, Any]] = []
        back: list[str] = []
        for o in item:
            if isinstance(o, NotSent):
                self.stop = self.stop or o.reason
                if o.message_id:
                    back.append(o.message_id)
            else:
                done.append({"message_id": o.message_id, "status": str(o.status),
                             "provider_id": o.provider_id, "error": o.error})
        self.at_backend -= len(done) + len(back)
        if self.at_backend == 0:
            self._idle()
        self._add(back, done)

    def _add(self, back: list[str], done: list[dict[str, Any]]) -> None:
        if not (self.unrecorded or self.back):
            self.first_unrecorded = time.monotonic()
        self.unrecorded += done
        self.back += back

    def _idle(self) -> None:
        if self.busy_since is not None and self.threaded is None:
            self.result.timings["backend"] += time.perf_counter() - self.busy_since
        self.busy_since = None

    def _due(self) -> bool:
        waiting = len(self.unrecorded) + len(self.back)
        return bool(waiting) and (
            waiting >= self.size or self.at_backend == 0 or self.stop is not None
            or time.monotonic() - self.first_unrecorded >= _RECORD_AFTER)

    def _drain(self) -> None:
        end = time.monotonic() + _DRAIN_S
        while self.at_backend > 0 and (left := end - time.monotonic()) > 0:
            try:
                item = self.events.get(timeout=left)
            except queue.Empty:
                break
            if not isinstance(item, _Crash):
                self._absorb(item)
            else:
                self.at_backend -= item.count
        self._flush()

    def _flush(self) -> None:
        recorded, back = self.unrecorded, self.back
        if not (recorded or back):
            return
        self.unrecorded, self.back = [], []
        t0 = self.clock()
        with self.engine.begin() as conn:
            if self.rehearsal:  # nothing a rehearsal did may count: every row back to 'claimed'
                ledger.release(conn, [r["message_id"] for r in recorded] + back, self.lease)
            else:
                ledger.record_results(conn, recorded, self.lease)
                if back:
                    ledger.release(conn, back, self.lease)
        self.result.timings["ledger"] += self.clock() - t0
        self.outstanding -= len(recorded) + len(back)
        counts = self.result.rehearsal if self.rehearsal else self.result.counts
        counts.update(r["status"] for r in recorded)
        if back:
            log.error("%s: %s message(s) never sent, back to 'claimed' for the next attempt",
                      self.stop, f"{len(back):,}")
        for r in recorded:
            to = self.to.pop(r["message_id"], None)
            if r["status"] == DeliveryStatus.SENT:
                continue
            self.warned += 1
            if self.warned <= _WARN_LIMIT:
                log.warning("message %s to %s: %s (%s)", r["message_id"], mask_email(to),
                            r["status"], r["error"])
            elif self.warned == _WARN_LIMIT + 1:
                log.warning("batch %s: more messages not sent; the summary counts them and "
                            "`tend why CUSTOMER_ID` tells each story", self.batch_id)
        for m in back:
            self.to.pop(m, None)


def _drop_suppressed(conn: Any, chunk: _Chunk, today: dt.date) -> int:
    """The last look before a chunk leaves: a customer suppressed since tonight's planning
    (an unsubscribe, a bounce or a spam report that ``tend serve`` received meanwhile), or who
    has since paused marketing or opted out of offers on the preferences page, is not written
    to. Those messages end ``failed`` with the reason, in the transaction that marks the rest
    ``sending``."""
    stopped = {m: f"{ledger.SUPPRESSED_AFTER_PLANNING} ({reason.replace('_', ' ')})"
               for m, reason in suppressions.blocked(conn, chunk.who).items()}
    stopped.update(_chosen_since(conn, chunk, stopped, today))
    if not stopped:
        return 0
    for reason in set(stopped.values()):
        ledger.fail_unrenderable(conn, [m for m, r in stopped.items() if r == reason],
                                 f"{reason}; not sent")
    chunk.ids = [m for m in chunk.ids if m not in stopped]
    chunk.outgoing = [m for m in chunk.outgoing if m.message_id not in stopped]
    chunk.failed = [f for f in chunk.failed if f["message_id"] not in stopped]
    log.info("%s message(s) not sent: suppressed or preferences changed since planning",
             f"{len(stopped):,}")
    return len(stopped)


def _chosen_since(conn: Any, chunk: _Chunk, stopped: Mapping[str, str],
                  today: dt.date) -> dict[str, str]:
    """Marketing messages of the chunk that the customer's preferences now forbid, with why:
    planning applied them, but a pause or an opt-out of offers chosen since (the preferences
    page is a click away in every email) must hold too. The rule is planning's own
    (:func:`tend.programs.consent.preference_fates`), on the day the message leaves."""
    marketing = [(m, c) for m, c, kind in chunk.who if kind == "marketing" and m not in stopped]
    chosen = preferences.all_chosen(conn, sorted({c for _, c in marketing}))
    if chosen.empty:
        return {}
    ids = set(chosen["customer_id"])
    mine = [(m, c) for m, c in marketing if c in ids]
    candidates = pd.DataFrame({
        "customer_id": [c for _, c in mine], "kind": "marketing",
        "signal": [json.loads(chunk.contexts[m])["signal"]["name"] for m, _ in mine]},
        index=[m for m, _ in mine])
    fates = preference_fates(candidates, chosen, today)
    fates = fates[fates["fate"].notna()]
    return {m: f"{ledger.CHOSE_AFTER_PLANNING} ({why})" for m, why in fates["why"].items()}


def _message(row: Any, renderer: Renderer, settings: ShopSettings,
             window: SendWindow | None = None, now: dt.datetime | None = None,
             business_tz: str = config.DEFAULT_TIMEZONE) -> OutgoingMessage:
    ctx = context_for_render(row.context)
    customer = ctx["customer"]
    rendered = renderer.render(ctx["template"], ctx["locale"], ctx,
                               customer_id=row.customer_id, kind=row.kind)
    name = " ".join(x for x in (customer.get("first_name"), customer.get("last_name")) if x)
    send_at = None
    if window is not None and now is not None and row.kind != "transactional":
        # Quiet hours: outside the window in the customer's timezone, schedule the next opening.
        send_at = window.next_send_time(now, ctx.get("timezone"), business_tz)
    return OutgoingMessage(
        message_id=row.message_id,
        to_email=customer["email"],
        to_name=safe_display_name(name),
        from_email=settings.from_email,
        from_name=safe_display_name(settings.from_name) or "",
        reply_to=settings.reply_to,
        subject=rendered.subject,
        text=rendered.text,
        html=rendered.html,
        headers=rendered.headers,
        categories=(row.program, row.kind),
        custom_args={"tend_message_id": row.message_id, "program": row.program,
                     "kind": row.kind, "run_id": row.run_id},
        send_at=send_at,
    )


