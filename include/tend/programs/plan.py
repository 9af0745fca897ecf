"""Tonight's decision: from signals to at most one claimed message per customer.

::

    signals (+ newsletter schedule) ─► one candidate per program that wants the customer
      + deferred candidates from earlier nights (expired ones are logged and dropped)
      ─► consent & suppressions ─► holdout draw ─► repeats, cooldowns, caps, then the
         holdout (among those they let through), arbitration, claim (one transaction,
         tend.store.ledger.claim) ─► deferral of what is still relevant
      ─► every candidate's fate in the decision log

Nothing is sent here. Every candidate ends the night with a recorded fate and a sentence that
explains it, which is what ``tend why`` prints.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from tend import config
from tend.config import ShopSettings, claim_batch_size
from tend.errors import TemplateError
from tend.features.columns import FeatureSet
from tend.features.store import read_feature_set
from tend.logs import log, table
from tend.messages.contexts import ContextBuilder
from tend.messages.render import Renderer, sample_context
from tend.programs.caps import FEWER_EMAILS_DAYS, fewer_emails_fates, held_out, holdout_period
from tend.programs.consent import consent_fates, preference_fates
from tend.programs.registry import Cap, Program, Registry, load_registry
from tend.shop import read as shop
from tend.signals import SIGNAL_COLUMNS, detect_all
from tend.store import deferral, ledger
from tend.store import preferences as chosen
from tend.store import suppressions as suppressed
from tend.store.db import connect, require_current

#: Fates that mean "not tonight, but maybe tomorrow" while the candidate is still valid.
DEFERRABLE = ("capped:", "cooldown:", "lost_to:")


@dataclass
class PlanResult:
    as_of: dt.date
    candidates: int
    fates: pd.DataFrame  # program, fate, count
    batches: list[int]
    timings: dict[str, float] = field(default_factory=dict)
    """Seconds per step (``PLAN_STEPS``): where a large night's planning time goes, for the
    task log and the scaling benchmark (bench/bench_scale.py reads them from XCom)."""

    def claimed(self) -> int:
        return int(self.fates.loc[self.fates["fate"] == "claimed", "count"].sum())

    def lines(self) -> list[str]:
        out = [f"plan {self.as_of}: {self.candidates:,} candidates, {self.claimed():,} claimed "
               f"in {len(self.batches)} batch(es)"]
        rows = [(r.program, r.fate, int(r.count)) for r in self.fates.itertuples()]
        out += table(["program", "fate", "customers"], rows)
        if self.timings:
            out.append("plan timings: " + ", ".join(
                f"{step} {self.timings[step]:.1f}s" for step in PLAN_STEPS
                if step in self.timings))
        return out


#: The steps of ``plan_night`` that ``PlanResult.timings`` times, in order: reading the
#: features, detecting the signals, building the candidates (with the deferred ones and the
#: shop's catalogue the contexts need), the decision up to and including the claim's
#: transaction, the winners' render contexts, and listing the batches to send.
PLAN_STEPS = ("features", "signals", "candidates", "claim", "contexts", "batches")


def detect_signals(store_url: str, shop_url: str, as_of: dt.date,
                   features: FeatureSet | None = None) -> pd.DataFrame:
    """Every behavioural signal tonight (tend.signals), in the SIGNAL_COLUMNS shape.

    A signal whose due date is still ahead (an upcoming check-up, a season about to open) is
    not a candidate yet: it comes back on its day.
    """
    return due_signals(detect_all(store_url, shop_url, as_of, features=features), as_of)


def due_signals(sig: pd.DataFrame, as_of: dt.date) -> pd.DataFrame:
    """The detected signals that are due by ``as_of``, with dates as dates (the occurrence
    keys the ledger dedupes on are built from them, so every caller must agree)."""
    sig = sig.copy()
    sig["due_date"] = pd.to_datetime(sig["due_date"]).dt.date  # occurrence keys use ISO dates
    sig["valid_until"] = pd.to_datetime(sig["valid_until"]).dt.date
    return sig.loc[sig["due_date"] <= as_of, SIGNAL_COLUMNS].reset_index(drop=True)


def newsletter_signals(features: pd.DataFrame, as_of: dt.date,
                       programs: Sequence[Program]) -> pd.DataFrame:
    """The calendar 'signal': every customer with an order, on the newsletter's day."""
    rows = []
    for p in programs:
        if p.schedule is None or not p.schedule.fires_on(as_of) or features.empty:
            continue
        period = p.schedule.period(as_of)
        rows.append(pd.DataFrame({
            "customer_id": features["customer_id"], "signal": "newsletter", "score": 0.1,
            "due_date": as_of, "valid_until": as_of + dt.timedelta(days=p.validity_days),
            "reason": f"newsletter for {period}", "value": features["total_spent"].astype(float),
            "sku": None, "product_name": None, "detail": json.dumps({"period": period}),
        }))
    return pd.concat(rows, ignore_index=True) if rows else pd.DataFrame(columns=SIGNAL_COLUMNS)


