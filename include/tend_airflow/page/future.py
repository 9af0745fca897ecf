"""Refuse, at the trigger, a Tend DAG run whose logical date is still ahead.

Airflow 3 accepts such a run and then never schedules its tasks (it shows "running", with no
task states, and with ``max_active_runs=1`` blocks every later night) until the date passes.
No task of the run ever starts, so only the trigger request itself can be refused: this ASGI
middleware (registered by the plugin on the API server) answers the API's trigger call for a
``tend_*`` DAG with a future ``logical_date`` with a 400 that says what to do. Every other
request passes untouched.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_TRIGGER = re.compile(r"/api/v2/dags/(tend_[A-Za-z0-9_.-]+)/dagRuns/?")
#: A trigger body is a small JSON object; a larger one is not ours to judge (passed through).
_MAX_BODY = 1 << 20


def future_refusal(dag_id: str, body: bytes, now: dt.datetime | None = None) -> str | None:
    """The message refusing this trigger body, or None to let it through."""
    try:
        logical = json.loads(body).get("logical_date")
        when = dt.datetime.fromisoformat(str(logical).replace("Z", "+00:00")) if logical else None
    except (ValueError, AttributeError):
        return None  # Airflow's own validation answers a malformed body
    if when is None:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    if when <= (now or dt.datetime.now(dt.UTC)):
        return None
    return (f"{dag_id}: the logical date {when:%Y-%m-%d %H:%M} UTC is in the future, and Airflow "
            "would leave the run waiting (blocking later nights) until then. Trigger it with "
            "today's date, or pick the night in the form's 'Night (as_of)' field.")


class RefuseFutureRuns:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        match = (_TRIGGER.fullmatch(scope.get("path", "")) if scope["type"] == "http"
                 and scope.get("method") == "POST" else None)
        if match is None:
            await self.app(scope, receive, send)
            return
        chunks: list[Message] = []
        size = 0
        while True:
            message = await receive()
            chunks.append(message)
            size += len(message.get("body", b""))
            if message["type"] != "http.request" or not message.get("more_body") \
                    or size > _MAX_BODY:
                break
        body = b"".join(m.get("body", b"") for m in chunks)
        refusal = None if size > _MAX_BODY else future_refusal(match.group(1), body)
        if refusal is not None:
            payload = json.dumps({"detail": refusal}).encode()
            await send({"type": "http.response.start", "status": 400, "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode())]})
            await send({"type": "http.response.body", "body": payload})
            return
        pending = list(chunks)

        async def replay() -> Message:
            return pending.pop(0) if pending else await receive()

        await self.app(scope, replay, send)
