"""A durable local spool for what customers and SendGrid tell us while the store is down.

An unsubscribe click or a webhook delivery must never be lost because the database is briefly
unreachable, and the caller must still get its 2xx (SendGrid gives up after retrying for a day;
a customer does not click twice). Each record is one JSON line appended to a file and fsynced
before the endpoint answers; :meth:`Spool.replay` applies the records in order once the store
is back and removes a file only when every record in it was applied. Records are applied by
idempotent handlers (an unsubscribe twice is one unsubscribe, an event id is stored once), so a
crash between applying and removing replays harmlessly.
"""

from __future__ import annotations

import fcntl
import json
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

__all__ = ["Spool"]


class Spool:
    """Append-only JSON-lines files in ``directory``, one per process.

    Several ``tend serve`` workers may share the directory. A writer holds an exclusive
    ``flock`` on the file while it appends, and checks after locking that the name still points
    at the file it opened; :meth:`replay` first renames a file out of the way, then locks it, so
    no record is appended to a file after it was read.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self._lock = threading.Lock()

    def _path(self) -> Path:
        return self.directory / f"pending-{os.getpid()}.jsonl"

    def append(self, record: Mapping[str, Any]) -> None:
        """Write ``record`` and fsync it (and, for a new file, its directory) before returning."""
        line = (json.dumps(record, separators=(",", ":"), default=str) + "\n").encode("utf-8")
        with self._lock:
            self.directory.mkdir(parents=True, exist_ok=True)
            path = self._path()
            while True:
                new = not path.exists()
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
                fcntl.flock(fd, fcntl.LOCK_EX)
                try:
                    same = os.fstat(fd).st_ino == os.stat(path).st_ino
                except FileNotFoundError:
                    same = False
                if same:
                    break
                os.close(fd)  # replay renamed it meanwhile: write to a fresh file
            try:
                os.write(fd, line)
                os.fsync(fd)
            finally:
                os.close(fd)
            if new:
                _fsync_dir(self.directory)

    def pending(self) -> int:
        """How many records wait to be applied."""
        return sum(1 for path in self._files() for _ in _read(path))

    def _files(self) -> list[Path]:
        if not self.directory.is_dir():
            return []
        return sorted(self.directory.glob("*.jsonl"), key=lambda p: (p.stat().st_mtime, p.name))

    def replay(self, apply: Callable[[dict[str, Any]], None]) -> int:
        """Apply every spooled record in order; return how many were applied.

        Stops at the first record ``apply`` raises on (the store is still down): that file
        stays, renamed, for the next try. A file is removed only once all of it was applied.
        """
        applied = 0
        for path in self._files():
            if path.name.startswith("pending-"):
                taken = path.with_name(f"replaying-{time.time_ns()}-{path.name[8:]}")
                try:
                    path.rename(taken)
                except FileNotFoundError:
                    continue
                path = taken
            try:
                fd = os.open(path, os.O_RDONLY)
            except FileNotFoundError:  # another worker applied it meanwhile
                continue
            try:
                # Waits for a writer that opened the file before the rename; another worker
                # replaying the same file holds it too, and has removed it once we get it.
                fcntl.flock(fd, fcntl.LOCK_EX)
                if not path.exists():
                    continue
                for record in _read(path):
                    apply(record)
                    applied += 1
                path.unlink(missing_ok=True)
            finally:
                os.close(fd)
        return applied


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _read(path: Path) -> Iterator[dict[str, Any]]:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return
    for raw in data.splitlines():
        if not raw.strip():
            continue
        try:
            record = json.loads(raw)
        except ValueError:  # a torn last line from a crash mid-write: it was never answered 2xx
            continue
        if isinstance(record, dict):
            yield record