def candidates_for(signals: pd.DataFrame, programs: Sequence[Program], as_of: dt.date
                   ) -> pd.DataFrame:
    """One candidate per (program, signal row) the program listens to."""
    frames = []
    for p in programs:
        sig = signals.loc[signals["signal"].isin(p.signals)]
        if sig.empty:
            continue
        limit = as_of + dt.timedelta(days=p.validity_days)
        frames.append(sig.assign(
            program=p.name, kind=p.kind, priority=p.priority, cooldown_days=p.cooldown_days,
            valid_until=[min(v, limit) for v in sig["valid_until"]],
            # The same episode of the same signal is the same message, on every night.
            occurrence=sig["signal"] + ":" + sig["sku"].fillna("").astype(str) + ":"
            + sig["due_date"].astype(str),
        ))
    if not frames:
        return pd.DataFrame()
    return pd.concat(frames, ignore_index=True)


def fresh_candidates(detected: pd.DataFrame, features: pd.DataFrame,
                     programs: Sequence[Program], as_of: dt.date) -> pd.DataFrame:
    """Tonight's new candidates: the due signals ``detected`` and the newsletter's calendar
    for the customers in ``features``, one per program listening, each with the customer's
    last order date (arbitration reads it). The night and a one-customer preview
    (``tend.programs.would``) share it, so both decide from the same rows."""
    signals = pd.concat([detected, newsletter_signals(features, as_of, programs)],
                        ignore_index=True)
    fresh = candidates_for(signals, programs, as_of)
    if not fresh.empty:
        last = features.set_index("customer_id")["last_order_at"].dt.date
        fresh["last_order_date"] = fresh["customer_id"].map(last)
    return fresh


def check_templates(renderer: Renderer, programs: Sequence[Program]) -> None:
    """Fail before anything is claimed when a program's template does not render.

    Every language must render every program; a regional folder that overrides only some
    templates falls back to its language's for the rest, so it is not required here.
    """
    locales = renderer.locales(regional=False)
    for program in programs:
        problems = renderer.check(program.template, locales, sample_context(program.template))
        if problems:
            raise TemplateError(
                f"program {program.name}: template {program.template!r} failed its check: "
                + "; ".join(problems), template=program.template)


