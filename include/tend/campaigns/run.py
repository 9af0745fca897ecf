"""A campaign's run: audience -> the programs' consent, caps and claim path -> report, proofs.

::

    check (the form) ─► plan: audience ─► candidates of program ``campaign:NAME``, occurrence
       NAME ─► tend.programs.plan.decide (consent, suppressions, holdout, caps, one message
       per customer per night, claim) ─► report + samples ─► proof to staff ─► send batches
       (the nightly send task) ─► finish

A dry run takes the very same path and rolls the claim back: its fates are what a real run
would get now, and nothing is claimed, logged or sent. Called by the tend_campaign DAG's tasks
(``tend_airflow.tasks``).
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from tend.campaigns.audience import select_audience
from tend.campaigns.form import AUDIENCES
from tend.campaigns.spec import CampaignSpec, Content
from tend.config import ShopSettings
from tend.errors import DataError, TemplateError
from tend.features.columns import FeatureSet
from tend.features.store import read_feature_set, store_as_of
from tend.logs import log, mask_email, table
from tend.messages.contexts import ContextBuilder
from tend.messages.render import Renderer
from tend.messages.user_text import render_user_text
from tend.programs.plan import check_templates, decide
from tend.programs.registry import Registry
from tend.shop import read as shop
from tend.store import campaigns as stored
from tend.store import deferral, ledger
from tend.store.db import connect, require_current

if TYPE_CHECKING:
    from tend.delivery.base import OutgoingMessage

#: Messages a second per sender, end to end through SendGrid (bench/RESULTS.md, `make
#: bench-send`, one send process), and the senders the tend_send pool runs at once.
SEND_RATE_PER_SENDER = 1_800
SENDERS = 4
PICKS = 3  # products shown per customer


@dataclass
class CampaignReport:
    """What a campaign run decided; printed in the task log and stored for the Tend page."""

    name: str
    dry_run: bool
    as_of: str
    features_as_of: str
    audience: str
    template: str
    audience_size: int
    fates: dict[str, int]
    claimed: int
    batches: list[int]
    estimated_seconds: float
    send_at: str
    samples: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    #: The Airflow run that made the report: a rehearsal after a real run keeps the real
    #: run's record, so its own tasks find their report by this.
    run_id: str = ""

    def lines(self) -> list[str]:
        mode = "DRY RUN (nothing claimed or sent)" if self.dry_run else "real run"
        head = [f"campaign {self.name}: {mode}, day {self.as_of} (features of "
                f"{self.features_as_of})",
                f"audience: {self.audience}: {self.audience_size:,} customer(s); template "
                f"{self.template}; send at {self.send_at}",
                (f"would be sent: {self.claimed:,} message(s)" if self.dry_run else
                 f"claimed: {self.claimed:,} message(s) in {len(self.batches)} batch(es)")
                + f"; estimated send time {_duration(self.estimated_seconds)}"]
        rows = sorted(self.fates.items(), key=lambda kv: (-kv[1], kv[0]))
        out = head + table(["fate", "customers"], rows)
        for s in self.samples:
            out.append(f"sample {s['locale']}: {s['eml']}" + (f" and {s['png']}" if s.get("png")
                                                               else "")
                       + f" (customer {s['customer_id']}, {s['to']})")
        return out + [f"note: {n}" for n in self.notes]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.0f}s"
    return f"{seconds / 60:.0f} min" if seconds < 3600 else f"{seconds / 3600:.1f} h"


def check_campaign(spec: CampaignSpec, *, shop_url: str, store_url: str) -> None:
    """What the form cannot check: featured products in the catalogue, the uploaded list."""
    products = shop.read_products(shop_url)
    unknown = [s for s in spec.featured_skus if s not in set(products["sku"])]
    if unknown:
        raise DataError(f"campaign form, field 'featured_skus': {', '.join(unknown)} not in the "
                        "shop's catalogue; remove them or check their spelling")
    if spec.audience == "category":
        cats = sorted(products["category"].dropna().astype(str).unique())
        if str(spec.audience_category).strip().lower() not in {c.lower() for c in cats}:
            raise DataError(f"campaign form, field 'audience_category': the shop has no "
                            f"category {spec.audience_category!r}; write one of: "
                            f"{', '.join(cats)}")
    if spec.audience == "upload":
        with connect(store_url).connect() as conn:
            have = stored.audiences(conn)
        if spec.audience_upload not in have:
            raise DataError(
                f"campaign form, field 'audience_upload': nothing uploaded as "
                f"{spec.audience_upload!r} (uploaded: {', '.join(have) or 'none'}); run `tend "
                f"campaign upload-audience {spec.audience_upload} FILE.csv` first")


class CampaignContexts(ContextBuilder):
    """The programs' context builder, plus the form's words and each customer's picks.

    A customer whose words do not render (text the form's check let through that fails on
    this customer's data, say ``first_name[4]`` of a three-letter name) never stops the others:
    their context is built without the words, so it can never be sent, and the reason is kept
    in ``unrenderable`` (by message id) for ``plan_campaign`` to mark the message failed.
    """

    def __init__(self, spec: CampaignSpec, *, features: FeatureSet, products: pd.DataFrame,
                 **kwargs: Any) -> None:
        super().__init__(features=features.customers, **kwargs)
        self.spec = spec
        self.unrenderable: dict[str, str] = {}
        category = products.set_index("sku")["category"].astype(str).to_dict()
        self.category = category
        s = features.skus
        ranked = s.sort_values(["customer_id", "quantity", "last_day"],
                               ascending=[True, False, False])
        self.bought: dict[str, list[str]] = ranked.groupby("customer_id")["sku"].agg(
            list).to_dict() if len(ranked) else {}

    def build(self, row: dict[str, Any], detail: dict[str, Any],
              orders: Mapping[tuple[str, dt.date], dict[str, Any]]) -> dict[str, Any]:
        ctx = super().build(row, detail, orders)
        ctx["signal"] = {"name": "campaign", "reason": row.get("reason")}
        lang = content_language(self.spec.content, ctx["locale"], self.settings.default_locale)
        words = self.spec.content[lang]
        who = {"customer": ctx["customer"]}
        rendered: dict[str, str] = {}
        for key, typed, single in (("subject", "subject", True), ("preheader", "preheader", True),
                                   ("title", "headline", True), ("intro", "text", False)):
            try:
                rendered[key] = render_user_text(getattr(words, typed), who, single_line=single)
            except TemplateError as exc:
                message_id = ledger.message_id_for(ctx["customer"]["customer_id"],
                                                   str(row["program"]), str(row["occurrence"]))
                self.unrenderable[message_id] = (
                    f"campaign form, field '{typed}_{lang}' does not render for this "
                    f"customer: {exc}")
                return ctx
        ctx["newsletter"] = {**rendered, "articles": []}
        picks = [p for p in (self.catalogue.get(s) for s in self.picks(ctx["customer"][
            "customer_id"])) if p]
        if picks:
            ctx["products"] = picks
        return ctx

    def take_unrenderable(self) -> dict[str, str]:
        """The messages built without words since the last call (message id -> reason)."""
        out, self.unrenderable = self.unrenderable, {}
        return out

    def picks(self, customer_id: str) -> list[str]:
        """The featured products closest to what the customer bought (same category first,
        ones they already own last), or without featured products their own favourites."""
        bought = self.bought.get(customer_id, [])
        featured = self.spec.featured_skus
        if not featured:
            return bought[:PICKS]
        owned = set(bought)
        liked = {self.category.get(s) for s in bought}
        order = sorted(range(len(featured)), key=lambda i: (
            featured[i] in owned, self.category.get(featured[i]) not in liked, i))
        return [featured[i] for i in order[:PICKS]]


def content_language(content: Mapping[str, Content], locale: str | None, default: str) -> str:
    """The language of the form's words a customer reads: ``fr-CA`` reads the French, an
    unknown language the shop's default (or the first written)."""
    for loc in (locale, default):
        lang = (loc or "").replace("-", "_").split("_")[0].lower()
        if lang in content:
            return lang
    return next(iter(content))


def plan_campaign(
    spec: CampaignSpec,
    *,
    shop_url: str,
    store_url: str,
    as_of: dt.date,
    run_id: str,
    settings: ShopSettings,
    renderer: Renderer,
    secret: str,
    registry: Registry,
    samples_dir: Path | None = None,
    png: bool = False,
    batch_size: int = 5000,
) -> CampaignReport:
    """Select the audience, decide and (unless ``spec.dry_run``) claim; the report, stored.

    ``as_of`` is the campaign's day in the ledger (caps and "one message per customer per
    night" count it with the nightly run of the same day). The audience is read from the
    latest stored features, which must not be newer than that day.
    """
    require_current(store_url)
    program = spec.as_program()
    check_templates(renderer, [program])
    features_as_of = store_as_of(store_url)
    if features_as_of is None:
        raise DataError("the store has no customer features yet: run tend_ingest (or `tend "
                        "ingest --as-of YYYY-MM-DD`) first")
    if features_as_of > as_of:
        raise DataError(f"the store's features are for {features_as_of}, after the campaign's "
                        f"day {as_of}; trigger the campaign with a logical date on or after "
                        f"{features_as_of}")
    features = read_feature_set(store_url)
    products = shop.read_products(shop_url)
    audience = select_audience(spec, store_url=store_url, shop_url=shop_url,
                               features=features, products=products,
                               features_as_of=features_as_of)
    cands = candidates(spec, audience, features, as_of)
    _outranked(cands, store_url, as_of, registry)
    builder = CampaignContexts(spec, features=features, products=products, shop_url=shop_url,
                               programs={program.name: program}, settings=settings,
                               secret=secret, as_of=as_of)
    common = {"shop_url": shop_url, "store_url": store_url, "as_of": as_of, "run_id": run_id,
              "programs": {program.name: program}, "caps": registry.caps,
              "contexts": builder, "secret": secret, "batch_size": batch_size,
              "owner": spec.program}
    notes = []
    trial = decide(cands, **common, dry_run=True)
    if spec.max_recipients is not None:
        won = trial.decided.loc[trial.decided["fate"] == "claimed"]
        if len(won) > spec.max_recipients:
            cut = won.sort_values("score", ascending=False, kind="stable").iloc[
                spec.max_recipients:]["customer_id"]
            over = cands["customer_id"].isin(set(cut))
            cands.loc[over, "fate"] = "max_recipients"
            cands.loc[over, "why"] = (f"beyond the campaign's {spec.max_recipients:,} "
                                      "recipients (the customers worth most to the shop first)")
            notes.append(f"max_recipients {spec.max_recipients:,}: {len(cut):,} customer(s) "
                         "left out")
            trial = decide(cands, **common, dry_run=True)
    decision = trial if spec.dry_run else decide(cands, **common)
    fates = decision.decided["fate"].value_counts().to_dict() if len(decision.decided) else {}
    winners = decision.decided.loc[decision.decided["fate"] == "claimed"]
    if spec.dry_run and len(winners):
        builder(winners)  # each would-be recipient's words, rendered as the real run will
    broken = builder.take_unrenderable()
    if broken:
        _unrenderable(spec, store_url, winners, broken, fates, notes)
    claimed = int(fates.get("claimed", 0))
    samples = []
    if samples_dir is not None:
        samples = render_samples(spec, winners if len(winners) else decision.decided, builder,
                                 renderer, settings, samples_dir / spec.name, png=png,
                                 run_id=run_id)
    senders = max(1, min(SENDERS, -(-claimed // batch_size)))
    report = CampaignReport(
        name=spec.name, dry_run=spec.dry_run, as_of=as_of.isoformat(),
        features_as_of=features_as_of.isoformat(), audience=_audience_label(spec),
        template=spec.template, audience_size=len(audience),
        fates={str(k): int(v) for k, v in fates.items()}, claimed=claimed,
        batches=list(decision.batches), estimated_seconds=claimed / (SEND_RATE_PER_SENDER
                                                                     * senders),
        send_at=spec.send_at if spec.send_at == "now" else f"{spec.send_at} in each "
                                                             "customer's timezone",
        samples=samples, notes=notes, run_id=run_id)
    with connect(store_url).begin() as conn:
        stored.save_run(conn, name=spec.name, template=spec.template, audience=spec.audience,
                        status="dry_run" if spec.dry_run else "planned", as_of=as_of,
                        run_id=run_id, params=spec.params, report=report.as_dict(),
                        dry_run=spec.dry_run, now=ledger.now())
    for line in report.lines():
        log.info(line)
    return report


def _unrenderable(spec: CampaignSpec, store_url: str, winners: pd.DataFrame,
                  broken: Mapping[str, str], fates: dict[Any, int], notes: list[str]) -> None:
    """Messages whose words do not render for their customer (``CampaignContexts``): in a
    real run marked failed in the ledger with the reason (never sent, counted in no cap), and
    in both runs counted apart from ``claimed`` in the report's fates, with a note."""
    if not spec.dry_run:
        by_reason: dict[str, list[str]] = {}
        for message_id, reason in broken.items():
            by_reason.setdefault(reason, []).append(message_id)
        with connect(store_url).begin() as conn:
            for reason, ids in by_reason.items():
                ledger.fail_unrenderable(conn, ids, f"{reason}; not sent")
    ids = winners["message_id"] if "message_id" in winners else pd.Series(dtype=object)
    mine = winners.loc[ids.isin(list(broken))]
    if len(mine):
        fates["claimed"] = int(fates.get("claimed", 0)) - len(mine)
        fates["unrenderable"] = len(mine)
    first = next(iter(broken.items()))
    example = winners.loc[ids == first[0], "customer_id"]
    who = f" (e.g. customer {example.iloc[0]})" if len(example) else ""
    notes.append(f"{len(broken):,} message(s) {'would' if spec.dry_run else 'did'} not render "
                 f"for their customer{who}: {first[1]}; "
                 + ("a real run would mark them failed and send the others" if spec.dry_run
                    else "marked failed, not sent; the others go out"))
    log.warning("campaign %s: %s", spec.name, notes[-1])


def _audience_label(spec: CampaignSpec) -> str:
    label = AUDIENCES[spec.audience]
    extra = {"loyalty_tier": spec.audience_tier, "upload": spec.audience_upload,
             "category": f"{spec.audience_category}, {spec.audience_days} days"}
    return f"{label} ({extra[spec.audience]})" if spec.audience in extra else label


def candidates(spec: CampaignSpec, audience: pd.DataFrame, features: FeatureSet,
               as_of: dt.date) -> pd.DataFrame:
    """The audience as candidates of the campaign's program, in the programs' shape. No
    ``valid_until``: a capped campaign message is not deferred to a later night."""
    c = features.customers
    last = (c.set_index("customer_id")["last_order_at"].dt.date if len(c)
            else pd.Series(dtype=object))
    n = len(audience)
    return pd.DataFrame({
        "customer_id": audience["customer_id"].astype(str),
        "signal": "campaign", "score": audience["score"].astype(float),
        "due_date": as_of, "valid_until": None, "reason": audience["reason"],
        "value": audience["score"].astype(float), "sku": None, "product_name": None,
        "detail": "{}", "program": spec.program, "kind": "marketing",
        "priority": spec.priority, "cooldown_days": 0, "occurrence": spec.occurrence,
        "last_order_date": audience["customer_id"].map(last),
        "fate": [None] * n, "why": [None] * n,
    })


def _outranked(cands: pd.DataFrame, store_url: str, as_of: dt.date, registry: Registry) -> None:
    """Priority against the nightly programs: a customer with a program's message waiting
    (deferred, still valid) that ranks above the campaign keeps that one."""
    if cands.empty:
        return
    with connect(store_url).connect() as conn:
        waiting = deferral.read_all(conn)
    if waiting.empty:
        return
    waiting = waiting.loc[pd.to_datetime(waiting["valid_until"]).dt.date >= as_of]
    priority = int(cands["priority"].iloc[0])
    above = waiting.loc[waiting["priority"].astype(int) > priority]
    best = above.sort_values("priority", ascending=False).drop_duplicates("customer_id")
    best = best.set_index("customer_id")
    hit = cands["customer_id"].isin(best.index) & cands["fate"].isna()
    program = cands.loc[hit, "customer_id"].map(best["program"])
    cands.loc[hit, "fate"] = "lost_to:" + program
    cands.loc[hit, "why"] = ("a " + program + " message is waiting for this customer and ranks "
                             f"above the campaign (priority {priority})")


def render_samples(spec: CampaignSpec, rows: pd.DataFrame, builder: CampaignContexts,
                   renderer: Renderer, settings: ShopSettings, folder: Path, *, png: bool,
                   run_id: str) -> list[dict[str, Any]]:
    """One rendered message per locale, as it would go out, saved as .eml (+ .html, and a
    PNG when Chromium is there): a customer who reads that language when the audience has
    one, else the first customer shown in that language."""
    from tend.delivery.engine import _message
    from tend.delivery.outbox import build_email

    if rows.empty:
        return []
    folder.mkdir(parents=True, exist_ok=True)
    customers = shop.read_customers(builder.shop_url, rows["customer_id"].head(2000).unique())
    lang = customers.set_index("customer_id")["locale"].fillna("").astype(str).str.replace(
        "-", "_").str.split("_").str[0].str.lower()
    out = []
    shown = [str(c) for c in rows["customer_id"].head(2000)]
    for loc in renderer.locales(regional=False):
        match = [c for c in shown if lang.get(c) == loc]
        # A customer whose words do not render (their message is marked failed) is no
        # sample: the next one is.
        for cid in dict.fromkeys([*match[:10], *shown[:10]]):
            row = customers.loc[customers["customer_id"] == cid].iloc[0].to_dict()
            row.update({"program": spec.program, "occurrence": spec.occurrence,
                        "signal": "campaign", "reason": "sample", "due_date": builder.as_of,
                        "locale": row["locale"] if cid in match else loc})
            ctx = builder.build(row, {}, {})
            message_id = ledger.message_id_for(cid, spec.program, spec.occurrence)
            if not builder.take_unrenderable():
                break
        else:
            continue
        claimed = ledger.Claimed(message_id, cid, spec.program, "marketing",
                                 json.dumps(ctx, default=str), run_id)
        message = _message(claimed, renderer, settings)
        eml = folder / f"{loc}.eml"
        eml.write_bytes(bytes(build_email(message)))
        html = folder / f"{loc}.html"
        html.write_text(message.html, encoding="utf-8")
        sample: dict[str, Any] = {"locale": loc, "customer_id": cid,
                                  "to": mask_email(message.to_email), "subject": message.subject,
                                  "eml": str(eml), "html": str(html), "png": None,
                                  "context": json.dumps(ctx, default=str)}
        if png:
            from tend.dev.preview import find_chromium, screenshot

            if find_chromium():
                sample["png"] = str(screenshot(html, folder / f"{loc}.png"))
        out.append(sample)
    return out


#: Whom a proof is rendered for: its links are signed for this id, never a customer's.
PROOF_CUSTOMER = "proof"


def send_proofs(name: str, store_url: str, *, to: Sequence[str], backend: Any,
                renderer: Renderer, settings: ShopSettings, run_id: str) -> int:
    """A ``[PROOF]`` copy of each sample of this run (one per locale) to each staff address,
    through the run's backend and never through the ledger: a rehearsal counts in no cap.
    Returns how many were accepted; a refused proof stops the run before any customer mail.

    A proof shows the sample customer's words and products but carries nothing that acts for
    them (``proof_message``): a staff member's click, or their mail client's unsubscribe
    button, must not unsubscribe a customer, and an outside address must not get a working
    voucher.
    """
    from tend.delivery.base import DeliveryStatus
    from tend.errors import DeliveryError

    with connect(store_url).connect() as conn:
        row = stored.read(conn, name)
    if row is None:
        raise DataError(f"no campaign {name!r} in the store; its plan task stores it first")
    outgoing = []
    stamp = f"{ledger.now():%H%M%S}"
    for sample in _run_report(row, run_id).get("samples", []):
        for i, address in enumerate(to):
            outgoing.append(proof_message(
                sample, renderer, settings, name=name, run_id=run_id, to=address,
                message_id=f"proof-{name}-{sample['locale']}-{i}-{stamp}"))
    if not outgoing:
        log.warning("campaign %s: no sample to proof (the audience is empty)", name)
        return 0
    results = backend.send(outgoing)
    bad = [r for r in results if r.status != DeliveryStatus.SENT]
    if bad:
        raise DeliveryError(f"campaign {name}: {len(bad)} proof(s) not accepted "
                            f"({bad[0].error}); fix the address or the backend, then trigger "
                            "again (no customer was sent anything)")
    for m in outgoing:
        log.info("proof sent to %s: %s", mask_email(m.to_email), m.subject)
    return len(outgoing)


def proof_message(sample: Mapping[str, Any], renderer: Renderer, settings: ShopSettings, *,
                  name: str, run_id: str, to: str, message_id: str) -> OutgoingMessage:
    """The ``[PROOF]`` of one sample to ``to``: the sample customer's message (words, products,
    layout) rendered for ``PROOF_CUSTOMER``, with inert unsubscribe and preferences links
    (``BASE/unsubscribe/proof``, which the pages refuse), no List-Unsubscribe headers, a voucher
    code that is only its prefix and ``XXXX-XXXX`` (no shop accepts it), and ``kind`` "proof"
    in its custom args (SendGrid attaches its marketing unsubscribe group to marketing mail
    only, and a staff address unsubscribed from it would get no more proofs)."""
    from dataclasses import replace

    from tend.delivery.engine import _message

    ctx = json.loads(sample["context"])
    offer = ctx.get("offer")
    if isinstance(offer, dict) and offer.get("code"):
        offer["code"] = str(offer["code"]).split("-")[0] + "-XXXX-XXXX"
    claimed = ledger.Claimed(message_id, PROOF_CUSTOMER, f"{ledger.CAMPAIGN_PREFIX}{name}",
                             "marketing", json.dumps(ctx, default=str), run_id)
    message = _message(claimed, renderer, settings)
    base = renderer.shop.base_url.rstrip("/")
    signed = re.compile(re.escape(base) + r"/(unsubscribe|preferences)/[A-Za-z0-9_.=-]+")

    def inert(text: str) -> str:
        return signed.sub(lambda m: f"{base}/{m.group(1)}/{PROOF_CUSTOMER}", text)

    return replace(
        message, to_email=to, to_name=None, subject=f"[PROOF] {message.subject}",
        html=inert(message.html), text=inert(message.text),
        headers={k: v for k, v in message.headers.items()
                 if not k.lower().startswith("list-unsubscribe")},
        categories=("proof", "campaign"),
        custom_args={**message.custom_args, "kind": "proof", "proof": "1"})


def _rehearsal(row: Mapping[str, Any], run_id: str) -> bool | None:
    """Whether run ``run_id`` of the campaign stored as ``row`` was its rehearsal (True), its
    real run (False), or planned nothing (None). A rehearsal after a real run keeps the real
    run's record and is found by the run id in its report."""
    if row["run_id"] == run_id:
        return row["status"] == "dry_run"
    if (row["dry_run_report"] or {}).get("run_id") == run_id:
        return True
    return None


def _run_report(row: Mapping[str, Any], run_id: str) -> dict[str, Any]:
    """The report run ``run_id`` stored: its rehearsal's, its real run's, or none."""
    rehearsal = _rehearsal(row, run_id)
    if rehearsal is None:
        return {}
    return (row["dry_run_report"] if rehearsal else row["report"]) or {}


def finish(name: str, store_url: str, run_id: str) -> list[str]:
    """The campaign's totals by ledger status, logged, and its final status stored.

    Raises (so the run's state tells the truth) when this run did not plan the campaign (an
    earlier task failed) or when any of its messages is not sent: failed, unknown, or still
    waiting in a batch that did not finish. The status: ``sending`` while messages wait,
    ``sent`` when all were, ``partly_sent`` when some were and others failed (or are unknown),
    ``failed`` when none was, ``nothing_to_send`` when the campaign has no message at all
    (everyone refused by consent, caps...). A rehearsal leaves the status as it was.
    """
    from sqlalchemy import func, select

    from tend.store.tables import contact_ledger as L

    with connect(store_url).begin() as conn:
        row = stored.read(conn, name)
        rehearsal = None if row is None else _rehearsal(row, run_id)
        if row is None or rehearsal is None:
            raise DataError(f"campaign {name}: this run planned nothing (an earlier task "
                            "failed: its log says why); nothing was sent by this run")
        if rehearsal:
            done = (f"campaign {name}: dry run, nothing claimed or sent; trigger it again with "
                    "dry_run off to send")
            log.info(done)
            return [done]
        program = ledger.CAMPAIGN_PREFIX + name
        counts = {s: int(n) for s, n in conn.execute(
            select(L.c.status, func.count()).where(L.c.program == program)
            .group_by(L.c.status))}
        # Stopped by the last look (the customer opted out after planning): not a failure.
        stopped = int(conn.execute(select(func.count()).where(
            L.c.program == program, L.c.status == "failed",
            ledger.stopped_after_planning(L.c.error))).scalar_one())
        if stopped:
            counts["failed"] -= stopped
            counts = {s: n for s, n in counts.items() if n} | {"stopped": stopped}
        pending = counts.get("claimed", 0) + counts.get("sending", 0)
        lost = counts.get("failed", 0) + counts.get("unknown", 0)
        if pending:
            status = "sending"
        elif not counts:
            status = "nothing_to_send"
        elif not lost:
            status = "sent" if counts.get("sent") else "nothing_to_send"
        else:
            status = "partly_sent" if counts.get("sent") else "failed"
        report = dict(row["report"] or {})
        report["ledger"] = counts
        stored.set_status(conn, name, status, now=ledger.now(), report=report)
    rows = [(s, counts.get(s, 0)) for s in ("sent", "failed", "unknown", "claimed", "sending")]
    if counts.get("stopped"):
        rows.append(("stopped (opted out after planning)", counts["stopped"]))
    lines = [f"campaign {name} (day {row['as_of']}): {status}",
             *table(["status", "messages"], rows)]
    if status == "nothing_to_send":
        lines.append("no message to send: the report's fates say why each customer got none")
    for line in lines:
        log.info(line)
    short = {s: n for s, n in rows if s in ("failed", "unknown", "claimed", "sending") and n}
    if short:
        counted = ", ".join(f"{s} {n:,}" for s, n in short.items())
        raise DataError(
            f"campaign {name}: not every message was sent ({counted}); `tend why CUSTOMER_ID` "
            "tells each story; what is still claimed goes out when the send tasks are cleared "
            "and rerun, unknown ones are never resent")
    return lines


def show_lines(store_url: str, name: str | None) -> list[str]:
    """``tend campaign show``: one campaign's status and reports, or the list of them."""
    require_current(store_url)
    with connect(store_url).connect() as conn:
        if name is None:
            names = stored.names(conn)
            rows = [stored.read(conn, n) for n in names]
            out = table(["campaign", "status", "day", "template", "audience"],
                        [(r["name"], r["status"], str(r["as_of"]), r["template"],
                          r["audience"]) for r in rows if r]) if names else ["no campaigns yet"]
            lists = stored.audiences(conn)
            if lists:
                out += ["", *table(["uploaded audience", "customers"], list(lists.items()))]
            return out
        row = stored.read(conn, name)
    if row is None:
        raise DataError(f"no campaign named {name!r}; `tend campaign show` lists them")
    out = [f"campaign {name}: {row['status']} (day {row['as_of']}, run {row['run_id']})"]
    for key in ("dry_run_report", "report"):
        if row[key]:
            fields = {k: v for k, v in row[key].items() if k in CampaignReport.__annotations__}
            out += ["", *CampaignReport(**fields).lines()]
            if row[key].get("ledger"):
                out += table(["status", "messages"], sorted(row[key]["ledger"].items()))
    return out
