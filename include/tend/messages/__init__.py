"""Messages: what a claimed contact says, rendered for one customer.

Takes ledger rows and gives rendered emails (subject, preheader, HTML, text, headers).
``contexts`` builds each message's render context from the shop, ``contracts`` states what each
template needs (and sample contexts for checks and previews), ``render`` is the Jinja renderer,
``tokens`` signs the links and voucher codes in an email.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tend.config import ShopSettings
    from tend.messages.render import Renderer


def default_renderer(settings: ShopSettings | None = None) -> Renderer:
    """The renderer every send uses, from the shop's settings: the CLI and the Airflow tasks
    both build it here so they send exactly the same messages."""
    from tend import config
    from tend.config import ShopSettings
    from tend.messages.render import Renderer, ShopIdentity

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
