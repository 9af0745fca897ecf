"""Template contexts for tonight's winners, following each template's contract.

``tend.messages.contracts`` says what every template expects; this module fills it from the signal
row, the customer, the shop's catalogue and (for thank-yous and surveys) the order itself. It
runs for the winners only, right after their claim commits (``tend.programs.plan``), so a night of a
million candidates builds a context for the few hundred thousand that get a message without
holding the ledger's lock. The JSON is stored before any batch is sent, so a retry renders the
very same message.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import pandas as pd

from tend import config
from tend.config import ShopSettings
from tend.messages.tokens import make_message_token, voucher_code
from tend.programs.registry import Program
from tend.shop import read as shop
from tend.store import ledger


@dataclass(frozen=True)
class Catalogue:
    """The shop's products by sku, shaped as templates expect a product."""

    products: Mapping[str, dict[str, Any]]

    @classmethod
    def read(cls, shop_url: str, settings: ShopSettings) -> Catalogue:
        url_pattern = config.product_url_pattern()
        rows = shop.read_price_list(shop_url)
        return cls({
            sku: {"sku": sku, "name": name, "price": price,
                       "currency": settings.currency,
                       "url": config.product_url(url_pattern, sku) if url_pattern else None,
                       "image_url": None}
            for sku, name, price in rows
        })

    def get(self, sku: str | None, name: str | None = None) -> dict[str, Any] | None:
        if sku and sku in self.products:
            return dict(self.products[sku])
        if sku and name:  # a product gone from the catalogue still has the name we saw
            return {"sku": sku, "name": name, "price": None, "currency": None, "url": None,
                    "image_url": None}
        return None


#: The purpose of the survey links' tokens (``tend.listen.pages`` verifies them).
SURVEY_PURPOSE = "survey-answer"

#: The winner columns a context is built from.
_ROW_COLUMNS = ("program", "customer_id", "occurrence", "locale", "timezone", "first_name",
                "last_name", "email", "signal", "reason", "due_date", "sku", "product_name")


