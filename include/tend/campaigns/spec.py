"""What a campaign is: the tend_campaign form's fields, checked, as one value.

The form (``tend_airflow.params``) refuses most bad input itself with its JSON Schema; what a
schema cannot say (a send time outside quiet hours, a subject missing for a language, an offer
without an amount, text that does not render) is refused here, by the run's first task, with a
message that names the field and what to write instead.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from tend.campaigns.form import (
    AUDIENCES,
    NAME_PATTERN,
    OFFERS,
    SEND_AT_PATTERN,
    TEMPLATE_NEEDS,
    TIERS,
)
from tend.errors import ConfigError, TemplateError
from tend.programs.caps import SendWindow
from tend.programs.consent import is_valid_email
from tend.programs.registry import Offer, Program
from tend.store.ledger import CAMPAIGN_PREFIX

MAX_FEATURED = 12
#: What a campaign's messages count as for consent and caps: a promotion or newsletter.
KIND = "marketing"


@dataclass(frozen=True)
class Content:
    """The words typed in the form for one language (sandboxed user text, rendered per
    customer by ``tend.messages.user_text``)."""

    subject: str
    preheader: str
    headline: str
    text: str


@dataclass(frozen=True)
class CampaignSpec:
    name: str
    audience: str
    template: str
    content: Mapping[str, Content]  # by locale
    featured_skus: tuple[str, ...] = ()
    audience_days: int = 90
    audience_category: str | None = None
    audience_tier: str | None = None
    audience_upload: str | None = None
    offer: Offer | None = None
    holdout_pct: int = 0
    priority: int = 20
    send_at: str = "now"
    max_recipients: int | None = None
    dry_run: bool = True
    proof_to: tuple[str, ...] = ()
    params: Mapping[str, Any] = field(default_factory=dict)

    @property
    def program(self) -> str:
        """The campaign's name in the ledger: its messages are (customer, this, name)."""
        return CAMPAIGN_PREFIX + self.name

    @property
    def occurrence(self) -> str:
        return self.name

    def as_program(self, validity_days: int = 0) -> Program:
        """The campaign as the programs stage sees a program (holdout, offer, template)."""
        return Program(
            name=self.program, signals=("campaign",), template=self.template, kind=KIND,
            priority=self.priority, cooldown_days=0, validity_days=validity_days,
            holdout_share=self.holdout_pct / 100, enabled=True,
            description=f"campaign {self.name}", offer=self.offer)

    def send_window(self, quiet: SendWindow) -> SendWindow | None:
        """The window the messages are delivered in: None = now (within quiet hours, as every
        message); a local time = that time in each customer's timezone (the next one)."""
        if self.send_at == "now":
            return None
        start = dt.time.fromisoformat(self.send_at)
        end = (dt.datetime.combine(dt.date(2000, 1, 1), start) + dt.timedelta(hours=1)).time()
        return SendWindow(start=start, end=min(end, quiet.end))


def _field(params: Mapping[str, Any], key: str, default: Any = None) -> Any:
    value = params.get(key, default)
    return default if value is None or (isinstance(value, str) and not value.strip()) else value


def code_prefix(name: str) -> str:
    """The voucher prefix of campaign ``name``: derived from the name rather than stored, so
    the results read it back the same way (``tend.results.lift``)."""
    return re.sub(r"[^A-Z0-9]", "", name.upper())[:8] or "CAMPAIGN"