def plan_night(
    shop_url: str,
    store_url: str,
    as_of: dt.date,
    run_id: str,
    *,
    settings: ShopSettings,
    renderer: Renderer,
    secret: str,
    registry: Registry | None = None,
    batch_size: int | None = None,
    detector: Callable[[str, str, dt.date], pd.DataFrame] | None = None,
    only: FeatureSet | None = None,
) -> PlanResult:
    """Decide tonight's messages and claim them in the ledger; nothing is sent here.

    Templates are checked first, so a broken template fails the run before anything is claimed.
    ``detector`` (default: every behavioural signal, ``detect_signals``) is a seam for tests
    that exercise the programs stage over many nights with a cheaper signal source.
    ``batch_size`` defaults to ``TEND_CLAIM_BATCH_SIZE`` (5,000).

    ``only``: the features of the only customers this run decides (an order event, see
    ``tend.events``), computed from the shop because the store's are last night's. Such a run
    leaves other customers alone: no deferred candidates of earlier nights (they are the
    nightly run's), and render contexts only for its own claims. The claim itself, consent,
    caps, holdouts and the ledger's keys are the nightly run's.
    """
    require_current(store_url)
    batch_size = batch_size or claim_batch_size()
    registry = registry or load_registry()
    programs = registry.enabled()
    check_templates(renderer, programs)
    by_program = {p.name: p for p in programs}

    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    feature_set = only if only is not None else read_feature_set(store_url)
    features = feature_set.customers
    t1 = time.perf_counter()
    timings["features"] = t1 - t0
    detected = (detector(store_url, shop_url, as_of) if detector
                else detect_signals(store_url, shop_url, as_of, feature_set))
    t0 = time.perf_counter()
    timings["signals"] = t0 - t1
    fresh = fresh_candidates(detected, features, programs, as_of)
    waiting, expired = ((pd.DataFrame(), pd.DataFrame()) if only is not None
                        else _deferred(store_url, as_of, by_program))
    cands = _merge(fresh, waiting)
    contexts = ContextBuilder(shop_url=shop_url, programs=by_program, settings=settings,
                              secret=secret, as_of=as_of, features=features)
    timings["candidates"] = time.perf_counter() - t0
    decision = decide(cands, shop_url=shop_url, store_url=store_url, as_of=as_of,
                      run_id=run_id, programs=by_program, caps=registry.caps,
                      contexts=contexts, secret=secret, batch_size=batch_size,
                      expired=expired, own_only=only is not None)
    timings.update(decision.timings)
    result = PlanResult(as_of, decision.candidates, decision.counts(), decision.batches,
                        timings)
    for line in result.lines():
        log.info(line)
    return result


@dataclass
class Decision:
    """What ``decide`` made of a candidate frame: every candidate's fate, and the batches."""

    decided: pd.DataFrame  # the candidates with fate, why, message_id
    batches: list[int]
    timings: dict[str, float] = field(default_factory=dict)
    """Seconds for the claim (consent to commit), the contexts and the batch list."""

    @property
    def candidates(self) -> int:
        return len(self.decided)

    def counts(self) -> pd.DataFrame:
        """program, fate, count: the decision log's totals."""
        if self.decided.empty:
            return pd.DataFrame(columns=["program", "fate", "count"])
        return (self.decided.groupby(["program", "fate"]).size().rename("count").reset_index()
                .sort_values(["program", "count"], ascending=[True, False]))


