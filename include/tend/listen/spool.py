"""A durable local spool for what customers and SendGrid tell us while the store is down.

An unsubscribe click or a webhook delivery must never be lost because the database is briefly
unreachable, and the caller must still get its 2xx (SendGrid gives up after retrying for a day;
a customer does not click twice). Each record is one JSON line appended to a file and fsynced
before the endpoint answers; :meth:`Spool.replay` applies the records in order once the store
is back and removes a file only when every record in it was applied. Records are applied by
idempotent handlers (an unsubscribe twice is one unsubscribe, an event id is stored once), so a
crash between applying and removing replays harmlessly.

A record that fails for any reason other than an outage would fail on every try, and would hold
back every record after it; it is moved to a quarantine file beside the spool
(``failed-<pid>.jsonl``, the record plus why it failed) for an operator to re-apply or discard
(docs/listen.md), and the replay goes on with the rest.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import json
import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

__all__ = ["FAILED_PREFIX", "Spool", "replace_lines", "same_file", "take"]

log = logging.getLogger("tend.listen")  # the logger tend serve masks emails on

#: The name of a quarantine file starts with this; replay leaves such files alone.
FAILED_PREFIX = "failed-"


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
        self._append(self._path(), record)

    def _append(self, path: Path, record: Mapping[str, Any]) -> None:
        line = _line(record)
        with self._lock:
            self.directory.mkdir(parents=True, exist_ok=True)
            while True:
                new = not path.exists()
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
                fcntl.flock(fd, fcntl.LOCK_EX)
                if same_file(fd, path):
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

    def failed(self) -> int:
        """How many records wait in quarantine files for an operator."""
        return sum(1 for path in self._files(failed=True) for _ in _read(path))

    def _files(self, *, failed: bool = False) -> list[Path]:
        if not self.directory.is_dir():
            return []
        files = []
        for path in self.directory.glob("*.jsonl"):
            try:
                stamp = path.stat().st_mtime
            except FileNotFoundError:  # replayed or renamed by another worker meanwhile
                continue
            if path.name.startswith(FAILED_PREFIX) == failed:
                files.append((stamp, path.name, path))
        return [path for *_, path in sorted(files)]

    def replay(self, apply: Callable[[dict[str, Any]], None], *,
               outage: Callable[[Exception], bool]) -> int:
        """Apply every spooled record in order; return how many were applied.

        When ``apply`` raises and ``outage`` says the error is the store being unreachable,
        the replay stops and re-raises: that file stays, renamed, for the next try. Any other
        error is the record's own: it goes to the quarantine file, logged at error level, and
        the replay goes on. A file is removed only once every record in it was dealt with.
        """
        applied = 0
        for path in self._files():
            taken = take(path)
            if taken is None:
                continue
            path = taken
            try:
                fd = os.open(path, os.O_RDONLY)
            except FileNotFoundError:  # another worker applied it meanwhile
                continue
            try:
                # Waits for a writer that opened the file before the rename; another worker
                # replaying the same file holds it too, and has removed (or rewritten) it once
                # we get it: the next replay takes it up again.
                fcntl.flock(fd, fcntl.LOCK_EX)
                if not same_file(fd, path):
                    continue
                records = list(_read(path))
                quarantined = False
                for n, record in enumerate(records):
                    try:
                        apply(record)
                    except Exception as exc:
                        if outage(exc):
                            if quarantined:  # keep the quarantined ones from a second copy
                                replace_lines(path, [_line(r) for r in records[n:]])
                            raise
                        self._quarantine(record, exc)
                        quarantined = True
                    else:
                        applied += 1
                path.unlink(missing_ok=True)
            finally:
                os.close(fd)
        return applied

    def _quarantine(self, record: dict[str, Any], exc: Exception) -> None:
        """Move ``record`` to this process's quarantine file, with why it failed."""
        path = self.directory / f"{FAILED_PREFIX}{os.getpid()}.jsonl"
        reason = f"{type(exc).__name__}: {_first_line(exc)}"
        self._append(path, {**record, "failed": {
            "at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "error": reason}})
        log.error("a spooled %r record cannot be applied (%s); it is kept in %s and the "
                  "others go on. Fix the cause, then rename the file without its %r prefix "
                  "to apply it again, or delete it to discard it (docs/listen.md)",
                  record.get("action"), reason, path, FAILED_PREFIX)


def _first_line(exc: BaseException) -> str:
    """The driver's own message (a SQLAlchemy error's text also carries the statement and its
    parameters, which may hold what a customer typed), first line, bounded."""
    orig = getattr(exc, "orig", None)
    text = str(orig if orig is not None else exc).strip()
    return (text.splitlines() or [""])[0][:200]


def _line(record: Mapping[str, Any]) -> bytes:
    return (json.dumps(record, separators=(",", ":"), default=str) + "\n").encode("utf-8")


def same_file(fd: int, path: Path) -> bool:
    """Whether the open ``fd`` is still the file at ``path`` (a replay or an erasure may have
    renamed or replaced it since it was opened)."""
    try:
        return os.fstat(fd).st_ino == os.stat(path).st_ino
    except FileNotFoundError:
        return False


def take(path: Path) -> Path | None:
    """Rename a ``pending-`` file out of its writers' way before it is locked and rewritten,
    and return its new name (None when it is gone). Writers create and rename nothing else,
    so once taken, the name stays the file's until a replay or an erasure replaces it under
    the lock; a writer that opened it before sees the name gone (``same_file``) and starts a
    fresh file. Any other file is returned as it is."""
    if not path.name.startswith("pending-"):
        return path
    taken = path.with_name(f"replaying-{time.time_ns()}-{path.name.removeprefix('pending-')}")
    try:
        path.rename(taken)
    except FileNotFoundError:
        return None
    return taken


def replace_lines(path: Path, lines: list[bytes]) -> None:
    """Replace spool file ``path`` by ``lines``, durably and keeping its modification time
    (files replay in that order). The caller holds the file's lock; a writer that opened the
    old file sees it replaced (``same_file``) and writes to a fresh one."""
    before = path.stat()
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".rest-", suffix=".tmp")
    with os.fdopen(fd, "wb") as handle:
        handle.writelines(lines)
        handle.flush()
        os.fsync(handle.fileno())
    os.utime(tmp, ns=(before.st_atime_ns, before.st_mtime_ns))
    os.replace(tmp, path)
    _fsync_dir(path.parent)


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
