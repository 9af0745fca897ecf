"""The customer's pages: unsubscribe, preferences and the survey answer."""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.routing import BaseRoute

if TYPE_CHECKING:
    from tend.listen.app import Handler, Service

HANDLERS: dict[str, Handler] = {}


def routes(service: Service) -> list[BaseRoute]:
    return []
