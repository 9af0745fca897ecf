"""Due check-ups: services with ``service_interval_days`` (boiler service, car check-up, dental
cleaning) are due again one interval after the customer's last purchase of that service.

The contact window is [due - lead_days, due + grace_days]; the signal is due at its start and
valid until its end. Buying the service again moves the last purchase, so nobody is reminded
of a service they already bought.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd

from tend.signals import SignalParams, bounded_days, empty_signals, frame, in_window


def detect(fs: object, products: pd.DataFrame, as_of: dt.date,
           params: SignalParams | None = None) -> pd.DataFrame:
    params = params or SignalParams()
    p = params.checkup
    skus = fs.skus  # type: ignore[attr-defined]
    services = products.loc[products["service_interval_days"].notna()].set_index("sku")
    rows = skus.loc[skus["sku"].isin(services.index)].copy() if len(skus) else skus
    if rows.empty:
        return empty_signals()
    interval = pd.Series(bounded_days(rows["sku"].map(services["service_interval_days"])),
                         index=rows.index)
    due_on = pd.to_datetime(rows["last_day"]) + pd.to_timedelta(interval, unit="D")
    due = (due_on - pd.Timedelta(days=p.lead_days)).dt.date
    valid = (due_on + pd.Timedelta(days=p.grace_days)).dt.date
    ok = in_window(due, valid, as_of, params.horizon_days)
    rows, due, valid, due_on, interval = (rows.loc[ok], due[ok], valid[ok], due_on[ok],
                                          interval[ok])
    if rows.empty:
        return empty_signals()
    name = rows["sku"].map(services["name"])
    reason = [f"{n} last on {d}; due every {i} days, next on {u:%Y-%m-%d}"
              for n, d, i, u in zip(name, rows["last_day"], interval, due_on, strict=True)]
    # Closer to the due day scores higher; overdue stays high until the window closes.
    to_due = (due_on - pd.Timestamp(as_of)).dt.days.to_numpy()
    score = np.where(to_due > 0, 0.9 - 0.4 * to_due / max(p.lead_days, 1), 0.9)
    return frame(
        "checkup", rows["customer_id"], score, due, valid, reason,
        [{"due_on": f"{u:%Y-%m-%d}", "last_bought": str(d), "interval_days": int(i)}
         for u, d, i in zip(due_on, rows["last_day"], interval, strict=True)],
        sku=rows["sku"].tolist(), product_name=name.tolist())
