"""``tend complaints``: list, resolve and the staff digest, after a low survey rating that came
in over HTTP (a real ``tend serve``)."""

from __future__ import annotations

import datetime as dt
import email
from pathlib import Path

import httpx
import pytest
from _support import running_service, sent_survey

from tend.cli import main
from tend.messages.contexts import SURVEY_PURPOSE
from tend.messages.tokens import make_message_token
from tend.reports import summary_lines, why_lines
from tend.store import suppressions
from tend.store.db import connect

MESSAGE = "0123456789abcdef0123456789abcdef"


@pytest.fixture
def complained(store_url: str, tmp_path: Path) -> str:
    """A survey message to C000042, rated 1 with a comment through the survey page."""
    import re

    sent_survey(store_url, "C000042", MESSAGE)
    url = "/survey/" + make_message_token("test-secret", "C000042", MESSAGE, SURVEY_PURPOSE)
    with running_service(store_url, tmp_path) as svc, httpx.Client(base_url=svc.url) as c:
        page = c.get(url + "?rating=1")
        form = re.search(r'name="form" value="([^"]+)"', page.text)
        assert form is not None
        r = c.post(url, data={"form": form.group(1), "rating": "1",
                              "comment": "The kettle leaks. Write to me at marie@example.com"})
        assert r.status_code == 200
    return store_url


def test_a_low_rating_shows_in_tend_complaints_the_summary_and_why(
        complained: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["complaints", "--store", complained]) == 0
    out = capsys.readouterr().out
    assert "1 open complaint(s)" in out and "C000042" in out and "The kettle leaks" in out
    summary = "\n".join(summary_lines(complained, dt.datetime.now(dt.UTC).date()))
    assert "WARNING: 1 new complaint(s)" in summary and "C000042" in summary
    assert "open complaint #1" in "\n".join(why_lines(complained, "C000042"))
    with connect(complained).connect() as conn:
        assert "complaint" in set(suppressions.active(conn)["reason"])


def test_resolve_closes_it_and_marketing_resumes(
        complained: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["complaints", "resolve", "1", "--note", "sent a new kettle",
                 "--store", complained]) == 0
    assert "complaint #1 resolved" in capsys.readouterr().out
    with connect(complained).connect() as conn:
        assert suppressions.active(conn).empty
    assert main(["complaints", "--store", complained]) == 0
    assert "no open complaints" in capsys.readouterr().out
    # resolving twice, or an unknown id, is a one-line error
    assert main(["complaints", "resolve", "1", "--note", "again", "--store", complained]) == 2
    assert "no open complaint #1" in capsys.readouterr().err


def test_the_digest_goes_to_staff_once(complained: str, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    outbox = tmp_path / "outbox"
    monkeypatch.setenv("TEND_OUTBOX_DIR", str(outbox))
    monkeypatch.delenv("TEND_STAFF_EMAIL", raising=False)
    assert main(["complaints", "digest", "--delivery", "outbox", "--store", complained]) == 2
    assert "TEND_STAFF_EMAIL is not set" in capsys.readouterr().err

    monkeypatch.setenv("TEND_STAFF_EMAIL", "service@shop.example")
    assert main(["complaints", "digest", "--delivery", "outbox", "--store", complained]) == 0
    assert "1 complaint(s) sent" in capsys.readouterr().out
    (sent,) = outbox.glob("*.eml")
    mail = email.message_from_bytes(sent.read_bytes())
    assert mail["To"] == "service@shop.example"
    assert "1 new customer complaint" in mail["Subject"]
    assert "The kettle leaks" in sent.read_text(errors="replace")

    assert main(["complaints", "digest", "--delivery", "outbox", "--store", complained]) == 0
    assert "nothing sent" in capsys.readouterr().out
    assert len(list(outbox.glob("*.eml"))) == 1
