"""The ``tend`` command, driven as a user would (in-process, real files)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from tend.cli import main

NIGHT = "2026-11-20"


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    monkeypatch.setenv("TEND_VAR_DIR", str(tmp_path))
    for var in ("TEND_SHOP_URL", "TEND_STORE_URL", "TEND_DELIVERY", "TEND_OUTBOX_DIR"):
        monkeypatch.delenv(var, raising=False)
    return tmp_path


def test_demo_then_night_then_why(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo-data", "--customers", "150", "--seed", "5", "--as-of", NIGHT]) == 0
    assert main(["night", "--as-of", NIGHT]) == 0
    out = capsys.readouterr().out
    assert "Tend night 2026-11-20" in out
    sent = int(next(line.split()[-1] for line in out.splitlines()
                    if line.strip().startswith("sent ")).replace(",", ""))
    assert sent == len(list((env / "outbox").glob("*.eml"))) > 0

    assert main(["summary", "--as-of", NIGHT]) == 0
    assert f"sent        {sent:,}" in capsys.readouterr().out
    assert main(["why", "C000001", "--as-of", NIGHT]) == 0
    assert "customer C000001" in capsys.readouterr().out


def test_programs_check(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["programs", "check"]) == 0
    out = capsys.readouterr().out
    assert "9 program(s) OK" in out
    assert "1 per 3 days, 2 per 7 days, 4 per 30 days" in out
    assert any(line.startswith("winback ") and line.rstrip().endswith("yes")
               for line in out.splitlines())


def test_tend_errors_exit_2_with_one_line(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "--as-of", NIGHT]) == 2
    err = capsys.readouterr().err
    assert err.startswith("tend: ") and "tend migrate" in err


def test_bad_dates_are_refused_by_the_parser(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["summary", "--as-of", "20/11/2026"])
    assert exc.value.code == 2
    assert "use YYYY-MM-DD" in capsys.readouterr().err
    assert dt.date.fromisoformat(NIGHT)


def test_forget_from_a_file_prints_what_it_erased(env: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo-data", "--customers", "150", "--seed", "5", "--as-of", NIGHT]) == 0
    assert main(["night", "--as-of", NIGHT]) == 0
    capsys.readouterr()
    mails = sorted((env / "outbox").glob("*.eml"))
    to = next(line for line in mails[0].read_text().splitlines() if line.startswith("To:"))
    from tend.store.db import connect
    from tend.store.tables import contact_ledger

    with connect(f"sqlite:///{env / 'store.db'}").connect() as conn:
        customer = conn.execute(contact_ledger.select().where(
            contact_ledger.c.message_id == mails[0].stem)).mappings().one()["customer_id"]
    ids = env / "erase.txt"
    ids.write_text(f"# erasure requests\n{customer}\n\n")
    assert main(["forget", "--file", str(ids)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"customer {customer}: erased ") and "outbox files 1" in out
    assert not mails[0].exists()
    assert not any(to.split("<")[-1].rstrip(">") in p.read_text()
                   for p in (env / "outbox").glob("*.eml"))


def test_forget_needs_customers(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["forget"]) == 2
    assert "name the customers to forget" in capsys.readouterr().err
    assert main(["forget", "--file", str(env / "missing.txt")]) == 2
    assert "cannot read the list of customers" in capsys.readouterr().err
