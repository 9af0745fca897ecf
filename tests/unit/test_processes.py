"""Whether a worker is gone: only a process of this host that no longer exists."""

from __future__ import annotations

import os

from _support import exited_pid

from tend.processes import gone, this_host


def test_only_an_exited_process_of_this_host_is_gone() -> None:
    assert gone(this_host(), str(exited_pid()))
    assert not gone(this_host(), str(os.getpid()))  # alive
    assert not gone("another-host", str(exited_pid()))  # cannot tell: presumed alive
    assert not gone(this_host(), "not-a-pid")