def decide(
    cands: pd.DataFrame,
    *,
    shop_url: str,
    store_url: str,
    as_of: dt.date,
    run_id: str,
    programs: Mapping[str, Program],
    caps: Sequence[Cap],
    contexts: Callable[[pd.DataFrame], Sequence[str]],
    secret: str,
    batch_size: int = 5000,
    expired: pd.DataFrame | None = None,
    owner: str | None = None,
    dry_run: bool = False,
    own_only: bool = False,
) -> Decision:
    """Consent, suppressions, holdouts, then caps, cooldowns, arbitration and the claim in one
    transaction; the decision log, deferral and the winners' contexts after it.

    The one path every message takes, the nightly programs' (``plan_night``) and a campaign's
    (``tend.campaigns``): ``cands`` has customer_id, program, kind, priority, score,
    cooldown_days, occurrence, last_order_date and the signal columns (``SIGNAL_COLUMNS``); a
    candidate without ``valid_until`` is never deferred. ``owner`` is the ledger scope whose
    batches this run sends (``tend.store.ledger.owned_by``: None = the nightly programs).
    ``secret`` keys the hashes of erased addresses (``tend forget``), which are never contacted.

    ``dry_run`` runs the very same claim and rolls it back: the fates are exactly what a real
    run would get at this moment, and nothing is claimed, logged, deferred or suppressed.
    ``own_only`` (an order event's run): render contexts only for this run's own claims.
    """
    start = time.perf_counter()
    expired = expired if expired is not None else pd.DataFrame()
    if cands.empty and expired.empty:
        if not dry_run and not own_only:
            # An earlier run of the night may have stopped before storing its contexts.
            _store_contexts(store_url, as_of, pd.DataFrame(columns=["message_id"]),
                            lambda _: [], owner)
        t0 = time.perf_counter()
        with connect(store_url).connect() as conn:
            batches = [] if dry_run else ledger.batches_to_send(conn, as_of, owner)
        timings = {"claim": 0.0, "contexts": t0 - start, "batches": time.perf_counter() - t0}
        return Decision(pd.DataFrame(columns=["program", "fate", "customer_id"]), batches,
                        timings)

    cands = cands.copy()
    # A candidate may arrive decided (a campaign's customer beyond its max_recipients, or
    # outranked by a waiting program message); consent's reasons still come first.
    preset = (cands["fate"], cands["why"]) if "fate" in cands else None
    cands["fate"] = None
    cands["why"] = None
    customers = shop.read_customers(shop_url, cands["customer_id"].unique()) if len(cands) \
        else pd.DataFrame(columns=["customer_id"])
    with connect(store_url).connect() as conn:
        supp = suppressed.active(conn)
        prefs = chosen.all_chosen(conn)
        recent = chosen.recent_marketing_of_fewer(conn, as_of, FEWER_EMAILS_DAYS,
                                                  ledger.COUNTED)
        supp = pd.concat([supp, suppressed.erased(conn, customers, secret)], ignore_index=True)
    addresses = _address_keys(customers)
    supp = pd.concat([supp, _shared_address(supp, addresses, shop_url)], ignore_index=True)
    if len(cands):
        fates = consent_fates(cands, customers, supp, as_of, config.today())
        cands["fate"], cands["why"] = fates["fate"], fates["why"]
        for choice in (preference_fates(cands, prefs, as_of),
                       fewer_emails_fates(cands, recent)):
            hit = cands["fate"].isna() & choice["fate"].notna()
            cands.loc[hit, "fate"] = choice.loc[hit, "fate"]
            cands.loc[hit, "why"] = choice.loc[hit, "why"]
        if preset is not None:
            keep = cands["fate"].isna() & preset[0].notna()
            cands.loc[keep, "fate"] = preset[0][keep]
            cands.loc[keep, "why"] = preset[1][keep]
        _holdouts(cands, programs, as_of)
        _one_record_per_address(cands, addresses)

    allowed = cands.loc[cands["fate"].isna()].merge(
        customers, on="customer_id", how="left", suffixes=("", "_customer"))
    allowed.index = cands.index[cands["fate"].isna()]
    relocalised = _chosen_locale(allowed, prefs)
    invalid = cands.loc[cands["fate"] == "suppressed:invalid_address", "customer_id"].unique()
    stamp = ledger.now()
    with connect(store_url).connect() as conn:
        tx = conn.begin()
        try:
            # Keys only: the contexts are built after this transaction, without the ledger's
            # lock.
            outcome = ledger.claim(conn, allowed, as_of=as_of, run_id=run_id,
                                   caps=caps, batch_size=batch_size).frame
            claimed = outcome.set_index(_KEY)
            idx = pd.MultiIndex.from_frame(allowed[_KEY])
            allowed["fate"] = claimed["fate"].reindex(idx).to_numpy()
            allowed["why"] = claimed["why"].reindex(idx).to_numpy()
            allowed["message_id"] = claimed["message_id"].reindex(idx).to_numpy()
            won = allowed["fate"] == "claimed"
            allowed.loc[won, "why"] = allowed.loc[won, "reason"]
            told = won & relocalised
            allowed.loc[told, "why"] = (allowed.loc[told, "why"].astype(str) + "; in "
                                        + allowed.loc[told, "locale"].astype(str)
                                        + ", the language the customer chose (preferences "
                                        "page)")
            decided = pd.concat([cands.loc[cands["fate"].notna()].assign(message_id=None),
                                 allowed])
            if dry_run:
                tx.rollback()
                return Decision(decided.reset_index(drop=True), [])
            suppressed.add(conn, invalid, reason="invalid_address", source="validation",
                           created_at=stamp)
            decided = _defer(conn, decided, as_of)
            if not expired.empty:
                decided = pd.concat([decided, expired.assign(message_id=None)],
                                    ignore_index=True)
            ledger.record_decisions(conn, decided, as_of=as_of, run_id=run_id)
            tx.commit()
        finally:
            if tx.is_active:
                tx.rollback()
    t0 = time.perf_counter()
    _store_contexts(store_url, as_of, allowed, contexts, owner, own_only=own_only)
    t1 = time.perf_counter()
    with connect(store_url).connect() as conn:
        batches = ledger.batches_to_send(conn, as_of, owner)
    timings = {"claim": t0 - start, "contexts": t1 - t0, "batches": time.perf_counter() - t1}
    return Decision(decided, batches, timings)


