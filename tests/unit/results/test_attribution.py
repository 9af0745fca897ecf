"""Attribution: the window after a night, the same rule for held-out customers, one unit per
customer, program and holdout period, direct responses and opt-outs."""

from __future__ import annotations

import datetime as dt

import pandas as pd
import pytest

from tend.results import attribution

NIGHT = dt.date(2026, 10, 5)


def exposure(customer: str, group: str, night: dt.date = NIGHT, program: str = "winback",
             message_id: str | None = None) -> dict:
    return {"customer_id": customer, "program": program, "night": night, "group": group,
            "message_id": message_id if group == "contacted" else None}


def order(customer: str, day: dt.date, total: float = 40.0, code: str | None = None) -> dict:
    return {"customer_id": customer, "order_id": f"{customer}-{day}-{total}",
            "ordered_at": pd.Timestamp(dt.datetime.combine(day, dt.time(18, 30)), tz="UTC"),
            "total": total, "discount_code": code}


def attribute(exposures: list[dict], orders: list[dict], *, until: dt.date = dt.date(2026, 12, 1),
              windows: dict[str, int] | None = None, **kw: object) -> pd.DataFrame:
    units = attribution.units(pd.DataFrame(exposures))
    return attribution.attribute(units, pd.DataFrame(orders),
                                 windows or {"winback": 7, "replenish": 30}, until=until, **kw)


@pytest.mark.parametrize("group", ["contacted", "held_out"])
@pytest.mark.parametrize(("days_after", "counts"), [
    (0, False),   # the night's own orders were known when it decided
    (1, True),
    (7, True),    # the last day of a 7-day window
    (8, False),
])
def test_an_order_counts_within_the_window_for_both_groups(group: str, days_after: int,
                                                           counts: bool) -> None:
    out = attribute([exposure("C1", group, message_id="m1")],
                    [order("C1", NIGHT + dt.timedelta(days=days_after))])
    assert bool(out.loc[0, "responded"]) is counts
    assert out.loc[0, "revenue"] == (40.0 if counts else 0.0)


def test_each_program_has_its_own_window() -> None:
    later = order("C1", NIGHT + dt.timedelta(days=20), total=25.0)
    out = attribute([exposure("C1", "contacted", program="winback", message_id="m1"),
                     exposure("C1", "contacted", program="replenish", message_id="m2")],
                    [later]).set_index("program")
    assert not out.loc["winback", "responded"]
    assert out.loc["replenish", "responded"]
    assert out.loc["replenish", "window_days"] == 30


def test_holdout_symmetry_same_behaviour_same_figures() -> None:
    """Held-out and contacted customers who buy the same way get the same response and
    revenue: the rule never looks at the group."""
    days = [1, 3, 9, None, 6, 0]
    exposures, orders = [], []
    for i, d in enumerate(days):
        for group in ("contacted", "held_out"):
            cid = f"{group}-{i}"
            exposures.append(exposure(cid, group, message_id=f"m{i}"))
            if d is not None:
                orders.append(order(cid, NIGHT + dt.timedelta(days=d), total=10.0 + i))
    out = attribute(exposures, orders)
    by_group = out.groupby("group")[["responded", "revenue", "orders"]].sum()
    assert by_group.loc["contacted"].tolist() == by_group.loc["held_out"].tolist()
    assert by_group.loc["contacted", "responded"] == 3  # days 1, 3 and 6


def test_a_customer_counts_once_per_program_and_holdout_period() -> None:
    # held out every night the signal fires, in one quarter, then again in the next quarter
    nights = [NIGHT + dt.timedelta(days=k) for k in range(10)] + [dt.date(2027, 1, 2)]
    units = attribution.units(pd.DataFrame([exposure("C1", "held_out", n) for n in nights]))
    assert units["night"].tolist() == [NIGHT, dt.date(2027, 1, 2)]
    assert units["period"].tolist() == ["2026Q4", "2027Q1"]
    assert units["month"].tolist() == ["2026-10", "2027-01"]


def test_the_contact_wins_over_a_holdout_the_same_night() -> None:
    units = attribution.units(pd.DataFrame([exposure("C1", "held_out"),
                                            exposure("C1", "contacted", message_id="m")]))
    assert units["group"].tolist() == ["contacted"]


def test_a_window_past_the_known_orders_is_open() -> None:
    out = attribute([exposure("C1", "contacted", message_id="m")], [],
                    until=NIGHT + dt.timedelta(days=3))
    assert bool(out.loc[0, "window_open"])
    assert not out.loc[0, "responded"]


def test_orders_after_until_are_not_counted() -> None:
    out = attribute([exposure("C1", "held_out")], [order("C1", NIGHT + dt.timedelta(days=5))],
                    until=NIGHT + dt.timedelta(days=4))
    assert not out.loc[0, "responded"]


def test_a_redeemed_voucher_of_the_program_is_a_direct_response() -> None:
    out = attribute(
        [exposure("C1", "contacted", message_id="m1"), exposure("C2", "contacted", message_id="m2"),
         exposure("C3", "contacted", message_id="m3")],
        [order("C1", NIGHT + dt.timedelta(days=2), code="wb-abcd-efgh"),
         order("C2", NIGHT + dt.timedelta(days=2), code="LOYAL-ABCD-EFGH"),
         order("C3", NIGHT + dt.timedelta(days=2))],
        code_prefixes={"winback": "WB"}).set_index("customer_id")
    assert out["responded"].all()
    assert out["direct"].to_dict() == {"C1": True, "C2": False, "C3": False}


