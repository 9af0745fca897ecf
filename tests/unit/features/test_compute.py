"""Features: visits, rhythm on the log scale, medians, seasons, per product — table-driven."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from _support import DemoShops

from tend.features.columns import FEATURE_COLUMNS, PROFILE_COLUMNS, SKU_COLUMNS, FeatureColumns
from tend.features.compute import (
    compute_feature_set,
    compute_features,
    concat_parts,
    consume_frames,
    feature_parts,
)
from tend.features.sorting import group_median
from tend.features.year import (
    SEASON_HALF_WIDTH,
    TWO_PI,
    YEAR_DAYS,
    circular_distance_days,
    day_phase,
    phase_to_doy,
)


def orders(*stamps: str, customer: str = "C1", total: float = 10.0) -> pd.DataFrame:
    return pd.DataFrame({"customer_id": customer,
                         "order_id": [f"{customer}-{i}" for i in range(len(stamps))],
                         "ordered_at": pd.to_datetime(list(stamps), utc=True, format="mixed"),
                         "total": total})


@pytest.mark.parametrize(
    ("stamps", "visits", "median", "log_var_nan"),
    [
        (("2026-01-01 10:00",), 1, np.nan, True),
        (("2026-01-01 10:00", "2026-01-01 18:00"), 1, np.nan, True),  # same day: one visit
        (("2026-01-01", "2026-01-11", "2026-01-31"), 3, 15.0, False),
        (("2026-01-01", "2026-01-11"), 2, 10.0, True),
    ],
)
def test_visits_and_rhythm(stamps: tuple[str, ...], visits: int, median: float,
                           log_var_nan: bool) -> None:
    f = compute_features(orders(*stamps)).iloc[0]
    assert f["orders_count"] == len(stamps)
    assert f["order_days"] == visits
    assert (np.isnan(median) and np.isnan(f["median_interval_days"])) or \
        f["median_interval_days"] == median
    assert bool(np.isnan(f["gap_log_var"])) is log_var_nan
    assert set(FEATURE_COLUMNS) | set(PROFILE_COLUMNS) <= set(compute_features(
        orders(*stamps)).columns)


def test_last_visit_spend_and_totals() -> None:
    o = pd.concat([orders("2026-01-01", "2026-02-01"),
                   orders("2026-02-01 20:00", total=5.0).assign(order_id="x")])
    f = compute_features(o).iloc[0]
    assert f["total_spent"] == 25.0 and f["last_day_spent"] == 15.0


def test_seasons_are_one_point_per_year_and_cross_new_year() -> None:
    # 28 Dec, 2 Jan, 30 Dec, 4 Jan, 27 Dec: a window around New Year, three seasons
    f = compute_features(orders("2023-12-28", "2024-01-02", "2024-12-30", "2025-01-04",
                                "2025-12-27")).iloc[0]
    assert f["season_r"] > 0.95
    assert f["season_cycles"] == 3 and f["season_years"] == 3
    assert f["season_doy"] > 355 or f["season_doy"] < 5
    regular = compute_features(orders(*[f"2025-{m:02d}-15" for m in range(1, 13)])).iloc[0]
    assert regular["season_r"] < 0.3


def test_customers_are_independent_of_each_other_and_of_row_order() -> None:
    a = orders("2026-01-01", "2026-02-01", customer="A")
    b = orders("2025-05-01", customer="B")
    both = compute_features(pd.concat([b, a]).sample(frac=1, random_state=1))
    alone = compute_features(a)
    pd.testing.assert_frame_equal(both.loc[both["customer_id"] == "A"].reset_index(drop=True),
                                  alone)


def test_sku_features_with_quantities() -> None:
    o = orders("2026-01-01", "2026-01-31", "2026-03-01", "2026-03-01 12:00")
    lines = pd.DataFrame({"order": [0, 1, 2, 3, 0], "sku": ["B", "B", "B", "B", "M"],
                          "quantity": [1, 2, 1, 1, 1]})
    fs = compute_feature_set(o, lines)
    s = fs.skus.set_index("sku")
    assert list(fs.skus.columns) == SKU_COLUMNS
    assert s.loc["B", "days"] == 3 and s.loc["B", "quantity"] == 5
    assert s.loc["B", "last_quantity"] == 2  # two units on the last day
    assert s.loc["B", "gap_median"] == 29.5  # 30 and 29 days
    assert s.loc["B", "unit_gap_median"] == pytest.approx((30 / 1 + 29 / 2) / 2, abs=0.05)
    assert s.loc["M", "days"] == 1 and np.isnan(s.loc["M", "gap_median"])
    assert fs.daily["orders"].sum() == 4
    assert fs.daily["day"].tolist()[0] == dt.date(2026, 1, 1)


def test_group_median() -> None:
    g = np.array([0, 0, 0, 2, 2])
    v = np.array([3.0, 1.0, 2.0, 5.0, 1.5])
    assert group_median(g, v, 3).tolist()[0] == 2.0
    assert np.isnan(group_median(g, v, 3)[1])
    assert group_median(g, v, 3)[2] == 3.25


def test_empty() -> None:
    assert compute_features(orders()[:0]).empty


# -- ranges of customers (feature_parts) ----------------------------------------------------
#
# The ranges must reproduce the whole computation bit for bit, whatever their size. The
# reference below is the test oracle: the plain computation in one pass over everything, with
# lexsort for every sort (the engine's packed sorts give the same orders) and the arithmetic
# per row, kept readable rather than fast.

NIGHT = dt.date(2026, 11, 20)


def _ref_median(groups: np.ndarray, values: np.ndarray, n: int) -> np.ndarray:
    out = np.full(n, np.nan)
    if len(values) == 0:
        return out
    v = values[np.lexsort((values, groups))]
    counts = np.bincount(groups, minlength=n)
    starts = np.cumsum(counts) - counts
    has = counts > 0
    out[has] = (v[starts[has] + (counts[has] - 1) // 2] + v[starts[has] + counts[has] // 2]) / 2.0
    return out


def _ref_cycle_means(vcust: np.ndarray, cycle: np.ndarray, cos: np.ndarray, sin: np.ndarray,
                     n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    new = np.ones(len(cycle), bool)
    new[1:] = (vcust[1:] != vcust[:-1]) | (cycle[1:] != cycle[:-1])
    gidx = np.cumsum(new) - 1
    per = np.bincount(gidx)
    c = np.bincount(gidx, weights=cos) / per
    s = np.bincount(gidx, weights=sin) / per
    gcust = vcust[new]
    ncycles = np.bincount(gcust, minlength=n)
    with np.errstate(invalid="ignore"):
        return (np.bincount(gcust, weights=c, minlength=n) / ncycles,
                np.bincount(gcust, weights=s, minlength=n) / ncycles, ncycles)


def _ref_seasons(vcust: np.ndarray, vday: np.ndarray, n: int) -> dict[str, np.ndarray]:
    angle, cos, sin = day_phase(vday)
    c1, s1, _ = _ref_cycle_means(vcust, np.floor(vday / YEAR_DAYS).astype(np.int64), cos, sin,
                                 n)
    centre1 = np.arctan2(s1, c1)
    cycle = np.rint(vday / YEAR_DAYS - centre1[vcust] / TWO_PI).astype(np.int64)
    c, s, ncycles = _ref_cycle_means(vcust, cycle, cos, sin, n)
    centre = np.arctan2(s, c)
    inside = circular_distance_days(angle, centre[vcust]) <= SEASON_HALF_WIDTH
    visits = np.bincount(vcust, minlength=n)
    first_in_cycle = np.ones(len(cycle), bool)
    first_in_cycle[1:] = (vcust[1:] != vcust[:-1]) | (cycle[1:] != cycle[:-1])
    cyc_id = np.cumsum(first_in_cycle) - 1
    cyc_inside = np.bincount(cyc_id, weights=inside.astype(float)) > 0
    years = np.bincount(vcust[first_in_cycle], weights=cyc_inside.astype(float), minlength=n)
    return {"centre": centre, "doy": np.round(phase_to_doy(centre), 1), "r": np.hypot(c, s),
            "cycles": ncycles.astype(np.int64), "years": years.astype(np.int64),
            "share": np.bincount(vcust, weights=inside.astype(float), minlength=n) / visits}


def _ref_skus(lc: np.ndarray, ld: np.ndarray, ls: np.ndarray, qty: np.ndarray,
              centre: np.ndarray) -> dict[str, np.ndarray]:
    order = np.lexsort((ld, ls, lc))
    lc, ls, ld, qty = lc[order], ls[order], ld[order], qty[order]
    new = np.ones(len(lc), bool)
    new[1:] = (lc[1:] != lc[:-1]) | (ls[1:] != ls[:-1]) | (ld[1:] != ld[:-1])
    starts = np.flatnonzero(new)
    dq = np.add.reduceat(qty, starts).astype(np.int64)
    dc, ds, dd = lc[new], ls[new], ld[new]
    gnew = np.ones(len(dc), bool)
    gnew[1:] = (dc[1:] != dc[:-1]) | (ds[1:] != ds[:-1])
    g = np.cumsum(gnew) - 1
    ng = int(g[-1]) + 1
    days = np.bincount(g, minlength=ng)
    gends = np.cumsum(days)
    gstarts = gends - days
    same = g[1:] == g[:-1]
    gap = (dd[1:] - dd[:-1]).astype(float)[same]
    with np.errstate(divide="ignore", invalid="ignore"):
        unit_gap = gap / dq[:-1][same]
    gg = g[1:][same]
    angle, cos, sin = day_phase(dd)
    inside = circular_distance_days(angle, centre[dc]) <= SEASON_HALF_WIDTH
    return {
        "customer_id": dc[gnew].astype(np.int64), "sku": ds[gnew].astype(np.int64),
        "days": days.astype(np.int64), "first_day": dd[gstarts].astype(np.int64),
        "last_day": dd[gends - 1].astype(np.int64),
        "quantity": np.bincount(g, weights=dq, minlength=ng).astype(np.int64),
        "last_quantity": dq[gends - 1], "gap_median": _ref_median(gg, gap, ng),
        "unit_gap_median": _ref_median(gg, np.round(unit_gap * 10.0), ng) / 10.0,
        "phase_cos": np.bincount(g, weights=cos, minlength=ng),
        "phase_sin": np.bincount(g, weights=sin, minlength=ng),
        "season_days": np.bincount(g, weights=inside.astype(float), minlength=ng
                                   ).astype(np.int64),
    }


def _ref_season_sku(skus: dict[str, np.ndarray], n: int) -> np.ndarray:
    out = np.full(n, -1, np.int64)
    rows = np.flatnonzero(skus["season_days"] > 0)
    if not len(rows):
        return out
    c, sd, sk = skus["customer_id"][rows], skus["season_days"][rows], skus["sku"][rows]
    order = np.lexsort((sk, sd.max() - sd, c))
    c, sk = c[order], sk[order]
    first = np.ones(len(c), bool)
    first[1:] = c[1:] != c[:-1]
    out[c[first]] = sk[first]
    return out


def _reference(orders: pd.DataFrame, lines: pd.DataFrame | None) -> FeatureColumns:
    if orders.empty:
        return FeatureColumns(pa.array([], pa.string()), {}, pa.array([], pa.string()),
                              {"days": np.zeros(0, np.int64)}, {})
    ids = orders["customer_id"]
    if isinstance(ids.dtype, pd.CategoricalDtype) and \
            ids.dtype.categories.is_monotonic_increasing:
        codes = ids.cat.codes.to_numpy()
        present = np.bincount(codes, minlength=len(ids.dtype.categories)) > 0
        codes = (np.cumsum(present) - 1).astype(np.int32)[codes]
        names = pa.array(ids.dtype.categories.to_numpy(dtype=object)[present], pa.string())
    else:
        codes, uniq = pd.factorize(ids.astype(str), sort=True)
        codes = codes.astype(np.int32)
        names = pa.array(np.asarray(uniq, dtype=object), pa.string())
    n = len(names)
    ts = orders["ordered_at"].dt.tz_convert("UTC").dt.as_unit("us").array.asi8
    total = orders["total"].to_numpy(dtype=float)
    day = (ts // 86_400_000_000).astype(np.int32)
    order = np.lexsort((day, codes))
    cust, ts, total, day = codes[order], ts[order], total[order], day[order]
    count = np.bincount(cust, minlength=n)
    starts = np.cumsum(count) - count
    spent = np.bincount(cust, weights=total, minlength=n)
    new_day = np.ones(len(day), bool)
    new_day[1:] = (cust[1:] != cust[:-1]) | (day[1:] != day[:-1])
    vcust, vday = cust[new_day], day[new_day]
    vspent = np.bincount(np.cumsum(new_day) - 1, weights=total)
    visits = np.bincount(vcust, minlength=n)
    same = vcust[1:] == vcust[:-1]
    gaps = (vday[1:] - vday[:-1])[same].astype(float)
    gcust = vcust[1:][same]
    ngaps = np.bincount(gcust, minlength=n)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_gap = np.bincount(gcust, weights=gaps, minlength=n) / ngaps
        logs = np.log(gaps)
        log_mean = np.bincount(gcust, weights=logs, minlength=n) / ngaps
        dev = logs - log_mean[gcust]
        log_var = np.bincount(gcust, weights=dev * dev, minlength=n) / (ngaps - 1)
    log_var[ngaps < 2] = np.nan
    season = _ref_seasons(vcust, vday, n)
    customers = {
        "orders_count": count.astype(np.int64),
        "first_order_at": np.minimum.reduceat(ts, starts),
        "last_order_at": np.maximum.reduceat(ts, starts),
        "total_spent": spent, "avg_order_value": spent / count,
        "mean_interval_days": mean_gap, "median_interval_days": _ref_median(gcust, gaps, n),
        "order_days": visits.astype(np.int64), "gap_log_mean": log_mean,
        "gap_log_var": log_var, "last_day_spent": vspent[np.cumsum(visits) - 1],
        "season_doy": season["doy"], "season_r": season["r"],
        "season_cycles": season["cycles"], "season_years": season["years"],
        "season_share": season["share"], "season_sku": np.full(n, -1, np.int64),
    }
    d0 = int(day.min())
    per_day = np.bincount(day - d0)
    has_day = np.flatnonzero(per_day)
    daily = {"day": has_day + d0, "orders": per_day[has_day].astype(np.int64),
             "revenue": np.bincount(day - d0, weights=total)[has_day]}
    sku_ids = pa.array([], pa.string())
    skus: dict[str, np.ndarray] = {"days": np.zeros(0, np.int64)}
    if lines is not None and len(lines):
        inv = np.empty(len(order), np.int64)
        inv[order] = np.arange(len(order))
        line_order = inv[lines["order"].to_numpy()]
        if isinstance(lines["sku"].dtype, pd.CategoricalDtype) and \
                lines["sku"].cat.categories.is_monotonic_increasing:
            sku_codes = lines["sku"].cat.codes.to_numpy().astype(np.int32)
            sku_ids = pa.array(lines["sku"].cat.categories.to_numpy(dtype=object), pa.string())
        else:
            sku_codes, uniq = pd.factorize(lines["sku"].astype(str), sort=True)
            sku_ids = pa.array(np.asarray(uniq, dtype=object), pa.string())
        skus = _ref_skus(cust[line_order], day[line_order], sku_codes,
                         lines["quantity"].to_numpy(), season["centre"])
        customers["season_sku"] = _ref_season_sku(skus, n)
    return FeatureColumns(names, customers, sku_ids, skus, daily)


def assert_same(got: FeatureColumns, want: FeatureColumns) -> None:
    """Bit for bit: the same ids, the same columns with the same dtypes and bytes."""
    assert got.customer_ids.equals(want.customer_ids)
    assert got.sku_ids.equals(want.sku_ids)
    for name in ("customers", "skus", "daily"):
        a, b = getattr(got, name), getattr(want, name)
        assert list(a) == list(b), name
        for k in b:
            assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, (name, k)
            assert a[k].tobytes() == b[k].tobytes(), (name, k)


@pytest.fixture(scope="module")
def demo_frames(demo_shops: DemoShops) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A 3,000-customer demo shop as the reader returns it (the ingest's two frames)."""
    from tend.shop.read import read_history

    history = read_history(demo_shops(customers=3000, seed=11, as_of=NIGHT), NIGHT)
    return history.orders.drop(columns="order_id"), history.lines


