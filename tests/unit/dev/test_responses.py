"""The demo's truth for lift: simulated answers whose uplift the report's interval recovers.

Fast: the simulation runs at the level of the attribution inputs (exposed units, the holdout's
own draw, the simulator's orders), through the same attribution and lift code the report uses.
The end-to-end run through ``tend night`` is in tests/unit/results/test_report.py.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest

from tend.dev.responses import DEMO_TRUTH, Uplift, draw_responses
from tend.programs.caps import held_out
from tend.results import attribution, lift, stats

NIGHT = dt.date(2026, 10, 5)
PRICES = pd.DataFrame({"sku": ["A", "B", "C"], "price": [12.0, 40.0, 95.0]})
WINDOWS = {"winback": 7, "cross_sell": 7}
#: Eligible customers per program and night; 10 % are held out (programs.yaml's share).
ELIGIBLE = 3000


def exposed(program: str, share: float = 0.1) -> pd.DataFrame:
    """One night's eligible customers of ``program``, split by the planner's own holdout draw
    (customers of their own: one program's answers must not land in another's windows)."""
    ids = pd.Series([f"{program}-{i:06d}" for i in range(ELIGIBLE)])
    out = held_out(ids, program, NIGHT, share)
    return pd.DataFrame({"customer_id": ids, "program": program, "night": NIGHT,
                         "group": np.where(out, "held_out", "contacted"),
                         "message_id": [None if h else f"m-{program}-{c}"
                                        for c, h in zip(ids, out, strict=True)]})


EXPOSED = pd.concat([exposed(p) for p in DEMO_TRUTH], ignore_index=True)


UNITS = attribution.units(EXPOSED)


def measured(seed: int) -> pd.DataFrame:
    orders = draw_responses(UNITS, DEMO_TRUTH, WINDOWS, seed=seed, prices=PRICES)
    attributed = attribution.attribute(UNITS, orders, WINDOWS,
                                       until=NIGHT + dt.timedelta(days=30))
    return lift.summarise(attributed).set_index("program")


def covered(seed: int) -> dict[str, bool]:
    """Per program, whether the report's interval covers the simulated uplift for ``seed``
    (also run over 2,000 seeds by bench/lift_coverage.py)."""
    figures = measured(seed)
    out = {}
    for program, truth in DEMO_TRUTH.items():
        row = figures.loc[program]
        assert row["note"] == ""
        out[program] = stats.Interval(row["lift"], row["lift_low"],
                                      row["lift_high"]).covers(truth.uplift)
    return out


def test_the_interval_covers_the_true_uplift() -> None:
    """Seeds 0-59, each program: the interval covers the simulated uplift in at least 54 of
    60 (a chain whose true coverage is 95 % falls below that with probability 0.03; one that
    misses the truth systematically, far more often).

    The issue asks for 19 of 20 seeds; a calibrated 95 % interval reaches that only with
    probability 0.74 per program (0.95^20 + 20 x 0.05 x 0.95^19), so 20 seeds cannot tell a
    sound chain from a faulty one; the calibration of the interval itself is measured over
    2,000 draws below."""
    hits = {p: 0 for p in DEMO_TRUTH}
    for seed in range(60):
        for program, hit in covered(seed).items():
            hits[program] += hit
    assert all(n >= 54 for n in hits.values()), hits


def test_measured_rates_are_the_simulated_rates() -> None:
    figures = [measured(seed) for seed in range(5)]
    for program, truth in DEMO_TRUTH.items():
        contacted = np.mean([f.loc[program, "response_rate"] for f in figures])
        held = np.mean([f.loc[program, "holdout_response_rate"] for f in figures])
        assert contacted == pytest.approx(truth.contacted, abs=0.015)
        assert held == pytest.approx(truth.base, abs=0.03)


@pytest.mark.parametrize("truth", [Uplift(0.08, 0.18), Uplift(0.12, 0.20), Uplift(0.02, 0.02)])
def test_newcombe_coverage_is_close_to_95_percent(truth: Uplift) -> None:
    """Calibration over 2,000 simulated experiments of the demo's size (2,700 contacted, 300
    held out): the share of intervals that cover the truth is 95 % within sampling error
    (± 1.5 points is over three standard errors)."""
    rng = np.random.default_rng(20261206)
    n1, n2, runs = 2700, 300, 2000
    x1 = rng.binomial(n1, truth.contacted, runs)
    x2 = rng.binomial(n2, truth.base, runs)
    hits = [stats.rate_difference(int(a), n1, int(b), n2).covers(truth.uplift)
            for a, b in zip(x1, x2, strict=True)]
    assert np.mean(hits) == pytest.approx(0.95, abs=0.015)


def test_draws_are_seeded_per_customer() -> None:
    units = UNITS
    a = draw_responses(units, DEMO_TRUTH, WINDOWS, seed=3, prices=PRICES)
    b = draw_responses(units.iloc[::-1], DEMO_TRUTH, WINDOWS, seed=3, prices=PRICES)
    c = draw_responses(units, DEMO_TRUTH, WINDOWS, seed=4, prices=PRICES)
    key = ["order_id", "ordered_at", "total"]
    assert a.sort_values("order_id")[key].values.tolist() == \
        b.sort_values("order_id")[key].values.tolist()
    assert set(a["order_id"]) != set(c["order_id"])
    days = (pd.to_datetime(a["ordered_at"]).dt.date - NIGHT).map(lambda d: d.days)
    assert days.between(1, 7).all()


def test_a_responding_contact_redeems_its_own_voucher_sometimes() -> None:
    units = UNITS
    codes = {m: f"WB-{m[-4:]}" for m in units["message_id"].dropna()}
    orders = draw_responses(units, {"winback": Uplift(0.0, 1.0)}, WINDOWS, seed=1,
                            prices=PRICES, codes=codes, redeem_share=0.5)
    contacted = units.loc[(units["program"] == "winback") & (units["group"] == "contacted")]
    assert len(orders) == len(contacted)
    share = orders["discount_code"].notna().mean()
    assert 0.45 < share < 0.55
    mine = dict(zip(contacted["customer_id"], contacted["message_id"], strict=True))
    redeemed = orders.dropna(subset=["discount_code"])
    assert all(code == codes[mine[c]] for c, code in zip(redeemed["customer_id"],
                                                          redeemed["discount_code"],
                                                          strict=True))


def test_welch_revenue_interval_on_the_demos_prices_is_close_but_narrow() -> None:
    """What docs/results.md says of the revenue interval: with the demo's lumpy prices and 300
    held out, Welch's 95 % interval covers the true revenue difference about 92 % of the time
    (too narrow: a few dozen held-out buyers rarely include a big-ticket order)."""
    from tend.dev.demo import _CATALOGUE

    prices = np.array([float(p[3]) for p in _CATALOGUE])
    truth = DEMO_TRUTH["winback"]
    rng = np.random.default_rng(20261206)
    hits = []
    for _ in range(1000):
        a = np.where(rng.random(2700) < truth.contacted, rng.choice(prices, 2700), 0.0)
        b = np.where(rng.random(300) < truth.base, rng.choice(prices, 300), 0.0)
        interval = stats.mean_difference(a, b)
        assert interval is not None
        hits.append(interval.covers(truth.uplift * prices.mean()))
    assert 0.88 <= np.mean(hits) <= 0.95
