"""Whether a worker process is gone: shared by the send leases (``tend.store.ledger``) and the
SMTP journal (``tend.delivery.smtp``), which both name a worker by its host and pid."""

from __future__ import annotations

import os
import socket

__all__ = ["gone", "this_host"]


def this_host() -> str:
    return socket.gethostname()


def gone(host: str, pid: str) -> bool:
    """True only when ``pid`` ran on this host and no longer exists; a process elsewhere (or
    one we may not signal) is presumed alive, so nothing it might still do is taken over."""
    if host != this_host() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except OSError:  # exists, owned by someone else
        return False
    return False
