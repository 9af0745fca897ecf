"""Listen: the public endpoints service (``tend serve``) — what comes back from customers and
from SendGrid.

Takes the HTTP requests behind the links of every email (unsubscribe, preferences, survey) and
SendGrid's signed Event Webhook; gives rows in the contact store (suppressions, preferences,
survey answers, complaints, message events) that the next planning run and the send stage
honour. It runs on its own, in public, so the Airflow UI never faces the internet.

- ``app``: the Starlette application, the shared :class:`~tend.listen.app.Service` (store,
  settings, spool) and the guards every request passes (body size, methods, errors);
- ``pages``: the customer's pages (unsubscribe, preferences, survey) and their templates;
- ``events``: the SendGrid Event Webhook;
- ``spool``: the durable local spool used while the store is unreachable;
- ``pull``: the daily backstop, SendGrid's own suppression lists into the store;
- ``exports``: what goes back to the shop (its opt-out list, a night's voucher codes).
- ``orders``: "order placed" events from the shop (Redis pub/sub), decided within minutes by
  the tend_events DAG; not part of ``tend serve``.
"""

import re

#: What no store keeps and a request can still carry (a form decoded with an odd charset,
#: JSON's \\u escapes): NUL (PostgreSQL text) and lone UTF-16 surrogates (not UTF-8).
UNSTORABLE = re.compile(r"[\x00\ud800-\udfff]")
