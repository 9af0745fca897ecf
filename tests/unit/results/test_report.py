"""End to end: demo nights through ``tend night`` with simulated answers, then ``tend report``
(table, csv, json) and the nightly KPI step on the same store."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from _support import DemoShops, copy_sqlite
from sqlalchemy import func, select

from tend.cli import main
from tend.results import kpi, lift
from tend.results.report import COUNTS, verdict
from tend.shop import schema as shop_schema
from tend.store import kpi as kpi_store
from tend.store.db import connect

DEMO_AS_OF = dt.date(2026, 10, 1)
FIRST, LAST = dt.date(2026, 10, 2), dt.date(2026, 10, 4)
REQUIRED = ["program", "contacted", "held_out", "response_rate", "holdout_response_rate",
            "lift", "lift_low", "lift_high", "revenue_per_contacted", "revenue_per_held_out"]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def nights(demo_shops: DemoShops, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[tuple[str, str, str]]:
    """Three demo nights of a 600-customer shop, run by ``tend demo-nights``: the shop, the
    store and what the command printed."""
    tmp = tmp_path_factory.mktemp("results")
    shop = copy_sqlite(demo_shops(customers=600, seed=11, as_of=DEMO_AS_OF), tmp / "shop.db")
    store = f"sqlite:///{tmp / 'store.db'}"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TEND_VAR_DIR", str(tmp))
        # A day years after the nights: demo-nights must run each night as on its next day
        mp.setenv("TEND_TODAY", "2031-01-01")
        for var in ("TEND_SHOP_URL", "TEND_STORE_URL", "TEND_DELIVERY", "TEND_OUTBOX_DIR"):
            mp.delenv(var, raising=False)
        out = io.StringIO()
        with pytest.MonkeyPatch.context() as std:
            std.setattr("sys.stdout", out)
            code = main(["demo-nights", "--db", shop, "--store", store, "--from",
                         FIRST.isoformat(), "--nights", "3", "--seed", "2"])
        assert code == 0
        assert os.environ["TEND_TODAY"] == "2031-01-01"  # given back as it was
        yield shop, store, out.getvalue()


def report(shop: str, store: str, *args: str, capsys: pytest.CaptureFixture[str]) -> str:
    capsys.readouterr()
    assert main(["report", "--db", shop, "--store", store, "--from", FIRST.isoformat(),
                 "--to", LAST.isoformat(), *args]) == 0
    return capsys.readouterr().out


def test_demo_nights_send_and_simulate_answers(nights: tuple[str, str, str]) -> None:
    shop, _, printed = nights
    assert [line.split(":")[0] for line in printed.splitlines()[:3]] == [
        f"night {FIRST + dt.timedelta(days=k)}" for k in range(3)]
    assert "tend report --from 2026-10-02 --to 2026-10-04" in printed
    o = shop_schema.orders_with_codes
    with connect(shop).connect() as conn:
        simulated = conn.execute(select(func.count()).where(o.c.order_id.like("R%"))).scalar()
        redeemed = conn.execute(select(func.count()).where(o.c.discount_code.like("WB-%"))
                                ).scalar()
    assert simulated > 0 and redeemed > 0


def test_demo_nights_run_each_night_as_on_its_next_day(nights: tuple[str, str, str]) -> None:
    """Implied consent counted back from each night's next day, not from the day the demo
    runs: with TEND_TODAY years later, no customer's implied consent would still hold, yet
    the nights mailed customers who only have that."""
    from tend.store.tables import contact_ledger as ledger

    shop, store, _ = nights
    with connect(shop).connect() as conn:
        implied = {c for (c,) in conn.execute(select(shop_schema.customers.c.customer_id).where(
            func.lower(shop_schema.customers.c.marketing_consent) == "implied"))}
    with connect(store).connect() as conn:
        mailed = {c for (c,) in conn.execute(select(ledger.c.customer_id).where(
            ledger.c.kind == "marketing"))}
    assert mailed & implied


def test_simulating_a_night_again_adds_nothing(nights: tuple[str, str, str]) -> None:
    from tend.dev.responses import simulate_night

    shop, store, _ = nights
    assert simulate_night(shop, store, FIRST, seed=2) == 0


def test_csv_has_one_row_per_program_and_the_required_columns(
        nights: tuple[str, str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    shop, store, _ = nights
    out = tmp_path / "report.csv"
    assert "report written to" in report(shop, store, "--format", "csv", "--out", str(out),
                                         capsys=capsys)
    with out.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0])[:len(REQUIRED)] == REQUIRED
    programs = [r["program"] for r in rows]
    assert len(programs) == len(set(programs))
    assert programs[-1] == lift.ALL
    winback = next(r for r in rows if r["program"] == "winback")
    assert int(winback["contacted"]) > 0 and int(winback["held_out"]) > 0
    assert float(winback["response_rate"]) > 0
    assert int(winback["direct_responses"]) > 0
    # either a figure with its interval, or a reason there is none
    assert (winback["lift"] and float(winback["lift_low"]) <= float(winback["lift"])
            <= float(winback["lift_high"])) or winback["note"]


def test_json_and_table(nights: tuple[str, str, str], capsys: pytest.CaptureFixture[str]
                        ) -> None:
    shop, store, _ = nights
    data = json.loads(report(shop, store, "--format", "json", capsys=capsys))
    assert (data["from"], data["to"]) == ("2026-10-02", "2026-10-04")
    assert {r["program"] for r in data["programs"]} >= {"winback", lift.ALL}
    assert {r["month"] for r in data["months"]} == {"2026-10"}
    # counts are integers, though (all) has no holdout_responses and makes pandas hold floats
    by_program = {r["program"]: r for r in data["programs"]}
    assert all(type(by_program["winback"][c]) is int for c in COUNTS)
    assert by_program[lift.ALL]["holdout_responses"] is None
    text = report(shop, store, capsys=capsys)
    assert "95 % interval" in text and "winback" in text
    monthly = report(shop, store, "--by-month", "--format", "csv", capsys=capsys)
    assert monthly.splitlines()[0].startswith("month,program,contacted")


def test_to_before_from_is_refused(nights: tuple[str, str, str],
                                   capsys: pytest.CaptureFixture[str]) -> None:
    shop, store, _ = nights
    assert main(["report", "--db", shop, "--store", store, "--from", "2026-10-04", "--to",
                 "2026-10-02"]) == 2
    assert "--to 2026-10-02 is before --from 2026-10-04" in capsys.readouterr().err


def test_the_kpi_step_stores_the_months_still_open(nights: tuple[str, str, str]) -> None:
    shop, store, _ = nights
    assert kpi.store_kpis(shop, store, LAST) == kpi.store_kpis(shop, store, LAST) > 0
    with connect(store).connect() as conn:
        stored = kpi_store.read(conn)
    expected = lift.compute(shop, store, dt.date(2026, 9, 1), LAST, until=LAST).months
    cols = ["month", "program", "contacted", "held_out", "responses"]
    assert sorted(map(tuple, stored[cols].values.tolist())) == \
        sorted(map(tuple, expected[cols].values.tolist()))
    assert set(stored["as_of"].astype(str).str[:10]) == {LAST.isoformat()}
    assert stored["computed_at"].notna().all()


def test_a_range_without_contacts_says_so(tmp_path: Path, demo_shops: DemoShops,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    from tend.store import migrate

    shop = demo_shops(customers=600, seed=11, as_of=DEMO_AS_OF)
    store = f"sqlite:///{tmp_path / 'store.db'}"
    migrate(store)
    assert "nobody was contacted or held out" in report(shop, store, capsys=capsys)
    rows = list(csv.DictReader(io.StringIO(report(shop, store, "--format", "csv",
                                                  capsys=capsys))))
    assert [(r["program"], r["contacted"]) for r in rows] == [(lift.ALL, "0")]


def test_months_to_refresh() -> None:
    assert kpi.months_to_refresh(dt.date(2026, 11, 3), 30) == (
        dt.date(2026, 10, 1), ["2026-10", "2026-11"])
    assert kpi.months_to_refresh(dt.date(2026, 11, 30), 7)[1] == ["2026-11"]


@pytest.mark.parametrize(("low", "high", "says"), [
    (0.01, 0.2, "works"), (-0.01, 0.2, "no effect shown"), (-0.2, -0.01, "costs orders"),
    (float("nan"), float("nan"), "")])
def test_verdict_follows_the_interval(low: float, high: float, says: str) -> None:
    assert verdict(low, high) == says


def test_demo_nights_must_be_in_the_past(capsys: pytest.CaptureFixture[str]) -> None:
    today = dt.datetime.now(dt.UTC).date()
    assert main(["demo-nights", "--from", (today - dt.timedelta(days=5)).isoformat(),
                 "--nights", "6"]) == 2
    assert "is not in the past: generate the demo shop as of" in capsys.readouterr().err
