"""``tend reconcile``: list 'unknown' messages, mark them sent or release them, risks stated."""

from __future__ import annotations

import datetime as dt

import pandas as pd
import pytest
from sqlalchemy import select

from tend.cli import main
from tend.store import ledger
from tend.store.db import connect
from tend.store.tables import contact_ledger

NIGHT = dt.date(2026, 11, 20)


def unknown_night(url: str, customers: int = 3) -> list[str]:
    """A night whose messages a crash left 'unknown'."""
    w = pd.DataFrame([{"customer_id": f"C{i}", "program": "winback", "occurrence": "e",
                       "kind": "marketing", "priority": 50, "score": 0.5, "cooldown_days": 90,
                       "context": "{}"} for i in range(customers)])
    with connect(url).begin() as conn:
        out = ledger.claim(conn, w, as_of=NIGHT, run_id="r", caps=(), batch_size=2).frame
        ids = out["message_id"].tolist()
        ledger.mark_sending(conn, ids)
        for b in (0, 1):
            ledger.recover_interrupted(conn, NIGHT, b)
    return ids


def statuses(url: str) -> dict[str, str]:
    with connect(url).connect() as conn:
        return dict(conn.execute(select(contact_ledger.c.message_id,
                                        contact_ledger.c.status)).all())


def test_lists_then_releases_one_batch_with_the_risk_and_the_send_command(
        store_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    unknown_night(store_url)
    assert main(["summary", "--store", store_url, "--as-of", str(NIGHT)]) == 0
    summary = capsys.readouterr().out.splitlines()
    assert summary[0].startswith(f"WARNING: 3 message(s) of night {NIGHT} are 'unknown'")
    assert f"tend reconcile --as-of {NIGHT} --release" in "\n".join(summary[:5])
    assert main(["reconcile", "--store", store_url]) == 0
    out = capsys.readouterr().out
    assert f"{NIGHT} batch 0: 2 unknown" in out and f"{NIGHT} batch 1: 1 unknown" in out
    assert main(["reconcile", "--store", store_url, "--as-of", str(NIGHT), "--batch", "1",
                 "--release"]) == 0
    out = capsys.readouterr().out
    assert "1 unknown message(s)" in out and "second copy" in out
    assert f"tend send --as-of {NIGHT} --batch 1" in out
    assert sorted(statuses(store_url).values()) == ["claimed", "unknown", "unknown"]
    assert main(["reconcile", "--store", store_url, "--as-of", str(NIGHT), "--mark-sent"]) == 0
    assert "count against caps" in capsys.readouterr().out
    assert sorted(statuses(store_url).values()) == ["claimed", "sent", "sent"]
    assert main(["reconcile", "--store", store_url, "--as-of", str(NIGHT)]) == 0
    assert "no 'unknown' messages" in capsys.readouterr().out


def test_an_action_needs_a_night_and_actions_exclude_each_other(
        store_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["reconcile", "--store", store_url, "--release"]) == 2
    assert capsys.readouterr().err.startswith("tend: --as-of is required")
    with pytest.raises(SystemExit):
        main(["reconcile", "--store", store_url, "--as-of", str(NIGHT), "--release",
              "--mark-sent"])


def test_help_states_the_risks(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["reconcile", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "second copy" in out and "--not-sent" in out