#: Suppressions about an address rather than its owner's wishes: they travel with the address
#: they were filed for, never with a record's later one.
_ADDRESS_REASONS = ("hard_bounce", "invalid_address")


def _address_keys(customers: pd.DataFrame) -> pd.Series:
    """Each customer's address as compared across records (trimmed, lower-cased), by
    customer id; customers without one are left out."""
    if customers.empty:
        return pd.Series(dtype=object)
    key = _address_key(customers["email"])
    ids = customers["customer_id"].astype(str)
    out = pd.Series(key.to_numpy(), index=ids.to_numpy(), dtype=object).dropna()
    return out[~out.index.duplicated()]


def _address_key(emails: pd.Series) -> pd.Series:
    key = emails.astype("string").str.strip().str.lower()
    return key.where(key.notna() & (key != ""), None).astype(object)


def _shared_address(supp: pd.DataFrame, addresses: pd.Series,
                    shop_url: str) -> pd.DataFrame:
    """``customer_id``, ``reason``, ``via``: the suppressions that reach tonight's customers
    (``addresses``: their address keys) through another customer record with the same
    address.

    A shop may hold one person twice (a guest checkout and an account, a typo fixed by a new
    record). An unsubscribe, a spam report or a complaint is the address owner's, and the law
    and the mailbox providers judge the sender by the address, so it holds for every record
    that writes to it. A suppression carries the address it was filed for when known; one
    filed through Tend's own pages does not, and the record's current address in the shop
    stands for it. A bounce or an invalid address is about the address itself, so it travels
    only with the address it was recorded for.
    """
    empty = pd.DataFrame(columns=["customer_id", "reason", "via"])
    if supp.empty or addresses.empty:
        return empty
    s = supp.loc[supp["reason"] != suppressed.ERASED]  # matched by their keyed hash instead
    ids = s["customer_id"].astype(str)
    filed = (_address_key(s["email"]) if "email" in s
             else pd.Series(None, index=s.index, dtype=object))
    owner = filed.isna() & ~s["reason"].isin(_ADDRESS_REASONS)
    # get_indexer, not isin: isin walks Arrow-backed strings one by one in Python
    unknown = ids[owner & (addresses.index.get_indexer(ids) < 0)].unique()
    current = addresses
    if len(unknown):
        read = shop.read_customers(shop_url, list(unknown))
        current = pd.concat([addresses, _address_keys(read)])
        current = current[~current.index.duplicated()]
    key = filed.where(~owner, ids.map(current))
    via = pd.DataFrame({"via": ids.to_numpy(), "reason": s["reason"].to_numpy(),
                        "key": key.to_numpy()}).dropna(subset=["key"])
    if via.empty:
        return empty
    near = pd.Index(via["key"].unique()).get_indexer(addresses.to_numpy()) >= 0
    tonight = pd.DataFrame({"customer_id": addresses.index[near],
                            "key": addresses.to_numpy()[near]})
    hits = tonight.merge(via, on="key")
    hits = hits.loc[hits["customer_id"] != hits["via"]]
    if hits.empty:
        return empty
    return (hits.sort_values("via").drop_duplicates(["customer_id", "reason"])
            [["customer_id", "reason", "via"]].reset_index(drop=True))