class ContextBuilder:
    """Builds the stored JSON context of each winner (``__call__`` on the winners frame)."""

    def __init__(self, *, shop_url: str, programs: Mapping[str, Program],
                 settings: ShopSettings, secret: str, as_of: dt.date,
                 features: pd.DataFrame) -> None:
        self.shop_url = shop_url
        self.programs = programs
        self.settings = settings
        self.secret = secret
        self.as_of = as_of
        self.catalogue = Catalogue.read(shop_url, settings)
        f = features.set_index("customer_id") if len(features) else features
        self.orders_count = f["orders_count"].to_dict() if len(f) else {}
        self.member_since = (pd.to_datetime(f["first_order_at"], utc=True).dt.date.to_dict()
                             if len(f) else {})

    def __call__(self, winners: pd.DataFrame) -> list[str]:
        details = [json.loads(d) if isinstance(d, str) else {} for d in winners["detail"]]
        needs_order = {
            (c, dt.date.fromisoformat(str(d.get("order_date"))[:10]))
            for c, sig, d in zip(winners["customer_id"], winners["signal"], details,
                                 strict=True)
            if sig in ("first_purchase", "survey") and d.get("order_date")
        }
        orders = shop.read_orders_of_days(self.shop_url, needs_order)
        # Only the columns ``build`` reads, as plain objects: ``DataFrame.to_dict`` over the
        # whole frame would cost more than building the contexts themselves.
        cols = [c for c in _ROW_COLUMNS if c in winners.columns]
        values = zip(*(winners[c].to_numpy(dtype=object) for c in cols), strict=True)
        return [
            json.dumps(self.build(dict(zip(cols, row, strict=True)), detail, orders), default=str)
            for row, detail in zip(values, details, strict=True)
        ]

    def build(self, row: dict[str, Any], detail: dict[str, Any],
              orders: Mapping[tuple[str, dt.date], dict[str, Any]]) -> dict[str, Any]:
        program = self.programs[row["program"]]
        cid = str(row["customer_id"])
        locale = _clean(row.get("locale")) or self.settings.default_locale
        ctx: dict[str, Any] = {
            "template": program.template,
            "locale": locale,
            "timezone": _clean(row.get("timezone")),
            "customer": {
                "customer_id": cid,
                "first_name": _clean(row.get("first_name")),
                "last_name": _clean(row.get("last_name")),
                "email": _clean(row.get("email")),
                "locale": locale,
                "orders_count": int(self.orders_count.get(cid, 0)),
                "member_since": str(self.member_since.get(cid) or ""),
            },
            "signal": {
                "name": row["signal"],
                "reason": row["reason"],
                "due_date": str(row["due_date"]),
                "sku": _clean(row.get("sku")),
                "product_name": _clean(row.get("product_name")),
                "nth": None, "tier": None, "years": None,
                **detail,
            },
        }
        product = self.catalogue.get(_clean(row.get("sku")), _clean(row.get("product_name")))
        sig = row["signal"]
        if sig == "cross_sell":
            ctx["purchased"] = self.catalogue.get(detail.get("because_sku"),
                                                  detail.get("because_name"))
            extra = self.catalogue.get(detail.get("complement_sku"),
                                       detail.get("complement_name"))
            ctx["products"] = [p for p in (extra,) if p]
        elif sig in ("first_purchase", "survey"):
            day = str(detail.get("order_date", ""))[:10]
            order = orders.get((cid, dt.date.fromisoformat(day))) if day else None
            if order:
                ctx["order"] = {k: order[k] for k in ("order_id", "ordered_at", "total",
                                                      "currency")}
                ctx["products"] = [p for p in (self.catalogue.get(sku)
                                               for sku in dict.fromkeys(order["skus"])) if p]
            if sig == "survey":
                # Bound to this message: one answer per message, a later click changes it.
                message_id = ledger.message_id_for(cid, program.name, row["occurrence"])
                token = make_message_token(self.secret, cid, message_id, SURVEY_PURPOSE)
                # The page answers in the email's language (the template adds rating=N).
                ctx["survey"] = {"url": f"{self.settings.base_url}/survey/{token}"
                                        f"?{urlencode({'lang': locale})}"}
        elif product is not None:
            ctx["products"] = [product]
        if program.offer is not None:
            o = program.offer
            message_id = ledger.message_id_for(cid, program.name, row["occurrence"])
            ctx["offer"] = {
                "code": voucher_code(self.secret, message_id, o.code_prefix),
                "amount": o.amount,
                "currency": self.settings.currency,
                "kind": o.kind,
                "expires_on": str(self.as_of + dt.timedelta(days=o.valid_days)),
            }
        return ctx


def _clean(v: Any) -> str | None:
    if v is None or v is pd.NA or (isinstance(v, float) and pd.isna(v)):
        return None
    text = str(v)
    return text or None


#: Context fields that are dates, turned back into dates before rendering.
DATE_FIELDS = ("last_order_date", "due_date", "due_on", "window_start", "window_end",
               "last_bought", "order_date", "expected_next_order", "first_order_date",
               "ordered_at", "member_since", "expires_on")


def context_for_render(raw: str) -> dict[str, Any]:
    """The stored JSON context with dates and amounts turned back into what templates expect."""
    from decimal import Decimal, InvalidOperation

    ctx = json.loads(raw)

    def revive(obj: Any) -> Any:
        if isinstance(obj, dict):
            out = {}
            for k, v in obj.items():
                if k in DATE_FIELDS and isinstance(v, str) and len(v) >= 10:
                    try:
                        out[k] = dt.date.fromisoformat(v[:10])
                        continue
                    except ValueError:
                        pass
                if k in ("price", "total", "amount") and isinstance(v, str | int | float) \
                        and not isinstance(v, bool):
                    try:
                        out[k] = Decimal(str(v))
                        continue
                    except InvalidOperation:
                        pass
                out[k] = revive(v)
            return out
        if isinstance(obj, list):
            return [revive(v) for v in obj]
        return obj

    return revive(ctx)
