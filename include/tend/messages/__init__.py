"""Messages: what a claimed contact says, rendered for one customer.

Takes the programs stage's plans (each winner's template, locale and signal) and the shop's data
(its settings, catalogue and orders) and gives rendered emails: subject, preheader, HTML, plain
text and the compliance headers. ``contexts`` builds each message's render context from the shop,
``contracts`` states what each template needs (with sample contexts for checks and previews),
``render`` is the renderer (its design notes say which of ``loader``, ``environment``,
``formatting``, ``compliance``, ``user_text`` and ``template_errors`` holds each of its parts),
and ``tokens`` signs the links and voucher codes in an email.
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
    from tend.messages.render import Renderer

    return Renderer(config.templates_dir(), settings or ShopSettings.from_env(),
                    config.unsubscribe_secret())