def _one_record_per_address(cands: pd.DataFrame, addresses: pd.Series) -> None:
    """Marketing to one address, one customer record a night: where several records share an
    address (``_shared_address``), the record whose best candidate ranks first (priority, then
    the lowest customer id, so a rerun decides alike) competes tonight and the others' marketing
    waits (``capped:same_address``, deferred while it is still valid)."""
    # Only the records whose address another record holds are ranked (a handful a night).
    twins = addresses[addresses.duplicated(keep=False)]
    if twins.empty:
        return
    open_ = cands["fate"].isna() & (cands["kind"] == "marketing")
    mine = open_.to_numpy() & (pd.Index(twins.index).get_indexer(cands["customer_id"]) >= 0)
    if not mine.any():
        return
    rows = cands.index[mine]
    ids = cands.loc[rows, "customer_id"].astype(str)
    ranked = pd.DataFrame({"key": ids.map(twins), "customer_id": ids,
                           "priority": cands.loc[rows, "priority"]})
    first = (ranked.sort_values(["key", "priority", "customer_id"],
                                ascending=[True, False, True])
             .drop_duplicates("key").set_index("key")["customer_id"])
    chosen = ranked["key"].map(first)
    lose = chosen.index[chosen.to_numpy() != ranked["customer_id"].to_numpy()]
    cands.loc[lose, "fate"] = "capped:same_address"
    cands.loc[lose, "why"] = ("customer " + chosen[lose].astype(str) + ", who has the same "
                              "email address, is the one contacted tonight")


def _store_contexts(store_url: str, as_of: dt.date, allowed: pd.DataFrame,
                    build: Callable[[pd.DataFrame], Sequence[str]],
                    owner: str | None = None, *, own_only: bool = False) -> None:
    """Build and store the render contexts of tonight's claimed messages that have none.

    Right after a claim these are its winners. After a stage that stopped between its claim and
    this step, they are the earlier run's winners: this run's candidates carry the same message
    ids (marked already claimed), so their contexts are built from them; a deferred candidate
    among them is still in the deferred table, whose row is removed here, with its context. A
    message whose candidate no longer exists cannot be rendered and is marked failed with the
    reason. ``own_only``: only this run's claims (an event run must not judge a nightly run's).
    """
    with connect(store_url).connect() as conn:
        need = ledger.claims_without_contexts(conn, as_of, owner)
    # The candidates holding a message kept their deferred rows through the claim (``_defer``):
    # a deferred candidate that tonight's signals no longer produce is rebuilt from its row
    # alone, so the row must outlive a stop before this point. It goes in the transaction that
    # stores the contexts; a holder still without one is among ``need`` (every message of
    # ``allowed`` is this run's to build, ``own_only`` or not), so its context goes with it.
    settled = (allowed.loc[allowed["fate"].isin(_HOLD)] if "fate" in allowed
               else allowed.iloc[:0])
    if own_only:
        need = need.loc[need["message_id"].isin(allowed["message_id"].dropna())]
    if need.empty and settled.empty:
        return
    rows = allowed.loc[allowed["message_id"].notna()].drop_duplicates("message_id")
    rows = need.merge(rows, on="message_id", how="left", indicator=True)
    lost = rows.loc[rows["_merge"] == "left_only", "message_id"].tolist()
    rows = rows.loc[rows["_merge"] == "both"].drop(columns="_merge")
    rows = rows.sort_values(["batch_id", "message_id"], ignore_index=True)
    built = list(build(rows)) if len(rows) else []
    with connect(store_url).begin() as conn:
        ledger.write_contexts(conn, as_of, rows["batch_id"].to_numpy(),
                              rows["message_id"].tolist(), built)
        deferral.forget(conn, settled)
        if lost:
            ledger.fail_unrenderable(conn, lost, "no render context: the programs stage stopped "
                                     "before storing it and tonight's signals no longer "
                                     "produce this message")
    if lost:
        log.warning("plan %s: %s claimed message(s) had no render context and no candidate to "
                    "rebuild it from: marked failed", as_of, f"{len(lost):,}")


