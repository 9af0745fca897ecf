"""The run parameters the Tend DAGs declare, so the trigger form shows them.

Airflow copies a run's conf onto its params (``[core] dag_run_conf_overrides_params``, on by
default), so ``airflow dags trigger --conf '{"as_of": "2026-11-20"}'`` and the form reach the
tasks the same way; ``tend_airflow.runs`` reads them. Each call builds fresh ``Param`` objects:
Airflow resolves a Param in place, so two DAGs must not share one. Airflow is imported only
when a DAG asks for its Params, so the task-side modules that read the names stay importable
before Airflow is configured.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from airflow.sdk import Param

AS_OF = "as_of"
SENDGRID_SANDBOX = "sendgrid_sandbox"


def _as_of() -> Param:
    from airflow.sdk import Param

    return Param(
        None,
        type=["null", "string"],
        format="date",
        title="Night (as_of)",
        description=(
            "The business day to run, YYYY-MM-DD. Leave empty to let the run decide: a "
            "scheduled run takes the day that just ended, tend_programs the night tend_ingest "
            "reported, a manual run its logical date."
        ),
    )


def _sendgrid_sandbox() -> Param:
    from airflow.sdk import Param

    # Nullable, not a plain boolean: the trigger form submits every Param into the run's conf,
    # so a default of false would arrive as an explicit "sandbox off" and override a connection
    # kept in sandbox mode. The form's switch leaves the value null until it is touched.
    return Param(
        None,
        type=["null", "boolean"],
        title="SendGrid sandbox",
        description=(
            "Switch on to send this run through SendGrid's sandbox mode: SendGrid validates "
            "every message and delivers none. Left untouched, the run keeps the "
            "sendgrid_default connection's setting; switched on and then off again, this run "
            "sends for real even if the connection is in sandbox mode."
        ),
    )


_BUILDERS: dict[str, Callable[[], Param]] = {AS_OF: _as_of, SENDGRID_SANDBOX: _sendgrid_sandbox}


def dag_params(*names: str) -> dict[str, Param]:
    """Fresh ``Param`` objects for a DAG's ``params=``, by name (``AS_OF``, ...)."""
    return {name: _BUILDERS[name]() for name in names}


# -- tend_campaign: the campaign form ---------------------------------------------------------
# The schema refuses what it can say (a name's shape, an enum, a range); the first task
# (tend.campaigns.spec.parse_spec) refuses the rest with a message naming the field.


