"""``tend report``: the results as a table a shop owner reads at a glance, a csv or json.

The table says, per program, how many customers were contacted and held out, how many of
each bought within the window, the lift in percentage points with its 95 % interval, and a
verdict in words that follows from the interval alone:

* **works**: the whole interval is above zero: the contact brings orders that would not
  have come anyway;
* **no effect shown**: the interval includes zero: the data cannot tell the contact from no
  contact (yet);
* **costs orders**: the whole interval is below zero.
"""

from __future__ import annotations

import csv
import io
import json
import math

import pandas as pd

from tend.logs import table
from tend.results.lift import ALL, COLUMNS, Results

#: The csv's columns: one row per program (``--by-month``: per month and program).
CSV_COLUMNS = COLUMNS
#: The columns that count customers, messages or days. A row without the figure (``(all)``
#: has no holdout_responses or window_days) turns a column into floats, and 8 would read 8.0.
COUNTS = ("contacted", "held_out", "responses", "holdout_responses", "direct_responses",
          "messages", "window_days", "open_windows")


def verdict(low: float, high: float) -> str:
    if math.isnan(low) or math.isnan(high):
        return ""
    if low > 0:
        return "works"
    if high < 0:
        return "costs orders"
    return "no effect shown"


def _pct(value: float, signed: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value * 100:+.1f}" if signed else f"{value * 100:.1f} %"


def _money(value: float) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:,.2f}"


def _number(value: float) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.2f}"


def table_lines(results: Results, *, by_month: bool = False) -> list[str]:
    """The owner's table: per program (and month), then every program together."""
    frame = results.months if by_month else results.programs
    head = ([f"Tend results: contacts on the nights {results.start} to {results.end}, "
             f"orders known up to {results.until}"], [])
    programs = frame.loc[frame["program"] != ALL]
    if programs.empty:
        return [*head[0], "", "nobody was contacted or held out on these nights: run the nights "
                "first (tend night, or the Airflow DAGs), or widen --from/--to"]
    rows = []
    for r in programs.itertuples(index=False):
        lift = "-" if math.isnan(r.lift) else f"{r.lift * 100:+.1f} pts"
        interval = ("-" if math.isnan(r.lift_low)
                    else f"{r.lift_low * 100:+.1f} to {r.lift_high * 100:+.1f}")
        rows.append((
            *((r.month,) if by_month else ()), r.program, f"{r.contacted:,}", f"{r.held_out:,}",
            _pct(r.response_rate), _pct(r.holdout_response_rate), lift, interval,
            verdict(r.lift_low, r.lift_high) or r.note.split(";")[0].split(" (")[0],
            f"{_money(r.revenue_per_contacted)} / {_money(r.revenue_per_held_out)}",
        ))
    out = [*head[0], ""]
    out += table([*(["month"] if by_month else []), "program", "contacted", "held out",
                  "bought", "bought if held out", "lift", "95 % interval", "verdict",
                  "revenue per customer (contacted / held out)"], rows)
    everyone = frame.loc[frame["program"] == ALL]
    if len(everyone):
        out += [""]
        out += table([*(["month"] if by_month else []), "all programs", "customers contacted",
                      "messages", "per customer per month", "unsubscribed", "complained"],
                     [(*((r.month,) if by_month else ()), "", f"{r.contacted:,}",
                       f"{r.messages:,}", _number(r.contacts_per_customer),
                       _pct(r.unsubscribe_rate), _pct(r.complaint_rate))
                      for r in everyone.itertuples(index=False)])
    notes = [f"  {p}: {n}" for p, n in zip(programs["program"], programs["note"], strict=True)
             if n and n != "no holdout"]
    if notes:
        out += ["", "notes:", *notes]
    out += ["", "bought: share of the group with an order in the program's window after the "
                "night; lift: the contacted share minus the held-out share, in percentage "
                "points; the interval holds the true lift in 95 % of cases (docs/results.md)"]
    return out


def csv_text(results: Results, *, by_month: bool = False) -> str:
    frame = results.months if by_month else results.programs
    cols = [*(["month"] if by_month else []), *CSV_COLUMNS]
    buf = io.StringIO()
    _counted(frame.reindex(columns=cols)).to_csv(buf, index=False, float_format="%.6g",
                                                 quoting=csv.QUOTE_MINIMAL, lineterminator="\n")
    return buf.getvalue()


def json_text(results: Results) -> str:
    def records(frame: pd.DataFrame) -> list[dict]:
        return json.loads(_counted(frame).to_json(orient="records"))

    return json.dumps({
        "from": results.start.isoformat(), "to": results.end.isoformat(),
        "orders_until": results.until.isoformat(),
        "programs": records(results.programs), "months": records(results.months),
    }, indent=2)


def _counted(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with its counts as integers (missing ones stay empty)."""
    return frame.astype({c: "Int64" for c in COUNTS if c in frame})