def _chosen_locale(allowed: pd.DataFrame, prefs: pd.DataFrame) -> pd.Series:
    """Write the language each customer chose on the preferences page over the shop's record
    (the message is rendered in it); True where that changed the language."""
    changed = pd.Series(False, index=allowed.index)
    if prefs.empty or allowed.empty:
        return changed
    chosen_locale = allowed["customer_id"].map(
        prefs.dropna(subset=["locale"]).drop_duplicates("customer_id")
        .set_index("customer_id")["locale"])
    current = allowed["locale"] if "locale" in allowed else pd.Series(None, index=allowed.index)
    changed = chosen_locale.notna() & (chosen_locale != current)
    allowed["locale"] = chosen_locale.where(chosen_locale.notna(), current)
    return changed


def _holdouts(cands: pd.DataFrame, programs: Mapping[str, Program], as_of: dt.date) -> None:
    """Mark (``holdout_why``) the candidates each program's holdout draw picks; the claim holds
    out those its rules let through (``ledger.claim``), so a customer the program could not
    contact tonight anyway (its cooldown, a repeat, the caps) is in neither group."""
    cands["holdout_why"] = None
    for name, p in programs.items():
        if p.holdout_share <= 0:
            continue
        rows = cands.index[(cands["program"] == name) & cands["fate"].isna()]
        mask = held_out(cands.loc[rows, "customer_id"], name, as_of, p.holdout_share)
        cands.loc[rows[mask], "holdout_why"] = (
            f"control group: {p.holdout_share:.0%} of eligible customers receive nothing from "
            f"{name} in {holdout_period(as_of)}")


#: What a deferred candidate keeps of its signal row, to compete (and be rendered) later.
_SIGNAL_KEEP = ("signal", "reason", "due_date", "valid_until", "sku", "product_name", "detail",
                "value")

_KEY = list(deferral.KEY)

#: Fates of candidates whose message is in the ledger (tonight's claim, or an earlier run's):
#: their deferred rows go with the contexts (``_store_contexts``), not with the claim.
_HOLD = ("claimed", "already_claimed")


