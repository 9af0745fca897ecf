"""The lift figures of one program, against a hand-computed example."""

from __future__ import annotations

import datetime as dt
import math

import pandas as pd
import pytest

from tend.results import lift


def attributed(program: str, group: str, n: int, responders: int, spend: float = 50.0,
               month: str = "2026-10") -> pd.DataFrame:
    return pd.DataFrame({
        "customer_id": [f"{program}-{group}-{i}" for i in range(n)], "program": program,
        "night": dt.date(2026, 10, 5), "group": group, "month": month, "period": "2026Q4",
        "responded": [i < responders for i in range(n)],
        "revenue": [spend if i < responders else 0.0 for i in range(n)],
        "orders": [int(i < responders) for i in range(n)],
        "direct": [group == "contacted" and i < responders // 2 for i in range(n)],
        "window_days": 7, "window_open": False, "messages": int(group == "contacted"),
        "unsubscribed": [group == "contacted" and i == n - 1 for i in range(n)],
        "complained": False,
    })


def test_hand_computed_example() -> None:
    """200 contacted, 30 bought (15 %); 50 held out, 4 bought (8 %).

    By hand, z = 1.959964, Wilson intervals: 30/200 -> [0.107136, 0.206056],
    4/50 -> [0.031550, 0.188383]; Newcombe: 0.07 - sqrt(0.042864² + 0.108383²) = -0.046551,
    0.07 + sqrt(0.056056² + 0.048450²) = 0.144092.
    """
    units = pd.concat([attributed("winback", "contacted", 200, 30),
                       attributed("winback", "held_out", 50, 4)])
    [row] = lift.summarise(units, reactivation=frozenset({"winback"})).to_dict("records")
    assert (row["contacted"], row["held_out"], row["responses"], row["holdout_responses"]) == (
        200, 50, 30, 4)
    assert row["response_rate"] == pytest.approx(0.15)
    assert row["holdout_response_rate"] == pytest.approx(0.08)
    assert row["lift"] == pytest.approx(0.07)
    assert row["lift_low"] == pytest.approx(-0.046551, abs=2e-6)
    assert row["lift_high"] == pytest.approx(0.144092, abs=2e-6)
    assert row["revenue_per_contacted"] == pytest.approx(7.5)  # 30 x 50 / 200
    assert row["revenue_per_held_out"] == pytest.approx(4.0)  # 4 x 50 / 50
    assert row["revenue_lift"] == pytest.approx(3.5)
    assert row["revenue_lift_low"] < 3.5 < row["revenue_lift_high"]
    assert row["direct_responses"] == 15
    assert row["reactivation_rate"] == pytest.approx(0.15)
    assert row["unsubscribe_rate"] == pytest.approx(1 / 200)
    assert row["complaint_rate"] == 0
    assert row["contacts_per_customer"] == pytest.approx(1.0)
    assert row["note"] == ""


def test_too_small_a_holdout_shows_no_number() -> None:
    units = pd.concat([attributed("cross_sell", "contacted", 300, 40),
                       attributed("cross_sell", "held_out", 12, 2)])
    [row] = lift.summarise(units).to_dict("records")
    assert row["note"].startswith("holdout too small")
    for col in ("lift", "lift_low", "lift_high", "revenue_lift"):
        assert math.isnan(row[col])
    assert math.isnan(row["reactivation_rate"])  # not a lapsed-customer program
    assert row["response_rate"] == pytest.approx(40 / 300)  # the rates are still shown


def test_per_month_rows() -> None:
    units = pd.concat([attributed("winback", "contacted", 100, 20, month="2026-10"),
                       attributed("winback", "held_out", 40, 4, month="2026-10"),
                       attributed("winback", "contacted", 80, 10, month="2026-11")])
    out = lift.summarise(units, ["month", "program"])
    assert list(out.columns[:2]) == ["month", "program"]
    assert out[["month", "contacted", "held_out"]].values.tolist() == [
        ["2026-10", 100, 40], ["2026-11", 80, 0]]
    assert out.loc[1, "note"] == "no holdout"


DEMO = pytest.mark.demo_shop(customers=600, seed=11, as_of=dt.date(2026, 10, 1))


@DEMO
def test_compute_reads_the_store_and_the_shop(store_url: str, shop_url: str) -> None:
    """Both store backends: sent messages and held-out decisions in, orders in the shop after
    the night, figures out (by program, by month, and every program together)."""
    from decimal import Decimal

    from tend.shop import schema as shop_schema
    from tend.store import ledger
    from tend.store.db import connect
    from tend.store.tables import contact_ledger

    night = dt.date(2026, 10, 2)
    customers = [f"C{i:06d}" for i in range(1, 41)]
    contacted, held = customers[:30], customers[30:]
    with connect(store_url).begin() as conn:
        out = ledger.claim(conn, pd.DataFrame([
            {"customer_id": c, "program": "winback", "occurrence": "lapsed", "kind": "marketing",
             "priority": 60, "score": 0.5, "cooldown_days": 90} for c in contacted]),
            as_of=night, run_id="r", caps=(), batch_size=100).frame
        conn.execute(contact_ledger.update().values(status="sent"))
        ledger.record_decisions(conn, pd.DataFrame([
            {"customer_id": c, "program": "winback", "fate": "held_out", "why": "control",
             "message_id": None, "occurrence": "lapsed"} for c in held]), as_of=night,
            run_id="r")
    assert len(out) == 30
    buyers = contacted[:9] + held[:2]  # 30 % and 20 %
    with connect(shop_url).begin() as conn:
        shop_schema.add_discount_code(conn)
        conn.execute(shop_schema.orders_with_codes.insert(), [
            {"order_id": f"T{i}", "customer_id": c, "total": Decimal("20.00"), "currency": "CAD",
             "ordered_at": dt.datetime(2026, 10, 5, 12, tzinfo=dt.UTC),
             "discount_code": "WB-TEST-CODE" if i == 0 else None}
            for i, c in enumerate(buyers)])
    results = lift.compute(shop_url, store_url, night, night, until=dt.date(2026, 10, 20))
    row = results.programs.set_index("program").loc["winback"]
    assert (row["contacted"], row["held_out"], row["responses"], row["holdout_responses"]) == (
        30, 10, 9, 2)
    assert row["revenue_per_contacted"] == pytest.approx(9 * 20 / 30)
    assert row["direct_responses"] == 1
    assert row["note"].startswith("holdout too small")
    everyone = results.programs.set_index("program").loc[lift.ALL]
    assert (everyone["contacted"], everyone["messages"]) == (30, 30)
    assert results.months[["month", "program"]].values.tolist() == [
        ["2026-10", "winback"], ["2026-10", lift.ALL]]


def claim_sent(store_url: str, customers: list[str], program: str, night: dt.date,
               occurrence: str = "lapsed") -> list[str]:
    """Claim ``program``'s message to each customer on ``night`` and mark it sent; the ids."""
    from tend.store import ledger
    from tend.store.db import connect
    from tend.store.tables import contact_ledger

    with connect(store_url).begin() as conn:
        out = ledger.claim(conn, pd.DataFrame([
            {"customer_id": c, "program": program, "occurrence": occurrence,
             "kind": "marketing", "priority": 60, "score": 0.5, "cooldown_days": 0}
            for c in customers]), as_of=night, run_id=f"r{night}", caps=(),
            batch_size=100).frame
        conn.execute(contact_ledger.update().where(contact_ledger.c.status == "claimed")
                     .values(status="sent"))
    return out["message_id"].tolist()


def add_orders(shop_url: str, orders: list[tuple[str, dt.datetime, str | None]]) -> None:
    """Orders of 20.00 (customer, when, discount code) in the shop."""
    from decimal import Decimal

    from tend.shop import schema as shop_schema
    from tend.store.db import connect

    with connect(shop_url).begin() as conn:
        shop_schema.add_discount_code(conn)
        conn.execute(shop_schema.orders_with_codes.insert(), [
            {"order_id": f"T{i}", "customer_id": c, "total": Decimal("20.00"), "currency": "CAD",
             "ordered_at": when, "discount_code": code}
            for i, (c, when, code) in enumerate(orders)])


@DEMO
def test_a_redeemed_campaign_voucher_is_a_direct_response(store_url: str, shop_url: str
                                                          ) -> None:
    """A campaign's vouchers carry a prefix derived from its name (tend.campaigns.spec), which
    the registry does not know: it is read from the campaign's stored form."""
    from tend.campaigns.spec import parse_spec
    from tend.messages.tokens import voucher_code
    from tend.programs.caps import SendWindow
    from tend.store import campaigns
    from tend.store.db import connect

    spec = parse_spec({"name": "spring-sale", "subject_en": "Spring!", "subject_fr": "Printemps",
                       "offer": "percent", "offer_amount": 15, "dry_run": False},
                      templates=["newsletter"], locales=["en", "fr"], quiet=SendWindow())
    night = dt.date(2026, 10, 2)
    with connect(store_url).begin() as conn:
        campaigns.save_run(conn, name=spec.name, template=spec.template, audience=spec.audience,
                           status="sent", as_of=night, run_id="r", params=spec.params,
                           report={}, dry_run=False, now=dt.datetime.now(dt.UTC))
    ids = claim_sent(store_url, ["C000001", "C000002"], spec.program, night, spec.occurrence)
    assert spec.offer is not None
    when = dt.datetime(2026, 10, 4, 12, tzinfo=dt.UTC)
    add_orders(shop_url, [("C000001", when, voucher_code("s", ids[0], spec.offer.code_prefix)),
                          ("C000002", when, None)])
    results = lift.compute(shop_url, store_url, night, night, until=dt.date(2026, 10, 20))
    row = results.programs.set_index("program").loc[spec.program]
    assert (row["contacted"], row["responses"], row["direct_responses"]) == (2, 2, 1)


@DEMO
def test_a_unit_ends_where_the_next_quarter_s_unit_starts_whatever_the_range(
        store_url: str, shop_url: str) -> None:
    """Held out on the last nights of a quarter and contacted on the second of the next:
    the order after the contact is not the holdout's, also in a report that stops before the
    contact (the exposures are read as far as the orders are)."""
    from tend.store import ledger
    from tend.store.db import connect

    # in the past (later orders are quarantined); the demo's C000001 last ordered in 2024
    held, contacted = dt.date(2025, 12, 30), dt.date(2026, 1, 2)
    with connect(store_url).begin() as conn:
        ledger.record_decisions(conn, pd.DataFrame([
            {"customer_id": "C000001", "program": "winback", "fate": "held_out",
             "why": "control", "message_id": None, "occurrence": "lapsed"}]), as_of=held,
            run_id="r")
    claim_sent(store_url, ["C000001"], "winback", contacted)
    add_orders(shop_url, [("C000001", dt.datetime(2026, 1, 3, 12, tzinfo=dt.UTC), None)])
    until = dt.date(2026, 1, 20)
    before = lift.compute(shop_url, store_url, held, dt.date(2025, 12, 31), until=until)
    row = before.programs.set_index("program").loc["winback"]
    assert (row["held_out"], row["holdout_responses"], row["open_windows"]) == (1, 0, 0)
    both = lift.compute(shop_url, store_url, held, contacted, until=until)
    row = both.programs.set_index("program").loc["winback"]
    assert (row["contacted"], row["responses"], row["held_out"], row["holdout_responses"]) == (
        1, 1, 1, 0)


@DEMO
def test_an_opt_out_about_a_later_message_of_the_quarter_counts_whatever_the_range(
        store_url: str, shop_url: str) -> None:
    """A unit is every message its program sent the customer in the quarter: an unsubscribe
    about the second one is the unit's, also in a report whose --to comes before it."""
    from tend.store.db import connect
    from tend.store.tables import message_events

    first, second = dt.date(2026, 1, 5), dt.date(2026, 2, 20)
    claim_sent(store_url, ["C000001"], "winback", first, "lapsed::1")
    (later,) = claim_sent(store_url, ["C000001"], "winback", second, "lapsed::2")
    at = dt.datetime(2026, 2, 21, 12, tzinfo=dt.UTC)
    with connect(store_url).begin() as conn:
        conn.execute(message_events.insert().values(
            event_id="e1", message_id=later, customer_id="C000001", event="unsubscribe",
            occurred_at=at, received_at=at, detail=None))
    for end in (dt.date(2026, 1, 31), dt.date(2026, 3, 31)):
        results = lift.compute(shop_url, store_url, first, end, until=dt.date(2026, 4, 30))
        row = results.programs.set_index("program").loc["winback"]
        assert (row["contacted"], row["unsubscribe_rate"]) == (1, 1.0), end
