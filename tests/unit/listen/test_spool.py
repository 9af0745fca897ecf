"""The durable spool: what is appended survives, is applied in order, and only once applied
is it removed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tend.listen.spool import Spool


def test_records_are_applied_in_order_and_removed(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    for i in range(3):
        spool.append({"action": "a", "n": i})
    assert spool.pending() == 3
    seen: list[Any] = []
    assert spool.replay(lambda r: seen.append(r["n"])) == 3
    assert seen == [0, 1, 2] and spool.pending() == 0
    assert list((tmp_path / "spool").iterdir()) == []


def test_a_failed_replay_keeps_everything_for_the_next_try(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.append({"n": 1})
    spool.append({"n": 2})

    def down(record: dict[str, Any]) -> None:
        raise ConnectionError("store still down")

    with pytest.raises(ConnectionError):
        spool.replay(down)
    assert spool.pending() == 2
    spool.append({"n": 3})  # written while the first file waits, renamed, for its replay
    seen: list[int] = []
    assert spool.replay(lambda r: seen.append(r["n"])) == 3
    assert sorted(seen) == [1, 2, 3] and spool.pending() == 0


def test_a_torn_last_line_is_skipped_not_fatal(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.append({"n": 1})
    path = next(tmp_path.glob("*.jsonl"))
    with path.open("ab") as f:
        f.write(b'{"n": 2')  # a crash in the middle of a write (never answered 2xx)
    seen: list[int] = []
    spool.replay(lambda r: seen.append(r["n"]))
    assert seen == [1]
