"""A helper process that reads or writes a SQLite store through ADBC, for the bulk paths.

ADBC's SQLite driver reads and writes Arrow columns in C, with no Python object per value; this
module runs it where it may run (see ``SqliteProcess``) and carries Arrow tables between the
processes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from typing import IO

import pyarrow as pa

from tend.errors import DataError


class SqliteProcess:
    """A fresh Python process that reads or writes a SQLite store through ADBC (the writer is
    started early so its start-up — an interpreter, pandas, pyarrow, the driver — overlaps the
    shop's read).

    ADBC's SQLite driver carries its own copy of SQLite. Two copies of SQLite in one process
    must never open the same database file: POSIX locks belong to the process, so either copy
    closing its file drops the other's locks, and a WAL database is corrupted (SQLite's "How To
    Corrupt", 2.2.1) — the store's engine keeps pooled connections open. In another process
    the driver is just one more well-behaved SQLite client of the store. A plain subprocess
    (not multiprocessing's spawn) so the caller's main module is never re-imported.

    The protocol on its stdin: a pickled (function, arguments, streamed), then, when
    ``streamed``, any number of messages — a pickled table name and byte count followed by
    that many bytes of an Arrow IPC stream — ended by a pickled None; the function gets the
    messages as an iterator of {name: table}. On its stdout: a pickled (error text or None,
    result), where a result that is tables comes as ``_TABLES_FOLLOW`` and then messages.
    """

    def __init__(self) -> None:
        import subprocess
        import sys

        self._proc = subprocess.Popen(
            [sys.executable, "-c",
             "from tend.store.sqlite_process import main; main()"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE)

    def call(self, fn: Callable[..., object], *args: object) -> object:
        """Run ``fn(*args)`` in the process and return its result."""
        self._send_call(fn, args, streamed=False)
        return self._result(args)

    def stream(self, fn: Callable[..., object], args: tuple[object, ...],
               messages: Iterable[dict[str, pa.Table]]) -> object:
        """Run ``fn(*args, messages)`` in the process, sending each message (tables by name)
        as it comes, so the process works on one while the next is being made.

        A thread sends (the pipe blocks while the process is busy with the previous message),
        so the caller goes on computing the next message meanwhile. If making the messages
        fails, the end is never sent: the process is killed by ``close`` with its transaction
        open, and nothing of the night is committed.
        """
        import pickle
        import queue
        import threading

        self._send_call(fn, args, streamed=True)
        stdin = self._proc.stdin
        assert stdin is not None
        box: queue.Queue[dict[str, pa.Table] | None] = queue.Queue(maxsize=1)
        broken = False

        def send() -> None:
            nonlocal broken
            while (message := box.get()) is not None:
                if not broken:
                    try:
                        _send_tables(stdin, message)
                    except BrokenPipeError:  # it failed: its error comes with the result
                        broken = True

        sender = threading.Thread(target=send, name="tend-store-sender", daemon=True)
        sender.start()
        try:
            for message in messages:
                box.put(message)
        finally:
            box.put(None)
            sender.join()
        if not broken:
            with contextlib.suppress(BrokenPipeError):
                pickle.dump(None, stdin, protocol=5)
                stdin.flush()
        return self._result(args)

    def _send_call(self, fn: Callable[..., object], args: tuple[object, ...], *,
                   streamed: bool) -> None:
        import pickle

        assert self._proc.stdin is not None
        try:
            pickle.dump((fn, args, streamed), self._proc.stdin, protocol=5)
            self._proc.stdin.flush()
        except BrokenPipeError:
            pass

    def _result(self, args: tuple[object, ...]) -> object:
        import pickle

        assert self._proc.stdin is not None and self._proc.stdout is not None
        with contextlib.suppress(BrokenPipeError):
            self._proc.stdin.close()
        stdout = self._proc.stdout
        try:
            failure, result = pickle.load(stdout)
            if result == _TABLES_FOLLOW:
                result = {}
                for message in _messages(stdout):
                    result.update(message)
        except (EOFError, pickle.UnpicklingError):
            failure = result = None
            code = self._proc.wait()
            raise DataError(f"the store's helper process failed (exit status {code}); "
                            "its error is in the task log above") from None
        self._proc.wait()
        if failure is not None:
            raise DataError(f"the contact store at {path_hint(args)}: {failure}")
        return result

    def close(self) -> None:
        if self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()


def path_hint(args: tuple[object, ...]) -> str:
    return str(args[0]) if args else "?"


#: A helper's result that is tables: they follow as messages (as ``_send_tables`` sends them).
_TABLES_FOLLOW = "<tables follow>"


def _send_tables(stream: IO[bytes], tables: dict[str, pa.Table]) -> None:
    """Tables as messages: a pickled (name, byte count), then an Arrow IPC stream of that
    many bytes (the columns' buffers as they are: no pickling of values)."""
    import pickle

    for name, data in tables.items():
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, data.schema) as w:
            w.write_table(data)
        buf = sink.getvalue()
        pickle.dump((name, buf.size), stream, protocol=5)
        stream.write(memoryview(buf))


def _messages(stream: IO[bytes]) -> Iterator[dict[str, pa.Table]]:
    """The other side of ``_send_tables``: one table per message, until a pickled None."""
    import pickle

    while (head := pickle.load(stream)) is not None:
        name, size = head
        data = stream.read(size)
        if len(data) != size:
            raise DataError("the other process stopped sending in the middle of a table")
        yield {name: pa.ipc.open_stream(pa.py_buffer(data)).read_all()}


def main() -> None:
    """The helper process: see ``SqliteProcess``."""
    import pickle
    import sys

    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    fn, args, streamed = pickle.load(stdin)
    failure = result = None
    try:
        result = fn(*args, _messages(stdin)) if streamed else fn(*args)
    except Exception as exc:  # reported to the parent, which raises it in the task
        failure = f"{exc.__class__.__name__}: {exc}"
    if failure is None and isinstance(result, dict) and result and \
            all(isinstance(t, pa.Table) for t in result.values()):
        pickle.dump((None, _TABLES_FOLLOW), stdout, protocol=5)
        _send_tables(stdout, result)
        pickle.dump(None, stdout, protocol=5)
    else:
        pickle.dump((failure, result), stdout, protocol=5)
    stdout.flush()
