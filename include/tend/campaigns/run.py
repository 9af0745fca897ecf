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
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from tend.campaigns.audience import select_audience
from tend.campaigns.form import AUDIENCES
from tend.campaigns.spec import CampaignSpec, Content
from tend.config import ShopSettings
from tend.errors import DataError
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
    """The programs' context builder, plus the form's words and each customer's picks."""

    def __init__(self, spec: CampaignSpec, *, features: FeatureSet, products: pd.DataFrame,
                 **kwargs: Any) -> None:
        super().__init__(features=features.customers, **kwargs)
        self.spec = spec
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
        words = content_for(self.spec.content, ctx["locale"], self.settings.default_locale)
        who = {"customer": ctx["customer"]}
        ctx["newsletter"] = {
            "subject": render_user_text(words.subject, who, single_line=True),
            "preheader": render_user_text(words.preheader, who, single_line=True),
            "title": render_user_text(words.headline, who, single_line=True),
            "intro": render_user_text(words.text, who),
            "articles": [],
        }
        picks = [p for p in (self.catalogue.get(s) for s in self.picks(ctx["customer"][
            "customer_id"])) if p]
        if picks:
            ctx["products"] = picks
        return ctx

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


def content_for(content: Mapping[str, Content], locale: str | None, default: str) -> Content:
    """The words for a customer's language: ``fr-CA`` reads the French, an unknown language
    the shop's default (or the first written)."""
    for loc in (locale, default):
        lang = (loc or "").replace("-", "_").split("_")[0].lower()
        if lang in content:
            return content[lang]
    return next(iter(content.values()))


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
    claimed = int(fates.get("claimed", 0))
    winners = decision.decided.loc[decision.decided["fate"] == "claimed"]
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
        samples=samples, notes=notes)
    with connect(store_url).begin() as conn:
        stored.save_run(conn, name=spec.name, template=spec.template, audience=spec.audience,
                        status="dry_run" if spec.dry_run else "planned", as_of=as_of,
                        run_id=run_id, params=spec.params, report=report.as_dict(),
                        dry_run=spec.dry_run, now=ledger.now())
    for line in report.lines():
        log.info(line)
    return report


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
    for loc in renderer.locales(regional=False):
        match = [c for c in rows["customer_id"].head(2000) if lang.get(c) == loc]
        cid = match[0] if match else str(rows["customer_id"].iloc[0])
        row = customers.loc[customers["customer_id"] == cid].iloc[0].to_dict()
        row.update({"program": spec.program, "occurrence": spec.occurrence,
                    "signal": "campaign", "reason": "sample", "due_date": builder.as_of,
                    "locale": row["locale"] if match else loc})
        ctx = builder.build(row, {}, {})
        message_id = ledger.message_id_for(cid, spec.program, spec.occurrence)
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


def send_proofs(name: str, store_url: str, *, to: Sequence[str], backend: Any,
                renderer: Renderer, settings: ShopSettings, run_id: str) -> int:
    """A ``[PROOF]`` copy of each stored sample (one per locale) to each staff address,
    through the run's backend and never through the ledger: a rehearsal counts in no cap.
    Returns how many were accepted; a refused proof stops the run before any customer mail."""
    from dataclasses import replace

    from tend.delivery.base import DeliveryStatus
    from tend.delivery.engine import _message
    from tend.errors import DeliveryError

    with connect(store_url).connect() as conn:
        row = stored.read(conn, name)
    if row is None:
        raise DataError(f"no campaign {name!r} in the store; its plan task stores it first")
    report = (row["dry_run_report"] if row["status"] == "dry_run" else row["report"]) or {}
    outgoing = []
    for sample in report.get("samples", []):
        claimed = ledger.Claimed(f"proof-{sample['locale']}", sample["customer_id"],
                                 f"{ledger.CAMPAIGN_PREFIX}{name}", "marketing",
                                 sample["context"], run_id)
        message = _message(claimed, renderer, settings)
        for i, address in enumerate(to):
            outgoing.append(replace(
                message, message_id=f"proof-{name}-{sample['locale']}-{i}-{ledger.now():%H%M%S}",
                to_email=address, to_name=None, subject=f"[PROOF] {message.subject}",
                categories=("proof", "campaign"),
                custom_args={**message.custom_args, "proof": "1"}))
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


def finish(name: str, store_url: str, run_id: str) -> list[str]:
    """The campaign's totals by ledger status, logged, and its final status stored.

    Raises (so the run's state tells the truth) when this run did not plan the campaign (an
    earlier task failed) or when any of its messages is not sent: failed, unknown, or still
    waiting in a batch that did not finish.
    """
    from sqlalchemy import func, select

    from tend.store.tables import contact_ledger as L

    with connect(store_url).begin() as conn:
        row = stored.read(conn, name)
        if row is None or row["run_id"] != run_id:
            raise DataError(f"campaign {name}: this run planned nothing (an earlier task "
                            "failed: its log says why); nothing was sent by this run")
        program = ledger.CAMPAIGN_PREFIX + name
        counts = {s: int(n) for s, n in conn.execute(
            select(L.c.status, func.count()).where(L.c.program == program)
            .group_by(L.c.status))}
        if row["status"] == "dry_run":
            done = (f"campaign {name}: dry run, nothing claimed or sent; trigger it again with "
                    "dry_run off to send")
            log.info(done)
            return [done]
        pending = counts.get("claimed", 0) + counts.get("sending", 0)
        status = "sending" if pending else ("failed" if not counts.get("sent") and (
            counts.get("failed") or counts.get("unknown")) else "sent")
        report = dict(row["report"] or {})
        report["ledger"] = counts
        stored.set_status(conn, name, status, now=ledger.now(), report=report)
    rows = [(s, counts.get(s, 0)) for s in ("sent", "failed", "unknown", "claimed", "sending")]
    lines = [f"campaign {name} (day {row['as_of']}): {status}",
             *table(["status", "messages"], rows)]
    for line in lines:
        log.info(line)
    short = {s: n for s, n in rows if s != "sent" and n}
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