def _shuffled(orders: pd.DataFrame, lines: pd.DataFrame, *, plain: bool
              ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The same history in another row order (rows no longer by customer), with plain string
    ids and microsecond times (``plain``) or categories that include customers without
    orders and nanosecond times."""
    rng = np.random.default_rng(3)
    perm = rng.permutation(len(orders))
    o = orders.iloc[perm].reset_index(drop=True)
    inv = np.empty(len(perm), np.int64)
    inv[perm] = np.arange(len(perm))
    ln = lines.assign(order=inv[lines["order"].to_numpy()]).iloc[
        rng.permutation(len(lines))].reset_index(drop=True)
    if plain:
        o["customer_id"] = o["customer_id"].astype(str)
        o["ordered_at"] = o["ordered_at"].dt.as_unit("us")
        ln["sku"] = ln["sku"].astype(str)
    else:
        ids = o["customer_id"].astype(str)
        cats = sorted({*ids, "A-none", "C0000000", "Z-none"})
        o["customer_id"] = pd.Categorical(ids, categories=cats)
        o["ordered_at"] = o["ordered_at"].dt.as_unit("ns")
    return o, ln


def _late(orders: pd.DataFrame, lines: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The reader's rows with three customers' orders and their lines moved to the end, as
    a shop whose ids do not sort like its rows ("C1000000" before "C100001")."""
    ids = orders["customer_id"].astype(str).to_numpy()
    moved = np.isin(ids, [ids[0], ids[len(ids) // 2], ids[-1]])
    perm = np.concatenate([np.flatnonzero(~moved), np.flatnonzero(moved)])
    inv = np.empty(len(perm), np.int64)
    inv[perm] = np.arange(len(perm))
    lo = inv[lines["order"].to_numpy()]
    ln = lines.assign(order=lo).iloc[np.argsort(lo, kind="stable")].reset_index(drop=True)
    return orders.iloc[perm].reset_index(drop=True), ln


def _by_time(orders: pd.DataFrame, lines: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The rows of a shop that writes orders as they come: by time, lines after their order."""
    perm = np.argsort(orders["ordered_at"].to_numpy(), kind="stable")
    inv = np.empty(len(perm), np.int64)
    inv[perm] = np.arange(len(perm))
    lo = inv[lines["order"].to_numpy()]
    ln = lines.assign(order=lo).iloc[np.argsort(lo, kind="stable")].reset_index(drop=True)
    return orders.iloc[perm].reset_index(drop=True), ln


def _edge_frames() -> tuple[pd.DataFrame, pd.DataFrame]:
    """Few customers with everything unusual: several orders a day, one order with lines on
    the same product twice, zero and negative quantities, a customer without lines."""
    o = pd.concat([
        orders("2024-12-30", "2025-01-02", "2025-01-02 18:00", "2025-12-29", "2026-01-03",
               customer="A", total=10.5),
        orders("2025-03-01", "2025-03-09", "2025-04-01", customer="B", total=3.25),
        orders("2026-02-02", customer="C", total=7.0),
        orders("2026-02-03", "2026-02-05", customer="D", total=1.0),
    ], ignore_index=True).drop(columns="order_id")
    lines = pd.DataFrame({
        "order": [0, 0, 1, 2, 2, 3, 4, 5, 6, 7, 5],
        "sku": ["X", "X", "X", "Y", "X", "X", "Y", "Z", "Z", "Z", "Y"],
        "quantity": [1, 2, 1, 3, 1, 2, 1, 0, 2, -1, 1],
    })
    return o, lines


def _parts(orders: pd.DataFrame, lines: pd.DataFrame | None, part_lines: int
           ) -> list[FeatureColumns]:
    frames: list[pd.DataFrame | None] = [orders.copy(), None if lines is None else lines.copy()]
    parts = list(feature_parts(frames, part_lines=part_lines))
    assert frames == [None, None]  # the references were handed over
    return parts


def _check_ranges(parts: list[FeatureColumns], lines: pd.DataFrame | None, orders: pd.DataFrame,
                  part_lines: int) -> None:
    """Consecutive ranges of ascending ids, each of at most ``part_lines`` lines unless it is a
    single customer, the daily totals in the first only, the whole catalogue in each."""
    ids = [i for p in parts for i in p.customer_ids.to_pylist()]
    assert ids == sorted(set(ids))
    per_customer = (orders["customer_id"].astype(str).to_numpy()[lines["order"].to_numpy()]
                    if lines is not None else orders["customer_id"].astype(str).to_numpy())
    counts = pd.Series(per_customer).value_counts()
    for k, p in enumerate(parts):
        assert len(p) >= 1
        assert (p.daily != {}) == (k == 0)
        assert p.sku_ids.equals(parts[0].sku_ids)
        held = int(counts.reindex(p.customer_ids.to_pylist(), fill_value=0).sum())
        assert held <= part_lines or len(p) == 1
        if len(p.skus["days"]):
            assert p.skus["customer_id"].max() < len(p)


@pytest.mark.parametrize("part_lines", [1, 7, 5_000, 10**9])
@pytest.mark.parametrize("variant", ["reader", "late", "time", "shuffled", "plain"])
def test_parts_put_together_are_the_whole_computation(
        demo_frames: tuple[pd.DataFrame, pd.DataFrame], variant: str, part_lines: int) -> None:
    orders, lines = demo_frames
    if variant == "late":
        orders, lines = _late(orders, lines)
    elif variant == "time":
        orders, lines = _by_time(orders, lines)
    elif variant != "reader":
        orders, lines = _shuffled(orders, lines, plain=variant == "plain")
    want = _reference(orders, lines)
    parts = _parts(orders, lines, part_lines)
    if part_lines == 10**9:
        assert len(parts) == 1
    _check_ranges(parts, lines, orders, part_lines)
    assert_same(concat_parts(parts), want)


@pytest.mark.parametrize("part_lines", [1, 2, 4, 100])
def test_parts_of_unusual_histories(part_lines: int) -> None:
    orders, lines = _edge_frames()
    with np.errstate(invalid="ignore", divide="ignore"):
        want = _reference(orders, lines)
    parts = _parts(orders, lines, part_lines)
    _check_ranges(parts, lines, orders, part_lines)
    assert_same(concat_parts(parts), want)
    # without lines, ranges are counted in orders
    parts = _parts(orders, None, part_lines)
    _check_ranges(parts, None, orders, part_lines)
    assert_same(concat_parts(parts), _reference(orders, None))


def test_consume_frames_is_the_whole_computation(
        demo_frames: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    orders, lines = demo_frames
    frames: list[pd.DataFrame | None] = [orders.copy(), lines.copy()]
    assert_same(consume_frames(frames), _reference(orders, lines))
    assert frames == [None, None]


def test_one_customer_with_more_lines_than_a_range_is_a_range_of_its_own() -> None:
    o = pd.concat([orders("2026-01-01", "2026-02-01", customer="A"),
                   orders(*[f"2025-{m:02d}-{d:02d}" for m in range(1, 13) for d in (3, 17)],
                          customer="B"),
                   orders("2026-03-01", customer="C")], ignore_index=True)
    lines = pd.DataFrame({"order": np.repeat(np.arange(len(o)), 3),
                          "sku": np.tile(["M", "N", "M"], len(o)), "quantity": 1})
    parts = _parts(o, lines, 10)
    assert [p.customer_ids.to_pylist() for p in parts] == [["A"], ["B"], ["C"]]
    _check_ranges(parts, lines, o, 10)
    assert_same(concat_parts(parts), _reference(o, lines))


def test_no_orders_is_one_empty_part() -> None:
    parts = _parts(orders()[:0], None, 10)
    assert len(parts) == 1 and len(parts[0]) == 0
    assert_same(parts[0], _reference(orders()[:0], None))
    assert_same(consume_frames([orders()[:0], None]), parts[0])


def test_remainder_of_the_season_distances_is_numpys() -> None:
    from tend.features.customer_range import _mod_two_pi

    edge = np.array([0.0, -0.0, np.pi, np.nextafter(TWO_PI, 0), TWO_PI,
                     np.nextafter(TWO_PI, 10), 3 * np.pi, np.nextafter(2 * TWO_PI, 0)])
    x = np.concatenate([edge, np.random.default_rng(1).uniform(0, 2 * TWO_PI, 10_000)])
    got = x.copy()
    _mod_two_pi(got)
    want = np.mod(x, TWO_PI)
    assert np.array_equal(np.abs(got - np.pi), np.abs(want - np.pi))
    for outside in (np.array([2 * TWO_PI, 1.0]), np.array([-1.0, 1.0]), np.array([np.nan])):
        got = outside.copy()
        _mod_two_pi(got)
        assert np.array_equal(got, np.mod(outside, TWO_PI), equal_nan=True)