def test_orders_without_a_discount_code_column() -> None:
    orders = pd.DataFrame([order("C1", NIGHT + dt.timedelta(days=1))]).drop(
        columns="discount_code")
    units = attribution.units(pd.DataFrame([exposure("C1", "contacted", message_id="m")]))
    out = attribution.attribute(units, orders, {"winback": 7}, until=dt.date(2026, 12, 1),
                                code_prefixes={"winback": "WB"})
    assert bool(out.loc[0, "responded"]) and not out.loc[0, "direct"]


def test_an_order_counts_for_one_unit_of_a_program_across_a_quarter_boundary() -> None:
    """Held out at the end of a quarter, contacted at the start of the next: the held-out
    unit's window ends on the contact's night, so the order after the message is the contact's
    alone, and the order of that night (known before the message) the holdout's."""
    q1, q2 = dt.date(2026, 3, 29), dt.date(2026, 4, 1)
    exposures = [exposure("C1", "held_out", q1), exposure("C1", "held_out", q1 + dt.timedelta(1)),
                 exposure("C1", "contacted", q2, message_id="m1")]
    out = attribute(exposures, [order("C1", q2, total=30.0),
                                order("C1", q2 + dt.timedelta(days=1), total=50.0)]
                    ).set_index("group")
    assert out.loc["held_out", "window_end"] == q2
    assert out.loc["held_out", "revenue"] == 30.0 and out.loc["held_out", "orders"] == 1
    assert out.loc["contacted", "revenue"] == 50.0 and out.loc["contacted", "orders"] == 1
    assert out["next_night"].tolist() == [q2, None]
    # a window cut short by a unit whose night is known is over, whatever ``until`` says
    assert not out.loc["held_out", "window_open"]


def test_opt_outs_by_message_or_within_the_window() -> None:
    sent = [exposure(c, "contacted", message_id=f"m-{c}") for c in "ABCD"]
    units = attribute(sent, [])
    at = lambda days: pd.Timestamp(dt.datetime.combine(  # noqa: E731
        NIGHT + dt.timedelta(days=days), dt.time(12)), tz="UTC")
    outs = pd.DataFrame([
        {"customer_id": "A", "message_id": "m-A", "kind": "unsubscribe", "at": at(40)},
        {"customer_id": "B", "message_id": None, "kind": "unsubscribe", "at": at(3)},
        {"customer_id": "C", "message_id": None, "kind": "complaint", "at": at(30)},
        {"customer_id": "D", "message_id": None, "kind": "complaint", "at": at(1)},
    ])
    out = attribution.opted_out(units, outs, pd.DataFrame(sent)).set_index("customer_id")
    assert out["unsubscribed"].to_dict() == {"A": True, "B": True, "C": False, "D": False}
    assert out["complained"].to_dict() == {"A": False, "B": False, "C": False, "D": True}


def at(day: dt.date) -> pd.Timestamp:
    return pd.Timestamp(dt.datetime.combine(day, dt.time(12)), tz="UTC")


def test_opt_outs_about_a_later_message_of_the_unit() -> None:
    """Replenish writes twice in a quarter: one unit, two messages. An unsubscribe naming the
    second message, and a complaint without a message id in the second message's window
    (past the first's), are the unit's."""
    first, second = NIGHT, NIGHT + dt.timedelta(days=20)
    sent = pd.DataFrame([exposure(c, "contacted", n, "replenish", f"{c}-{k}")
                         for c in "AB" for k, n in enumerate((first, second))])
    units = attribution.attribute(attribution.units(sent),
                                  pd.DataFrame(columns=["customer_id", "ordered_at", "total"]),
                                  {"replenish": 30}, until=dt.date(2026, 12, 31))
    assert units["message_id"].tolist() == ["A-0", "B-0"]  # the unit is the first message
    outs = pd.DataFrame([
        {"customer_id": "A", "message_id": "A-1", "kind": "unsubscribe",
         "at": at(second + dt.timedelta(days=1))},
        {"customer_id": "B", "message_id": None, "kind": "complaint",
         "at": at(second + dt.timedelta(days=25))},
        {"customer_id": "B", "message_id": None, "kind": "unsubscribe",
         "at": at(second + dt.timedelta(days=31))},  # past the last window
    ])
    out = attribution.opted_out(units, outs, sent).set_index("customer_id")
    assert out["unsubscribed"].to_dict() == {"A": True, "B": False}
    assert out["complained"].to_dict() == {"A": False, "B": True}


def test_an_opt_out_without_a_message_id_belongs_to_one_unit_of_a_program() -> None:
    """Written at the end of a quarter and again at the start of the next: an unsubscribe
    without a message id after the second message is the second unit's only."""
    q1, q2 = dt.date(2026, 3, 30), dt.date(2026, 4, 1)
    sent = pd.DataFrame([exposure("C1", "contacted", q1, message_id="m1"),
                         exposure("C1", "contacted", q2, message_id="m2")])
    units = attribution.attribute(attribution.units(sent),
                                  pd.DataFrame(columns=["customer_id", "ordered_at", "total"]),
                                  {"winback": 7}, until=dt.date(2026, 5, 1))
    outs = pd.DataFrame([{"customer_id": "C1", "message_id": None, "kind": "unsubscribe",
                          "at": at(q2 + dt.timedelta(days=1))}])
    out = attribution.opted_out(units, outs, sent)
    assert out.set_index("message_id")["unsubscribed"].to_dict() == {"m1": False, "m2": True}
