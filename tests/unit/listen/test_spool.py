"""The durable spool: what is appended survives, is applied in order, and only once applied
is it removed; a record that can never apply is quarantined, not left in the way."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest

from tend.listen.spool import Spool


def is_outage(exc: Exception) -> bool:
    return isinstance(exc, ConnectionError)


def test_records_are_applied_in_order_and_removed(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    for i in range(3):
        spool.append({"action": "a", "n": i})
    assert spool.pending() == 3
    seen: list[Any] = []
    assert spool.replay(lambda r: seen.append(r["n"]), outage=is_outage) == 3
    assert seen == [0, 1, 2] and spool.pending() == 0
    assert list((tmp_path / "spool").iterdir()) == []


def test_a_failed_replay_keeps_everything_for_the_next_try(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.append({"n": 1})
    spool.append({"n": 2})

    def down(record: dict[str, Any]) -> None:
        raise ConnectionError("store still down")

    with pytest.raises(ConnectionError):
        spool.replay(down, outage=is_outage)
    assert spool.pending() == 2 and spool.failed() == 0
    spool.append({"n": 3})  # written while the first file waits, renamed, for its replay
    seen: list[int] = []
    assert spool.replay(lambda r: seen.append(r["n"]), outage=is_outage) == 3
    assert sorted(seen) == [1, 2, 3] and spool.pending() == 0


def test_a_torn_last_line_is_skipped_not_fatal(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.append({"n": 1})
    path = next(tmp_path.glob("*.jsonl"))
    with path.open("ab") as f:
        f.write(b'{"n": 2')  # a crash in the middle of a write (never answered 2xx)
    seen: list[int] = []
    spool.replay(lambda r: seen.append(r["n"]), outage=is_outage)
    assert seen == [1]


def test_a_record_that_cannot_apply_is_quarantined_and_the_others_go_on(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    spool = Spool(tmp_path)
    for n in range(4):
        spool.append({"n": n})
    seen: list[int] = []
    store_down = True

    def apply(record: dict[str, Any]) -> None:
        if record["n"] == 1:
            raise ValueError("not a rating")  # the record's own fault: fails on every try
        if record["n"] == 3 and store_down:
            raise ConnectionError("store down")
        seen.append(record["n"])

    with pytest.raises(ConnectionError):
        spool.replay(apply, outage=is_outage)
    assert seen == [0, 2] and spool.pending() == 1 and spool.failed() == 1
    assert "cannot be applied (ValueError: not a rating)" in caplog.text
    assert all(r.levelno == logging.ERROR for r in caplog.records)

    store_down = False
    assert spool.replay(apply, outage=is_outage) == 1
    assert seen == [0, 2, 3] and spool.pending() == 0
    (failed,) = tmp_path.glob("failed-*.jsonl")
    (kept,) = [json.loads(line) for line in failed.read_text().splitlines()]
    assert kept["n"] == 1 and kept["failed"]["error"] == "ValueError: not a rating"

    # The operator fixed the cause and renames the file: the record is applied again.
    failed.rename(tmp_path / failed.name.removeprefix("failed-"))
    assert spool.failed() == 0 and spool.pending() == 1
    assert spool.replay(lambda r: seen.append(r["n"]), outage=is_outage) == 1
    assert seen == [0, 2, 3, 1] and list(tmp_path.iterdir()) == []
