"""The deferred table's own operations, on SQLite and PostgreSQL."""

from __future__ import annotations

import numpy as np
import pandas as pd

from tend.store import connect, deferral


def _waiting(*customers: str) -> dict[str, np.ndarray]:
    n = len(customers)

    def text(value: str) -> np.ndarray:
        return np.full(n, value, dtype=object)

    return {
        "customer_id": np.array(customers, dtype=object), "program": text("winback"),
        "occurrence": text("2026-11"), "kind": text("marketing"),
        "priority": np.full(n, 5, dtype=np.int64), "score": np.full(n, 0.5),
        "cooldown_days": np.full(n, 90, dtype=np.int64), "valid_until": text("2026-12-20"),
        "last_order_date": text("2026-01-02"), "context": text("{}"),
        "first_deferred_on": text("2026-12-01"), "last_reason": text("capped: weekly cap"),
    }


def test_waiting_candidates_are_written_read_and_forgotten_by_key(store_url: str) -> None:
    engine = connect(store_url)
    with engine.begin() as conn:
        deferral.forget(conn, pd.DataFrame({k: ["C1"] for k in deferral.KEY}))  # nothing waits
        deferral.write(conn, _waiting("C1", "C2", "C3"))
    with engine.connect() as conn:
        rows = deferral.read_all(conn)
    assert sorted(rows["customer_id"]) == ["C1", "C2", "C3"]
    assert set(rows.columns) == set(_waiting("x"))
    assert str(rows["valid_until"].iloc[0])[:10] == "2026-12-20"

    gone = pd.DataFrame({"customer_id": ["C1", "C3", "C9"], "program": ["winback"] * 3,
                         "occurrence": ["2026-11", "2026-10", "2026-11"]})
    with engine.begin() as conn:
        deferral.forget(conn, gone)
    with engine.connect() as conn:
        # C3's occurrence differs, so only C1 is forgotten; C9 never waited.
        assert sorted(deferral.read_all(conn)["customer_id"]) == ["C2", "C3"]
