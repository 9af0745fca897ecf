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


def test_a_sandbox_night_says_it_was_a_rehearsal(env: Path, monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """Through SendGrid's sandbox (the local stand-in) nothing is delivered and every message
    goes back to 'claimed': the summary says so, not that a send task failed."""
    from tend.dev.fake_sendgrid import run_in_thread

    assert main(["demo-data", "--customers", "150", "--seed", "5", "--as-of", NIGHT]) == 0
    with run_in_thread(api_key="SG.test") as fake:
        for name, value in (("TEND_DELIVERY", "sendgrid"), ("TEND_SENDGRID_URL", fake.url),
                            ("TEND_SENDGRID_API_KEY", "SG.test"),
                            ("TEND_SENDGRID_SANDBOX", "true")):
            monkeypatch.setenv(name, value)
        capsys.readouterr()
        assert main(["night", "--as-of", NIGHT]) == 0
        assert fake.fake.accepted_counts() == {}
    out = capsys.readouterr().out
    assert f"Tend night {NIGHT} (rehearsal: SendGrid sandbox, nothing delivered)" in out
    assert "this run was a rehearsal (SendGrid sandbox)" in out
    assert "a send task failed" not in out


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
    for far in ("9999-12-31", "0001-01-01"):
        with pytest.raises(SystemExit) as exc:
            main(["ingest", "--as-of", far])
        assert exc.value.code == 2
        assert "is outside 1970-01-01..2199-12-31" in capsys.readouterr().err


# --- clear errors in every verb (one line, exit 2, the fix) ----------------------------------


def test_every_argument_of_every_verb_has_help() -> None:
    import argparse

    from tend.cli import build_parser

    missing = []

    def walk(parser: argparse.ArgumentParser, path: str) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    walk(sub, f"{path} {name}")
            elif not isinstance(action, argparse._HelpAction) and not action.help:
                missing.append(f"{path} {'/'.join(action.option_strings) or action.dest}")

    walk(build_parser(), "tend")
    assert missing == []


def _one_line_error(capsys: pytest.CaptureFixture[str], argv: list[str], *fix: str) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("tend: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    for words in fix:
        assert words in err, err
    return err


@pytest.mark.parametrize(("url", "fix"), [
    ("postgresql://postgres@127.0.0.1:1/x", "check that it is running"),
    ("mysql://u@localhost/x", "is not installed (MySQLdb)"),
    ("postgresql+asyncpg://u@localhost/x", "is not installed (asyncpg)"),
    ("nosuch://u@localhost/x", "use sqlite:///"),
    ("not a url", "is not a SQLAlchemy URL"),
])
def test_a_database_that_cannot_be_used_is_one_line(
        env: Path, capsys: pytest.CaptureFixture[str], url: str, fix: str) -> None:
    for argv in (["summary", "--store", url, "--as-of", NIGHT],
                 ["why", "--store", url, "C1"],
                 ["ingest", "--db", url, "--store", url, "--as-of", NIGHT],
                 ["migrate", "--store", url],
                 ["load-csv", "--db", url, str(env)]):
        _one_line_error(capsys, argv)
    _one_line_error(capsys, ["summary", "--store", url, "--as-of", NIGHT], fix)


def test_a_sqlite_file_in_a_missing_folder_is_refused_not_created(
        env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{env / 'typo' / 'store.db'}"
    _one_line_error(capsys, ["migrate", "--store", url], "does not exist", "mkdir -p")
    _one_line_error(capsys, ["ingest", "--db", url, "--as-of", NIGHT], "no shop database at")
    assert not (env / "typo").exists()


def test_a_shop_that_is_not_there_is_refused_not_created(
        env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["migrate"]) == 0
    shop = env / "no-shop.db"
    _one_line_error(capsys, ["ingest", "--db", f"sqlite:///{shop}", "--as-of", NIGHT],
                    f"no shop database at {shop}", "tend demo-data")
    assert not shop.exists()


def test_an_output_file_is_checked_before_the_work(env: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """--out names a file whose folder exists or can be made, or the verb stops at once
    (exit 2) saying so, before it computes anything."""
    assert main(["migrate"]) == 0
    (env / "a-file").touch()
    for argv in (["report", "--from", NIGHT, "--to", NIGHT],
                 ["suppressions", "export"], ["vouchers", "export", "--as-of", NIGHT]):
        for out, says in ((env / "a-file" / "x.csv", "cannot make the folder"),
                          (env, "is a folder"), (Path("/proc/tend-x.csv"), "cannot write")):
            with pytest.raises(SystemExit) as exc:
                main([*argv, "--out", str(out)])
            assert exc.value.code == 2
            assert says in capsys.readouterr().err
    new = env / "reports" / "r.csv"
    assert main(["report", "--from", NIGHT, "--to", NIGHT, "--out", str(new)]) == 0
    assert new.read_text().startswith("Tend results")


def test_an_unmigrated_store_says_tend_migrate(env: Path, capsys: pytest.CaptureFixture[str]
                                              ) -> None:
    missing = f"sqlite:///{env / 'nothing.db'}"
    for argv in (["summary", "--store", missing, "--as-of", NIGHT],
                 ["why", "--store", missing, "C1"],
                 ["send", "--store", missing, "--as-of", NIGHT, "--batch", "1"]):
        _one_line_error(capsys, argv, "tend migrate")
    assert not (env / "nothing.db").exists()
    (env / "empty.db").touch()
    _one_line_error(capsys, ["summary", "--store", f"sqlite:///{env / 'empty.db'}",
                             "--as-of", NIGHT], "tend migrate")


def test_a_night_or_batch_that_does_not_exist_is_an_error_not_zeros(
        env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo-data", "--customers", "80", "--seed", "5", "--as-of", NIGHT]) == 0
    assert main(["night", "--as-of", NIGHT]) == 0
    capsys.readouterr()
    _one_line_error(capsys, ["summary", "--as-of", "2026-11-19"], "no night 2026-11-19",
                    f"latest: {NIGHT}")
    _one_line_error(capsys, ["send", "--as-of", NIGHT, "--batch", "99"], "no batch 99",
                    "its batches are 0")
    _one_line_error(capsys, ["send", "--as-of", "2026-11-19", "--batch", "0"], "tend plan")
    assert main(["summary", "--as-of", NIGHT]) == 0


def test_an_unknown_locale_is_refused_not_rendered_in_english(
        env: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    _one_line_error(capsys, ["preview", "winback", "--locale", "xx"], "unknown locale 'xx'",
                    "en, fr")
    _one_line_error(capsys, ["templates", "check", "--locale", "klingon"], "unknown locale")
    monkeypatch.setenv("TEND_DEFAULT_LOCALE", "xx")
    _one_line_error(capsys, ["plan", "--as-of", NIGHT], "TEND_DEFAULT_LOCALE")


def test_a_reader_that_stops_reading_gets_no_traceback(env: Path) -> None:
    """`tend summary | head -1`: the pipe closes before tend writes; no BrokenPipeError."""
    import os
    import subprocess
    import sys

    assert main(["demo-data", "--customers", "60", "--seed", "5", "--as-of", NIGHT]) == 0
    assert main(["night", "--as-of", NIGHT]) == 0
    script = "import sys; from tend.cli import main; sys.exit(main())"
    with subprocess.Popen([sys.executable, "-c", script, "summary", "--as-of", NIGHT],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          env={**os.environ, "TEND_VAR_DIR": str(env)}) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        proc.stdout.close()  # the reader is gone before the first line is written
        err = proc.stderr.read().decode()
        assert proc.wait(timeout=120) == 0
    assert "Traceback" not in err and "BrokenPipe" not in err, err
    head = subprocess.run(f"'{sys.executable}' -c '{script}' summary --as-of {NIGHT} | head -1",
                          shell=True, capture_output=True, text=True, check=True,
                          env={**os.environ, "TEND_VAR_DIR": str(env)})
    assert head.stdout == f"Tend night {NIGHT}\n"
    assert "Traceback" not in head.stderr




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
    out, err = capsys.readouterr()
    assert out.startswith(f"customer {customer}: erased ") and "outbox files 1" in out
    # No tend serve ran here: the spool folder is not there, and the output says so.
    spool = env / "spool"
    assert not spool.exists()
    assert f"warning: no spool folder at {spool}: nothing was erased from one; if this " \
           "machine has one elsewhere, run again with --spool DIR (or TEND_SPOOL_DIR)" in err
    assert "outbox folder" not in err
    assert not mails[0].exists()
    assert not any(to.split("<")[-1].rstrip(">") in p.read_text()
                   for p in (env / "outbox").glob("*.eml"))


def test_forget_needs_customers(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["forget"]) == 2
    assert "name the customers to forget" in capsys.readouterr().err
    assert main(["forget", "--file", str(env / "missing.txt")]) == 2
    assert "cannot read the list of customers" in capsys.readouterr().err
