"""Building the long-lived objects of a run (renderer, delivery backend) from settings.

Shared by the CLI and the Airflow tasks so both send exactly the same messages.
"""

from __future__ import annotations

from tend import config
from tend.config import ShopSettings
from tend.delivery import DeliveryBackend, make_backend
from tend.render import Renderer, ShopIdentity


def renderer(settings: ShopSettings | None = None) -> Renderer:
    s = settings or ShopSettings.from_env()
    identity = ShopIdentity(
        name=s.name,
        postal_address=s.postal_address,
        from_email=s.from_email,
        from_name=s.from_name,
        reply_to=s.reply_to,
        base_url=s.base_url,
        default_locale=s.default_locale,
        website_url=s.website_url,
    )
    return Renderer(config.templates_dir(), identity, config.unsubscribe_secret())


def backend(name: str | None = None) -> DeliveryBackend:
    return make_backend(config.delivery_backend(name), outbox_dir=config.outbox_dir())