def parse_spec(params: Mapping[str, Any], *, templates: Sequence[str],
               locales: Sequence[str], quiet: SendWindow) -> CampaignSpec:
    """The form's values as a ``CampaignSpec``, or a ConfigError that names the field and says
    what to write instead. ``templates``/``locales``: what exists (``campaign_templates``,
    ``template_locales``); ``quiet``: the registry's send window."""
    def bad(key: str, message: str) -> ConfigError:
        return ConfigError(f"campaign form, field {key!r}: {message}")

    name = _field(params, "name")
    if not isinstance(name, str) or not re.fullmatch(NAME_PATTERN, name):
        raise bad("name", f"{name!r} is not a campaign name; write 2-60 lower-case letters, "
                          "digits, '-' or '_', e.g. \"spring-sale-2027\" (the name is the "
                          "campaign's identity: the same name never sends anyone twice)")
    audience = _field(params, "audience", "all")
    if audience not in AUDIENCES:
        raise bad("audience", f"{audience!r} is not an audience; pick one of "
                              f"{', '.join(AUDIENCES)}")
    template = _field(params, "template", templates[0] if templates else None)
    if template not in templates:
        raise bad("template", f"{template!r} is not a campaign template; pick one of "
                              f"{', '.join(templates) or '(none found in templates/email)'}")

    days = _int(params, "audience_days", 90, bad, low=1, high=3650)
    category = _field(params, "audience_category")
    tier = _field(params, "audience_tier")
    upload = _field(params, "audience_upload")
    if audience == "category" and not isinstance(category, str):
        raise bad("audience_category", "the audience 'bought a category' needs a category: "
                                       "write one of the shop's categories, e.g. \"garden\"")
    if audience == "loyalty_tier" and tier not in TIERS:
        raise bad("audience_tier", f"the audience 'loyalty tier' needs a tier: one of "
                                   f"{', '.join(TIERS)}")
    if audience == "upload" and not (isinstance(upload, str) and re.fullmatch(NAME_PATTERN,
                                                                               upload)):
        raise bad("audience_upload", "the audience 'uploaded list' needs the name it was "
                                     "uploaded under: `tend campaign upload-audience NAME "
                                     "FILE.csv`, then write NAME here")

    content = {}
    for loc in locales:
        # Every email has a subject; a template may need more of the form's words.
        for need in dict.fromkeys(("subject", *TEMPLATE_NEEDS.get(template, ()))):
            if not isinstance(_field(params, f"{need}_{loc}"), str):
                raise bad(f"{need}_{loc}", f"the template {template!r} needs a {need} for "
                                           f"customers who read {loc!r}: write it (every "
                                           "language the templates are written in needs one)")
        subject = str(_field(params, f"subject_{loc}"))
        content[loc] = Content(
            subject=subject,
            preheader=str(_field(params, f"preheader_{loc}", "")),
            headline=str(_field(params, f"headline_{loc}", subject)),
            text=str(_field(params, f"text_{loc}", "")),
        )
    _check_text(content)

    featured = _field(params, "featured_skus", [])
    if isinstance(featured, str):
        featured = [s for s in re.split(r"[\s,]+", featured) if s]
    if not isinstance(featured, list) or not all(isinstance(s, str) and s for s in featured):
        raise bad("featured_skus", "write the featured products as a list of SKUs, "
                                   "e.g. [\"SKL-26\", \"TEA-CHAI\"]")
    if len(featured) > MAX_FEATURED:
        raise bad("featured_skus", f"{len(featured)} SKUs; feature at most {MAX_FEATURED}")

    offer_kind = _field(params, "offer", "none")
    if offer_kind not in OFFERS:
        raise bad("offer", f"{offer_kind!r}; pick one of {', '.join(OFFERS)}")
    offer = None
    if offer_kind != "none":
        amount = _field(params, "offer_amount")
        if not isinstance(amount, int | float) or isinstance(amount, bool) or amount <= 0 \
                or (offer_kind == "percent" and amount >= 100):
            raise bad("offer_amount", "a percent offer needs a number between 0 and 100 (15 "
                                      "means 15 % off), an amount offer a number above 0 (in "
                                      "the shop's currency)")
        valid = _int(params, "offer_valid_days", 30, bad, low=1, high=365)
        offer = Offer(kind=offer_kind, amount=float(amount), valid_days=valid,
                      code_prefix=code_prefix(name))

    holdout = _int(params, "holdout_pct", 0, bad, low=0, high=50)
    priority = _int(params, "priority", 20, bad, low=0, high=1000)
    send_at = str(_field(params, "send_at", "now")).strip().lower()
    if not re.fullmatch(SEND_AT_PATTERN, send_at):
        raise bad("send_at", f"{send_at!r}; write \"now\" or a local time such as \"10:00\"")
    if send_at != "now":
        at = dt.time.fromisoformat(send_at)
        if not quiet.start <= at < quiet.end:
            raise bad("send_at", f"{send_at} is in the customers' quiet hours; pick a time "
                                 f"from {quiet.start:%H:%M} to before {quiet.end:%H:%M} (the "
                                 "registry's send_window)")
    cap = _field(params, "max_recipients")
    max_recipients = None if cap is None else _int(params, "max_recipients", None, bad,
                                                    low=1, high=10_000_000)
    dry_run = _field(params, "dry_run", True)
    if not isinstance(dry_run, bool):
        raise bad("dry_run", "switch it on (a rehearsal: nothing is claimed or sent) or off")
    proof = _field(params, "proof_to", [])
    if isinstance(proof, str):
        proof = [p for p in re.split(r"[\s,;]+", proof) if p]
    if not isinstance(proof, list) or not all(is_valid_email(p) for p in proof):
        wrong = [p for p in proof if not is_valid_email(p)] if isinstance(proof, list) else proof
        raise bad("proof_to", f"{wrong!r} is not a list of email addresses; write staff "
                              "addresses, e.g. [\"marketing@shop.example\"]")
    if len(proof) > 10:
        raise bad("proof_to", "send proofs to at most 10 addresses")
    return CampaignSpec(
        name=name, audience=audience, template=template, content=content,
        featured_skus=tuple(dict.fromkeys(featured)), audience_days=days,
        audience_category=category if audience == "category" else None,
        audience_tier=tier if audience == "loyalty_tier" else None,
        audience_upload=upload if audience == "upload" else None, offer=offer,
        holdout_pct=holdout, priority=priority, send_at=send_at,
        max_recipients=max_recipients, dry_run=dry_run, proof_to=tuple(proof),
        params=dict(params))


