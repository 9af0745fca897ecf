"""The Tend page's HTML: each section a chart and, under it, the same figures as a table.

Self-contained (inline CSS and SVG, no script, nothing fetched from elsewhere), so it works on
a machine without internet access and inside the Airflow UI's frame. Links are relative: the
API server mounts the app under a prefix of its own.
"""

from __future__ import annotations

import datetime as dt
import html
from collections.abc import Sequence
from typing import Any

from tend.dashboard import SPAM_LIMIT, SPAM_TARGET, Dashboard, by_day, report_json, warnings
from tend.logs import mask_email
from tend_airflow.page import svg

_CSS = """
body{font-family:system-ui,sans-serif;margin:1.5rem;color:#1a1a1a;max-width:1100px}
h1{font-size:1.5rem}h2{font-size:1.15rem;margin-top:2rem;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.5rem 0}td,th{border:1px solid #ccc;padding:2px 8px;
text-align:left;font-size:.85rem}td.n{text-align:right}.warn{background:#fff4e5;
border-left:4px solid #D55E00;padding:.5rem 1rem;margin:.5rem 0}.ok{color:#555}
details{margin:.3rem 0}pre{background:#f6f6f6;padding:.5rem;overflow:auto;max-height:20rem}
iframe{border:1px solid #ccc;width:100%;height:420px}nav a{margin-right:1rem}
"""


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _doc(title: str, body: str) -> str:
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{_e(title)}'
            f'</title><style>{_CSS}</style></head><body>{body}</body></html>')


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]], caption: str = "") -> str:
    def cell(v: Any) -> str:
        if isinstance(v, int | float) and not isinstance(v, bool):
            text = f"{v:,}" if isinstance(v, int) else f"{v:,.2f}"
            return f'<td class="n">{text}</td>'
        return f"<td>{_e('' if v is None else v)}</td>"

    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(cell(v) for v in r) + "</tr>" for r in rows)
    cap = f"<caption>{_e(caption)}</caption>" if caption else ""
    return f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _figures(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """The chart's figures, folded under it (its text alternative for everyone)."""
    return f"<details><summary>Figures</summary>{_table(headers, rows)}</details>"


def page(d: Dashboard) -> str:
    parts = [f"<h1>Tend: {d.start} to {d.end}</h1>",
             '<nav><a href="gallery">Template gallery</a><a href="?days=7">7 days</a>'
             '<a href="?days=30">30 days</a><a href="?days=90">90 days</a></nav>']
    for w in warnings(d):
        parts.append(f'<p class="warn" role="alert">WARNING: {_e(w)}</p>')
    if d.empty:
        parts.append('<p class="ok">No night has been planned in this store yet: run '
                     "tend_ingest and tend_programs.</p>")
    parts += [_sends(d), _fates(d), _caps(d), _contacts(d), _rates(d), _results(d),
              _ratings(d), _complaints(d), _campaigns(d)]
    return _doc("Tend", "".join(parts))


def _sends(d: Dashboard) -> str:
    nights = [d.start + dt.timedelta(days=i) for i in range((d.end - d.start).days + 1)]
    series = {p: [per.get(n, 0) for n in nights] for p, per in sorted(by_day(d.sends).items())}
    chart = svg.stacked_bars("sends", "Messages sent per night, by program and campaign",
                             [n.isoformat() for n in nights], series)
    return ("<h2>Sends per day</h2>" + chart
            + _figures(["night", "program", "sent"], [(str(n), p, c) for n, p, c in d.sends]))


def _fates(d: Dashboard) -> str:
    chart = svg.hbars("fates", "Candidates by fate (claimed, or why not)", d.fates[:25])
    return "<h2>Fates by reason</h2>" + chart + _figures(["fate", "candidates"], d.fates)


def _caps(d: Dashboard) -> str:
    rows = [(f"{label}: at cap", at) for label, at, _ in d.cap_pressure]
    rows += [(f"{label}: one below", near) for label, _, near in d.cap_pressure]
    chart = svg.hbars("caps", f"Customers at or near a cap on {d.end}", rows)
    return ("<h2>Cap pressure</h2>" + chart
            + _figures(["cap", "customers at it", "one message below"], d.cap_pressure))


def _contacts(d: Dashboard) -> str:
    rows = [(f"{m}: {n} message{'s' if n > 1 else ''}", c) for m, n, c in d.contacts_per_month]
    chart = svg.hbars("contacts", "Customers by messages received in the month", rows)
    return ("<h2>Contacts per customer per month</h2>" + chart
            + _figures(["month", "messages", "customers"], d.contacts_per_month))


def _rates(d: Dashboard) -> str:
    r = d.rates
    rows = [("spam reports", r.spam_rate * 100), ("bounces", r.bounce_rate * 100),
            ("unsubscribes", r.unsubscribe_rate * 100)]
    chart = svg.hbars("rates", "Spam-report, bounce and unsubscribe rates (%)", rows,
                      fmt="{:.2f} %", maximum=max(0.5, *(v for _, v in rows)),
                      marks=[(SPAM_TARGET * 100, "0.1 % target"),
                             (SPAM_LIMIT * 100, "0.3 % limit")])
    return ("<h2>Bounce, unsubscribe and spam-report rates</h2>" + chart + _figures(
        ["sent", "delivered", "bounces", "unsubscribes", "spam reports"],
        [(r.sent, r.delivered, r.bounces, r.unsubscribes, r.spam_reports)]))


def _results(d: Dashboard) -> str:
    """Lift against each program's holdout, in percentage points with its 95 % interval."""
    from tend.results.report import verdict

    rows = [r for r in d.results if r["lift"] is not None]
    title = "Response-rate lift over the holdout (percentage points, 95 % interval)"
    chart = svg.empty(title, "results", "No lift figure yet: the groups are still too small, "
                      "see Figures for each program") if d.results and not rows else svg.intervals(
        "results", title, [(f"{r['month']} {r['program']}", r["lift"] * 100, r["lift_low"] * 100,
          r["lift_high"] * 100) for r in rows])
    return ("<h2>Results against the holdout</h2>" + chart + _figures(
        ["month", "program", "contacted", "held out", "response %", "holdout response %",
         "lift (pts)", "95 % interval", "reads as"],
        [(r["month"], r["program"], r["contacted"], r["held_out"],
          _pct(r["response_rate"]), _pct(r["holdout_response_rate"]), _pct(r["lift"]),
          "" if r["lift"] is None else f"{r['lift_low'] * 100:+.1f} to {r['lift_high'] * 100:+.1f}",
          # no lift figure: the note says why (the chart sends the reader here for it)
          r["note"] if r["lift"] is None else verdict(r["lift_low"], r["lift_high"]) or r["note"])
         for r in d.results]))


def _pct(value: float | None) -> str:
    return "" if value is None else f"{value * 100:.1f}"


def _ratings(d: Dashboard) -> str:
    rows = [(f"{r['by']} {r['name']}", r["average"]) for r in d.ratings]
    chart = svg.hbars("ratings", "Average survey rating (1 to 5)", rows, fmt="{:.1f}",
                      maximum=5)
    return ("<h2>Survey ratings</h2>" + chart + _figures(
        ["by", "name", "answers", "average", "low (1-2)"],
        [(r["by"], r["name"], r["answers"], r["average"], r["low"]) for r in d.ratings]))


def _complaints(d: Dashboard) -> str:
    if not d.open_complaints:
        return '<h2>Open complaints</h2><p class="ok">None.</p>'
    return "<h2>Open complaints</h2>" + _table(
        ["id", "opened", "customer", "source", "rating", "comment"],
        [(c["id"], str(c["opened_at"])[:16], c["customer_id"], c["source"], c["rating"],
          c["comment"]) for c in d.open_complaints])


#: What the page shows of a report's sample: never its ``context`` (the customer's name, full
#: address, voucher code... as the message was rendered from them), and the address masked. A
#: field is shown only once it is listed here, so a field added to the report later stays off
#: the page (every Airflow user sees it) until someone decides it may show.
_SAMPLE_FIELDS = ("locale", "customer_id", "to", "subject", "eml", "html", "png")


def _shown(report: dict[str, Any]) -> dict[str, Any]:
    """``report`` as the page may show it: its samples without the customers' details."""
    samples = [{k: mask_email(v) if k == "to" else v for k, v in s.items()
                if k in _SAMPLE_FIELDS} for s in report.get("samples") or []]
    return {**report, "samples": samples} if "samples" in report else dict(report)


def _campaigns(d: Dashboard) -> str:
    """Each campaign's real run when it has one (what was sent, by the ledger), else its dry
    run (what would be sent); both reports in full, without the customers' details."""
    if not d.campaigns:
        return ('<h2>Campaigns</h2><p class="ok">No campaign yet (trigger tend_campaign).</p>')
    out = ["<h2>Campaigns</h2>"]
    for c in d.campaigns:
        real = bool(c.get("report"))
        report = c.get("report") or c.get("dry_run_report") or {}
        name = str(c.get("name", ""))
        # The status as stored, whatever it is: the runs may record ones this page never saw.
        out.append(f"<h3>{_e(name)} ({_e(c.get('status'))}, {_e(c.get('template'))}, audience "
                   f"{_e(c.get('audience'))}, {_e(c.get('as_of'))})</h3>")
        if report:
            out.append(f"<p>{_headline(report, real=real)}</p>")
        fates = report.get("fates") or {}
        if isinstance(fates, dict) and fates:
            rows = sorted(((str(k), float(v)) for k, v in fates.items()), key=lambda r: -r[1])
            out.append(svg.hbars(f"campaign-{name}",
                                 f"{'Real run' if real else 'Dry run'} of {name}: fates", rows))
        for sample in report.get("samples") or []:
            if sample.get("png"):
                loc = _e(sample.get("locale", ""))
                out.append(f'<figure><img src="campaigns/{_e(name)}/{loc}.png" '
                           f'alt="Sample of {_e(name)} in {loc}" width="320">'
                           f"<figcaption>{loc}: {_e(sample.get('subject', ''))}</figcaption>"
                           "</figure>")
        for key, label in (("dry_run_report", "dry-run report"), ("report", "real run report")):
            if c.get(key):
                out.append(f"<details><summary>{label}</summary><pre>"
                           f"{_e(report_json(_shown(c[key])))}</pre></details>")
    return "".join(out)


def _headline(report: dict[str, Any], *, real: bool) -> str:
    """The report's figures in a sentence that says which run they are from: the real run's
    ledger counts once its finish task stored them, its claims before that."""
    audience = f"audience {int(report.get('audience_size') or 0):,}"
    claimed = int(report.get("claimed") or 0)
    estimate = f"estimated send time {float(report.get('estimated_seconds') or 0):,.0f} s"
    if not real:
        return (f"Dry run on {_e(report.get('as_of', ''))}: {audience}, would send "
                f"{claimed:,}, {estimate}.")
    ledger = report.get("ledger") or {}
    if isinstance(ledger, dict) and ledger:
        counts = ", ".join(f"{_e(s)} {int(n or 0):,}" for s, n in sorted(
            ledger.items(), key=lambda kv: (kv[0] != "sent", str(kv[0]))))
        return (f"Real run on {_e(report.get('as_of', ''))}: {audience}, claimed {claimed:,}; "
                f"messages by status: {counts}.")
    return (f"Real run on {_e(report.get('as_of', ''))}: {audience}, claimed {claimed:,}, "
            f"{estimate}; no count of what was sent yet (its finish task stores it).")


def gallery(previews: Sequence[dict[str, Any]]) -> str:
    parts = ['<h1>Template gallery</h1><nav><a href="./">Back to the Tend page</a></nav>']
    for p in previews:
        parts.append(f"<h2>{_e(p['program'])} ({_e(p['locale'])})</h2>")
        if "error" in p:
            parts.append(f'<p class="warn">WARNING: this template fails: {_e(p["error"])}</p>')
            continue
        parts.append(f"<p>Subject: {_e(p['subject'])}</p><iframe sandbox title="
                     f'"{_e(p["program"])} in {_e(p["locale"])}" srcdoc="{_e(p["html"])}">'
                     "</iframe>")
    return _doc("Tend templates", "".join(parts))