def campaign_params() -> dict[str, Param]:
    """The tend_campaign trigger form, in sections. The template dropdown and the per-language
    fields come from a listing of the template folder (no database at parse time)."""
    from airflow.sdk import Param

    from tend import config
    from tend.campaigns.form import (
        AUDIENCES,
        NAME_PATTERN,
        OFFERS,
        SEND_AT_PATTERN,
        TIERS,
        campaign_templates,
        template_locales,
    )

    folder = config.templates_dir()
    templates = campaign_templates(folder) or ["newsletter"]
    locales = template_locales(folder) or ["en"]
    what, who, words, offer, when, safety = ("Campaign", "Audience", "Message", "Offer",
                                             "Delivery", "Rehearsal and proof")
    p: dict[str, Param] = {
        "name": Param(
            type="string", pattern=NAME_PATTERN, title="Campaign name",
            description="The campaign's identity, e.g. spring-sale-2027 (lower-case letters, "
                        "digits, - and _). Triggering the same name again never sends anyone "
                        "a second copy: use a new name for a new campaign.",
            section=what),
        "template": Param(
            templates[0], type="string", enum=templates, title="Template",
            values_display={t: t.replace("_", " ").capitalize() for t in templates},
            description="The email design, from templates/email/.", section=what),
        "audience": Param(
            "all", type="string", enum=list(AUDIENCES), values_display=AUDIENCES,
            title="Audience",
            description="Who receives it. Consent, unsubscribes, bounces, open complaints, "
                        "caps and the holdout still apply to everyone.", section=who),
        "audience_days": Param(
            90, type="integer", minimum=1, maximum=3650, title="Within the last N days",
            description="For 'Bought a category in the last N days'.", section=who),
        "audience_category": Param(
            None, type=["null", "string"], title="Category",
            description="For 'Bought a category': one of the shop's product categories.",
            section=who),
        "audience_tier": Param(
            None, type=["null", "string"], enum=[None, *TIERS], title="Loyalty tier",
            values_display={None: "(not used)", **{t: f"{t.capitalize()} or above"
                                                  for t in TIERS}},
            description="For 'Loyalty tier': customers whose spend reached this tier.",
            section=who),
        "audience_upload": Param(
            None, type=["null", "string"], title="Uploaded list name",
            description="For 'Uploaded list': the NAME given to `tend campaign upload-audience "
                        "NAME FILE.csv`.", section=who),
    }
    for loc in locales:
        p[f"subject_{loc}"] = Param(
            type="string", minLength=1, maxLength=200, title=f"Subject ({loc})",
            description=f"For customers who read {loc}. May use {{{{ customer.first_name }}}}.",
            section=words)
        # Optional fields are nullable with a null default: the form marks a field whose type
        # has no "null" as required and refuses to submit it empty, while the campaign needs
        # only its name and subjects (the first task checks what the chosen template needs).
        p[f"preheader_{loc}"] = Param(
            None, type=["null", "string"], maxLength=300, title=f"Preheader ({loc})",
            description="Optional: the preview line shown after the subject in the inbox "
                        "(empty: the inbox shows the start of the email).",
            section=words)
        p[f"headline_{loc}"] = Param(
            None, type=["null", "string"], maxLength=200, title=f"Headline ({loc})",
            description="Optional: the title at the top of the email (default: the subject).",
            section=words)
        p[f"text_{loc}"] = Param(
            None, type=["null", "string"], format="multiline", maxLength=20000,
            title=f"Text ({loc})",
            description="Optional: the body, plain text, a blank line starts a new paragraph "
                        "(empty: the headline, then the products picked for each customer).",
            section=words)
    p.update({
        "featured_skus": Param(
            None, type=["null", "array"], items={"type": "string", "minLength": 1}, maxItems=12,
            title="Featured products (SKUs)",
            description="One SKU per line. Each customer sees the three closest to what they "
                        "bought (same category first, ones they own last); empty: their own "
                        "favourites.", section=words),
        "offer": Param(
            "none", type="string", enum=list(OFFERS), values_display=OFFERS, title="Offer",
            description="A voucher with a unique code per customer.", section=offer),
        "offer_amount": Param(
            None, type=["null", "number"], exclusiveMinimum=0, title="Offer amount",
            description="Percent: 15 means 15 % off. Amount: in the shop's currency.",
            section=offer),
        "offer_valid_days": Param(
            30, type="integer", minimum=1, maximum=365, title="Voucher valid for (days)",
            description="Each code expires this many days after the campaign's day.",
            section=offer),
        "holdout_pct": Param(
            0, type="integer", minimum=0, maximum=50, title="Holdout (%)",
            description="Share of the eligible audience kept as a control group that "
                        "receives nothing, to measure the campaign's lift.", section=when),
        "priority": Param(
            20, type="integer", minimum=0, maximum=1000, title="Priority",
            description="Against the nightly programs (win-back 60, newsletter 10, see `tend "
                        "programs check`): a customer with a waiting program message of higher "
                        "priority keeps that one. Caps and one message per customer per day "
                        "apply either way.", section=when),
        "send_at": Param(
            "now", type="string", pattern=SEND_AT_PATTERN, title="Send at",
            examples=["now", "09:30", "10:00", "18:00"],
            description="now (still within each customer's quiet hours), or a local time "
                        "HH:MM delivered at that time in each customer's own timezone.",
            section=when),
        "max_recipients": Param(
            None, type=["null", "integer"], minimum=1, title="At most N recipients",
            description="Empty: everyone eligible. Otherwise those worth most to the shop "
                        "first.", section=when),
        "dry_run": Param(
            True, type="boolean", title="Dry run",
            description="On: a rehearsal. The report shows the audience, who would be capped, "
                        "suppressed or held out, three samples and the send time; nothing is "
                        "claimed or sent to customers. Switch off to send.", section=safety),
        "proof_to": Param(
            None, type=["null", "array"], items={"type": "string", "format": "email"}, maxItems=10,
            title="Proof to (staff addresses)",
            description="One address per line: each gets a [PROOF] copy of one message per "
                        "language before anything else is sent (dry run too). Proofs count "
                        "in no cap.", section=safety),
    })
    p.update(dag_params(SENDGRID_SANDBOX))
    p[SENDGRID_SANDBOX].schema["section"] = safety
    return p