def _int(params: Mapping[str, Any], key: str, default: int | None, bad: Any, *, low: int,
         high: int) -> int:
    value = _field(params, key, default)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise bad(key, f"{value!r}; write a whole number from {low} to {high:,}")
    return value


#: What campaign text may use: the customer's own fields (``{{ customer.first_name }}``).
SAMPLE_TEXT_CONTEXT = {"customer": {"customer_id": "cus_000142", "first_name": "Marie",
                                    "last_name": "Tremblay", "email": "marie@example.com",
                                    "locale": "fr-CA", "orders_count": 3,
                                    "member_since": "2024-05-02"}}
#: The same customer as little as a real message may know of one
#: (``tend.messages.contexts.ContextBuilder.build``): no name, no address, no order yet (a
#: newsletter sign-up), so no first-order date either.
SPARSE_TEXT_CONTEXT = {"customer": {"customer_id": "cus_000143", "first_name": None,
                                    "last_name": None, "email": None, "locale": "en",
                                    "orders_count": 0, "member_since": ""}}


def _check_text(content: Mapping[str, Content]) -> None:
    """Render every field in the sandbox for a customer the shop knows well and for one it
    knows little of, so that text failing for some customers fails the first task, before
    anything is claimed, rather than the run after its claim."""
    from tend.messages.user_text import render_user_text

    for loc, c in content.items():
        for key in ("subject", "preheader", "headline", "text"):
            field_name = f"{key}_{loc}"
            for sample, who in ((SAMPLE_TEXT_CONTEXT, ""),
                                (SPARSE_TEXT_CONTEXT, " for a customer with no name, no "
                                                      "address or no order yet")):
                try:
                    render_user_text(getattr(c, key), sample, single_line=key != "text")
                except TemplateError as exc:
                    raise ConfigError(
                        f"campaign form, field {field_name!r}: {exc}{who}; only "
                        "{{ customer.first_name }} and the other customer fields may be used, "
                        "and a field a customer may lack prints as nothing (give it a "
                        "fallback: {{ customer.first_name|default(\"there\") }})") from exc