def _deferred(store_url: str, as_of: dt.date, programs: dict[str, Program], *,
              forget: bool = True) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Candidates deferred on earlier nights: still valid ones compete again, others expire.

    ``forget=False`` (a preview of the night's decision) leaves the expired ones stored."""
    with connect(store_url).connect() as conn:  # the driver's rows: dates are parsed below
        rows = deferral.read_all(conn)
    if rows.empty:
        return pd.DataFrame(), pd.DataFrame()
    rows["valid_until"] = pd.to_datetime(rows["valid_until"]).dt.date
    rows["last_order_date"] = pd.to_datetime(rows["last_order_date"]).dt.date
    gone = rows["valid_until"] < as_of
    # A program switched off since: its waiting messages expire with it.
    off = ~rows["program"].isin(list(programs))
    ended = rows.loc[gone | off]
    expired = ended.assign(
        fate="expired",
        why=np.where(gone.loc[gone | off],
                     "deferred until " + ended["valid_until"].astype(str)
                     + ", no longer relevant",
                     "the program was disabled while the message waited"),
    )[[*_KEY, "fate", "why"]]
    if len(expired) and forget:
        with connect(store_url).begin() as conn:
            deferral.forget(conn, expired)
    waiting = rows.loc[~(gone | off)].drop(columns=["last_reason"]).reset_index(drop=True)
    signal_rows = pd.read_json(io.StringIO("\n".join(waiting.pop("context"))), lines=True,
                               dtype=False, convert_dates=False).reindex(
        columns=list(_SIGNAL_KEEP))
    waiting = pd.concat([waiting, signal_rows.drop(columns=["valid_until"])], axis=1)
    return waiting, expired


def _merge(fresh: pd.DataFrame, waiting: pd.DataFrame) -> pd.DataFrame:
    """Tonight's candidates: fresh signals, plus deferred ones the signals no longer produce."""
    if waiting.empty or fresh.empty:
        return (fresh if waiting.empty else waiting).reset_index(drop=True)
    seen = pd.MultiIndex.from_frame(fresh[_KEY])
    extra = waiting.loc[~pd.MultiIndex.from_frame(waiting[_KEY]).isin(seen)]
    return pd.concat([fresh, extra], ignore_index=True)


def _defer(conn: Any, decided: pd.DataFrame, as_of: dt.date) -> pd.DataFrame:
    """Blocked but still valid -> 'deferred' (kept in the store); other final fates ->
    forgotten. A candidate holding a message (``_HOLD``) keeps its row until its context is
    stored (``_store_contexts``): a stage stopped in between rebuilds the context from it."""
    d = decided.reset_index(drop=True)
    blocked = d["fate"].astype(str).str.startswith(DEFERRABLE)
    until = (_iso_dates(d["valid_until"]) if "valid_until" in d
             else pd.Series([None] * len(d), index=d.index, dtype=object))
    valid = until.notna() & (until.fillna("") >= as_of.isoformat())
    defer = blocked & valid
    d.loc[defer, "why"] = (d.loc[defer, "fate"] + ": " + d.loc[defer, "why"].astype(str)
                           + "; deferred: still valid until " + until[defer])
    d.loc[defer, "fate"] = "deferred"

    deferral.forget(conn, d.loc[~d["fate"].isin(_HOLD)])
    later = d.loc[defer]
    if len(later):
        # What the candidate needs to compete (and be rendered) later, as JSON, written in one
        # vectorised call (a night can defer hundreds of thousands of candidates).
        keep = later.reindex(columns=list(_SIGNAL_KEEP))
        keep["due_date"] = _iso_dates(keep["due_date"])
        keep["valid_until"] = until[defer]
        contexts = keep.to_json(orient="records", lines=True).rstrip("\n").split("\n")
        deferral.write(conn, {
            "customer_id": later["customer_id"].astype(str).to_numpy(dtype=object),
            "program": later["program"].astype(str).to_numpy(dtype=object),
            "occurrence": later["occurrence"].astype(str).to_numpy(dtype=object),
            "kind": later["kind"].astype(str).to_numpy(dtype=object),
            "priority": later["priority"].astype(np.int64).to_numpy(),
            "score": later["score"].astype(float).to_numpy(),
            "cooldown_days": later["cooldown_days"].astype(np.int64).to_numpy(),
            "valid_until": until[defer].to_numpy(dtype=object),
            "last_order_date": _iso_dates(later["last_order_date"]).to_numpy(dtype=object),
            "context": np.array(contexts, dtype=object),
            "first_deferred_on": np.full(len(later), as_of.isoformat(), dtype=object),
            "last_reason": later["why"].astype(str).to_numpy(dtype=object),
        })
    return d


def _iso_dates(values: pd.Series) -> pd.Series:
    """Dates (date objects, timestamps or ISO text) as ``YYYY-MM-DD`` text, None when absent."""
    days = pd.to_datetime(values.astype(object).where(values.notna(), None).astype(str)
                          .str.slice(0, 10), errors="coerce", format="%Y-%m-%d")
    out = days.dt.strftime("%Y-%m-%d").astype(object)
    return out.where(days.notna(), None)
